from django.apps import AppConfig


class EngagementConfig(AppConfig):
    name = "engagement"
    verbose_name = "engagement"
    default_auto_field = "django.db.models.BigAutoField"
