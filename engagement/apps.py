from django.apps import AppConfig
from django.db.models.signals import post_migrate


class EngagementConfig(AppConfig):
    name = "engagement"
    verbose_name = "engagement"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from engagement.roles import on_post_migrate

        # After auth's own post_migrate handler has created the permissions (apps are in INSTALLED_APPS order).
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="engagement-roles")
