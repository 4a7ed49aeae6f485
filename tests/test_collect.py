"""Running sources and storing pages, on the real PostgreSQL, against fake upstreams on 127.0.0.1."""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from engagement import collect
from engagement.models import CollectionRun, Post, RejectedItem, Source
from engagement.sources.base import Page
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import FakeUpstream, Reply

pytestmark = pytest.mark.django_db
TAG = "UkrainePeaceTalks"


def add_source(upstream, tag: str = TAG) -> Source:
    return collect.register_source(platform="mastodon", url=upstream.url, hashtags=[tag])


def run(source: Source) -> CollectionRun | None:
    report = collect.run_source(source.pk, owner="test")
    return report.run if report else None


def first_page(source: Source) -> Page:
    return next(iter(collect.connector_for(source).fetch(cursor={})))


def test_storing_the_same_page_twice_adds_no_rows_and_changes_nothing(upstream):
    MastodonTimeline(upstream, TAG, [make_status(n) for n in range(1, 41)])
    source = add_source(upstream)
    page = first_page(source)
    run_row = CollectionRun.objects.create(source=source)
    assert collect.store_page(source, run_row, page) == (40, 0)
    before = list(Post.objects.order_by("id").values("id", "updated_at", "text"))
    assert collect.store_page(source, run_row, page) == (0, 0)
    assert list(Post.objects.order_by("id").values("id", "updated_at", "text")) == before


def test_a_changed_post_is_updated_in_place_and_keeps_its_moderation_status(upstream):
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    source = add_source(upstream)
    assert run(source).new == 1
    Post.objects.update(status=Post.Status.APPROVED)
    edited = make_status(1, text="Edited text")
    edited["edited_at"] = "2026-11-21T10:00:00.000Z"
    timeline.statuses = [edited]
    Source.objects.filter(pk=source.pk).update(cursor={})
    result = run(source)
    assert (result.new, result.updated) == (0, 1)
    post = Post.objects.get()
    assert post.text.startswith("Edited text")
    assert post.status == Post.Status.APPROVED
    assert post.edited_at is not None


def test_a_post_seen_on_two_instances_is_one_post():
    statuses = [make_status(n) for n in range(1, 6)]
    servers = [FakeUpstream().start(), FakeUpstream().start()]
    try:
        MastodonTimeline(servers[0], TAG, statuses)
        # The second instance knows the same posts under its own local ids.
        remote = [{**copy.deepcopy(s), "id": str(int(s["id"]) + 7_000_000)} for s in statuses]
        MastodonTimeline(servers[1], TAG, remote)
        results = [run(add_source(server)) for server in servers]
    finally:
        for server in servers:
            server.stop()
    assert [r.new for r in results] == [5, 0]
    assert Post.objects.count() == 5


def test_a_boost_is_not_a_second_post(upstream):
    original = make_status(1)
    boost = {**make_status(2), "uri": "https://social.example/users/booster/statuses/2/activity", "reblog": original}
    MastodonTimeline(upstream, TAG, [original, boost])
    assert run(add_source(upstream)).new == 1
    assert Post.objects.get().external_id == original["uri"]


@pytest.mark.parametrize("size", [10, 40])
def test_ingest_stores_a_page_with_one_bulk_statement(upstream, size):
    MastodonTimeline(upstream, TAG, [make_status(n) for n in range(1, size + 1)])
    source = add_source(upstream)
    page = first_page(source)
    run_row = CollectionRun.objects.create(source=source)
    with CaptureQueriesContext(connection) as queries:
        collect.store_page(source, run_row, page)
    statements = [q["sql"] for q in queries.captured_queries]
    assert len([sql for sql in statements if sql.startswith('INSERT INTO engagement_post')]) == 1
    # Authors in one upsert, the stored versions in one SELECT (for revisions), screening (rules, hashtag
    # modes, the statement timeout set and restored, three lookups in a savepoint each), posts in one, their
    # audit entries in one, the rollups of the page's hours (lock, then delete and count for each of the two
    # rollup tables), the cursor in one, plus savepoints: never a statement per post.
    assert len(statements) <= 29, statements
    assert len([sql for sql in statements if "engagement_moderationevent" in sql]) == 1
    assert Post.objects.count() == size


def test_a_malformed_item_is_kept_raw_with_its_reason_and_the_rest_stored(upstream):
    broken = make_status(2)
    broken["created_at"] = "0000-10-14T15:06:10.730Z"
    MastodonTimeline(upstream, TAG, [make_status(1), broken, make_status(3)])
    result = run(add_source(upstream))
    assert (result.outcome, result.new, result.errors) == (CollectionRun.Outcome.PARTIAL, 2, 1)
    rejected = RejectedItem.objects.get()
    assert rejected.raw == broken
    assert "created_at" in rejected.reason
    assert rejected.external_id == broken["uri"]
    assert rejected.run_id == result.pk


def test_a_500_fails_the_run_with_the_reason_and_the_source_stays_enabled(upstream):
    MastodonTimeline(upstream, TAG).override = Reply(500, "<h1>oops</h1>", {"Content-Type": "text/html"})
    source = add_source(upstream)
    result = run(source)
    assert result.outcome == CollectionRun.Outcome.FAILED
    assert "500" in result.message
    source.refresh_from_db()
    assert source.enabled
    assert source.consecutive_failures == 1
    assert "500" in source.last_error
    assert source.health == Source.Health.FAILING
    assert run(source).outcome == CollectionRun.Outcome.FAILED
    source.refresh_from_db()
    assert source.consecutive_failures == 2


def test_malformed_json_fails_the_run_and_keeps_the_body(upstream):
    MastodonTimeline(upstream, TAG).override = Reply(200, '[{"id": "1", "uri"', {})
    result = run(add_source(upstream))
    assert result.outcome == CollectionRun.Outcome.FAILED
    assert "expected JSON" in result.message
    assert RejectedItem.objects.get().raw == '[{"id": "1", "uri"'


def test_a_success_after_failures_resets_the_source_health(upstream):
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    timeline.override = Reply(502, "", {})
    source = add_source(upstream)
    run(source)
    timeline.override = None
    Source.objects.filter(pk=source.pk).update(next_poll_at=None)
    assert run(source).outcome == CollectionRun.Outcome.OK
    source.refresh_from_db()
    assert (source.consecutive_failures, source.health) == (0, Source.Health.OK)


@pytest.mark.parametrize("headers, wait", [
    ({"Retry-After": "120"}, timedelta(seconds=120)),
    ({"X-RateLimit-Reset": "PLACEHOLDER"}, timedelta(minutes=10)),
])
def test_after_a_429_no_request_goes_to_the_source_before_the_given_time(upstream, headers, wait):
    if "X-RateLimit-Reset" in headers:
        reset = timezone.now() + wait
        headers = {"X-RateLimit-Reset": reset.isoformat().replace("+00:00", "Z")}
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    timeline.override = Reply(429, {"error": "Too many requests"}, headers)
    source = add_source(upstream)
    before = timezone.now()
    assert run(source).outcome == CollectionRun.Outcome.RATE_LIMITED
    source.refresh_from_db()
    assert source.rate_limited_until >= before + wait - timedelta(seconds=2)
    assert source.enabled and source.health == Source.Health.RATE_LIMITED
    requests_so_far = len(upstream.requests)
    # Neither the dispatcher nor a direct run may call the upstream before that time.
    Source.objects.filter(pk=source.pk).update(next_poll_at=None)
    assert collect.claim_due_sources() == []
    assert collect.run_source(source.pk, owner="test") is None
    assert len(upstream.requests) == requests_so_far
    # Once the time has passed, polling resumes.
    timeline.override = None
    Source.objects.filter(pk=source.pk).update(rate_limited_until=timezone.now() - timedelta(seconds=1))
    assert [source_id for source_id, _ in collect.claim_due_sources()] == [source.pk]
    assert run(source).new == 1


def test_a_later_run_collects_only_what_is_new(upstream):
    timeline = MastodonTimeline(upstream, TAG, [make_status(n) for n in range(1, 4)])
    source = add_source(upstream)
    assert run(source).new == 3
    timeline.statuses += [make_status(4), make_status(5)]
    second = run(source)
    assert (second.fetched, second.new) == (2, 2)
    assert upstream.requests[-1].query["min_id"] == make_status(3)["id"]
    assert Post.objects.count() == 5


def test_a_source_being_polled_is_not_fetched_by_a_second_run(upstream):
    MastodonTimeline(upstream, TAG, [make_status(1)])
    source = add_source(upstream)
    assert Source.objects.take_lease(source.pk, owner="another-worker", seconds=60)
    assert collect.run_source(source.pk, owner="test") is None
    assert upstream.requests == []
    Source.objects.release_lease(source.pk, owner="another-worker")
    assert run(source).new == 1


def test_a_due_source_is_claimed_by_one_dispatch_only(upstream):
    source = add_source(upstream)
    assert collect.claim_due_sources() == [(source.pk, source.poll_interval)]
    assert collect.claim_due_sources() == []
    source.refresh_from_db()
    assert source.next_poll_at > timezone.now() + timedelta(seconds=source.poll_interval - 5)


def test_a_disabled_source_is_neither_claimed_nor_run(upstream):
    source = add_source(upstream)
    Source.objects.filter(pk=source.pk).update(enabled=False)
    assert collect.claim_due_sources() == []
    assert collect.run_source(source.pk, owner="test") is None


def test_sources_may_not_point_at_private_hosts_unless_allowed(settings, upstream):
    from engagement.sources.base import BlockedUrl

    settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS = False
    with pytest.raises(BlockedUrl):
        add_source(upstream)
    settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS = True
    source = add_source(upstream)
    # A source registered while it was allowed is refused at fetch time once it is not.
    settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS = False
    result = run(source)
    assert result.outcome == CollectionRun.Outcome.FAILED
    assert "ENGAGEMENT_ALLOW_PRIVATE_HOSTS" in result.message
    assert upstream.requests == []


def test_the_circuit_opens_after_repeated_failures_and_closes_after_the_cool_down(upstream, settings):
    settings.ENGAGEMENT_CIRCUIT_FAILURES = 3
    settings.ENGAGEMENT_CIRCUIT_COOLDOWN = 600
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    timeline.override = Reply(503, "", {})
    source = add_source(upstream)
    reports = [collect.run_source(source.pk, owner="test") for _ in range(3)]
    assert [r.retry for r in reports] == [True, True, False]  # no retry once the circuit is open
    source.refresh_from_db()
    assert source.health == Source.Health.PAUSED
    assert source.paused_until > timezone.now() + timedelta(seconds=590)
    assert "paused after 3 failures" in reports[-1].run.message
    asked = len(upstream.requests)
    assert collect.run_source(source.pk, owner="test") is None
    Source.objects.filter(pk=source.pk).update(next_poll_at=None)
    assert collect.claim_due_sources() == []
    assert len(upstream.requests) == asked
    # After the cool-down it is polled again, and a success closes the circuit.
    timeline.override = None
    Source.objects.filter(pk=source.pk).update(paused_until=timezone.now() - timedelta(seconds=1))
    assert run(source).outcome == CollectionRun.Outcome.OK
    source.refresh_from_db()
    assert (source.health, source.paused_until, source.consecutive_failures) == (Source.Health.OK, None, 0)


def test_a_refusal_for_lack_of_credentials_shows_as_needs_credentials(upstream):
    MastodonTimeline(upstream, TAG).override = Reply(401, {"error": "This API requires an authenticated user"}, {})
    source = add_source(upstream)
    report = collect.run_source(source.pk, owner="test")
    assert report.run.outcome == CollectionRun.Outcome.FAILED and not report.retry
    source.refresh_from_db()
    assert source.health == Source.Health.NEEDS_CREDENTIALS
    assert "401" in source.last_error


def test_comments_are_linked_to_their_article_and_to_their_parent_in_any_order():
    from datetime import datetime, timezone as tz

    from engagement.models import Article
    from engagement.sources.base import NormalisedArticle, NormalisedAuthor, NormalisedItem

    article = NormalisedArticle(url="https://news.example/talks", title="Talks resume",
                                published_at=datetime(2026, 11, 19, tzinfo=tz.utc), external_id="42")

    def comment(n: int, parent: int | None = None) -> NormalisedItem:
        return NormalisedItem(platform="wordpress", external_id=f"https://news.example/?comment={n}",
                              created_at=datetime(2026, 11, 20, n, tzinfo=tz.utc), raw={"id": n}, kind="comment",
                              author=NormalisedAuthor(external_id=f"reader-{n}"), text=f"comment {n}",
                              article=article,
                              reply_to_external_id=f"https://news.example/?comment={parent}" if parent else "")

    assert collect.upsert_posts([comment(2, parent=1)], source_id=None) == (1, 0)  # the reply first
    assert collect.upsert_posts([comment(1), comment(3, parent=1)], source_id=None) == (2, 0)
    stored = {p.external_id.rsplit("=", 1)[1]: p for p in Post.objects.select_related("reply_to", "article")}
    assert stored["2"].reply_to == stored["1"] and stored["3"].reply_to == stored["1"]
    assert stored["1"].reply_to is None
    assert Article.objects.get().title == "Talks resume"
    assert {p.article.url for p in stored.values()} == {"https://news.example/talks"}
    # The same comments again: nothing new, nothing rewritten.
    assert collect.upsert_posts([comment(1), comment(2, parent=1), comment(3, parent=1)], source_id=None) == (0, 0)


def test_a_nul_character_in_upstream_text_does_not_fail_the_page(upstream):
    poisoned = make_status(2, text="before\x00after")
    MastodonTimeline(upstream, TAG, [make_status(1), poisoned, make_status(3)])
    result = run(add_source(upstream))
    assert (result.outcome, result.new) == (CollectionRun.Outcome.OK, 3)
    stored = Post.objects.get(external_id=poisoned["uri"])
    assert stored.text.startswith("beforeafter") and "\x00" not in stored.raw["content"]


def test_a_thinner_later_copy_does_not_erase_an_article_title_or_an_author_name():
    from datetime import datetime, timezone as tz

    from engagement.models import Article, Author
    from engagement.sources.base import NormalisedArticle, NormalisedAuthor, NormalisedItem

    def comment(n: int, title: str, name: str) -> NormalisedItem:
        return NormalisedItem(platform="disqus", external_id=f"c{n}", created_at=datetime(2026, 11, 20, tzinfo=tz.utc),
                              raw={"id": n}, article=NormalisedArticle(url="https://news.example/a", title=title),
                              author=NormalisedAuthor(external_id="reader", display_name=name))

    collect.upsert_posts([comment(1, "Talks resume", "A Reader")], source_id=None)
    collect.upsert_posts([comment(2, "", "")], source_id=None)
    assert Article.objects.get().title == "Talks resume"
    assert Author.objects.get().display_name == "A Reader"
    collect.upsert_posts([comment(3, "Talks resume in Geneva", "")], source_id=None)
    assert Article.objects.get().title == "Talks resume in Geneva"
