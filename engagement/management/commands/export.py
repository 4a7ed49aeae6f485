import os
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from engagement import transfer
from engagement.models import Platform, Post
from engagement.sources.base import parse_timestamp


def _timestamp(name: str, value: str | None):
    if not value:
        return None
    try:
        return parse_timestamp(value, field_name=name)
    except (ValueError, OverflowError) as exc:
        raise CommandError(f"{name}: {exc}") from None


class Command(BaseCommand):
    help = ("Export alive posts (never those deleted upstream), oldest first, as NDJSON (the import format) or CSV, "
            "to stdout or --output FILE; streamed, so memory stays flat (formats: docs/import-export.md).")

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=transfer.FORMATS, default=transfer.NDJSON)
        parser.add_argument("--output", metavar="FILE", help="write here (replaced only once complete); default stdout")
        parser.add_argument("--hashtag", default="", help="posts carrying this tag, with or without #, any case")
        parser.add_argument("--since", help="published at or after this ISO 8601 time or date")
        parser.add_argument("--until", help="published before this ISO 8601 time or date")
        parser.add_argument("--status", choices=Post.Status.values)
        parser.add_argument("--platform", choices=Platform.values)
        parser.add_argument("--spreadsheet-safe", action="store_true",
                            help="CSV for spreadsheets: a ' before cells starting with = + - @ (not for re-import)")
        parser.add_argument("--progress", action="store_true",
                            help="show the progress bar even when stderr is not a terminal")

    def handle(self, *args, format, output, hashtag, since, until, status, platform, spreadsheet_safe, progress,
               **options):
        stream_err = options.get("stderr") or sys.stderr
        filters = transfer.ExportFilters(hashtag=hashtag, since=_timestamp("--since", since),
                                         until=_timestamp("--until", until), status=status or "",
                                         platform=platform or "")
        show = progress or stream_err.isatty()
        bar = tqdm(unit=" posts", desc="export", file=stream_err, disable=not show)
        partial = f"{output}.partial" if output else None
        try:
            out = open(partial, "w", encoding="utf-8", newline="") if partial else self.stdout
        except OSError as exc:
            raise CommandError(f"cannot write {partial}: {exc.strerror}") from exc
        try:
            written = transfer.export_posts(out=out, format=format, filters=filters, progress=bar if show else None,
                                            spreadsheet_safe=spreadsheet_safe)
        except BaseException:
            if partial:
                out.close()
                os.remove(partial)
            raise
        finally:
            bar.close()
        if partial:
            out.close()
            os.replace(partial, output)
            self.stdout.write(f"exported {written:,} posts as {format} to {output}")
        else:
            # stdout carries the data: the summary goes with the progress, to stderr.
            stream_err.write(f"exported {written:,} posts as {format}\n")
