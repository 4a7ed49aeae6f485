"""The real worker and beat (separate processes) on the real Redis and PostgreSQL: no eager mode."""

from __future__ import annotations

import pytest

from engagement import collect
from engagement.models import CollectionRun, Post, Source
from tests.conftest import wait_for
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import Reply, serve_recorded

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
PAGINATION_TAG = "fgiztsshwiaqqiztpmmjbtvmescsculuvmgjgopwoeidbcrixp"


def api_posts(api_client, **params) -> list[dict]:
    response = api_client.get("/api/v1/posts/", params)
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_beat_and_a_worker_collect_recorded_posts_into_the_api_by_themselves(
    flushed_redis, upstream, recorded, start_worker, start_beat, api_client
):
    serve_recorded(upstream, recorded("mastodon/pagination_iterator.json"), recorded_base="http://localhost:3000")
    source = collect.register_source(platform="mastodon", url=upstream.url, hashtags=[PAGINATION_TAG])
    worker = start_worker()
    start_beat()
    posts = wait_for(lambda: len(api_posts(api_client, hashtag=PAGINATION_TAG)) == 30 and
                     api_posts(api_client, hashtag=PAGINATION_TAG), timeout=60, message="30 posts in the API")
    assert len({post["external_id"] for post in posts}) == 30
    assert all(post["platform"] == "mastodon" and post["status"] == "pending" for post in posts)
    # Pages are committed as they are stored; the run and the source's health are recorded at its end.
    wait_for(lambda: CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK).exists(),
             timeout=30, message="the run recorded as ok")
    source.refresh_from_db()
    assert source.last_success_at is not None and source.health == Source.Health.OK
    assert worker.proc.poll() is None


def test_a_failing_source_is_recorded_and_the_worker_keeps_collecting_the_others(
    flushed_redis, start_worker, start_beat, api_client
):
    from tests.upstream import FakeUpstream

    broken, healthy = FakeUpstream().start(), FakeUpstream().start()
    try:
        MastodonTimeline(broken, "UkrainePeaceTalks").override = Reply(500, "<h1>down</h1>", {"Content-Type": "text/html"})
        MastodonTimeline(healthy, "UkrainePeaceTalks", [make_status(n) for n in range(1, 6)])
        failing = collect.register_source(platform="mastodon", url=broken.url, hashtags=["UkrainePeaceTalks"])
        working = collect.register_source(platform="mastodon", url=healthy.url, hashtags=["UkrainePeaceTalks"])
        worker = start_worker()
        start_beat()
        wait_for(lambda: Post.objects.filter(source=working).count() == 5, timeout=60, message="5 posts stored")
        wait_for(lambda: CollectionRun.objects.filter(source=failing, outcome="failed").exists(), timeout=30,
                 message="the failing run recorded")
    finally:
        broken.stop()
        healthy.stop()
    failing.refresh_from_db()
    assert failing.enabled and failing.consecutive_failures >= 1 and "500" in failing.last_error
    assert "500" in CollectionRun.objects.filter(source=failing).first().message
    assert worker.proc.poll() is None
