from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from engagement import views

admin.site.site_header = "engagement"
admin.site.site_title = "engagement"
admin.site.index_title = "Collection and moderation"
# The admin's "View site" link opens the editors' summary page.
admin.site.site_url = "/summary/"
# The queue needs the width more than a second app menu (the breadcrumbs and index link remain).
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/v1/", include("engagement.api.urls")),
    path("healthz", views.healthz, name="healthz"),
    path("summary/", include("engagement.summary_urls")),
]
