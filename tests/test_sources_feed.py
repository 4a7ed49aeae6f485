"""The RSS/Atom comment-feed connector against feeds served on 127.0.0.1.

../shared/fixtures has no RSS/Atom comment feed (see its wordpress/NOTE.md): the feeds are written from
WordPress's RSS2 comment-feed template (wp-includes/feed-rss2-comments.php: "Comment on X by Y",
"Comments on: X", "By: Y", guid `<post guid>#comment-N`, "In reply to" for replies) and RFC 4287 Atom,
in tests/fixtures/feed_*.xml. No file of ../shared/fixtures is read here.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import feedparser
import pytest

from engagement import collect
from engagement.models import Article, CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources import feed as feed_module
from engagement.sources.base import (
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NeedsCredentials,
    PermanentError,
    RateLimited,
    TemporaryError,
)
from engagement.sources.feed import FeedConnector, normalise_native
from tests.conftest import wait_for
from tests.feed_fake import Comment, CommentFeed
from tests.upstream import Reply
from tests.wordpress_fake import capture_request_headers

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
RSS = "application/rss+xml; charset=UTF-8"
ARTICLE = "https://news.example/2026/11/20/peace-talks-resume-in-geneva/"


def xml(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def route(upstream, path: str, handler) -> str:
    """Answer `path` with or without its trailing slash (sources are registered without it, and
    WordPress answers both, redirecting one to the other)."""
    upstream.routes[path] = upstream.routes[path.rstrip("/")] = handler
    return f"{upstream.url}{path}"


def serve(upstream, name: str, *, content_type: str = RSS, headers: dict | None = None, path: str = "/comments/feed/"):
    return route(upstream, path,
                 lambda _path, _query: Reply(200, xml(name), {"Content-Type": content_type, **(headers or {})}))


def connector(url: str, *tags: str, client: HttpClient | None = None) -> FeedConnector:
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return FeedConnector(url=url, hashtags=list(tags or [TAG]), client=client, now=lambda: NOW)


def fetch(url: str, cursor: dict | None = None, **kwargs) -> list:
    return list(connector(url, **kwargs).fetch(cursor=cursor or {}))


# --- parsing ---------------------------------------------------------------------------------------


def test_a_wordpress_comments_feed_gives_comments_under_their_articles(upstream):
    [page] = fetch(serve(upstream, "feed_wordpress_comments.xml"))
    by_id = {item.external_id: item for item in page.items}
    assert list(by_id) == ["https://news.example/?p=123#comment-46", "https://news.example/?p=123#comment-45",
                           "https://news.example/?p=98#comment-31"]
    first = by_id["https://news.example/?p=123#comment-45"]
    assert first.platform == "feed" and first.kind == "comment"
    assert first.url == f"{ARTICLE}#comment-45"
    assert first.created_at == datetime(2026, 11, 24, 10, 1, 2, tzinfo=timezone.utc)
    assert first.text == "Any ceasefire has to be verifiable & monitored. more"
    assert first.author.handle == "Olena K."
    # No hashtags in comments: the feed was registered for the tag, so every entry carries it.
    assert all(item.hashtags == ("ukrainepeacetalks",) for item in page.items)
    assert first.article.url == ARTICLE
    assert first.article.title == "Peace talks resume in Geneva – day 2"  # from "Comment on X by Y"
    assert first.article.external_id == "123"
    # A comment on page 2 of an article's comments still belongs to the article.
    assert by_id["https://news.example/?p=98#comment-31"].article.url == "https://news.example/2026/11/02/istanbul-draft/"
    assert page.fetched == 3 and page.rejected == []


def test_a_reply_in_a_wordpress_feed_names_its_parent_and_loses_the_in_reply_to_line(upstream):
    [page] = fetch(serve(upstream, "feed_wordpress_comments.xml"))
    reply = next(item for item in page.items if item.external_id.endswith("#comment-46"))
    assert reply.reply_to_external_id == "https://news.example/?p=123#comment-45"
    assert reply.text == "Verification needs observers on the ground."
    assert "In reply to" in reply.raw["content"][0]["value"]  # the payload keeps what was received


def test_an_articles_own_comment_feed_names_the_article_from_the_channel(upstream):
    [page] = fetch(serve(upstream, "feed_wordpress_article_comments.xml"))
    assert {item.article for item in page.items} == {
        page.items[0].article} and page.items[0].article.url == ARTICLE
    assert page.items[0].article.title == "Peace talks resume in Geneva – day 2"  # "Comments on: X"
    assert {item.language for item in page.items} == {"en-GB"}


def test_an_atom_feed_gives_published_edited_times_and_resolved_links(upstream):
    url = serve(upstream, "feed_atom_comments.xml", content_type="application/atom+xml",
                path="/posts/talks-in-geneva/comments.atom")
    [page] = fetch(url)
    edited, plain = page.items
    assert edited.external_id == "tag:blog.example,2026:comment-9001"
    assert edited.created_at == datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)  # +02:00 read as UTC
    assert edited.edited_at == datetime(2026, 11, 24, 10, 30, tzinfo=timezone.utc)
    assert edited.url == f"{upstream.url}/posts/talks-in-geneva#c9001"  # relative to where the feed came from
    assert edited.article.url == f"{upstream.url}/posts/talks-in-geneva"
    assert edited.author.external_id == "https://blog.example/people/taras"
    assert edited.language == "uk"
    # Only `updated`: it is the creation time. Atom text content is text, not markup.
    assert plain.created_at == datetime(2026, 11, 24, 12, 45, tzinfo=timezone.utc) and plain.edited_at is None
    assert plain.text == "Plain text, <b>not</b> markup." and "<b>" not in plain.html


def test_an_entry_without_id_or_link_or_with_a_bad_date_is_rejected_and_the_rest_kept(upstream):
    [page] = fetch(serve(upstream, "feed_broken_entries.xml"))
    assert [item.external_id for item in page.items] == ["https://news.example/?p=123#comment-45"]
    assert [r.reason for r in page.rejected] == [
        "entry has neither an id (guid) nor a link",
        "entry has no readable published or updated date: 'sometime last week'",
    ]
    assert page.rejected[1].external_id == "https://news.example/?p=123#comment-47"
    assert page.rejected[0].raw["title"] == "Comment on Peace talks by Nobody"
    assert page.fetched == 3


def test_a_feed_that_is_not_well_formed_is_read_as_far_as_possible_with_a_warning(upstream):
    [page] = fetch(serve(upstream, "feed_not_well_formed.xml"))
    assert [item.external_id for item in page.items] == ["https://news.example/?p=130#comment-60"]
    assert "not well-formed" in page.health_detail["feed_warning"]


def test_no_script_survives_from_a_feed(upstream):
    [page] = fetch(serve(upstream, "feed_wordpress_comments.xml"))
    for item in page.items:
        lowered = item.html.lower()
        assert "<script" not in lowered and "javascript:" not in lowered and "alert(" not in lowered


def test_the_stored_raw_payload_rebuilds_the_same_item(upstream):
    for name in ("feed_wordpress_comments.xml", "feed_wordpress_article_comments.xml", "feed_atom_comments.xml"):
        [page] = fetch(serve(upstream, name, path=f"/{name}"))
        for item in page.items:
            assert normalise_native(item.raw, hashtags=item.hashtags) == item


def test_the_feed_is_parsed_from_the_response_bytes_never_from_a_url(upstream, monkeypatch):
    seen = []
    real_parse = feedparser.parse

    def spy(source, **kwargs):
        seen.append((source, kwargs))
        return real_parse(source, **kwargs)

    monkeypatch.setattr(feed_module.feedparser, "parse", spy)
    url = serve(upstream, "feed_wordpress_comments.xml")
    fetch(url)
    [(source, kwargs)] = seen
    assert source == xml("feed_wordpress_comments.xml")
    assert kwargs["response_headers"] == {"content-type": RSS, "content-location": url}


# --- conditional GET -------------------------------------------------------------------------------


def test_a_feed_is_asked_for_again_only_if_it_changed(upstream):
    log = capture_request_headers(upstream)
    etag, modified = '"v1"', "Tue, 24 Nov 2026 11:15:40 GMT"

    def conditional(_path, _query):
        asked = log.current()
        if asked.get("if-none-match") == etag:
            return Reply(304, b"", {"ETag": etag})
        return Reply(200, xml("feed_wordpress_comments.xml"), {"Content-Type": RSS, "ETag": etag,
                                                               "Last-Modified": modified})

    url = route(upstream, "/comments/feed/", conditional)
    [first] = fetch(url)
    assert len(first.items) == 3 and first.cursor == {"etag": etag, "last_modified": modified}
    assert "if-none-match" not in log.seen[0]
    [second] = fetch(url, first.cursor)
    assert (log.seen[1]["if-none-match"], log.seen[1]["if-modified-since"]) == (etag, modified)
    assert second.items == [] and second.rejected == [] and second.fetched == 0
    assert second.cursor == first.cursor


def test_a_feed_without_validators_is_read_whole_every_time(upstream):
    log = capture_request_headers(upstream)
    url = serve(upstream, "feed_wordpress_comments.xml")
    [first] = fetch(url)
    [second] = fetch(url, first.cursor)
    assert first.cursor == {} and len(second.items) == 3
    assert not any(key.startswith("if-") for seen in log.seen for key in seen)


# --- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, error, message", [
    (Reply(401, "<html>Log in</html>", {"Content-Type": "text/html"}), NeedsCredentials, "401"),
    (Reply(403, "<html>Forbidden</html>", {"Content-Type": "text/html"}), NeedsCredentials, "403"),
    (Reply(429, "slow down", {"Retry-After": "90"}), RateLimited, "429"),
    (Reply(503, "<h1>maintenance</h1>", {"Retry-After": "600"}), RateLimited, "503"),
    (Reply(500, "<h1>error</h1>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(503, "", {}), TemporaryError, "503"),
    (Reply(404, "<html>Not found</html>", {"Content-Type": "text/html"}), PermanentError, "no feed at"),
    (Reply(410, "", {}), PermanentError, "410"),
    (Reply(200, "<html><body><p>Just a moment...</p></body></html>", {"Content-Type": "text/html"}),
     MalformedResponse, "expected an RSS or Atom feed"),
    (Reply(200, b"", {"Content-Type": RSS}), MalformedResponse, "expected an RSS or Atom feed"),
    (Reply(200, {"comments": []}, {}), MalformedResponse, "expected an RSS or Atom feed"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    route(upstream, "/comments/feed/", lambda _path, _query: reply)
    with pytest.raises(error, match=message) as caught:
        fetch(f"{upstream.url}/comments/feed/")
    if error is RateLimited:
        assert caught.value.until == NOW + timedelta(seconds=int(reply.headers["Retry-After"]))
    if error is MalformedResponse:
        assert caught.value.raw == reply.encoded().decode()


def test_a_429_without_retry_after_waits_a_minute(upstream):
    route(upstream, "/comments/feed/", lambda _path, _query: Reply(429, "slow down", {}))
    with pytest.raises(RateLimited) as caught:
        fetch(f"{upstream.url}/comments/feed/")
    assert caught.value.until == NOW + timedelta(seconds=60)


def test_a_slow_feed_times_out_as_a_temporary_error(upstream):
    def slow(_path, _query):
        time.sleep(2)
        return Reply(200, xml("feed_wordpress_comments.xml"), {"Content-Type": RSS})

    route(upstream, "/comments/feed/", slow)
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(f"{upstream.url}/comments/feed/", client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


def test_every_request_names_itself(upstream):
    log = capture_request_headers(upstream)
    client = HttpClient(HttpSettings(user_agent="engagement-test/1 (ops@example.org)", allow_private=True))
    list(connector(serve(upstream, "feed_wordpress_comments.xml"), client=client).fetch(cursor={}))
    assert log.seen[0]["user-agent"] == "engagement-test/1 (ops@example.org)"


# --- through collection, on the real database ------------------------------------------------------


def add_source(url: str) -> Source:
    return collect.register_source(platform="feed", url=url, hashtags=[TAG])


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collection_stores_the_comments_with_articles_and_replies_and_a_second_run_adds_nothing(upstream):
    source = add_source(serve(upstream, "feed_wordpress_comments.xml"))
    first = run(source)
    assert (first.outcome, first.new) == (CollectionRun.Outcome.OK, 3)
    reply = Post.objects.get(external_id="https://news.example/?p=123#comment-46")
    assert reply.reply_to.external_id == "https://news.example/?p=123#comment-45"
    assert reply.article.title == "Peace talks resume in Geneva – day 2"
    assert Article.objects.count() == 2
    assert Post.objects.for_hashtag(TAG).count() == 3
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 3


@pytest.mark.django_db
def test_broken_entries_are_kept_raw_and_the_run_is_partial(upstream):
    result = run(add_source(serve(upstream, "feed_broken_entries.xml")))
    assert (result.outcome, result.new, result.errors) == (CollectionRun.Outcome.PARTIAL, 1, 2)
    assert RejectedItem.objects.filter(reason__startswith="entry has no readable").get().raw["published"] == \
        "sometime last week"


@pytest.mark.django_db
def test_a_feed_behind_a_login_is_recorded_as_needing_credentials(upstream):
    route(upstream, "/comments/feed/", lambda _p, _q: Reply(401, "<html>Log in</html>", {"Content-Type": "text/html"}))
    source = add_source(f"{upstream.url}/comments/feed/")
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "401" in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS and source.last_error == result.message


@pytest.mark.django_db
def test_a_rate_limited_feed_is_not_asked_again_before_its_reset(upstream):
    route(upstream, "/comments/feed/", lambda _p, _q: Reply(429, "slow down", {"Retry-After": "1800"}))
    source = add_source(f"{upstream.url}/comments/feed/")
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.RATE_LIMITED and source.health == Source.Health.RATE_LIMITED
    asked = len(upstream.requests)
    assert collect.run_source(source.pk, owner="test") is None
    assert len(upstream.requests) == asked


@pytest.mark.django_db
@pytest.mark.parametrize("reply, kind, message", [
    (Reply(502, "<h1>bad gateway</h1>", {"Content-Type": "text/html"}), Source.ErrorKind.TEMPORARY, "502"),
    (Reply(200, "<html><body>Not a feed</body></html>", {"Content-Type": "text/html"}), Source.ErrorKind.MALFORMED,
     "expected an RSS or Atom feed"),
    (Reply(404, "<html>gone</html>", {"Content-Type": "text/html"}), Source.ErrorKind.PERMANENT, "no feed at"),
])
def test_a_failing_feed_is_recorded_with_a_clear_message(upstream, reply, kind, message):
    route(upstream, "/comments/feed/", lambda _p, _q: reply)
    source = add_source(f"{upstream.url}/comments/feed/")
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and message in result.message
    assert source.health == Source.Health.FAILING and source.last_error_kind == kind
    if kind == Source.ErrorKind.MALFORMED:
        assert "Not a feed" in RejectedItem.objects.get().raw


@pytest.mark.django_db
def test_a_timeout_is_recorded_as_a_temporary_failure(upstream, settings):
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 1

    def slow(_path, _query):
        time.sleep(2)
        return Reply(200, b"", {})

    route(upstream, "/comments/feed/", slow)
    source = add_source(f"{upstream.url}/comments/feed/")
    report = collect.run_source(source.pk, owner="test")
    source.refresh_from_db()
    assert report.retry and "timed out" in report.run.message
    assert source.last_error_kind == Source.ErrorKind.TEMPORARY


# --- the real worker -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_and_a_worker_collect_a_comment_feed_into_the_api(
    flushed_redis, upstream, start_worker, start_beat, api_client
):
    log = capture_request_headers(upstream)

    def conditional(_path, _query):
        if log.current().get("if-none-match") == '"v1"':
            return Reply(304, b"", {"ETag": '"v1"'})
        return Reply(200, xml("feed_wordpress_comments.xml"), {"Content-Type": RSS, "ETag": '"v1"'})

    route(upstream, "/comments/feed/", conditional)
    source = collect.register_source(platform="feed", url=f"{upstream.url}/comments/feed/", hashtags=[TAG],
                                     interval=2)
    worker = start_worker()
    start_beat()

    def listed():
        response = api_client.get("/api/v1/posts/", {"platform": "feed"})
        assert response.status_code == 200, response.content
        return response.json()["results"]

    posts = wait_for(lambda: len(listed()) == 3 and listed(), timeout=60, message="3 comments in the API")
    assert {post["platform"] for post in posts} == {"feed"}
    # Beat polls again every 2 s: the feed has not changed (304), so the run adds nothing.
    runs = wait_for(lambda: list(CollectionRun.objects.filter(source=source, outcome="ok").order_by("id"))[:2]
                    if CollectionRun.objects.filter(source=source, outcome="ok").count() >= 2 else None,
                    timeout=60, message="a second run")
    assert [r.new for r in runs] == [3, 0] and runs[1].fetched == 0
    assert any(seen.get("if-none-match") == '"v1"' for seen in log.seen)
    assert Post.objects.filter(platform="feed").count() == 3
    assert worker.proc.poll() is None


# --- backfill and re-check (tests/feed_fake.py) ----------------------------------------------------


def hourly(n: int) -> datetime:
    return datetime(2026, 11, 1, tzinfo=timezone.utc) + timedelta(hours=n)


def comments(ids) -> list[Comment]:
    return [Comment(id=n, published=hourly(n), text=f"Comment {n} on the talks") for n in ids]


def guid(n: int) -> str:
    return f"https://news.example/?p=123#comment-{n}"


def stored_ids() -> set[int]:
    return {int(external_id.rsplit("-", 1)[1]) for external_id in Post.objects.values_list("external_id", flat=True)}


@pytest.mark.django_db
def test_backfill_follows_rfc5005_next_links_back_to_the_date_and_a_second_call_makes_no_request(upstream):
    feed = CommentFeed(upstream, comments(range(1, 26)), per_page=10, paging="next")
    source = add_source(feed.url)
    run(source)  # polling: the newest 10 and the feed's ETag
    source.refresh_from_db()
    polled = dict(source.cursor)
    upstream.requests.clear()
    backfill = collect.backfill_source(source.pk, since=hourly(8), owner="test")
    assert (backfill.outcome, backfill.pages, backfill.fetched, backfill.new) == (CollectionRun.Outcome.OK, 2, 20, 8)
    assert stored_ids() == set(range(8, 26))
    assert [seen.query for seen in upstream.requests] == [{}, {"page": "2"}]
    assert "if-none-match" not in upstream.requests[0].headers  # read whole, whatever polling has seen
    source.refresh_from_db()
    assert source.cursor == {**polled, "backfilled_since": hourly(8).isoformat()}
    again = collect.backfill_source(source.pk, since=hourly(8), owner="test")
    assert (again.outcome, again.pages) == (CollectionRun.Outcome.OK, 0) and len(upstream.requests) == 2
    run(source)  # a 304: polling keeps the finished walk
    source.refresh_from_db()
    assert source.cursor == {**polled, "backfilled_since": hourly(8).isoformat()}


@pytest.mark.django_db
def test_backfill_follows_prev_archive_links_of_an_archived_atom_feed(upstream):
    feed = CommentFeed(upstream, comments(range(1, 31)), per_page=10, paging="archive")
    source = add_source(feed.url)
    backfill = collect.backfill_source(source.pk, since=hourly(1), owner="test")
    assert (backfill.outcome, backfill.pages, backfill.new) == (CollectionRun.Outcome.OK, 3, 30)
    assert [seen.path for seen in upstream.requests] == ["/comments/feed", "/archive/2.atom", "/archive/1.atom"]


@pytest.mark.django_db
def test_backfill_is_bounded_per_call_and_the_next_call_resumes_at_the_saved_link(upstream, monkeypatch):
    monkeypatch.setattr(feed_module, "MAX_BACKFILL_PAGES", 1)
    feed = CommentFeed(upstream, comments(range(1, 26)), per_page=10, paging="next")
    source = add_source(feed.url)
    first = collect.backfill_source(source.pk, since=hourly(1), owner="test")
    source.refresh_from_db()
    assert first.pages == 1 and source.cursor == {"backfill_next": f"{feed.url}/?page=2"}
    pages = [collect.backfill_source(source.pk, since=hourly(1), owner="test").pages for _ in range(3)]
    assert pages == [1, 1, 0] and stored_ids() == set(range(1, 26))
    assert [seen.query for seen in upstream.requests] == [{}, {"page": "2"}, {"page": "3"}]


@pytest.mark.django_db
def test_backfill_of_a_feed_without_paging_reads_it_once_and_says_it_holds_only_its_latest_entries(upstream):
    # Like WordPress: the newest 10 comments, no RFC 5005 links.
    feed = CommentFeed(upstream, comments(range(1, 26)), per_page=10)
    source = add_source(feed.url)
    backfill = collect.backfill_source(source.pk, since=hourly(1), owner="test")
    # Not a failure: what the feed holds is stored, and the run says how far back that is.
    assert (backfill.outcome, backfill.pages, backfill.new) == (CollectionRun.Outcome.OK, 1, 10)
    assert stored_ids() == set(range(16, 26))
    assert f"the feed holds only its latest entries (back to {hourly(16).isoformat()})" in backfill.message
    assert "cannot be backfilled" in backfill.message
    again = collect.backfill_source(source.pk, since=hourly(1), owner="test")
    assert again.outcome == CollectionRun.Outcome.OK and "holds only its latest entries" in again.message
    assert len(upstream.requests) == 1
    # A date the feed does reach back to is a complete backfill, without the note.
    complete = collect.backfill_source(source.pk, since=hourly(20), owner="test")
    assert complete.outcome == CollectionRun.Outcome.OK and "latest entries" not in complete.message


def test_a_rate_limit_during_backfill_raises_like_fetch(upstream):
    feed = CommentFeed(upstream, comments(range(1, 3)))
    feed.override = Reply(429, "slow down", {"Retry-After": "90"})
    with pytest.raises(RateLimited) as caught:
        list(connector(feed.url).backfill(since=hourly(0), cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=90)


@pytest.fixture
def recheck_window(settings):
    settings.ENGAGEMENT_RECHECK_DAYS = 100_000  # the built comments are dated November 2026


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_a_comment_gone_from_a_covering_feed_as_a_tombstone(
        upstream, api_client, recheck_window):
    feed = CommentFeed(upstream, comments(range(1, 9)), per_page=5)
    source = add_source(feed.url)
    assert run(source).new == 5  # 4 ... 8
    feed.comments = [c for c in feed.comments if c.id != 6]
    next(c for c in feed.comments if c.id == 7).text = "Comment 7, corrected"
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 1, 1, 0)
    assert len(upstream.requests) == 1 and "if-none-match" not in upstream.requests[0].headers
    deleted = Post.objects.get(external_id=guid(6))
    assert deleted.deleted_at is not None
    assert deleted.deletion_reason == (
        f"deleted upstream (gone from the feed, which lists every entry back to {hourly(3).isoformat()})")
    revision = PostRevision.objects.get()
    assert (revision.post.external_id, revision.text, revision.post.text) == (
        guid(7), "Comment 7 on the talks", "Comment 7, corrected")
    listed = {post["external_id"] for post in api_client.get("/api/v1/posts/").json()["results"]}
    assert listed == {guid(n) for n in (4, 5, 7, 8)}
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (4, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_comment_that_dropped_off_the_end_of_the_feed_cannot_be_told_deleted(upstream, recheck_window):
    feed = CommentFeed(upstream, comments(range(1, 9)), per_page=5)
    source = add_source(feed.url)
    run(source)  # 4 ... 8
    feed.comments += comments(range(9, 12))  # the feed now holds 7 ... 11
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 0, 0, 3)
    assert Post.objects.alive().count() == 5


@pytest.mark.django_db
def test_a_feed_that_is_not_newest_first_cannot_tell_a_deletion(upstream, recheck_window):
    feed = CommentFeed(upstream, comments(range(1, 6)), per_page=5)
    source = add_source(feed.url)
    run(source)
    feed.comments = [c for c in feed.comments if c.id != 3]
    feed.unordered = True
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.deleted, report.errors) == (5, 0, 1)
    assert Post.objects.alive().count() == 5


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream, recheck_window):
    feed = CommentFeed(upstream, comments(range(1, 4)))
    source = add_source(feed.url)
    run(source)
    feed.override = Reply(429, "slow down", {"Retry-After": "300"})
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until > datetime.now(timezone.utc) + timedelta(seconds=250)
    assert len(upstream.requests) == 1 and Post.objects.alive().count() == 3
