from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from engagement import collect
from engagement.models import Platform, Source


class Command(BaseCommand):
    help = (
        "Prepare a database for first use (idempotent): the hashtags of ENGAGEMENT_HASHTAGS, the default "
        "Mastodon sources when there are no sources yet, and the admin user when ENGAGEMENT_ADMIN_PASSWORD is set."
    )

    def handle(self, *args, **options):
        tags = collect.ensure_hashtags(settings.ENGAGEMENT_HASHTAGS)
        self.stdout.write("hashtags: " + ", ".join(str(t) for t in tags))
        if not Source.objects.exists():
            for url in settings.ENGAGEMENT_DEFAULT_MASTODON_INSTANCES:
                source = collect.register_source(
                    platform=Platform.MASTODON, url=url, hashtags=settings.ENGAGEMENT_HASHTAGS
                )
                self.stdout.write(f"added source {source.pk}: {source.name}")
        self._ensure_admin()

    def _ensure_admin(self) -> None:
        User = get_user_model()
        username, password = settings.ENGAGEMENT_ADMIN_USER, settings.ENGAGEMENT_ADMIN_PASSWORD
        if password:
            user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
            if created or not user.check_password(password):
                user.is_staff = user.is_superuser = True
                user.set_password(password)
                user.save()
            self.stdout.write(f"log in at /admin/ as {username!r} with ENGAGEMENT_ADMIN_PASSWORD")
        elif not User.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "no admin user yet: set ENGAGEMENT_ADMIN_PASSWORD before `make run`, "
                "or run `.venv/bin/python manage.py createsuperuser` in another terminal"
            )
        else:
            self.stdout.write("log in at /admin/ with your superuser account")
