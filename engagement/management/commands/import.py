import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from engagement import transfer


class Command(BaseCommand):
    help = ("Import posts from an NDJSON or CSV file (formats: docs/import-export.md). Bad lines are reported "
            "with their number and reason and kept in Rejected items; every good line is stored.")

    def add_arguments(self, parser):
        parser.add_argument("file", help="the file to read, or - for standard input")
        parser.add_argument("--format", choices=transfer.FORMATS,
                            help="default: csv for a file ending in .csv, ndjson otherwise")
        parser.add_argument("--platform", default="",
                            help="the lines are this platform's native objects (e.g. mastodon statuses)")
        parser.add_argument("--hashtag", action="append", default=[],
                            help="with --platform: keep objects carrying this tag; repeatable "
                                 "(default: ENGAGEMENT_HASHTAGS)")
        parser.add_argument("--report", metavar="FILE", help="write every rejected line's number and reason here")
        parser.add_argument("--verbose", action="store_true",
                            help=f"print every rejected line, not only the first {transfer.REPORTED_REJECTIONS}")
        parser.add_argument("--progress", action="store_true",
                            help="show the progress bar even when stderr is not a terminal")

    def handle(self, *args, file, format, platform, hashtag, report, verbose, progress, **options):
        stream_err = options.get("stderr") or sys.stderr
        name = "stdin" if file == "-" else Path(file).name
        try:
            source = sys.stdin.buffer if file == "-" else open(file, "rb")
        except OSError as exc:
            raise CommandError(f"cannot read {file}: {exc.strerror}") from exc
        report_file = open(report, "w", encoding="utf-8") if report else None
        total = None if file == "-" else os.fstat(source.fileno()).st_size
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"import {name}",
                   file=stream_err, disable=not (progress or stream_err.isatty()))

        def on_rejected(number: int, reason: str) -> None:
            if report_file:
                report_file.write(f"line {number}: {reason}\n")
            if verbose:
                with tqdm.external_write_mode(file=stream_err):
                    self.stdout.write(f"line {number}: {reason}")

        try:
            result = transfer.import_file(
                stream=source, name=name, format=format or ("csv" if file.lower().endswith(".csv") else "ndjson"),
                platform=platform, hashtags=hashtag or settings.ENGAGEMENT_HASHTAGS, progress=bar,
                on_rejected=on_rejected,
            )
        except transfer.TransferError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
            if source is not sys.stdin.buffer:
                source.close()
            if report_file:
                report_file.close()
        self.stdout.write(
            f"imported {result.imported:,} of {result.lines:,} lines from {name}: {result.new:,} new, "
            f"{result.updated:,} updated, {result.unchanged:,} unchanged; {result.rejected:,} rejected; "
            f"{result.skipped:,} skipped (not tagged)"
        )
        if result.rejected and not verbose:
            shown = len(result.first_rejections)
            where = f"all in {report}" if report else "--verbose or --report FILE lists all"
            self.stdout.write(f"rejected lines (first {shown} of {result.rejected:,}; {where}):"
                              if shown < result.rejected else "rejected lines:")
            for number, reason in result.first_rejections:
                self.stdout.write(f"  line {number}: {reason}")
