"""The hourly rollups (and the series rollups derived from them) equal a live GROUP BY over the posts after any sequence of ingest, edits, scoring,
corrections, moderation and deletions (a property test with hypothesis), and the rebuild command."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.db import connection
from hypothesis import HealthCheck, given, settings, strategies as st

from engagement import collect, moderation, sentiment, summaries
from engagement.models import Actor, Author, ModerationEvent, Post, ReasonCode, Rollup, SeriesRollup
from engagement.sources.base import NormalisedAuthor, NormalisedItem

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
TEXTS = ["A wonderful, hopeful day", "A terrible betrayal", "Delegations meet at noon",
         "Переговори знову відклали, ніхто не знає, що буде далі", ""]
TAGS = ["ukrainepeacetalks", "peace"]


def live() -> set[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc('hour', created_at, 'UTC'), tag, platform, status, sentiment, language, count(*), "
            "round(COALESCE(sum(sentiment_score), 0)::numeric, 6), count(sentiment_score), "
            "sum(like_count + repost_count + reply_count) "
            "FROM engagement_post CROSS JOIN LATERAL unnest(hashtags) tag WHERE deleted_at IS NULL "
            "GROUP BY 1, 2, 3, 4, 5, 6")
        return set(cursor.fetchall())


def stored() -> set[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT bucket, hashtag, platform, status, sentiment, language, posts, "
                       "round(score_sum::numeric, 6), scored, engagement FROM engagement_rollup")
        return set(cursor.fetchall())


def live_series() -> set[tuple]:
    """What the series rollups should hold: posts per hour, hashtag and approved-or-not, per platform and label."""
    from engagement.rollups import SERIES_LABELS, SERIES_PLATFORMS

    with connection.cursor() as cursor:
        cursor.execute("SELECT date_trunc('hour', created_at, 'UTC'), tag, status = 'approved', platform, sentiment "
                       "FROM engagement_post CROSS JOIN LATERAL unnest(hashtags) tag WHERE deleted_at IS NULL")
        rows = cursor.fetchall()
    groups: dict[tuple, tuple[list, list]] = {}
    for hour, tag, approved, platform, label in rows:
        platforms, labels = groups.setdefault((hour, tag, approved), ([0] * len(SERIES_PLATFORMS),
                                                                      [0] * len(SERIES_LABELS)))
        platforms[SERIES_PLATFORMS.index(platform)] += 1
        labels[SERIES_LABELS.index(label)] += 1
    return {(*key, sum(p), tuple(p), tuple(l)) for key, (p, l) in groups.items()}


def stored_series() -> set[tuple]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT bucket, hashtag, approved, posts, platform_posts, label_posts FROM engagement_seriesrollup")
        return {(*row[:4], tuple(row[4]), tuple(row[5])) for row in cursor.fetchall()}


def make(n: int, text: int, platform: str, minute: int, tags: list[str], likes: int) -> NormalisedItem:
    return NormalisedItem(platform=platform, external_id=f"post-{platform}-{n}", created_at=T0 + timedelta(minutes=minute),
                          raw={"n": n}, text=TEXTS[text], hashtags=tuple(tags), like_count=likes,
                          author=NormalisedAuthor(external_id=f"author-{n % 3}", handle=f"a{n % 3}"))


ingest = st.builds(lambda items: ("ingest", items), st.lists(st.builds(
    make, st.integers(0, 12), st.integers(0, len(TEXTS) - 1), st.sampled_from(["mastodon", "bluesky"]),
    st.integers(0, 240), st.lists(st.sampled_from(TAGS), min_size=0, max_size=2, unique=True), st.integers(0, 5)),
    min_size=1, max_size=6))
operation = st.one_of(
    ingest,
    st.just(("score", None)),
    st.tuples(st.just("correct"), st.integers(0, 100), st.sampled_from(["positive", "negative", "neutral"])),
    st.tuples(st.just("moderate"), st.lists(st.integers(0, 100), max_size=4),
              st.sampled_from(["approved", "rejected", "flagged", "pending"])),
    st.tuples(st.just("delete"), st.integers(0, 100)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=8))
def test_rollups_equal_a_live_group_by_after_any_sequence_of_changes(admin_user, operations):
    ModerationEvent.objects.all().delete()
    Post.objects.all().delete()
    Author.objects.all().delete()
    Rollup.objects.all().delete()
    SeriesRollup.objects.all().delete()
    for op in operations:
        ids = list(Post.objects.order_by("id").values_list("id", flat=True))
        if op[0] == "ingest":
            collect.upsert_posts(op[1], source_id=None)
        elif op[0] == "score":
            sentiment.score_pending()
        elif op[0] == "correct" and ids:
            sentiment.correct([ids[op[1] % len(ids)]], op[2], user=admin_user)
        elif op[0] == "moderate" and ids:
            moderation.moderate([ids[k % len(ids)] for k in op[1]], op[2], actor=Actor.SYSTEM,
                                reason_code=ReasonCode.OTHER)
        elif op[0] == "delete" and ids:
            collect.mark_deleted(ids[op[1] % len(ids)], "deleted upstream (test)")
        assert stored() == live(), f"after {op[0]}"
        assert stored_series() == live_series(), f"series after {op[0]}"
    # The editors' time series read from the rollups equal the same series counted from the posts.
    for resolution, approved_only, platforms in (("hour", True, ()), ("hour", False, ()), ("day", False, ()),
                                                 ("hour", False, ("bluesky",))):
        filters = summaries.Filters(hashtag="ukrainepeacetalks", start=T0 - timedelta(hours=3),
                                    end=T0 + timedelta(hours=8), tz="Asia/Kolkata", resolution=resolution,
                                    approved_only=approved_only, platforms=platforms)
        assert summaries.series(filters) == summaries.series(filters, live=True)


def test_rebuild_recounts_everything(capsys):
    collect.upsert_posts([make(n, n % 4, "mastodon", n * 50, ["ukrainepeacetalks"], n) for n in range(8)],
                         source_id=None)
    sentiment.score_pending()
    expected = live()
    Rollup.objects.all().delete()
    Rollup.objects.create(bucket=T0 - timedelta(days=30), hashtag="stale", platform="x", status="x",
                          sentiment="x", language="x", posts=1)
    call_command("rebuild_rollups")
    assert stored() == expected and stored_series() == live_series()
    assert "hours=" in capsys.readouterr().out
