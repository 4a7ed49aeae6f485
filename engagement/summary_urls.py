"""The editors' summary page and its CSV downloads, mounted at /summary/ by engagement/urls.py."""

from django.urls import path

from engagement import summary_views

urlpatterns = [
    path("", summary_views.summary_page, name="summary"),
    path("csv/<slug:chart>/", summary_views.summary_csv, name="summary-csv"),
]
