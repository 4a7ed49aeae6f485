"""The editors' figures at 2,000,000 posts: the hourly rollups against a live GROUP BY over the posts.

    .venv/bin/python bench/summaries.py                      # 2,000,000 posts over 90 days
    .venv/bin/python bench/summaries.py --posts 200000 --rollup-runs 20 --live-runs 3

In a database of its own (bench/common.py). The posts are written with a few INSERT ... SELECT statements
(#ukrainepeacetalks on all, #ceasefire as well on 1 in 13; five platforms; approved, pending, rejected and
flagged; English posts scored positive, negative or neutral with a compound, Ukrainian and Russian ones
unscored; spread over the last 90 days; 5,000 authors), then it times:

- rollups.rebuild() over the whole table, then ANALYZE;
- summaries.series() for the last 30 days from the rollups and live (live=True, a GROUP BY over the posts),
  by hour (720 points, `resolution="hour"`) and by day (what the page shows for 30 days), from the series
  rollups (no platform picked) and, with two platforms picked, from the rollups; checking that both paths
  return the same numbers (goal: rollups >= 50x faster, p95 <= 10 ms);
- summaries.build() for the default 7-day period: every figure of the summary page.

It prints the figures next to their goals and never fails on them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from datetime import timedelta

from common import bench_database

HASHTAG, SECOND_TAG = "ukrainepeacetalks", "ceasefire"
PLATFORMS = ["mastodon", "bluesky", "reddit", "youtube", "telegram"]
# i % 7 -> status: 4 approved, 1 pending, 1 rejected, 1 flagged.
STATUSES = ["approved"] * 4 + ["pending", "rejected", "flagged"]
LANGUAGES = ["en", "uk", "ru"]
# English posts: i % 11 -> label (5 positive, 3 negative, 3 neutral).
LABELS = ["positive"] * 5 + ["negative"] * 3 + ["neutral"] * 3
AUTHORS = 5_000
DAYS = 90
FILL_CHUNK = 250_000  # rows per INSERT ... SELECT, so progress shows
TEXTS = {
    "en": ["Hoping the talks in Geneva lead somewhere, reading every update tonight",
           "The ceasefire proposal looks thin and nobody believes the guarantees",
           "Both delegations arrived early; the agenda lists prisoner exchanges and grain"],
    "uk": ["Переговори в Стамбулі: чекаємо новин, думки з усіма, хто чекає вдома",
           "Мир можливий лише з гарантіями безпеки, інакше це нова війна"],
    "ru": ["Переговоры снова отложены, никто не знает, что будет дальше",
           "Делегации прибыли рано, повестка длинная"],
}


def fill(posts: int) -> None:
    """Posts i = 1..posts. Platform, status, language and label come from i modulo coprime numbers, so every
    combination occurs; created_at is a multiplicative hash of i over the last DAYS days. Compounds are
    multiples of 1/1024, so every sum of them is exact and the two paths can be compared to the last bit."""
    from django.db import connection

    seconds = DAYS * 86_400
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO engagement_author (platform, external_id, handle, display_name, url, first_seen_at, standing) "
            "SELECT (%s::text[])[i %% 5 + 1], 'bench-author-' || i, '@reader' || i, 'Reader ' || i, '', now(), "
            "'normal' FROM generate_series(0, %s) AS i", [PLATFORMS, AUTHORS - 1])
        cursor.execute("SELECT min(id) FROM engagement_author")
        first_author = cursor.fetchone()[0]
        for first in range(1, posts + 1, FILL_CHUNK):
            last = min(first + FILL_CHUNK - 1, posts)
            started = time.perf_counter()
            cursor.execute(
                f"""
                INSERT INTO engagement_post (platform, external_id, uri, url, kind, author_id, created_at,
                    collected_at, updated_at, language, html, text, hashtags, reply_to_external_id, reply_count,
                    repost_count, like_count, raw, status, deletion_reason, fingerprint, reasons, reason_codes,
                    decided_by, sentiment, sentiment_auto, sentiment_score, sentiment_backend, sentiment_reason,
                    scored_at)
                SELECT platform, 'bench-' || i, '', '', 'post', %(first_author)s + i %% {AUTHORS},
                    now() - make_interval(secs => (i * 2654435761) %% {seconds}), now(), now(), language, '',
                    CASE language WHEN 'en' THEN (%(en)s::text[])[i / 3 %% 3 + 1]
                                  WHEN 'uk' THEN (%(uk)s::text[])[i %% 2 + 1]
                                  ELSE (%(ru)s::text[])[i %% 2 + 1] END,
                    CASE WHEN i %% 13 = 0 THEN ARRAY[%(tag)s, %(second)s] ELSE ARRAY[%(tag)s] END::varchar[], '',
                    i %% 3, i %% 5, (i * 31) %% 97, '{{}}'::jsonb, status, '', '', '[]'::jsonb, '{{}}',
                    'system', label, label,
                    CASE label WHEN 'positive' THEN (52 + (i * 48271) %% 973) / 1024.0
                               WHEN 'negative' THEN -(52 + (i * 48271) %% 973) / 1024.0
                               WHEN 'neutral' THEN ((i * 48271) %% 101 - 50) / 1024.0 END,
                    CASE WHEN language = 'en' THEN 'vader-windows (bench)' ELSE '' END,
                    CASE WHEN language = 'en' THEN '' ELSE 'unsupported language (' || language || ')' END,
                    now()
                FROM (SELECT i, (%(platforms)s::text[])[i %% 5 + 1] AS platform,
                             (%(statuses)s::text[])[i %% 7 + 1] AS status,
                             (%(languages)s::text[])[i %% 3 + 1] AS language,
                             CASE WHEN i %% 3 = 0 THEN (%(labels)s::text[])[i %% 11 + 1] ELSE 'unscored' END AS label
                      FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i) AS v
                """,
                {"first_author": first_author, "en": TEXTS["en"], "uk": TEXTS["uk"], "ru": TEXTS["ru"],
                 "tag": HASHTAG, "second": SECOND_TAG, "platforms": PLATFORMS, "statuses": STATUSES,
                 "languages": LANGUAGES, "labels": LABELS, "first": first, "last": last})
            print(f"  filled {last:>9,} of {posts:,} posts ({time.perf_counter() - started:.1f} s for this chunk)",
                  flush=True)


def timings(action, runs: int) -> list[float]:
    """Milliseconds of each of `runs` calls, after one untimed call (warm caches, as a busy page has)."""
    action()
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        values.append((time.perf_counter() - started) * 1000)
    return values


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2_000_000)
    parser.add_argument("--rollup-runs", type=int, default=50)
    parser.add_argument("--live-runs", type=int, default=5)
    parser.add_argument("--build-runs", type=int, default=20)
    args = parser.parse_args()

    with bench_database() as name:
        from django.db import connection
        from django.utils import timezone

        from engagement import rollups, summaries
        from engagement.models import Post, Rollup

        print(f"database {name}: filling {args.posts:,} posts over the last {DAYS} days", flush=True)
        started = time.perf_counter()
        fill(args.posts)
        print(f"filled in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE engagement_post")  # as autovacuum would have done by now
        print(f"VACUUM ANALYZE of the posts: {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        hours = rollups.rebuild()
        seconds = time.perf_counter() - started
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Rollup._meta.db_table}")
            cursor.execute("ANALYZE engagement_seriesrollup")
        print(f"rollups.rebuild(): {hours:,} hours, {Rollup.objects.count():,} rollup rows in {seconds:.1f} s\n")

        end = (timezone.now() + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        month = dict(hashtag=HASHTAG, start=end - timedelta(days=30), end=end, tz="UTC")
        daily, hourly = summaries.Filters(**month), summaries.Filters(**month, resolution="hour")
        picked = summaries.Filters(**month, resolution="hour", platforms=("bluesky", "mastodon"))
        in_period = Post.objects.filter(created_at__gte=daily.start, created_at__lt=daily.end)
        print(f"last 30 days: {in_period.count():,} posts, {in_period.filter(status='approved').count():,} "
              f"approved (the default scope); the page shows 30 days {daily.step} by {daily.step} "
              f"(hourly up to {summaries.HOURLY_UP_TO.days} days), `?step=hour` asks for hours\n")
        print(f"{'series, 30 days':<22}{'path':<9}{'runs':>5}{'median ms':>11}{'p95 ms':>9}   goal")
        for label, filters in (("by hour (720 points)", hourly), ("by day (30 points)", daily),
                               ("by hour, 2 platforms", picked)):
            fast = timings(lambda: summaries.series(filters), args.rollup_runs)
            slow = timings(lambda: summaries.series(filters, live=True), args.live_runs)
            print(f"{label:<22}{'rollups':<9}{len(fast):>5}{statistics.median(fast):>11.1f}{p95(fast):>9.1f}"
                  "   p95 <= 10 ms")
            print(f"{'':<22}{'live':<9}{len(slow):>5}{statistics.median(slow):>11.1f}{p95(slow):>9.1f}")
            same = summaries.series(filters) == summaries.series(filters, live=True)
            print(f"{'':<22}rollups {statistics.median(slow) / statistics.median(fast):,.0f}x faster (medians)"
                  f"   >= 50x; same numbers on both paths: {'yes' if same else 'NO'}", flush=True)

        week = summaries.Filters(hashtag=HASHTAG, start=end - summaries.PERIODS[summaries.DEFAULT_PERIOD],
                                 end=end, tz="UTC", period=summaries.DEFAULT_PERIOD)
        whole = timings(lambda: summaries.build(week), args.build_runs)
        summary = summaries.build(week)
        print(f"\nsummaries.build(), default {summaries.DEFAULT_PERIOD} by {week.step} (the whole page's figures): "
              f"{len(whole)} runs, median {statistics.median(whole):.0f} ms, p95 {p95(whole):.0f} ms; "
              f"{summary.totals['posts']:,} posts, {len(summary.buckets)} buckets")
        parts = [("series", lambda: summaries.series(week)), ("co_hashtags", lambda: summaries.co_hashtags(week)),
                 ("top_terms", lambda: summaries.top_terms(week)), ("top_authors", lambda: summaries.top_authors(week)),
                 ("top_posts", lambda: summaries.top_posts(week)), ("gaps", lambda: summaries.gaps(week))]
        runs = max(1, args.build_runs // 4)
        print(f"  of which, median ms of {runs} runs each: " + ", ".join(
            f"{part} {statistics.median(timings(action, runs)):.0f}" for part, action in parts))


if __name__ == "__main__":
    main()
