import os
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_date, parse_datetime
from tqdm import tqdm

from engagement import collect
from engagement.models import Source
from engagement.sources.base import SourceError


def parse_since(value: str) -> datetime:
    parsed = parse_datetime(value) or (
        datetime.combine(parse_date(value), datetime.min.time()) if parse_date(value) else None)
    if parsed is None:
        raise CommandError(f"--since takes an ISO date or time (2026-11-01 or 2026-11-01T12:00:00Z), not {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Command(BaseCommand):
    help = "Run sources in this process (no worker needed) and print what each one did."

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--once", action="store_true", help="run each enabled source (or --source) once")
        mode.add_argument("--backfill", action="store_true",
                          help="walk back to --since (bounded per call; run again to go further)")
        mode.add_argument("--recheck", action="store_true",
                          help="look at recent posts again for edits and deletions")
        parser.add_argument("--since", help="with --backfill: an ISO date or time")
        parser.add_argument("--source", type=int, help="only this source id")

    def handle(self, *args, once, backfill, recheck, since, source=None, **options):
        sources = Source.objects.filter(pk=source) if source else Source.objects.filter(enabled=True)
        if source and not sources.exists():
            raise CommandError(f"no source with id {source}")
        if backfill and not since:
            raise CommandError("--backfill needs --since DATE")
        owner = f"collect-command-{os.getpid()}"
        for s in sources:
            label = f"source {s.pk} ({s.name})"
            if backfill:
                self._backfill(s, label, parse_since(since), owner)
            elif recheck:
                report = collect.recheck_source(s.pk, owner=owner)
                if report is None:
                    self.stdout.write(f"{label}: skipped (disabled, rate-limited, or a worker is polling it now)")
                else:
                    self.stdout.write(f"{label}: checked={report.checked} edited={report.edited} "
                                      f"deleted={report.deleted} errors={report.errors}"
                                      + (f" ({report.message})" if report.message else ""))
            else:
                self._once(s, label, owner)

    def _once(self, s: Source, label: str, owner: str) -> None:
        report = collect.run_source(s.pk, owner=owner)
        if report is None:
            self.stdout.write(f"{label}: skipped (disabled, rate-limited, or a worker is polling it now)")
            return
        run = report.run
        self.stdout.write(
            f"{label}: {run.outcome} fetched={run.fetched} new={run.new} "
            f"updated={run.updated} errors={run.errors}" + (f" ({run.message})" if run.message else "")
        )

    def _backfill(self, s: Source, label: str, since: datetime, owner: str) -> None:
        with tqdm(desc=label, unit=" pages", file=self.stderr._out, disable=None) as bar:
            def progress(run):
                bar.update(1)
                bar.set_postfix(fetched=run.fetched, new=run.new)

            try:
                run = collect.backfill_source(s.pk, since=since, owner=owner, on_page=progress)
            except SourceError as exc:
                self.stdout.write(f"{label}: {exc}")
                return
        if run is None:
            self.stdout.write(f"{label}: skipped (disabled, rate-limited, or a worker is polling it now)")
            return
        self.stdout.write(f"{label}: backfill {run.outcome} pages={run.pages} fetched={run.fetched} new={run.new} "
                          f"updated={run.updated} errors={run.errors}" + (f" ({run.message})" if run.message else ""))
