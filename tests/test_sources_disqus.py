"""The Disqus connector against responses built from the documented API 3.0 format, served on 127.0.0.1
(threads/listPosts, forums/listPosts and posts/details).

No public recordings of the Disqus API exist: tests/fixtures/disqus_thread_page_1.json and
disqus_thread_page_2.json follow the example responses of threads/listPosts (envelope, cursor, post and
thread objects with `related=thread`, a guest author without id, a deleted post).
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from engagement import collect
from engagement.models import Article, CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources.base import (
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NeedsCredentials,
    NormalisedItem,
    PermanentError,
    RateLimited,
    RejectedRaw,
    SourceConfig,
    TemporaryError,
)
from engagement.sources import disqus
from engagement.sources.disqus import build, normalise_native
from tests.conftest import wait_for
from tests.upstream import FakeUpstream, Reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
ARTICLE = "https://news.example/2026/11/24/peace-talks-resume/"
FIXTURES = Path(__file__).parent / "fixtures"
PREFIX = "/api/3.0"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def all_posts() -> list[dict]:
    return fixture("disqus_thread_page_1.json")["response"] + fixture("disqus_thread_page_2.json")["response"]


def post(n: int, created: datetime, *, parent: int | None = None) -> dict:
    made = copy.deepcopy(fixture("disqus_thread_page_1.json")["response"][0])
    made.update(id=str(6200000000 + n), createdAt=created.strftime("%Y-%m-%dT%H:%M:%S"), parent=parent,
                message=f"<p>Comment {n}</p>", raw_message=f"Comment {n}")
    return made


class DisqusApi:
    """threads/listPosts.json and forums/listPosts.json from `posts`: oldest first from `since`
    (inclusive), `limit` a page, `cursor` tokens "<epoch micros>:<offset>:0", the key checked."""

    def __init__(self, upstream: FakeUpstream, posts: list[dict] | None = None, *, page_size: int = 100):
        self.upstream, self.posts, self.page_size = upstream, list(posts or []), page_size
        self.override: Reply | None = None
        self.headers: dict = {}
        for endpoint in ("threads/listPosts.json", "forums/listPosts.json"):
            upstream.routes[f"{PREFIX}/{endpoint}"] = self.handle
        upstream.routes[f"{PREFIX}/posts/details.json"] = self.handle_details

    @property
    def url(self) -> str:
        return self.upstream.url + PREFIX

    def requests(self) -> list:
        return [seen for seen in self.upstream.requests if seen.path.startswith(PREFIX)]

    def handle(self, path: str, query: dict) -> Reply:
        if self.override is not None:
            return self.override
        if query.get("api_key") != "test-key":
            return Reply(400, {"code": 5, "response": "Invalid API key"})
        posts = sorted(self.posts, key=lambda p: p["createdAt"])
        if query.get("since"):
            posts = [p for p in posts if p["createdAt"] >= query["since"]]
        limit = min(int(query.get("limit", 25)), self.page_size)
        offset = int(query["cursor"].split(":")[1]) if query.get("cursor") else 0
        chunk = posts[offset:offset + limit]
        if query.get("related") != "thread":
            chunk = [{**p, "thread": p["thread"]["id"]} for p in chunk]
        has_next = offset + limit < len(posts)
        token = f"1764002700000000:{offset + limit}:0"
        return Reply(200, {"cursor": {"prev": None, "hasNext": has_next, "next": token, "hasPrev": offset > 0,
                                      "total": None, "id": token, "more": has_next},
                           "code": 0, "response": chunk}, dict(self.headers))


    def handle_details(self, path: str, query: dict) -> Reply:
        """posts/details.json: the post as stored (deleted and spam posts keep their flags); error 2 for
        an id it does not find, as Disqus answers an argument it cannot use."""
        if self.override is not None:
            return self.override
        if query.get("api_key") != "test-key":
            return Reply(400, {"code": 5, "response": "Invalid API key"})
        found = next((p for p in self.posts if p["id"] == query.get("post")), None)
        if found is None:
            return Reply(400, {"code": 2, "response": f"Invalid argument, 'post': Unable to find post '{query.get('post')}'"})
        if query.get("related") != "thread":
            found = {**found, "thread": found["thread"]["id"]}
        return Reply(200, {"code": 0, "response": found}, dict(self.headers))


def serve_fixture_pages(upstream: FakeUpstream) -> None:
    pages = [fixture("disqus_thread_page_1.json"), fixture("disqus_thread_page_2.json")]

    def handle(path: str, query: dict) -> Reply:
        if query.get("cursor") == pages[0]["cursor"]["next"]:
            return Reply(200, pages[1])
        return Reply(200, pages[0])

    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = handle


def connector(upstream, *, credentials=None, now=lambda: NOW, client=None, tags=(TAG,), **options):
    options = options or {"article": ARTICLE, "forum": "newsroom"}
    config = SourceConfig(platform="disqus", base_url=upstream.url + PREFIX, hashtags=tags, options=options,
                          credentials={"api_key": "test-key"} if credentials is None else credentials)
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return build(config, client=client, now=now)


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


# --- parsing ---------------------------------------------------------------------------------------


def test_it_normalises_a_documented_post_with_its_article_and_the_tracked_tag():
    raw = fixture("disqus_thread_page_1.json")["response"][0]
    item = normalise_native(raw, hashtags=(TAG,))
    assert isinstance(item, NormalisedItem)
    assert (item.platform, item.external_id, item.kind) == ("disqus", "6100000001", "comment")
    assert item.created_at == datetime(2026, 11, 24, 9, 15, tzinfo=timezone.utc)  # createdAt has no zone: UTC
    assert item.text == "Hope the talks hold this time." and item.html == "<p>Hope the talks hold this time.</p>"
    assert item.hashtags == ("ukrainepeacetalks",)
    assert item.url == f"{ARTICLE}#comment-6100000001"
    assert item.reply_to_external_id == ""
    assert (item.author.external_id, item.author.handle, item.author.display_name) == ("3100002", "olena_k", "Olena K.")
    assert item.article.url == ARTICLE and item.article.title == "Peace talks resume in Istanbul"
    assert item.article.external_id == "9876543210"
    assert item.article.published_at == datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
    assert item.like_count == 2 and item.raw == raw


def test_a_guest_gets_a_stable_id_from_the_name_and_replies_point_at_their_parent():
    posts = {p["id"]: p for p in all_posts()}
    first = normalise_native(posts["6100000002"], hashtags=(TAG,))
    again = normalise_native(posts["6100000006"], hashtags=(TAG,))
    assert first.author.external_id.startswith("anonymous:")
    assert first.author.external_id == again.author.external_id and first.author.display_name == "Guest Reader"
    other = copy.deepcopy(posts["6100000002"])
    other["author"]["name"] = "Another Guest"
    assert normalise_native(other, hashtags=(TAG,)).author.external_id != first.author.external_id
    assert first.reply_to_external_id == "6100000001"


def test_hashtags_in_the_text_are_kept_beside_the_tracked_tag_and_links_are_made_safe():
    item = normalise_native(all_posts()[3], hashtags=(TAG,))
    assert item.hashtags == ("diplomacy", "ukrainepeacetalks")
    assert 'href="https://example.org/report"' in item.html and 'rel="nofollow noopener noreferrer"' in item.html


@pytest.mark.parametrize("flag", ["isDeleted", "isSpam"])
def test_a_deleted_or_spam_post_is_skipped(flag):
    raw = {**all_posts()[0], flag: True}
    assert normalise_native(raw, hashtags=(TAG,)) is None


@pytest.mark.parametrize("bad", ["0000-10-14T15:06:10", "yesterday", None, ""])
def test_a_bad_date_rejects_the_post_with_its_raw_payload(bad):
    raw = {**all_posts()[0], "createdAt": bad}
    result = normalise_native(raw, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "createdAt" in result.reason
    assert result.raw == raw and result.external_id == "6100000001"


def test_a_renamed_message_field_rejects_the_post():
    raw = dict(all_posts()[0])
    raw["body"] = raw.pop("message")
    result = normalise_native(raw, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "message" in result.reason


@pytest.mark.parametrize("payload", [
    "<script>alert(1)</script>", '<img src=x onerror="alert(1)">', '<a href="javascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>', '<iframe src="javascript:alert(1)"></iframe>',
])
def test_no_script_survives_in_the_stored_html(payload):
    raw = {**all_posts()[0], "message": f"<p>{payload}</p>"}
    html = normalise_native(raw, hashtags=(TAG,)).html.lower()
    for bad in ("<script", "javascript:", "onerror", "onload", "<svg", "<iframe", "<img"):
        assert bad not in html


# --- fetching --------------------------------------------------------------------------------------


def test_without_an_api_key_it_needs_credentials_before_any_request(upstream):
    with pytest.raises(NeedsCredentials, match="DISQUS_API_KEY"):
        connector(upstream, credentials={})
    assert upstream.requests == []


@pytest.mark.parametrize("options, message", [
    ({"article": ARTICLE}, "forum=SHORTNAME"),
    ({"article": "news.example/no-scheme", "forum": "newsroom"}, "http"),
    ({"backfill_days": "a week", "forum": "newsroom"}, "backfill_days"),
    ({"unrelated": "x"}, "nothing to collect"),
])
def test_missing_or_bad_options_are_a_clear_permanent_error(upstream, options, message):
    with pytest.raises(PermanentError, match=message):
        connector(upstream, **options)


def test_an_article_is_read_oldest_first_following_the_cursor_until_it_has_no_next(upstream):
    serve_fixture_pages(upstream)
    pages = list(connector(upstream).fetch(cursor={}))
    first, second = [seen.query for seen in upstream.requests]
    assert upstream.requests[0].path == "/api/3.0/threads/listPosts.json"
    assert (first["thread:link"], first["forum"], first["order"], first["limit"], first["related"]) == (
        ARTICLE, "newsroom", "asc", "100", "thread")
    assert "since" not in first and "cursor" not in first  # an article's first run reads all of it
    assert second["cursor"] == "1764002700000000:0:0"
    assert [item.external_id for item in items_of(pages)] == ["6100000001", "6100000002", "6100000004",
                                                              "6100000005", "6100000006"]
    assert pages[0].cursor == {"next": "1764002700000000:0:0", "newest": "2026-11-24T09:25:00", "skipped_deleted": 1}
    assert pages[-1].cursor == {"since": "2026-11-24T10:00:00", "skipped_deleted": 1}
    assert pages[-1].health_detail == {"skipped_deleted": 1}
    assert [page.fetched for page in pages] == [4, 2]


def test_a_later_run_asks_only_since_the_newest_comment(upstream):
    api = DisqusApi(upstream, all_posts(), page_size=3)
    first = list(connector(upstream).fetch(cursor={}))
    api.posts.append(post(1, datetime(2026, 11, 25, 8, 0)))
    upstream.requests.clear()
    later = list(connector(upstream).fetch(cursor=first[-1].cursor))
    assert upstream.requests[0].query["since"] == "2026-11-24T10:00:00"
    # The boundary comment comes again (since is inclusive) and is stored as the same row.
    assert [item.external_id for item in items_of(later)] == ["6100000006", "6200000001"]
    assert later[-1].cursor["since"] == "2026-11-25T08:00:00"


def test_a_run_resumes_from_the_saved_next_cursor(upstream):
    DisqusApi(upstream, [post(n, datetime(2026, 11, 24, 8, 0) + timedelta(minutes=n)) for n in range(1, 8)], page_size=3)
    pages = list(connector(upstream).fetch(cursor={"next": "1764002700000000:3:0", "newest": "2026-11-24T08:03:00"}))
    assert upstream.requests[0].query["cursor"] == "1764002700000000:3:0"
    assert [item.external_id for item in items_of(pages)] == [str(6200000000 + n) for n in range(4, 8)]
    assert pages[-1].cursor == {"since": "2026-11-24T08:07:00", "skipped_deleted": 0}


def test_a_whole_forum_uses_forums_list_posts_and_looks_back_a_week_at_first(upstream):
    DisqusApi(upstream, all_posts())
    pages = list(connector(upstream, forum="newsroom").fetch(cursor={}))
    seen = upstream.requests[0]
    assert seen.path == "/api/3.0/forums/listPosts.json" and seen.query["forum"] == "newsroom"
    assert seen.query["since"] == "2026-11-18T12:00:00"
    assert len(items_of(pages)) == 5 and all(item.article.url == ARTICLE for item in items_of(pages))


def test_a_thread_named_by_id_is_listed_by_that_id(upstream):
    DisqusApi(upstream, all_posts())
    list(connector(upstream, thread="9876543210").fetch(cursor={}))
    assert upstream.requests[0].query["thread"] == "9876543210" and "thread:link" not in upstream.requests[0].query


def test_a_post_naming_its_thread_by_id_gets_the_article_of_the_option(upstream):
    api = DisqusApi(upstream, all_posts()[:1])
    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = lambda path, query: api.handle(path, {**query, "related": ""})
    item = items_of(connector(upstream).fetch(cursor={}))[0]
    assert item.raw["thread"] == "9876543210" and item.article.url == ARTICLE


def test_a_spent_budget_stops_paging_until_the_reset(upstream):
    api = DisqusApi(upstream, all_posts(), page_size=2)
    reset = int((NOW + timedelta(minutes=40)).timestamp())
    api.headers = {"X-Ratelimit-Limit": "1000", "X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(reset)}
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(upstream.requests) == 1
    assert pages[-1].rate_limited_until == NOW + timedelta(minutes=40)
    assert pages[-1].cursor["next"] == "1764002700000000:2:0"  # the next run goes on from there


def test_a_repeated_cursor_does_not_loop(upstream):
    body = fixture("disqus_thread_page_1.json")
    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = lambda path, query: Reply(200, body)
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(upstream.requests) == 2 and len(items_of(pages)) == 3


def test_a_malformed_post_is_rejected_and_the_rest_of_the_page_kept(upstream):
    posts = all_posts()
    del posts[0]["createdAt"]
    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = lambda path, query: Reply(
        200, {"cursor": {"hasNext": False}, "code": 0, "response": posts})
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(items_of(pages)) == 4
    assert [r.external_id for r in pages[0].rejected] == ["6100000001"]


@pytest.mark.parametrize("reply, error, message", [
    (Reply(400, {"code": 5, "response": "Invalid API key"}), NeedsCredentials, "error 5.*DISQUS_API_KEY"),
    (Reply(403, {"code": 12, "response": "This application does not have enough privileges to access this resource"}),
     NeedsCredentials, "error 12"),
    (Reply(400, {"code": 2, "response": "Invalid argument, 'thread': Unable to find thread 'link:https://news.example/x'"}),
     PermanentError, "Unable to find thread"),
    (Reply(401, "Unauthorized", {"Content-Type": "text/plain"}), NeedsCredentials, "401"),
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(503, "", {}), TemporaryError, "503"),
    (Reply(200, {"code": 15, "response": "Internal server error"}), TemporaryError, "error 15"),
    (Reply(200, "<html><body>Disqus is down for maintenance</body></html>", {"Content-Type": "text/html"}),
     MalformedResponse, "expected JSON"),
    (Reply(200, '{"cursor": {}, "code": 0, "response": [', {}), MalformedResponse, "expected JSON"),
    (Reply(200, {"cursor": {}, "code": 0, "posts": []}), MalformedResponse, "envelope"),
    (Reply(200, {"cursor": {}, "code": 0, "response": {"id": "1"}}), MalformedResponse, "envelope"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    DisqusApi(upstream).override = reply
    with pytest.raises(error, match=message) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert "test-key" not in str(caught.value)


def test_the_rate_limit_error_waits_for_the_reset_header(upstream):
    reset = NOW + timedelta(minutes=25)
    DisqusApi(upstream).override = Reply(429, {"code": 13, "response": "You have exceeded the rate limit for this resource."},
                                         {"X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(int(reset.timestamp()))})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == reset


def test_a_429_with_retry_after_is_honoured(upstream):
    DisqusApi(upstream).override = Reply(429, "Too Many Requests", {"Retry-After": "120", "Content-Type": "text/plain"})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=120)


def test_every_request_names_itself(upstream):
    DisqusApi(upstream, all_posts())
    client = HttpClient(HttpSettings(user_agent="engagement-test/1", allow_private=True))
    sent = []
    client.session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response.request))
    list(connector(upstream, client=client).fetch(cursor={}))
    assert sent and all(request.headers["User-Agent"] == "engagement-test/1" for request in sent)


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, {"code": 0, "response": []})

    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(upstream, client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


# --- collecting into the database ------------------------------------------------------------------


@pytest.fixture
def disqus_key(settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "disqus": {"api_key": "test-key"}}


def add_source(upstream, **options) -> Source:
    return collect.register_source(platform="disqus", url=upstream.url + PREFIX, hashtags=[TAG],
                                   options=options or {"article": ARTICLE, "forum": "newsroom"})


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collecting_stores_comments_under_their_article_and_a_second_run_adds_nothing(upstream, disqus_key):
    DisqusApi(upstream, all_posts(), page_size=4)
    source = add_source(upstream)
    first = run(source)
    assert (first.outcome, first.pages, first.new, first.errors) == (CollectionRun.Outcome.OK, 2, 5, 0)
    article = Article.objects.get(url=ARTICLE)
    assert article.title == "Peace talks resume in Istanbul" and article.comments.count() == 5
    reply = Post.objects.get(external_id="6100000005")
    assert reply.reply_to.external_id == "6100000002"
    assert Post.objects.for_hashtag(TAG).filter(platform="disqus").count() == 5
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    source.refresh_from_db()
    assert source.health == Source.Health.OK and source.health_detail["skipped_deleted"] == 1
    assert Post.objects.filter(platform="disqus").count() == 5


@pytest.mark.django_db
def test_without_an_api_key_the_source_needs_credentials(upstream, settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "disqus": {}}
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "DISQUS_API_KEY" in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS and upstream.requests == []


@pytest.mark.django_db
def test_a_refused_key_marks_the_source_as_needing_credentials(upstream, settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "disqus": {"api_key": "wrong-key"}}
    DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert "Invalid API key" in result.message and "wrong-key" not in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS and "DISQUS_API_KEY" in source.last_error


@pytest.mark.django_db
def test_the_rate_limit_rests_the_source_until_the_reset_and_no_request_goes_out_before(upstream, disqus_key):
    reset = (datetime.now(timezone.utc) + timedelta(minutes=30)).replace(microsecond=0)
    DisqusApi(upstream).override = Reply(400, {"code": 13, "response": "You have exceeded the rate limit for this resource."},
                                         {"X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(int(reset.timestamp()))})
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.RATE_LIMITED and "rate limit" in result.message
    assert source.health == Source.Health.RATE_LIMITED and source.rate_limited_until == reset
    before = len(upstream.requests)
    assert collect.run_source(source.pk, owner="test") is None
    assert len(upstream.requests) == before


@pytest.mark.django_db
def test_html_on_a_later_page_fails_the_run_and_keeps_the_pages_stored_before(upstream, disqus_key):
    api = DisqusApi(upstream, all_posts(), page_size=4)
    original = api.handle

    def second_page_broken(path, query):
        if query.get("cursor"):
            return Reply(200, "<html><body>Bad gateway</body></html>", {"Content-Type": "text/html"})
        return original(path, query)

    upstream.routes[f"{PREFIX}/threads/listPosts.json"] = second_page_broken
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "expected JSON" in result.message
    assert Post.objects.filter(source=source).count() == 3  # page 1: 4 posts, one deleted
    assert "Bad gateway" in RejectedItem.objects.get(run=result).raw
    assert source.last_error_kind == Source.ErrorKind.MALFORMED and source.health == Source.Health.FAILING
    assert source.cursor["next"] == "1764002700000000:4:0"  # the next run retries only the failed page


# --- re-checking stored comments, and backfill to a date -------------------------------------------

RECHECK_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # the fixture's comments are a day old


def by_id(api: DisqusApi) -> dict[str, dict]:
    return {p["id"]: p for p in api.posts}


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_deleted_spam_or_unapproved_posts_as_tombstones(
        upstream, disqus_key, api_client):
    api = DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    assert run(source).new == 5
    posts = by_id(api)
    posts["6100000001"].update(message="<p>Hope the talks hold this week.</p>", raw_message="Hope the talks hold this week.",
                               isEdited=True)
    posts["6100000002"].update(isDeleted=True, message="", raw_message="")
    posts["6100000004"]["isSpam"] = True
    posts["6100000005"]["isApproved"] = False
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.edited, report.deleted, report.errors, report.message) == (5, 1, 3, 0, "")
    asked = upstream.requests_to(f"{PREFIX}/posts/details.json")
    assert len(asked) == len(upstream.requests) == 5  # one request per post: the API has no batch by id
    assert {seen.query["post"] for seen in asked} == {"6100000001", "6100000002", "6100000004", "6100000005", "6100000006"}
    assert all(seen.query["related"] == "thread" and seen.query["api_key"] == "test-key" for seen in asked)
    edited = Post.objects.get(external_id="6100000001")
    assert edited.text == "Hope the talks hold this week." and edited.article.url == ARTICLE
    assert [r.text for r in PostRevision.objects.filter(post=edited)] == ["Hope the talks hold this time."]
    reasons = dict(Post.objects.filter(deleted_at__isnull=False).values_list("external_id", "deletion_reason"))
    assert reasons == {"6100000002": "deleted on Disqus (isDeleted)", "6100000004": "marked as spam on Disqus (isSpam)",
                       "6100000005": "no longer approved on Disqus (isApproved: false, held for moderation)"}
    listed = {p["external_id"] for p in api_client.get("/api/v1/posts/", {"platform": "disqus"}).json()["results"]}
    assert listed == {"6100000001", "6100000006"}
    again = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (again.checked, again.edited, again.deleted) == (2, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_post_disqus_does_not_find_is_an_error_and_stays_stored(upstream, disqus_key):
    api = DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    run(source)
    api.posts = [p for p in api.posts if p["id"] != "6100000006"]
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 0, 0, 1)
    assert Post.objects.filter(deleted_at__isnull=False).count() == 0


@pytest.mark.django_db
def test_a_spent_budget_during_a_recheck_keeps_what_was_read_and_rests_the_source(upstream, disqus_key):
    api = DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    run(source)
    reset = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=30)
    api.headers = {"X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(int(reset.timestamp()))}
    by_id(api)["6100000001"]["isDeleted"] = True
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.deleted) == (1, 1) and "X-Ratelimit-Remaining" in report.message
    assert len(upstream.requests) == 1
    source.refresh_from_db()
    assert source.rate_limited_until == reset
    assert Post.objects.filter(last_checked_at__isnull=False).count() == 1


@pytest.mark.django_db
def test_a_rate_limit_error_during_a_recheck_stops_it(upstream, disqus_key):
    api = DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    run(source)
    api.override = Reply(429, {"code": 13, "response": "You have exceeded the rate limit for this resource."},
                         {"Retry-After": "900"})
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert report.checked == 0 and "rate limit" in report.message and len(upstream.requests) == 1
    source.refresh_from_db()
    assert source.rate_limited_until > datetime.now(timezone.utc) + timedelta(minutes=14)


@pytest.mark.django_db
def test_a_recheck_reads_at_most_its_bound_of_posts_per_call(upstream, disqus_key, monkeypatch):
    monkeypatch.setattr(disqus, "MAX_RECHECKS_PER_CALL", 2)
    DisqusApi(upstream, all_posts())
    source = add_source(upstream)
    run(source)
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert report.checked == 2 and len(upstream.requests) == 2
    assert Post.objects.filter(last_checked_at__isnull=True).count() == 3  # first in line next time


def forum_posts(days: int = 10) -> list[dict]:
    """Two comments a day, at 08:00 and 20:00, from 2026-11-10."""
    start = datetime(2026, 11, 10, 8, 0)
    return [post(n, start + timedelta(hours=12 * n)) for n in range(2 * days)]


@pytest.mark.django_db
def test_backfill_walks_back_to_the_date_and_a_second_call_makes_no_request(upstream, disqus_key):
    DisqusApi(upstream, forum_posts(), page_size=4)
    source = add_source(upstream, forum="newsroom")
    polling = {"since": "2026-11-19T20:00:00", "skipped_deleted": 0}
    Source.objects.filter(pk=source.pk).update(cursor=polling)
    since = datetime(2026, 11, 15, 12, 0, tzinfo=timezone.utc)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert (backfill.outcome, backfill.pages, backfill.new) == (CollectionRun.Outcome.OK, 3, 9)
    stored = sorted(Post.objects.values_list("created_at", flat=True))
    assert stored[0] == datetime(2026, 11, 15, 20, 0, tzinfo=timezone.utc) and len(stored) == 9
    asked = upstream.requests_to(f"{PREFIX}/forums/listPosts.json")
    assert [seen.query.get("cursor") for seen in asked] == [None, "1764002700000000:4:0", "1764002700000000:8:0"]
    assert all(seen.query["since"] == "2026-11-15T12:00:00" and seen.query["order"] == "asc" for seen in asked)
    source.refresh_from_db()
    assert source.cursor == {**polling, "history": {"backfilled_since": "2026-11-15T12:00:00"}}  # polling kept
    before = len(upstream.requests)
    again = collect.backfill_source(source.pk, since=since + timedelta(days=1), owner="test")
    assert (again.pages, again.new) == (0, 0) and len(upstream.requests) == before
    run(source)  # a poll keeps the finished walk
    source.refresh_from_db()
    assert source.cursor["history"] == {"backfilled_since": "2026-11-15T12:00:00"}


@pytest.mark.django_db
def test_a_backfill_stopped_by_its_bound_resumes_from_the_saved_disqus_cursor(upstream, disqus_key, monkeypatch):
    monkeypatch.setattr(disqus, "MAX_BACKFILL_PAGES", 2)
    DisqusApi(upstream, forum_posts(), page_size=4)
    source = add_source(upstream, forum="newsroom")
    since = datetime(2026, 11, 10, tzinfo=timezone.utc)
    first = collect.backfill_source(source.pk, since=since, owner="test")
    assert (first.pages, first.new) == (2, 8)
    source.refresh_from_db()
    assert source.cursor["history"] == {"since": "2026-11-10T00:00:00", "next": "1764002700000000:8:0"}
    upstream.requests.clear()
    collect.backfill_source(source.pk, since=since, owner="test")
    assert upstream.requests[0].query["cursor"] == "1764002700000000:8:0"
    collect.backfill_source(source.pk, since=since, owner="test")
    source.refresh_from_db()
    assert source.cursor["history"] == {"backfilled_since": "2026-11-10T00:00:00"}
    assert Post.objects.count() == 20


@pytest.mark.django_db
def test_a_spent_budget_stops_the_backfill_and_rests_the_source(upstream, disqus_key):
    api = DisqusApi(upstream, forum_posts(), page_size=4)
    reset = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=20)
    api.headers = {"X-Ratelimit-Remaining": "0", "X-Ratelimit-Reset": str(int(reset.timestamp()))}
    source = add_source(upstream, forum="newsroom")
    backfill = collect.backfill_source(source.pk, since=datetime(2026, 11, 10, tzinfo=timezone.utc), owner="test")
    assert (backfill.pages, backfill.new) == (1, 4) and len(upstream.requests) == 1
    source.refresh_from_db()
    assert source.rate_limited_until == reset and source.cursor["history"]["next"] == "1764002700000000:4:0"


# --- the real worker -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_collects_disqus_comments_into_the_api_and_a_second_run_adds_none(
        flushed_redis, upstream, start_worker, start_beat, api_client, process_env):
    DisqusApi(upstream, all_posts(), page_size=4)
    source = collect.register_source(platform="disqus", url=upstream.url + PREFIX, hashtags=[TAG], interval=2,
                                     options={"article": ARTICLE, "forum": "newsroom"})
    start_worker({**process_env, "DISQUS_API_KEY": "test-key"})
    start_beat()

    def listed():
        response = api_client.get("/api/v1/posts/", {"platform": "disqus"})
        assert response.status_code == 200, response.content
        return response.json()["results"]

    posts = wait_for(lambda: len(listed()) == 5 and listed(), timeout=60, message="5 Disqus comments in the API")
    assert {post["external_id"] for post in posts} == {"6100000001", "6100000002", "6100000004", "6100000005",
                                                       "6100000006"}

    def finished_runs():
        return list(CollectionRun.objects.filter(source=source, finished_at__isnull=False).order_by("started_at"))

    runs = wait_for(lambda: len(finished_runs()) >= 2 and finished_runs(), timeout=60, message="a second run")
    assert runs[0].new == 5 and runs[1].new == 0 and runs[1].outcome == CollectionRun.Outcome.OK
    assert Post.objects.filter(platform="disqus").count() == 5
