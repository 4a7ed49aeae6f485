from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from engagement.models import ApiToken


class Command(BaseCommand):
    help = "Create API tokens (shown once; only a hash is stored)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="print a new token for a user")
        create.add_argument("--user", required=True, help="an existing username")
        create.add_argument("--name", default="", help="what the token is for")

    def handle(self, *args, action, user, name, **options):
        try:
            account = get_user_model().objects.get(username=user)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {user!r}; create one first: manage.py createsuperuser") from None
        _token, key = ApiToken.issue(user=account, name=name)
        self.stdout.write(key)
