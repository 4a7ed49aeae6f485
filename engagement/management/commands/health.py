import json

from django.core.management.base import BaseCommand, CommandError

from engagement import health


class Command(BaseCommand):
    help = "Print the /healthz report; exit 1 when a part (or the one named with --part) is unhealthy."

    def add_arguments(self, parser):
        parser.add_argument("--part", choices=["database", "redis", "worker", "beat"])

    def handle(self, *args, part=None, **options):
        ok, report = health.check()
        if part:
            ok, report = report[part]["ok"], {part: report[part]}
        self.stdout.write(json.dumps(report, indent=2))
        if not ok:
            raise CommandError("unhealthy")
