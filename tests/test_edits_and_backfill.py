"""Mastodon beyond polling: the instance check, backfill to a date, re-checks for edits and deletions,
and re-parsing stored payloads. Recorded file read here: mastodon/entity_instance_v2.json."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import pytest
from django.core.management import call_command
from django.utils import timezone as dj_timezone

from engagement import collect
from engagement.models import CollectionRun, Post, PostRevision, Source
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import Reply

pytestmark = pytest.mark.django_db
TAG = "UkrainePeaceTalks"


def add_source(upstream) -> Source:
    return collect.register_source(platform="mastodon", url=upstream.url, hashtags=[TAG])


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


def test_a_public_tag_timeline_in_the_recorded_instance_settings_is_collected(upstream, recorded):
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    timeline.instance = recorded("mastodon/entity_instance_v2.json")[0]["body"]
    source = add_source(upstream)
    assert run(source).new == 1
    source.refresh_from_db()
    assert source.health_detail["hashtag_feeds"] == {"local": "public", "remote": "public"}
    # The check is kept for a day, not repeated on every poll.
    run(source)
    assert len(upstream.requests_to("/api/v2/instance")) == 1


@pytest.mark.parametrize("feeds, health, words", [
    ({"local": "authenticated", "remote": "authenticated"}, Source.Health.NEEDS_CREDENTIALS, "logged-in users only"),
    ({"local": "disabled", "remote": "disabled"}, Source.Health.FAILING, "disabled tag timelines"),
])
def test_a_tag_timeline_that_needs_login_is_reported_as_such(upstream, recorded, feeds, health, words):
    instance = copy.deepcopy(recorded("mastodon/entity_instance_v2.json")[0]["body"])
    instance["configuration"]["timelines_access"]["hashtag_feeds"] = feeds
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    timeline.instance = instance
    source = add_source(upstream)
    result = run(source)
    assert result.outcome == CollectionRun.Outcome.FAILED and words in result.message
    source.refresh_from_db()
    assert source.health == health
    assert upstream.requests_to("/api/v1/timelines/") == []


def test_an_edit_seen_when_polling_keeps_the_previous_text_as_a_revision(upstream):
    timeline = MastodonTimeline(upstream, TAG, [make_status(1, text="First words")])
    source = add_source(upstream)
    run(source)
    edited = make_status(1, text="Second words")
    edited["edited_at"] = "2026-11-21T09:00:00.000Z"
    timeline.statuses = [edited]
    Source.objects.filter(pk=source.pk).update(cursor={})
    assert run(source).updated == 1
    post = Post.objects.get()
    assert post.text.startswith("Second words")
    revision = PostRevision.objects.get(post=post)
    assert revision.text.startswith("First words") and revision.raw["id"] == edited["id"]


def test_a_recheck_stores_edits_and_turns_deletions_into_tombstones(upstream, api_client):
    now = dj_timezone.now()
    statuses = [make_status(n, created_at=now - timedelta(hours=n)) for n in range(1, 4)]
    timeline = MastodonTimeline(upstream, TAG, statuses)
    source = add_source(upstream)
    assert run(source).new == 3
    edited = make_status(1, text="Corrected figure", created_at=now - timedelta(hours=1))
    edited["edited_at"] = now.isoformat().replace("+00:00", "Z")
    timeline.statuses = [edited, statuses[2]]  # status 2 was deleted upstream
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (3, 1, 1, 0)
    deleted = Post.objects.get(external_id=statuses[1]["uri"])
    assert deleted.deleted_at is not None and "404" in deleted.deletion_reason
    assert Post.objects.get(external_id=statuses[0]["uri"]).text.startswith("Corrected figure")
    assert PostRevision.objects.count() == 1
    assert Post.objects.filter(last_checked_at__isnull=True).count() == 0
    # Deleted items disappear from the API.
    listed = {p["external_id"] for p in api_client.get("/api/v1/posts/").json()["results"]}
    assert listed == {statuses[0]["uri"], statuses[2]["uri"]}
    assert api_client.get(f"/api/v1/posts/{deleted.pk}/").status_code == 404
    # A second re-check changes nothing more.
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.edited, again.deleted) == (0, 0) and PostRevision.objects.count() == 1


def test_a_recheck_skips_posts_older_than_the_window(upstream, settings):
    settings.ENGAGEMENT_RECHECK_DAYS = 2
    old = make_status(1, created_at=dj_timezone.now() - timedelta(days=5))
    MastodonTimeline(upstream, TAG, [old])
    source = add_source(upstream)
    run(source)
    assert collect.recheck_source(source.pk, owner="test").checked == 0
    assert collect.sources_to_recheck() == []
    assert upstream.requests_to("/api/v1/statuses/") == []


def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream):
    now = dj_timezone.now()
    timeline = MastodonTimeline(upstream, TAG, [make_status(n, created_at=now - timedelta(hours=n)) for n in (1, 2)])
    source = add_source(upstream)
    run(source)
    upstream.prefix_routes.insert(0, ("/api/v1/statuses/", lambda path, query: Reply(429, {}, {"Retry-After": "300"})))
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until > dj_timezone.now() + timedelta(seconds=250)
    assert len(upstream.requests_to("/api/v1/statuses/")) == 1
    del timeline


def test_backfill_walks_back_to_the_date_and_a_second_call_does_not_repeat_it(upstream):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    statuses = [make_status(n, created_at=start + timedelta(hours=n)) for n in range(1, 201)]
    MastodonTimeline(upstream, TAG, statuses)
    source = add_source(upstream)
    Source.objects.filter(pk=source.pk).update(cursor={"ukrainepeacetalks": {"newest_id": statuses[-1]["id"]}})
    since = start + timedelta(hours=101)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert backfill.outcome == CollectionRun.Outcome.OK
    stored = sorted(Post.objects.values_list("created_at", flat=True))
    assert len(stored) == 100 and stored[0] == since
    source.refresh_from_db()
    assert source.cursor["ukrainepeacetalks"]["newest_id"] == statuses[-1]["id"]  # polling cursor unchanged
    asked = len(upstream.requests)
    assert collect.backfill_source(source.pk, since=since, owner="test").pages == 0
    assert len(upstream.requests) == asked


def test_the_backfill_command_prints_what_it_did(upstream, capsys):
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    MastodonTimeline(upstream, TAG, [make_status(n, created_at=start + timedelta(hours=n)) for n in range(1, 50)])
    source = add_source(upstream)
    call_command("collect", "--backfill", "--since", "2026-11-01", "--source", str(source.pk))
    out = capsys.readouterr().out
    assert f"source {source.pk}" in out and "backfill ok" in out and "new=49" in out
    with pytest.raises(Exception, match="--since"):
        call_command("collect", "--backfill", "--since", "last tuesday")


def test_renormalise_rebuilds_fields_from_the_raw_payload_without_revisions(upstream, capsys):
    MastodonTimeline(upstream, TAG, [make_status(n) for n in range(1, 4)])
    run(add_source(upstream))
    Post.objects.update(text="stale parse", language="xx")
    call_command("renormalise", "--platform", "mastodon")
    assert "checked=3 changed=3 failed=0" in capsys.readouterr().out
    assert not Post.objects.filter(text="stale parse").exists()
    assert set(Post.objects.values_list("language", flat=True)) == {"en"}
    assert PostRevision.objects.count() == 0
