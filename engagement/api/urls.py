from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from engagement.api import views

router = DefaultRouter()
router.register("posts", views.PostViewSet, basename="post")
router.register("sources", views.SourceViewSet, basename="source")

urlpatterns = [
    path("", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
]
