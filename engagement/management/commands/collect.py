import os

from django.core.management.base import BaseCommand, CommandError

from engagement import collect
from engagement.models import Source


class Command(BaseCommand):
    help = "Run sources in this process (no worker needed) and print what each one collected."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", required=True,
                            help="run each enabled source (or --source) once")
        parser.add_argument("--source", type=int, help="only this source id")

    def handle(self, *args, source=None, **options):
        sources = Source.objects.filter(pk=source) if source else Source.objects.filter(enabled=True)
        if source and not sources.exists():
            raise CommandError(f"no source with id {source}")
        owner = f"collect-command-{os.getpid()}"
        for s in sources:
            report = collect.run_source(s.pk, owner=owner)
            if report is None:
                self.stdout.write(f"source {s.pk} ({s.name}): skipped (disabled, or a worker is polling it now)")
                continue
            run = report.run
            self.stdout.write(
                f"source {s.pk} ({s.name}): {run.outcome} fetched={run.fetched} new={run.new} "
                f"updated={run.updated} errors={run.errors}" + (f" ({run.message})" if run.message else "")
            )
