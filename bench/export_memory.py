"""Export memory as the table grows, and the speed of a 100,000-line import with 100 broken lines.

    .venv/bin/python bench/export_memory.py                       # 10k, 50k, 100k posts; 100k-line import
    .venv/bin/python bench/export_memory.py --sizes 2000,5000 --import-lines 10000 --broken 10

It works in a database of its own, `engagement_bench_<pid>`, created on the server engagement uses (the
embedded PostgreSQL in .data/ when DATABASE_URL is unset), migrated, and dropped at the end: no other
database is read or written. For each size it grows the posts table to that many rows (collect.upsert_posts
in batches, as collection stores them) and exports every post to /dev/null as NDJSON and as CSV, measuring:

- peak MB: the highest Python allocation (tracemalloc) during the export above what was allocated before;
- RSS MB: how far the process's resident set rose during the export (the kernel's high-water mark,
  reset before each export through /proc/self/clear_refs). Freed memory stays in the process, so after the
  first "load all rows" an export reuses it and its rise reads 0: the peak MB column is the one to compare;
- s and rows/s of the same export run without tracemalloc.

A "load all rows" line shows what holding the table in memory (list(queryset)) would take, for contrast.
Figures depend on the machine and on what else runs on it; this script prints them and never fails on them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

from common import bench_database

# Items per upsert when filling the table: the same batch as the import uses.
FILL_BATCH = 1_000
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def realistic_item(n: int, *, prefix: str):
    """A post of the size Mastodon gives: ~300 characters of HTML and a ~1.5 KB raw status."""
    from engagement.sources.base import NormalisedAuthor, NormalisedItem

    uri = f"https://{prefix}.example/users/reader{n % 500}/statuses/{113_000_000 + n}"
    html = (f"<p>Post {n}: hoping the talks in Geneva lead somewhere, reading every update tonight. "
            f"Thoughts with everyone waiting for news. <a href=\"https://{prefix}.example/tags/UkrainePeaceTalks\">"
            "#<span>UkrainePeaceTalks</span></a></p>")
    created = T0 + timedelta(seconds=n * 7)
    raw = {"id": str(113_000_000 + n), "created_at": created.isoformat(), "uri": uri, "url": uri, "content": html,
           "language": "en", "replies_count": n % 3, "reblogs_count": n % 5, "favourites_count": n % 11,
           "account": {"id": str(n % 500), "username": f"reader{n % 500}", "acct": f"reader{n % 500}",
                       "display_name": f"Reader {n % 500}", "url": f"https://{prefix}.example/@reader{n % 500}",
                       "note": "<p>Reader of the news, writer of posts.</p>" * 4},
           "tags": [{"name": "ukrainepeacetalks", "url": f"https://{prefix}.example/tags/ukrainepeacetalks"}],
           "media_attachments": [], "mentions": [], "emojis": [], "card": None, "poll": None}
    return NormalisedItem(
        platform="mastodon", external_id=uri, uri=uri, url=uri, created_at=created, html=html,
        text=f"Post {n}: hoping the talks in Geneva lead somewhere, reading every update tonight. "
             "Thoughts with everyone waiting for news. #UkrainePeaceTalks",
        hashtags=("ukrainepeacetalks",), language="en", raw=raw, reply_count=n % 3, repost_count=n % 5,
        like_count=n % 11,
        author=NormalisedAuthor(external_id=f"https://{prefix}.example/users/reader{n % 500}",
                                handle=f"@reader{n % 500}@{prefix}.example", display_name=f"Reader {n % 500}"),
    )


def fill(start: int, stop: int) -> None:
    from engagement.collect import upsert_posts

    for first in range(start, stop, FILL_BATCH):
        upsert_posts([realistic_item(n, prefix="bench") for n in range(first, min(first + FILL_BATCH, stop))],
                     source_id=None)


def rss_mb() -> tuple[float, float]:
    """(current RSS, high-water RSS) of this process in MB, from /proc/self/status."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the VmHWM high-water mark
        return True
    except OSError:
        return False


def measure(action) -> tuple[float, float, float]:
    """(seconds without tracemalloc, tracemalloc peak MB, RSS rise MB) of action()."""
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    rss_before, _ = rss_mb()
    reset_rss_peak()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    action()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _, high_water = rss_mb()
    return seconds, (peak - base) / 2**20, max(0.0, high_water - rss_before)


def export_to_devnull(fmt: str) -> int:
    from engagement import transfer

    with open(os.devnull, "w", encoding="utf-8", newline="") as out:
        return transfer.export_posts(out=out, format=fmt)


def load_everything() -> int:
    from engagement.models import Post

    return len(list(Post.objects.alive().select_related("author", "article")))


def import_bench(lines: int, broken: int, progress: bool) -> None:
    from tqdm import tqdm

    from engagement import transfer

    every = max(1, lines // broken) if broken else 0
    bad_numbers = [every * k for k in range(1, broken + 1)] if broken else []
    defects = [
        lambda text: text[: len(text) // 2],  # cut short: not valid JSON
        lambda text: text.replace('"created_at": "', '"created_at": "on the '),  # a bad date
        lambda text: text.replace('"external_id"', '"externalid"'),  # a missing field
        lambda text: text.replace('"platform": "mastodon"', '"platform": "myspace"'),  # an unknown platform
    ]
    bad = set(bad_numbers)
    folder = Path(tempfile.mkdtemp(prefix="engagement-bench-"))
    path = folder / "import.ndjson"
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        for number in range(1, lines + 1):
            item = realistic_item(number, prefix="imported")
            text = json.dumps({
                "platform": item.platform, "external_id": item.external_id, "created_at": item.created_at.isoformat(),
                "uri": item.uri, "url": item.url, "language": item.language, "html": item.raw["content"],
                "hashtags": list(item.hashtags), "author": {"external_id": item.author.external_id,
                                                            "handle": item.author.handle},
                "reply_count": item.reply_count, "like_count": item.like_count, "raw": item.raw,
            })
            out.write((rng.choice(defects)(text) if number in bad else text) + "\n")
    size = path.stat().st_size
    reported: list[int] = []
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc="import", file=sys.stderr,
               disable=not progress)
    started = time.perf_counter()
    with path.open("rb") as stream:
        report = transfer.import_file(stream=stream, name=path.name, progress=bar,
                                      on_rejected=lambda number, reason: reported.append(number))
    seconds = time.perf_counter() - started
    bar.close()
    path.unlink()
    folder.rmdir()
    print(f"\nimport of {lines:,} NDJSON lines ({size / 2**20:.1f} MB) with {len(bad_numbers)} broken ones:")
    print(f"  imported {report.imported:,} ({report.new:,} new), rejected {report.rejected:,}; "
          f"every broken line named by number: {'yes' if reported == bad_numbers else 'NO'}")
    print(f"  {seconds:.1f} s, {lines / seconds:,.0f} lines/s, in batches of {transfer.IMPORT_BATCH:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000", help="table sizes, comma-separated")
    parser.add_argument("--import-lines", type=int, default=100_000)
    parser.add_argument("--broken", type=int, default=100, help="broken lines in the import file")
    parser.add_argument("--progress", action="store_true", help="progress bar on stderr even when not a terminal")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))

    with bench_database() as bench_name:
        from django.db import connection

        from engagement import transfer

        print(f"database {bench_name} (PostgreSQL {connection.pg_version // 10000}); "
              f"export pages of {transfer.EXPORT_PAGE_SIZE:,} rows")
        print(f"\n{'rows':>8}  {'what':<26}{'s':>7}{'rows/s':>10}{'peak MB':>10}{'RSS MB':>9}")
        stored = 0
        for size in sizes:
            fill(stored, size)
            stored = size
            for label, action in (("export ndjson", lambda: export_to_devnull("ndjson")),
                                  ("export csv", lambda: export_to_devnull("csv")),
                                  ("load all rows (contrast)", load_everything)):
                seconds, peak, rss = measure(action)
                print(f"{size:>8,}  {label:<26}{seconds:>7.1f}{size / seconds:>10,.0f}{peak:>10.1f}{rss:>9.1f}",
                      flush=True)
        import_bench(args.import_lines, args.broken, args.progress or sys.stderr.isatty())


if __name__ == "__main__":
    main()
