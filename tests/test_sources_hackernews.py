"""The Hacker News connector on recorded real Algolia bodies (../shared/fixtures/hackernews/) and a fake
Algolia search on 127.0.0.1.

Recorded file read here: fixtures.json (2014 bodies only, no status or headers: the tests serve them with
the statuses and headers they set). Built hits start from copies of recorded ones.
"""

from __future__ import annotations

import copy
import math
import time
from datetime import datetime, timedelta, timezone

import pytest
from django.utils import timezone as dj_timezone

from engagement import collect
from engagement.models import Article, CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources import hackernews as hn
from engagement.sources.base import (
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NormalisedItem,
    PermanentError,
    RateLimited,
    RejectedRaw,
    SourceConfig,
    TemporaryError,
)
from tests.conftest import wait_for
from tests.reddit_fake import current_headers, serve_posts_and_headers
from tests.upstream import Reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
SEARCH = "/api/v1/search_by_date"


def recorded_reply(recorded, url: str) -> dict:
    """The recorded body for one request (the recording keeps relative URLs)."""
    return copy.deepcopy(next(pair["reply"] for pair in recorded("hackernews/fixtures.json") if pair["url"] == url))


def recorded_hit(recorded, url: str) -> dict:
    return recorded_reply(recorded, url)["hits"][0]


def connector(upstream, *tags: str, client: HttpClient | None = None, now=lambda: NOW) -> hn.HackerNewsConnector:
    config = SourceConfig(platform="hackernews", base_url=upstream.url + "/api/v1", hashtags=tags or (TAG,))
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return hn.build(config, client=client, now=now, store=None)


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


class Algolia:
    """`search_by_date` over `hits`: newest first, `tags` OR-list, `numericFilters` on created_at_i, a loose
    substring `query` (like Algolia's prefix and typo matching), `hitsPerPage`/`page`, and Algolia's
    pagination limit (only the first `pagination_limit` hits of a query can be paged to)."""

    def __init__(self, upstream, hits: list[dict] | None = None, *, pagination_limit: int = 1000):
        self.hits = list(hits or [])
        self.pagination_limit = pagination_limit
        self.override: Reply | None = None
        upstream.routes[SEARCH] = self.handle

    def handle(self, path: str, query: dict) -> Reply:
        if self.override is not None:
            return self.override(path, query) if callable(self.override) else self.override
        wanted = set(query.get("tags", "(story,comment)").strip("()").split(","))
        found = [h for h in self.hits if wanted & set(h["_tags"])]
        for condition in filter(None, query.get("numericFilters", "").split(",")):
            for op, test in (("<=", lambda a, b: a <= b), (">=", lambda a, b: a >= b), ("<", lambda a, b: a < b),
                             (">", lambda a, b: a > b)):
                if op in condition:
                    field, value = condition.split(op)
                    found = [h for h in found if test(h[field], int(value))]
                    break
        word = query.get("query", "").casefold()[:5]
        found = [h for h in found if word in " ".join(str(h.get(f) or "") for f in
                                                       ("title", "story_text", "comment_text", "story_title")).casefold()]
        found.sort(key=lambda h: h["created_at_i"], reverse=True)
        per_page, number = int(query.get("hitsPerPage", 20)), int(query.get("page", 0))
        reachable = found[:self.pagination_limit]
        chunk = reachable[number * per_page:(number + 1) * per_page]
        return Reply(200, {"hits": chunk, "nbHits": len(found), "page": number,
                           "nbPages": math.ceil(len(reachable) / per_page), "hitsPerPage": per_page,
                           "processingTimeMS": 1, "query": query.get("query", ""), "params": ""})


@pytest.fixture
def templates(recorded):
    """A recorded comment hit and a recorded story hit, to build hits from."""
    return (recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(comment)"),
            recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(story)"))


def make_story(templates, n: int, *, title: str | None = None, at: int | None = None) -> dict:
    story = copy.deepcopy(templates[1])
    ident = 40_000_000 + n
    created = at if at is not None else int(datetime(2026, 11, 20, tzinfo=timezone.utc).timestamp()) + n * 60
    story.update(objectID=str(ident), title=title if title is not None else f"Story {n}: #{TAG} in Geneva",
                 created_at_i=created, created_at=datetime.fromtimestamp(created, tz=timezone.utc).isoformat(),
                 _tags=["story", f"author_{story['author']}", f"story_{ident}"], num_comments=1, points=5)
    return story


def make_comment(templates, n: int, *, story: dict, parent: dict | None = None, text: str | None = None,
                 at: int | None = None) -> dict:
    comment = copy.deepcopy(templates[0])
    ident = 41_000_000 + n
    created = at if at is not None else story["created_at_i"] + 30
    comment.update(objectID=str(ident), comment_text=text if text is not None else f"Reply {n} about {TAG} &amp; more",
                   created_at_i=created, created_at=datetime.fromtimestamp(created, tz=timezone.utc).isoformat(),
                   story_id=int(story["objectID"]), story_title=story["title"], story_url=story["url"],
                   parent_id=int((parent or story)["objectID"]),
                   _tags=["comment", f"author_{comment['author']}", f"story_{story['objectID']}"])
    return comment


# --- parsing the recordings ------------------------------------------------------------------------


def test_a_recorded_comment_hit_becomes_a_reply_with_its_story_as_article(recorded):
    hit = recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(comment)")
    item = hn.normalise_native(hit, hashtags=("Favorite",))
    assert isinstance(item, NormalisedItem) and item.kind == "comment"
    assert item.external_id == item.url == "https://news.ycombinator.com/item?id=7919431"
    assert item.reply_to_external_id == "https://news.ycombinator.com/item?id=7919207"
    assert item.article.url == "https://news.ycombinator.com/item?id=7919207"
    assert item.article.title == "Fibonacci Flim-Flam" and item.article.external_id == "7919207"
    assert item.created_at == datetime(2014, 6, 20, 3, 39, 55, tzinfo=timezone.utc)
    assert item.author.handle == "gohrt" and item.author.url == "https://news.ycombinator.com/user?id=gohrt"
    assert "What's fascinating" in item.text  # &#x27; decoded
    assert 'rel="nofollow noopener noreferrer"' in item.html
    assert item.hashtags == ("favorite",)
    assert item.raw == hit


def test_recorded_stories_with_null_and_empty_fields_are_all_read(recorded):
    poll = recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(poll)")  # url null
    link = recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(story)")  # story_text ""
    ask = recorded_hit(recorded, "/api/v1/search?hitsPerPage=1&tags=(ask_hn)&page=2&query=apple")  # url ""
    assert (poll["url"], link["story_text"], ask["url"]) == (None, "", "")
    hum = hn.normalise_native(poll, hashtags=("hum",))
    assert hum.kind == "post" and hum.reply_to_external_id == "" and hum.article is None
    assert hum.text.startswith('Poll: Do you experience "The Hum"?\n\nAccording to this article')
    assert "<a " not in hum.html
    judge = hn.normalise_native(link, hashtags=("google",))
    assert judge.text.startswith("Judge says concerned about Apple, Google hiring settlement")
    assert '<a href="http://in.reuters.com/article/2014/06/19/' in judge.html
    rules = hn.normalise_native(ask, hashtags=("apple",))
    assert rules.reply_count == 84 and rules.like_count == 57 and "<a " not in rules.html


def test_a_hit_algolia_matched_loosely_is_not_stored(recorded):
    # Algolia found this for "apple" through "applauded"; the word itself is not there.
    fuzzy = recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(comment)&query=apple")
    assert "applauded" in fuzzy["comment_text"] and "apple" not in fuzzy["comment_text"].casefold().replace(
        "applauded", "")
    assert hn.normalise_native(fuzzy, hashtags=("apple",)) is None
    possessive = recorded_hit(recorded, "/api/v1/search?hitsPerPage=1&tags=(comment)&query=apple")
    assert hn.normalise_native(possessive, hashtags=("apple",)).hashtags == ("apple",)  # "Apple's reputation"


def test_a_comment_under_a_story_whose_title_has_the_word_is_part_of_the_conversation(recorded):
    hit = recorded_hit(recorded, "/api/v1/search_by_date?hitsPerPage=1&tags=(comment)%2Cauthor_pg")
    assert hit["story_title"] == "Meet the People Taking over Hacker News"
    assert hn.normalise_native(hit, hashtags=("people",)).kind == "comment"
    assert hn.normalise_native(hit, hashtags=("forum",)).kind == "comment"  # its own text
    assert hn.normalise_native(hit, hashtags=("ycombinator",)) is None  # only in story_url


def test_a_recorded_item_of_the_items_api_is_read_too(recorded):
    item17 = recorded_reply(recorded, "/api/v1/items/17")
    item = hn.normalise_native(item17, hashtags=("Sandhill",))
    assert item.kind == "comment" and item.text == "Is there anywhere to eat on Sandhill Road?"
    assert item.reply_to_external_id == "https://news.ycombinator.com/item?id=15"
    assert item.raw["children"] == [1079, 454426]  # each reply is an item of its own


def test_the_word_must_stand_alone_and_not_only_inside_a_link():
    keys = ("ukrainepeacetalks",)
    assert hn.matched_words("Talks: #UkrainePeaceTalks.", keys) == keys
    assert hn.matched_words("UKRAINEPEACETALKS today", keys) == keys
    assert hn.matched_words("UkrainePeaceTalksNow", keys) == ()
    assert hn.matched_words("see https://example.org/UkrainePeaceTalks", keys) == ()


@pytest.mark.parametrize("created_at_i, created_at", [("soon", "yesterday"), (None, None), (1e20, "")])
def test_a_bad_date_rejects_the_hit_with_its_raw_payload(templates, created_at_i, created_at):
    hit = make_story(templates, 1)
    hit.update(created_at_i=created_at_i, created_at=created_at)
    result = hn.normalise_native(hit, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "created_at_i" in result.reason
    assert result.raw == hit and result.external_id == "https://news.ycombinator.com/item?id=40000001"


def test_the_iso_date_is_used_when_the_epoch_is_missing(templates):
    hit = make_story(templates, 1)
    del hit["created_at_i"]
    hit["created_at"] = "2026-11-20T10:00:00.000Z"
    assert hn.normalise_native(hit, hashtags=(TAG,)).created_at == datetime(2026, 11, 20, 10, tzinfo=timezone.utc)


XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>',
    '<iframe src="javascript:alert(1)"></iframe>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_no_script_survives_in_stored_html(templates, payload):
    story = make_story(templates, 1)
    story["story_text"] = payload
    story["url"] = "javascript:alert(1)"
    comment = make_comment(templates, 1, story=story, text=f"<p>{payload} {TAG}")
    for item in (hn.normalise_native(story, hashtags=(TAG,)), hn.normalise_native(comment, hashtags=(TAG,))):
        lowered = item.html.lower()
        assert "<script" not in lowered and "javascript:" not in lowered and " on" not in lowered
        for tag in ("<svg", "<iframe", "<img"):
            assert tag not in lowered


def test_a_title_is_text_never_markup(templates):
    story = make_story(templates, 1, title=f'<img src=x onerror="alert(1)"> #{TAG}')
    item = hn.normalise_native(story, hashtags=(TAG,))
    assert item.html.startswith("<p>&lt;img src=x onerror=")
    assert item.text.startswith('<img src=x onerror="alert(1)">')  # shown as typed, escaped when rendered


# --- fetching --------------------------------------------------------------------------------------


def test_recorded_bodies_served_on_a_fake_are_collected_with_the_word_checked_locally(upstream, recorded):
    bodies = [recorded_reply(recorded, f"/api/v1/search_by_date?hitsPerPage=1&tags=({kind})&query=apple")
              for kind in ("comment", "story%2Cpoll", "poll")]
    body = {**bodies[0], "hits": [hit for b in bodies for hit in b["hits"]], "nbHits": 3, "nbPages": 1,
            "hitsPerPage": 100}
    upstream.routes[SEARCH] = lambda path, query: Reply(200, body, {"Content-Type": "application/json; charset=utf-8"})
    pages = list(connector(upstream, "Apple").fetch(cursor={}))
    assert [page.fetched for page in pages] == [3]
    # The comment was a fuzzy match ("applauded"); the story and the poll carry the word.
    assert [item.external_id for item in items_of(pages)] == [
        "https://news.ycombinator.com/item?id=7919424", "https://news.ycombinator.com/item?id=6604931"]
    asked = upstream.requests_to(SEARCH)[0].query
    assert asked == {"query": "Apple", "tags": "(story,comment)", "hitsPerPage": "100", "page": "0",
                     "numericFilters": f"created_at_i>{int((NOW - hn.BACKFILL - hn.INDEX_LAG).timestamp())}"}
    # Hits older than the backfill window (2014 here) do not move `since` back.
    assert pages[-1].cursor == {"apple": {"since": int((NOW - hn.BACKFILL).timestamp())}}


def test_the_first_run_pages_to_nbpages_and_keeps_the_newest_time(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 251)]
    Algolia(upstream, stories)
    pages = list(connector(upstream).fetch(cursor={}))
    assert [seen.query["page"] for seen in upstream.requests_to(SEARCH)] == ["0", "1", "2"]
    assert len({item.external_id for item in items_of(pages)}) == 250
    assert pages[-1].cursor == {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"]}}
    assert pages[0].cursor["ukrainepeacetalks"]["upper"] == stories[150]["created_at_i"]


def test_a_later_run_asks_only_for_items_after_the_cursor_with_a_margin_for_late_indexing(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 11)]
    Algolia(upstream, stories)
    since = stories[4]["created_at_i"]
    pages = list(connector(upstream).fetch(cursor={"ukrainepeacetalks": {"since": since}}))
    filters = upstream.requests_to(SEARCH)[0].query["numericFilters"]
    assert filters == f"created_at_i>{since - int(hn.INDEX_LAG.total_seconds())}"
    assert {item.raw["objectID"] for item in items_of(pages)} == {s["objectID"] for s in stories}
    assert pages[-1].cursor == {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"]}}


def test_a_run_stops_at_the_page_bound_and_the_next_one_continues_below_the_oldest_stored(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 1301)]
    Algolia(upstream, stories)
    first = list(connector(upstream).fetch(cursor={}))
    assert len(first) == hn.MAX_PAGES_PER_RUN
    state = first[-1].cursor["ukrainepeacetalks"]
    assert state["upper"] == stories[300]["created_at_i"] and state["newest"] == stories[-1]["created_at_i"]
    upstream.requests.clear()
    second = list(connector(upstream).fetch(cursor=first[-1].cursor))
    assert upstream.requests_to(SEARCH)[0].query["numericFilters"].endswith(f",created_at_i<={state['upper']}")
    collected = {item.raw["objectID"] for item in items_of(first + second)}
    assert collected == {s["objectID"] for s in stories}
    assert second[-1].cursor == {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"]}}


def test_results_beyond_algolias_pagination_limit_are_read_below_the_oldest_hit(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 701)]
    Algolia(upstream, stories, pagination_limit=500)
    pages = list(connector(upstream).fetch(cursor={}))
    assert [seen.query["page"] for seen in upstream.requests_to(SEARCH)] == ["0", "1", "2", "3", "4", "0", "1", "2"]
    assert {item.raw["objectID"] for item in items_of(pages)} == {s["objectID"] for s in stories}
    assert pages[-1].cursor == {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"]}}


def test_comments_point_at_their_parents_and_stories(upstream, templates):
    story = make_story(templates, 1)
    top = make_comment(templates, 1, story=story)
    reply = make_comment(templates, 2, story=story, parent=top, text="I disagree.")  # in the story's conversation
    Algolia(upstream, [story, top, reply])
    items = {item.raw["objectID"]: item for item in items_of(connector(upstream).fetch(cursor={}))}
    assert items[reply["objectID"]].reply_to_external_id == items[top["objectID"]].external_id
    assert items[top["objectID"]].reply_to_external_id == items[story["objectID"]].external_id
    assert items[top["objectID"]].text == f"Reply 1 about {TAG} & more"


def test_429_waits_for_retry_after(upstream):
    Algolia(upstream).override = Reply(429, {"message": "Too many requests", "status": 429}, {"Retry-After": "90"})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=90)


def test_429_without_retry_after_waits_the_documented_time(upstream):
    Algolia(upstream).override = Reply(429, {"message": "Too many requests", "status": 429})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == NOW + hn.RATE_LIMIT_WAIT


@pytest.mark.parametrize("reply, error, message", [
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(503, "", {}), TemporaryError, "503"),
    (Reply(200, "<html><body>maintenance</body></html>", {"Content-Type": "text/html"}), MalformedResponse,
     "expected JSON"),
    (Reply(200, '{"hits": [{"objectID": "1"', {}), MalformedResponse, "expected JSON"),
    (Reply(200, {"results": [], "nbPages": 0}, {}), MalformedResponse, "hits list"),
    (Reply(200, {"hits": {}, "nbPages": 0}, {}), MalformedResponse, "hits list"),
    (Reply(200, {"hits": [], "pages": 0}, {}), MalformedResponse, "nbPages"),
    (Reply(400, {"message": "invalid numericFilters", "status": 400}, {}), PermanentError, "400"),
    (Reply(404, {"message": "Not Found"}, {}), PermanentError, "404"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    Algolia(upstream).override = reply
    with pytest.raises(error, match=message):
        list(connector(upstream).fetch(cursor={}))


def test_a_malformed_hit_is_rejected_and_the_rest_of_the_page_kept(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 4)]
    del stories[1]["objectID"]
    stories[2].update(title=None, story_text=f"About {TAG}")
    Algolia(upstream, stories)
    (page,) = connector(upstream).fetch(cursor={})
    assert [item.raw["objectID"] for item in page.items] == [stories[0]["objectID"]]
    assert sorted(r.reason for r in page.rejected) == ["hit has no objectID", "story title is missing or not a string"]


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, {"hits": [], "nbPages": 0})

    Algolia(upstream).override = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(upstream, client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


def test_every_request_names_itself(upstream, templates):
    serve_posts_and_headers(upstream, {})
    agents = []
    algolia = Algolia(upstream, [make_story(templates, 1)])

    def handle(path, query):
        agents.append(current_headers().get("user-agent"))
        return algolia.handle(path, query)

    upstream.routes[SEARCH] = handle
    client = HttpClient(HttpSettings(user_agent="engagement-test/1 (+https://example.org/bot)", allow_private=True))
    list(connector(upstream, client=client).fetch(cursor={}))
    assert agents == ["engagement-test/1 (+https://example.org/bot)"]


@pytest.mark.parametrize("url, root", [
    ("https://hn.algolia.com", hn.API_ROOT), ("https://hn.algolia.com/api/v1", hn.API_ROOT),
    ("https://news.ycombinator.com/", hn.API_ROOT), ("http://127.0.0.1:9000", "http://127.0.0.1:9000/api/v1"),
    ("http://127.0.0.1:9000/api/v1/", "http://127.0.0.1:9000/api/v1"),
])
def test_the_registered_url_is_read_as_the_api_root(url, root):
    assert hn._api_root(url) == root


# --- through collection, on the real database ------------------------------------------------------


def register(upstream) -> Source:
    return collect.register_source(platform="hackernews", url=upstream.url + "/api/v1", hashtags=[TAG])


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collection_stores_stories_and_linked_comments_and_a_second_run_adds_no_rows(upstream, templates):
    story = make_story(templates, 1)
    top = make_comment(templates, 1, story=story)
    reply = make_comment(templates, 2, story=story, parent=top)
    elsewhere = make_story(templates, 2, title="Ukraine peace talks resume")  # the words, not the tag
    Algolia(upstream, [story, top, reply, elsewhere])
    source = register(upstream)
    first = run(source)
    assert (first.outcome, first.fetched, first.new) == (CollectionRun.Outcome.OK, 4, 3)
    stored_reply = Post.objects.get(external_id=hn.ITEM_URL.format(reply["objectID"]))
    assert stored_reply.reply_to.external_id == hn.ITEM_URL.format(top["objectID"])
    assert stored_reply.article == Article.objects.get(url=hn.ITEM_URL.format(story["objectID"]))
    assert Post.objects.get(external_id=hn.ITEM_URL.format(top["objectID"])).reply_to.kind == "post"
    assert Post.objects.for_hashtag(TAG).count() == 3
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 3
    source.refresh_from_db()
    # `since` is the newest time Algolia returned, stored or not.
    assert source.health == Source.Health.OK
    assert source.cursor == {"ukrainepeacetalks": {"since": elsewhere["created_at_i"]}}


@pytest.mark.django_db
def test_a_rejected_hit_makes_a_partial_run_with_the_rest_stored(upstream, templates):
    stories = [make_story(templates, n) for n in range(1, 4)]
    stories[1]["created_at_i"] = stories[1]["created_at"] = "never"
    algolia_hits = [stories[2], stories[1], stories[0]]
    upstream.routes[SEARCH] = lambda path, query: Reply(200, {"hits": algolia_hits, "nbPages": 1, "nbHits": 3})
    source = register(upstream)
    result = run(source)
    assert result.outcome == CollectionRun.Outcome.PARTIAL and Post.objects.count() == 2
    rejected = RejectedItem.objects.get()
    assert "created_at_i" in rejected.reason and rejected.raw["objectID"] == stories[1]["objectID"]


def slow_search(settings):
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 0.3

    def slow(path, query):
        time.sleep(1.5)
        return Reply(200, {"hits": [], "nbPages": 0})

    return slow


FAILURES = {
    "rate-limited": (lambda settings: Reply(429, {"message": "Too many requests"}, {"Retry-After": "240"}),
                     Source.Health.RATE_LIMITED, "rate-limited (429)"),
    "server error": (lambda settings: Reply(502, "<h1>Bad gateway</h1>", {"Content-Type": "text/html"}),
                     Source.Health.FAILING, "upstream error 502"),
    "timeout": (slow_search, Source.Health.FAILING, "timed out"),
    "html": (lambda settings: Reply(200, "<html>Algolia is down</html>", {"Content-Type": "text/html"}),
             Source.Health.FAILING, "expected JSON"),
    "changed field": (lambda settings: Reply(200, {"results": [], "nbPages": 0}),
                      Source.Health.FAILING, "expected an object with a hits list"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_each_failure_ends_in_a_clear_source_state_and_message(upstream, settings, failure):
    arrange, health, message = FAILURES[failure]
    Algolia(upstream).override = arrange(settings)
    source = register(upstream)
    started = datetime.now(timezone.utc)
    result = run(source)
    source.refresh_from_db()
    assert message in result.message and source.health == health
    if health == Source.Health.RATE_LIMITED:
        assert result.outcome == CollectionRun.Outcome.RATE_LIMITED
        assert source.rate_limited_until >= started + timedelta(seconds=239)
        assert source.next_poll_at >= source.rate_limited_until  # no request before then
    else:
        assert result.outcome == CollectionRun.Outcome.FAILED and message in source.last_error
    if failure in ("html", "changed field"):
        assert source.last_error_kind == Source.ErrorKind.MALFORMED
        assert RejectedItem.objects.filter(source=source).count() == 1


@pytest.mark.django_db
def test_no_credentials_are_needed(upstream, templates, settings):
    settings.ENGAGEMENT_CREDENTIALS = {}
    Algolia(upstream, [make_story(templates, 1)])
    assert run(register(upstream)).new == 1


# --- the real worker -------------------------------------------------------------------------------


def api_posts(api_client, **params) -> list[dict]:
    response = api_client.get("/api/v1/posts/", params)
    assert response.status_code == 200, response.content
    return response.json()["results"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_collects_hacker_news_into_the_api_and_a_second_run_adds_nothing(
    flushed_redis, upstream, templates, start_worker, start_beat, api_client
):
    story = make_story(templates, 1)
    comment = make_comment(templates, 1, story=story)
    Algolia(upstream, [story, comment, make_story(templates, 2, title="Unrelated")])
    source = collect.register_source(platform="hackernews", url=upstream.url + "/api/v1", hashtags=[TAG], interval=1)
    worker = start_worker()
    start_beat()
    posts = wait_for(lambda: len(api_posts(api_client, platform="hackernews")) == 2 and
                     api_posts(api_client, platform="hackernews"), timeout=60, message="2 hackernews items in the API")
    assert {post["external_id"] for post in posts} == {hn.ITEM_URL.format(story["objectID"]),
                                                       hn.ITEM_URL.format(comment["objectID"])}
    assert {post["kind"] for post in posts} == {"post", "comment"}
    wait_for(lambda: CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK).count() >= 2,
             timeout=60, message="a second finished run")
    later = CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK).order_by("id")[1:]
    assert all(run.new == 0 for run in later)
    assert Post.objects.filter(platform="hackernews").count() == 2
    assert worker.proc.poll() is None


# --- backfill and re-check -------------------------------------------------------------------------
# The recording has no deleted item. Deleted items are built from what algolia/hn-search's own code
# serves: `/api/v1/items/<id>` looks items up with `Item.where(deleted: false).find(id)` (a 404 for a
# deleted one; Rails' JSON error body), and ItemSerializer gives deleted or dead items as their `id` and
# `children` only.
ITEMS = "/api/v1/items/"
NOT_FOUND = {"status": 404, "error": "Not Found"}


class ItemsApi:
    """`/api/v1/items/<id>`: the items API's form of each hit (text wrapped as hn-search does), or the
    reply set in `replies`."""

    def __init__(self, upstream, hits: list[dict]):
        self.items = {int(hit["objectID"]): item_of(hit) for hit in hits}
        self.replies: dict[int, Reply] = {}
        upstream.prefix_routes.append((ITEMS, self.handle))

    def handle(self, path: str, query: dict) -> Reply:
        ident = int(path.rsplit("/", 1)[1])
        if ident in self.replies:
            return self.replies[ident]
        return Reply(200, self.items[ident]) if ident in self.items else Reply(404, NOT_FOUND)


def item_of(hit: dict) -> dict:
    """A search hit as the items API serves it (hn-search's ItemSerializer)."""
    comment = "comment" in hit["_tags"]
    text = hit.get("comment_text") if comment else hit.get("story_text")
    item = {"id": int(hit["objectID"]), "created_at": hit["created_at"], "created_at_i": hit["created_at_i"],
            "type": "comment" if comment else "story", "author": hit["author"],
            "text": f"<p>{text.replace('<p>', '</p><p>')}</p>" if text else text, "points": hit.get("points"),
            "children": []}
    if comment:
        item.update(parent_id=hit["parent_id"], story_id=hit["story_id"])
    else:
        item.update(title=hit["title"], url=hit["url"])
    return item


def recent(hours: float) -> int:
    return int((dj_timezone.now() - timedelta(hours=hours)).timestamp())


def test_the_recorded_item_of_the_items_api_is_no_edit_of_the_same_comment_stored_from_search(upstream, recorded):
    # The items API wraps text in <p> (hn-search's serializer); search hits keep HN's own markup.
    item17 = recorded_reply(recorded, "/api/v1/items/17")
    stored = {"objectID": "17", "comment_text": "Is there anywhere to eat on Sandhill Road?", "author": "pg",
              "created_at": item17["created_at"], "created_at_i": item17["created_at_i"], "points": 5,
              "parent_id": 15, "story_id": 1, "story_title": "Y Combinator", "_tags": ["comment", "story_1"]}
    upstream.prefix_routes.append((ITEMS, lambda path, query: Reply(200, item17)))
    (result,) = connector(upstream, "Sandhill").recheck([(hn.ITEM_URL.format(17), stored)])
    assert result.item == hn.normalise_native(stored, hashtags=("Sandhill",))
    assert [seen.path for seen in upstream.requests] == ["/api/v1/items/17"]


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_deleted_or_dead_items_as_tombstones(
        upstream, templates, api_client):
    story = make_story(templates, 1, at=recent(5))
    edited, deleted, dead = (make_comment(templates, n, story=story, at=recent(5 - n)) for n in (1, 2, 3))
    Algolia(upstream, [story, edited, deleted, dead])
    source = register(upstream)
    assert run(source).new == 4
    items = ItemsApi(upstream, [story, edited, deleted, dead])
    items.items[int(edited["objectID"])]["text"] = f"<p>Corrected: {TAG} resumes on Monday</p>"
    del items.items[int(deleted["objectID"])]
    items.items[int(dead["objectID"])] = {"id": int(dead["objectID"]), "children": []}
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (4, 1, 2, 0)
    assert len(upstream.requests_to(ITEMS)) == 4
    revision = PostRevision.objects.get()
    assert revision.post.external_id == hn.ITEM_URL.format(edited["objectID"])
    assert revision.text == f"Reply 1 about {TAG} & more"
    assert revision.post.text == f"Corrected: {TAG} resumes on Monday"
    gone = {post.external_id: post for post in Post.objects.filter(deleted_at__isnull=False)}
    assert gone[hn.ITEM_URL.format(deleted["objectID"])].deletion_reason == "deleted upstream (404 from the HN items API)"
    assert "dead" in gone[hn.ITEM_URL.format(dead["objectID"])].deletion_reason
    listed = {post["external_id"] for post in api_posts(api_client)}
    assert listed == {hn.ITEM_URL.format(story["objectID"]), hn.ITEM_URL.format(edited["objectID"])}
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (2, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_recheck_that_cannot_tell_reports_errors_and_deletes_nothing(upstream, templates):
    stories = [make_story(templates, n, at=recent(n)) for n in (1, 2, 3)]
    Algolia(upstream, stories)
    source = register(upstream)
    run(source)
    items = ItemsApi(upstream, stories)
    items.replies[int(stories[0]["objectID"])] = Reply(500, {"status": 500, "error": "Internal Server Error"})
    items.replies[int(stories[1]["objectID"])] = Reply(404, "<html>Not here</html>", {"Content-Type": "text/html"})
    items.replies[int(stories[2]["objectID"])] = Reply(200, {"id": 1, "author": "pg", "text": "another"})
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (3, 0, 0, 3)
    assert Post.objects.alive().count() == 3 and len(upstream.requests_to(ITEMS)) == 3


@pytest.mark.django_db
def test_a_service_that_keeps_failing_stops_the_recheck(upstream, templates):
    stories = [make_story(templates, n, at=recent(n)) for n in range(1, 6)]
    Algolia(upstream, stories)
    source = register(upstream)
    run(source)
    upstream.prefix_routes.insert(0, (ITEMS, lambda path, query: Reply(502, "Bad gateway")))
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.errors) == (2, 2) and "3 items in a row" in report.message
    assert len(upstream.requests_to(ITEMS)) == hn.MAX_SERVER_ERRORS_IN_A_ROW


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream, templates):
    stories = [make_story(templates, n, at=recent(n)) for n in (1, 2)]
    Algolia(upstream, stories)
    source = register(upstream)
    run(source)
    upstream.prefix_routes.insert(0, (ITEMS, lambda path, query: Reply(429, {"message": "Too many"},
                                                                         {"Retry-After": "300"})))
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until > dj_timezone.now() + timedelta(seconds=250)
    assert len(upstream.requests_to(ITEMS)) == 1
    assert Post.objects.filter(last_checked_at__isnull=False).count() == 0


def start_of(day: int) -> int:
    return int(datetime(2026, 10, day, tzinfo=timezone.utc).timestamp())


@pytest.mark.django_db
def test_backfill_walks_back_to_the_date_and_a_second_call_makes_no_request(upstream, templates):
    # 300 stories, one an hour from 1 October; polling has covered the newest 50 and `since` is the newest.
    stories = [make_story(templates, n, at=start_of(1) + n * 3600) for n in range(300)]
    Algolia(upstream, stories)
    source = register(upstream)
    polled = {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"]}}
    Source.objects.filter(pk=source.pk).update(cursor=polled)
    since = datetime.fromtimestamp(stories[100]["created_at_i"], tz=timezone.utc)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert (backfill.outcome, backfill.pages, backfill.fetched, backfill.new) == (CollectionRun.Outcome.OK, 2, 200, 200)
    stored = sorted(Post.objects.values_list("created_at", flat=True))
    assert stored[0] == since and len(stored) == 200
    asked = [seen.query for seen in upstream.requests_to(SEARCH)]
    assert [(q["numericFilters"], q["page"]) for q in asked] == [
        (f"created_at_i>={stories[100]['created_at_i']},created_at_i<{stories[-1]['created_at_i'] + 1}", "0"),
        (f"created_at_i>={stories[100]['created_at_i']},created_at_i<{stories[-1]['created_at_i'] + 1}", "1")]
    source.refresh_from_db()
    assert source.cursor == {"ukrainepeacetalks": {"since": stories[-1]["created_at_i"],
                                                   "backfilled_since": stories[100]["created_at_i"]}}
    again = collect.backfill_source(source.pk, since=since, owner="test")
    assert (again.outcome, again.pages) == (CollectionRun.Outcome.OK, 0)
    assert len(upstream.requests_to(SEARCH)) == 2
    # Polling keeps the finished walk; a walk further back starts where this one ended.
    run(source)
    source.refresh_from_db()
    assert source.cursor["ukrainepeacetalks"]["backfilled_since"] == stories[100]["created_at_i"]
    upstream.requests.clear()
    earlier = datetime.fromtimestamp(stories[50]["created_at_i"], tz=timezone.utc)
    assert collect.backfill_source(source.pk, since=earlier, owner="test").new == 50
    assert [seen.query["numericFilters"] for seen in upstream.requests_to(SEARCH)] == [
        f"created_at_i>={stories[50]['created_at_i']},created_at_i<{stories[100]['created_at_i']}"]


@pytest.mark.django_db
def test_backfill_is_bounded_per_call_and_the_next_call_resumes_past_algolias_pagination_limit(
        upstream, templates, monkeypatch):
    monkeypatch.setattr(hn, "MAX_BACKFILL_PAGES", 2)
    stories = [make_story(templates, n, at=start_of(1) + n * 3600) for n in range(450)]
    Algolia(upstream, stories, pagination_limit=300)
    source = register(upstream)
    since = datetime.fromtimestamp(stories[0]["created_at_i"], tz=timezone.utc)
    calls = []
    while len(calls) < 5:
        calls.append(collect.backfill_source(source.pk, since=since, owner="test"))
        source.refresh_from_db()
        if "backfill_before" not in source.cursor["ukrainepeacetalks"]:
            break
    assert [call.pages for call in calls] == [2, 2, 1]
    assert Post.objects.count() == 450
    pages = [(seen.query["numericFilters"].split(",")[1], seen.query["page"]) for seen in upstream.requests_to(SEARCH)]
    below = f"created_at_i<{stories[150]['created_at_i'] + 1}"  # the oldest hit of the first 300 reachable
    assert pages[2:] == [(pages[0][0], "2"), (below, "0"), (below, "1")]
    assert source.cursor == {"ukrainepeacetalks": {"backfilled_since": stories[0]["created_at_i"]}}


def test_a_rate_limit_during_backfill_raises_like_fetch(upstream):
    Algolia(upstream).override = Reply(429, {"message": "Too many requests"}, {"Retry-After": "60"})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).backfill(since=NOW - timedelta(days=60), cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=60)
