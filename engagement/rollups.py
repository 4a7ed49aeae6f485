"""Hourly rollups: posts per UTC hour x hashtag x platform x moderation state x sentiment x language.

Every change to what a figure counts (a post stored or edited, scored, corrected, moderated, deleted
upstream) calls `refresh_hours()` for the hours of the posts it touched, in the same transaction: those
hours are deleted from the rollup table and counted again from the posts, under a per-hour advisory lock so
two writers never interleave. The table therefore always equals a live GROUP BY over the alive posts
(tests/test_rollups.py checks it after random sequences of changes), and `rebuild()` recounts it all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone

from django.db import connection, transaction

from engagement.models import Platform, Post, Rollup, SeriesRollup, Sentiment

# An advisory-lock namespace of this module (the second key is the hour's number since the epoch).
LOCK_NAMESPACE = 7_261_001
# Hours recounted per statement by rebuild().
REBUILD_HOURS = 24 * 7

POSTS, ROLLUPS, SERIES = Post._meta.db_table, Rollup._meta.db_table, SeriesRollup._meta.db_table
# The orders of SeriesRollup's arrays (a platform added later needs `manage.py rebuild_rollups`).
SERIES_PLATFORMS = tuple(Platform.values)
SERIES_LABELS = (*Sentiment.values, "")  # "": stored, not scored yet
_COUNT = f"""
    INSERT INTO {ROLLUPS} (bucket, hashtag, platform, status, sentiment, language, posts, score_sum, scored,
                           engagement)
    SELECT date_trunc('hour', p.created_at, 'UTC'), tag, p.platform, p.status, p.sentiment, p.language, count(*),
           COALESCE(sum(p.sentiment_score), 0), count(p.sentiment_score),
           sum(p.like_count + p.repost_count + p.reply_count)
    FROM {POSTS} p CROSS JOIN LATERAL unnest(p.hashtags) AS tag
    WHERE p.deleted_at IS NULL AND p.created_at >= %s AND p.created_at < %s
      AND date_trunc('hour', p.created_at, 'UTC') = ANY(%s)
    GROUP BY 1, 2, 3, 4, 5, 6
"""
_SERIES = f"""
    INSERT INTO {SERIES} (bucket, hashtag, approved, posts, platform_posts, label_posts, score_sum, scored)
    SELECT bucket, hashtag, status = 'approved', sum(posts),
           ARRAY[{", ".join(f"COALESCE(sum(posts) FILTER (WHERE platform = '{p}'), 0)" for p in SERIES_PLATFORMS)}],
           ARRAY[{", ".join(f"COALESCE(sum(posts) FILTER (WHERE sentiment = '{s}'), 0)" for s in SERIES_LABELS)}],
           sum(score_sum), sum(scored)
    FROM {ROLLUPS} WHERE bucket = ANY(%s) GROUP BY 1, 2, 3
"""


def hour_of(moment: datetime) -> datetime:
    """The UTC hour of an aware moment."""
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def refresh_hours(hours: Iterable[datetime]) -> None:
    """Recount these UTC hours (aware datetimes; any minute within the hour will do)."""
    buckets = sorted({hour_of(h) for h in hours})
    if not buckets:
        return
    with transaction.atomic(), connection.cursor() as cursor:
        # Locks in a fixed order, so two writers touching overlapping hours never deadlock.
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, (extract(epoch FROM h) / 3600)::int) "
            "FROM unnest(%s::timestamptz[]) AS h ORDER BY h",
            [LOCK_NAMESPACE, buckets],
        )
        cursor.execute(f"DELETE FROM {ROLLUPS} WHERE bucket = ANY(%s)", [buckets])
        cursor.execute(_COUNT, [buckets[0], buckets[-1] + timedelta(hours=1), buckets])
        cursor.execute(f"DELETE FROM {SERIES} WHERE bucket = ANY(%s)", [buckets])
        cursor.execute(_SERIES, [buckets])


def refresh_for_posts(post_ids: Sequence[int]) -> None:
    """Recount the hours these posts were published in."""
    if not post_ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT date_trunc('hour', created_at, 'UTC') FROM {POSTS} WHERE id = ANY(%s)",
                       [list(post_ids)])
        hours = [hour for (hour,) in cursor.fetchall()]
    refresh_hours(hours)


def rebuild(on_progress=None) -> int:
    """Recount every hour that has posts or rollups, a week at a time; returns the hours recounted."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT min(created_at), max(created_at) FROM {POSTS}")
        first, last = cursor.fetchone()
        cursor.execute(f"SELECT min(bucket), max(bucket) FROM {ROLLUPS}")
        first_rollup, last_rollup = cursor.fetchone()
        cursor.execute(f"SELECT min(bucket), max(bucket) FROM {SERIES}")
        first_series, last_series = cursor.fetchone()
    starts = [moment for moment in (first, first_rollup, first_series) if moment]
    ends = [moment for moment in (last, last_rollup, last_series) if moment]
    if not starts:
        return 0
    hour, end, done = hour_of(min(starts)), hour_of(max(ends)), 0
    while hour <= end:
        batch = [hour + timedelta(hours=n) for n in range(REBUILD_HOURS) if hour + timedelta(hours=n) <= end]
        refresh_hours(batch)
        done += len(batch)
        hour = batch[-1] + timedelta(hours=1)
        if on_progress:
            on_progress(done)
    return done
