"""The Reddit connector on recorded real responses (../shared/fixtures/reddit/) and a fake API on 127.0.0.1.

Recorded files read here: search_r_all.json, comments_tree_with_more.json, comments_tree_deleted.json,
comment_deleted_absent_from_tree.json. The 2016 recordings have no x-ratelimit-* headers, so the rate
limits are tested on responses built by tests/reddit_fake.py.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone

import pytest

from engagement import collect
from engagement.models import CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources import reddit
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
from tests.conftest import wait_for
from tests.reddit_fake import MemoryStore, RedditApi, listing, make_comment, make_submission, thing
from tests.upstream import Reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
CREDENTIALS = {"client_id": "app-id", "client_secret": "app-secret"}


def connector(upstream, *tags: str, options: dict | None = None, credentials: dict | None = None,
              store: MemoryStore | None = None, client: HttpClient | None = None, now=lambda: NOW):
    config = SourceConfig(platform="reddit", base_url=upstream.url, hashtags=tags or (TAG,), options=options or {},
                          credentials=CREDENTIALS if credentials is None else credentials)
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return reddit.build(config, client=client, now=now, store=store if store is not None else MemoryStore())


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


def recorded_get(interactions: list[dict], path_part: str):
    return next(i for i in interactions if i["method"] == "GET" and path_part in i["url"])


@pytest.fixture
def api(upstream):
    return RedditApi(upstream)


def a_thread(api: RedditApi, n: int, *, comments: int = 3, **submission) -> dict:
    """A matching submission with `comments` replies: a top-level comment and a chain under it."""
    post = make_submission(n, **submission)
    api.submissions.append(post)
    link = post["id"]
    api.comments[link] = [make_comment(f"c{n}x0", link=link)] + [
        make_comment(f"c{n}x{i}", link=link, parent=f"t1_c{n}x{i - 1}",
                     created=datetime(2026, 11, 20, 2, tzinfo=timezone.utc) + timedelta(minutes=i))
        for i in range(1, comments)]
    return post


# --- parsing the recordings ------------------------------------------------------------------------


def test_a_recorded_search_of_all_reddit_keeps_only_submissions_that_carry_the_word(upstream, api, recorded):
    search = recorded_get(recorded("reddit/search_r_all.json"), "/search")
    upstream.routes["/r/all/search"] = lambda path, query: Reply(200, search["body"])
    pages = connector(upstream, "oauth", options={"subreddit": "all", "match": "word"}).fetch(cursor={})
    page = next(pages)
    assert page.fetched == 6
    # The others mention it only inside a link (https://oauth.reddit.com/...) or as part of "OAuth2...".
    assert [item.external_id for item in page.items] == ["t3_3gpbiu", "t3_3x4kt2"]
    first = page.items[0]
    assert first.url == "https://www.reddit.com/r/redditdev/comments/3gpbiu/prawoauth2util_problem_using_get_banned_raise/"
    assert first.created_at == datetime.fromtimestamp(1439370514, tz=timezone.utc)
    assert first.edited_at == datetime.fromtimestamp(1439447718, tz=timezone.utc)
    assert page.items[1].edited_at is None
    assert first.author.handle == "u/dClauzel" and first.kind == "post"
    assert first.text.startswith("[PRAW][OAuth2Util] Problem using get_banned()")
    assert first.hashtags == ("oauth",)
    assert first.reply_count == 21
    searched = upstream.requests_to("/r/all/search")[0].query
    assert searched["q"] == "oauth" and searched["sort"] == "new" and searched["raw_json"] == "1"
    assert "restrict_sr" not in searched  # all of Reddit is not one subreddit


def test_a_site_wide_search_needs_the_hashtag_not_the_bare_word(upstream, api, recorded):
    search = recorded_get(recorded("reddit/search_r_all.json"), "/search")
    upstream.routes["/search"] = lambda path, query: Reply(200, search["body"])
    page = next(connector(upstream, "praw").fetch(cursor={}))
    assert page.fetched == 6 and page.items == []  # all six say "PRAW", none says "#praw"


def serve_recorded_thread(upstream, interactions: list[dict], *, subreddit: str) -> dict:
    """The recorded submission found by a search, its recorded tree, and the recorded morechildren answer."""
    tree = recorded_get(interactions, "/comments/")["body"]
    submission = tree[0]["data"]["children"][0]
    upstream.routes[f"/r/{subreddit}/search"] = lambda path, query: Reply(
        200, {"kind": "Listing", "data": {"after": None, "before": None, "children": [submission]}})
    upstream.routes[f"/comments/{submission['data']['id']}"] = lambda path, query: Reply(200, tree)
    more = next((i for i in interactions if "/api/morechildren" in i["url"]), None)
    if more is not None:
        things = more["body"]["json"]["data"]["things"]

        def morechildren(path, query):
            wanted = set(query["children"].split(","))
            return Reply(200, {"json": {"errors": [], "data": {"things": [t for t in things if t["data"]["id"] in wanted]}}})

        upstream.routes["/api/morechildren"] = morechildren
    return tree


def test_the_recorded_comment_tree_is_stored_as_the_conversation_with_its_more_stubs_resolved(upstream, api, recorded):
    tree = serve_recorded_thread(upstream, recorded("reddit/comments_tree_with_more.json"), subreddit="funny")
    pages = list(connector(upstream, "Tsss", options={"subreddit": "funny"}).fetch(cursor={}))
    thread = pages[-1]
    comments = [item for item in thread.items if item.kind == "comment"]
    # 476 comments in the tree, 6 of them with the body [deleted]; 7 more come from /api/morechildren.
    assert len(comments) == 470 + 7
    assert thread.fetched == 1 + 476 + 7
    assert thread.rejected == []
    assert [item.external_id for item in thread.items if item.kind == "post"] == ["t3_3hahrw"]
    assert not any(item.text in ("[deleted]", "[removed]") for item in comments)
    assert all(item.hashtags == ("tsss",) for item in comments)
    assert all(item.reply_to_external_id.startswith(("t1_", "t3_")) for item in comments)
    assert sum(1 for item in comments if item.author is None) == 10  # [deleted] authors keep their text
    assert sum(1 for item in comments if item.edited_at is not None) == 10
    leaf = next(item for item in comments if item.external_id == "t1_cu5tead")  # from morechildren
    assert leaf.reply_to_external_id == "t3_3hahrw"
    assert leaf.text == "He saw the chance and he took it, this kid is going places"
    asked = upstream.requests_to("/api/morechildren")
    assert len(asked) == 1
    assert asked[0].query["link_id"] == "t3_3hahrw" and asked[0].query["api_type"] == "json"
    ids = asked[0].query["children"].split(",")
    assert len(ids) == 24 and "_" not in ids  # 12 stubs with ids; the 6 "continue this thread" stubs skipped
    assert tree[1]["data"]["children"]  # the tree was served as recorded
    assert pages[-1].cursor["threads"]["t3_3hahrw"]["read"] == NOW.timestamp()


def test_the_recorded_deleted_thread_keeps_replies_and_text_of_deleted_authors(recorded):
    tree = recorded_get(recorded("reddit/comments_tree_deleted.json"), "?context=100")["body"]
    items, rejected, more_ids, seen = reddit.parse_comment_tree(tree[1]["data"]["children"], thread_tags=("ama",))
    assert seen == 145 and rejected == []
    assert len(items) == 140  # 5 comments whose body is [deleted] are not stored
    orphan = [item for item in items if item.author is None]
    assert len(orphan) == 1 and orphan[0].text and orphan[0].text != "[deleted]"
    assert more_ids == []  # its only stub is a "continue this thread" one
    assert all(item.created_at.tzinfo is timezone.utc for item in items)


def test_a_deleted_comment_is_not_stored_as_text(recorded):
    info = recorded_get(recorded("reddit/comment_deleted_absent_from_tree.json"), "/api/info")["body"]
    deleted = info["data"]["children"][0]
    assert deleted["data"]["body"] == "[deleted]"
    assert reddit.normalise_comment(deleted, thread_tags=("test",)) is None
    removed = {**deleted, "data": {**deleted["data"], "body": "[removed]", "author": "someone"}}
    assert reddit.normalise_comment(removed, thread_tags=("test",)) is None


# --- normalising one thing -------------------------------------------------------------------------


def test_normalise_native_keeps_submissions_with_the_tag_and_gives_comments_the_conversations_tags():
    post = thing("t3", make_submission(1, title="Talks resume #ukrainepeacetalks"))
    item = reddit.normalise_native(post, hashtags=("UkrainePeaceTalks",))
    assert isinstance(item, NormalisedItem) and item.kind == "post" and item.hashtags == ("ukrainepeacetalks",)
    other = thing("t3", make_submission(2, title="Weather in Kyiv"))
    assert reddit.normalise_native(other, hashtags=("UkrainePeaceTalks",)) is None
    # A comment is part of a conversation the caller vouches for; its own #tags are added.
    comment = reddit.normalise_native(make_comment("k2", link="s00001", body="\\#Geneva next week"),
                                      hashtags=("UkrainePeaceTalks",))  # a bare data object too
    assert comment.kind == "comment" and comment.hashtags == ("geneva", "ukrainepeacetalks")
    assert comment.reply_to_external_id == "t3_s00001"
    assert reddit.normalise_native(thing("more", {"id": "_", "children": []}), hashtags=(TAG,)) is None
    assert isinstance(reddit.normalise_native(thing("t1", "oops"), hashtags=(TAG,)), RejectedRaw)


def test_what_the_connector_stored_parses_again_from_raw_into_the_same_item(upstream, api):
    a_thread(api, 1, comments=2, title="Geneva: UkrainePeaceTalks resume", selftext="#Geneva #Kyiv")
    items = items_of(connector(upstream, options={"subreddit": "worldnews"}).fetch(cursor={}))
    assert {item.kind for item in items} == {"post", "comment"}
    for item in items:
        assert reddit.normalise_native(item.raw, hashtags=item.hashtags) == item


def test_a_word_inside_a_link_or_a_longer_word_is_not_the_tag():
    keys = ("ukrainepeacetalks",)
    assert reddit.matched_tags("see https://x.example/#UkrainePeaceTalks", keys, word=False) == ()
    assert reddit.matched_tags("#UkrainePeaceTalksNow", keys, word=False) == ()
    assert reddit.matched_tags("UkrainePeaceTalks today", keys, word=False) == ()
    assert reddit.matched_tags("UkrainePeaceTalks today", keys, word=True) == keys
    assert reddit.matched_tags("(#UKRAINEPEACETALKS)", keys, word=False) == keys


def test_edited_and_created_epochs_become_aware_utc_datetimes():
    comment = make_comment("e1", link="s1", edited=1764072000.5)
    comment["created_utc"] = 1764000000.25
    item = reddit.normalise_comment(comment, thread_tags=("t",))
    assert item.created_at == datetime(2025, 11, 24, 16, 0, 0, 250000, tzinfo=timezone.utc)
    assert item.edited_at == datetime(2025, 11, 25, 12, 0, 0, 500000, tzinfo=timezone.utc)


@pytest.mark.parametrize("bad", ["yesterday", None, 1e20, True, float("nan")])
def test_a_bad_created_utc_rejects_the_comment_with_its_raw_payload(bad):
    comment = make_comment("b1", link="s1")
    comment["created_utc"] = bad
    result = reddit.normalise_comment(thing("t1", comment), thread_tags=("t",))
    assert isinstance(result, RejectedRaw)
    assert "created_utc" in result.reason and result.external_id == "t1_b1"
    assert result.raw["data"]["id"] == "b1"


def test_escaped_html_of_a_response_without_raw_json_is_read_as_html():
    comment = make_comment("h1", link="s1")
    comment["body_html"] = "&lt;div class=&quot;md&quot;&gt;&lt;p&gt;Fish &amp;amp; chips&lt;/p&gt;&lt;/div&gt;"
    item = reddit.normalise_comment(comment, thread_tags=("t",))
    assert item.html == "<p>Fish &amp; chips</p>" and item.text == "Fish & chips"


XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_no_script_survives_in_stored_html(payload):
    comment = make_comment("x1", link="s1")
    comment["body_html"] = f'<div class="md"><p>{payload}</p></div>'
    post = make_submission(1, selftext="body")
    post["selftext_html"] = f"<div>{payload}</div>"
    for item in (reddit.normalise_comment(comment, thread_tags=("t",)),
                 reddit.normalise_submission(post, tag_keys=("ukrainepeacetalks",), word=False)):
        lowered = item.html.lower()
        assert "<script" not in lowered and "javascript:" not in lowered and "data:" not in lowered
        assert " on" not in lowered
        for tag in ("<svg", "<iframe", "<img"):
            assert tag not in lowered


# --- logging in ------------------------------------------------------------------------------------


def test_the_token_is_fetched_once_and_kept_in_the_store_until_it_expires(upstream, api):
    a_thread(api, 1)
    store = MemoryStore()
    list(connector(upstream, store=store).fetch(cursor={}))
    list(connector(upstream, store=store).fetch(cursor={}))
    logins = upstream.requests_to("/api/v1/access_token")
    assert len(logins) == 1 and logins[0].query == {"grant_type": "client_credentials"}
    assert len(upstream.requests_to("/search")) == 2 and len(upstream.requests_to("/comments/")) == 2
    (key,) = store.values
    assert store.values[key] == "token-1" and store.ttls[key] == 86400 - reddit.TOKEN_EXPIRY_MARGIN
    assert "app-secret" not in key


def test_the_login_sends_the_app_credentials_as_basic_auth(upstream, api):
    list(connector(upstream).fetch(cursor={}))
    assert api.login_authorizations == ["Basic " + base64.b64encode(b"app-id:app-secret").decode()]


def test_a_token_that_stopped_working_is_replaced_once_and_the_request_retried(upstream, api):
    a_thread(api, 1)
    store = MemoryStore()
    list(connector(upstream, store=store).fetch(cursor={}))
    api.expire_tokens()  # revoked or expired early: the kept token now gets 401
    pages = list(connector(upstream, store=store).fetch(cursor={}))
    assert api.issued == ["token-1", "token-2"]
    assert len(items_of(pages)) == 1 + 3 + 1  # the search result, then the thread again


@pytest.mark.parametrize("credentials", [{}, {"client_id": "app-id"}, {"client_secret": "app-secret"}])
def test_missing_credentials_raise_before_any_request(upstream, api, credentials):
    with pytest.raises(NeedsCredentials, match="set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET"):
        list(connector(upstream, credentials=credentials).fetch(cursor={}))
    assert upstream.requests == []


def test_refused_app_credentials_ask_for_credentials(upstream, api):
    with pytest.raises(NeedsCredentials, match="REDDIT_CLIENT_SECRET") as caught:
        list(connector(upstream, credentials={"client_id": "app-id", "client_secret": "wrong"}).fetch(cursor={}))
    assert "401" in str(caught.value)
    assert upstream.requests_to("/search") == []


def test_a_token_answer_with_an_error_asks_for_credentials(upstream, api):
    api.overrides["token"] = Reply(200, {"error": "invalid_grant"})
    with pytest.raises(NeedsCredentials, match="invalid_grant"):
        list(connector(upstream).fetch(cursor={}))


def test_a_refused_subreddit_asks_for_credentials_and_names_the_cause(upstream, api):
    api.overrides["/r/"] = Reply(403, {"reason": "private", "message": "Forbidden", "error": 403})
    with pytest.raises(NeedsCredentials, match="403.*private or banned"):
        list(connector(upstream, options={"subreddit": "secret"}).fetch(cursor={}))


def test_an_unknown_subreddit_is_a_permanent_error(upstream, api):
    with pytest.raises(PermanentError, match="no subreddit 'nosuchplace'"):
        list(connector(upstream, options={"subreddit": "nosuchplace"}).fetch(cursor={}))


@pytest.mark.parametrize("options, message", [({"subreddit": "a b"}, "subreddit"), ({"match": "fuzzy"}, "match")])
def test_bad_options_are_refused_with_their_name(upstream, options, message):
    with pytest.raises(PermanentError, match=message):
        connector(upstream, options=options)


# --- searching and reading threads -----------------------------------------------------------------


def test_the_first_run_pages_search_results_with_after_up_to_the_bound(upstream, api):
    for n in range(1, 351):
        api.submissions.append(make_submission(n))
    pages = list(connector(upstream).fetch(cursor={}))
    searches = upstream.requests_to("/search")
    assert len(searches) == reddit.MAX_SEARCH_PAGES
    assert [s.query.get("after") for s in searches] == [None, "t3_s00251", "t3_s00151"]
    posts = {item.external_id for page in pages[:3] for item in page.items}
    assert len(posts) == 300
    assert pages[-1].cursor["search"] == {"ukrainepeacetalks": {"newest": make_submission(350)["created_utc"]}}
    assert len(upstream.requests_to("/comments/")) == reddit.MAX_THREADS_PER_RUN


def test_a_later_run_stops_searching_at_the_newest_submission_seen(upstream, api):
    for n in range(1, 151):
        api.submissions.append(make_submission(n))
    cursor = {"search": {"ukrainepeacetalks": {"newest": make_submission(150)["created_utc"]}}, "threads": {}}
    for n in range(151, 156):
        api.submissions.append(make_submission(n))
    pages = list(connector(upstream).fetch(cursor=cursor))
    assert len(upstream.requests_to("/search")) == 1
    new_posts = {item.external_id for item in pages[0].items} - {f"t3_s{n:05d}" for n in range(1, 151)}
    assert new_posts == {f"t3_s{n:05d}" for n in range(151, 156)}
    assert pages[-1].cursor["search"]["ukrainepeacetalks"]["newest"] == make_submission(155)["created_utc"]


def test_submissions_that_only_mention_the_word_are_not_stored_site_wide_but_are_in_a_subreddit(upstream, api):
    api.submissions.append(make_submission(1, title="Talks: UkrainePeaceTalks in Geneva"))
    api.submissions.append(make_submission(2, title="Nothing", selftext="#UkrainePeaceTalks update"))
    site_wide = next(connector(upstream).fetch(cursor={}))
    assert [item.external_id for item in site_wide.items] == ["t3_s00002"]
    in_subreddit = next(connector(upstream, options={"subreddit": "worldnews"}).fetch(cursor={}))
    assert {item.external_id for item in in_subreddit.items} == {"t3_s00001", "t3_s00002"}
    assert upstream.requests_to("/r/worldnews/search")[0].query["restrict_sr"] == "on"


def test_comments_carry_the_threads_tag_and_point_at_their_parents(upstream, api):
    a_thread(api, 1, comments=3)
    pages = list(connector(upstream).fetch(cursor={}))
    comments = {item.external_id: item for item in items_of(pages) if item.kind == "comment"}
    assert set(comments) == {"t1_c1x0", "t1_c1x1", "t1_c1x2"}
    assert comments["t1_c1x0"].reply_to_external_id == "t3_s00001"
    assert comments["t1_c1x2"].reply_to_external_id == "t1_c1x1"
    assert all(item.hashtags == ("ukrainepeacetalks",) for item in comments.values())
    assert comments["t1_c1x1"].url == "https://www.reddit.com/r/worldnews/comments/s00001/post/c1x1/"
    assert comments["t1_c1x1"].raw["data"]["replies"] == ""  # the subtree is not stored again in its raw
    tree = upstream.requests_to("/comments/s00001")[0].query
    assert tree["sort"] == "new" and tree["raw_json"] == "1"


def test_hidden_replies_are_fetched_through_morechildren_in_bounded_batches(upstream, api):
    post = a_thread(api, 1, comments=1)
    api.hidden["s00001"] = [make_comment(f"h{i:03d}", link=post["id"]) for i in range(350)]
    pages = list(connector(upstream).fetch(cursor={}))
    calls = upstream.requests_to("/api/morechildren")
    assert len(calls) == reddit.MAX_MORE_CALLS_PER_THREAD
    assert [len(call.query["children"].split(",")) for call in calls] == [100, 100, 100]
    hidden = {item.external_id for item in items_of(pages)} & {f"t1_h{i:03d}" for i in range(350)}
    assert len(hidden) == 300


def test_threads_are_read_newest_first_and_the_rest_wait_for_the_next_run(upstream, api):
    for n in range(1, 16):
        a_thread(api, n, comments=1)
    soon = lambda: datetime(2026, 11, 21, tzinfo=timezone.utc)  # noqa: E731 - every thread is young
    first = list(connector(upstream, now=soon).fetch(cursor={}))
    read = [seen.path for seen in upstream.requests_to("/comments/")]
    assert read == [f"/comments/s{n:05d}" for n in range(15, 5, -1)]
    upstream.requests.clear()
    list(connector(upstream, now=soon).fetch(cursor=first[-1].cursor))
    read = [seen.path for seen in upstream.requests_to("/comments/")]
    assert read[:5] == [f"/comments/s{n:05d}" for n in range(5, 0, -1)]  # the unread ones first
    assert len(read) == reddit.MAX_THREADS_PER_RUN


def test_a_young_thread_is_read_again_for_new_replies_and_an_old_one_is_dropped(upstream, api):
    post = a_thread(api, 1, comments=1)
    created = datetime.fromtimestamp(post["created_utc"], tz=timezone.utc)
    first = list(connector(upstream, now=lambda: created + timedelta(hours=1)).fetch(cursor={}))
    api.comments["s00001"].append(make_comment("late", link="s00001", parent="t1_c1x0"))
    later = list(connector(upstream, now=lambda: created + timedelta(days=1)).fetch(cursor=first[-1].cursor))
    assert "t1_late" in {item.external_id for item in items_of(later)}
    upstream.requests.clear()
    much_later = list(connector(upstream, now=lambda: created + timedelta(days=4)).fetch(cursor=later[-1].cursor))
    assert upstream.requests_to("/comments/") == []
    assert much_later[-1].cursor["threads"] == {}


def test_a_thread_that_is_gone_is_no_longer_followed(upstream, api):
    a_thread(api, 1)
    soon = lambda: datetime(2026, 11, 21, tzinfo=timezone.utc)  # noqa: E731 - the thread is young
    first = list(connector(upstream, now=soon).fetch(cursor={}))
    api.submissions.clear()
    pages = list(connector(upstream, now=soon).fetch(cursor=first[-1].cursor))
    assert len(upstream.requests_to("/comments/s00001")) == 2  # asked again, answered 404
    assert pages[-1].cursor["threads"] == {}


# --- rate limits -----------------------------------------------------------------------------------


def test_a_spent_budget_stops_the_run_until_the_reset(upstream, api):
    for n in range(1, 6):
        a_thread(api, n)
    api.rate_limit_remaining, api.rate_limit_reset = 2, 420
    pages = list(connector(upstream).fetch(cursor={}))
    assert len([seen for seen in upstream.requests if seen.path != "/api/v1/access_token"]) == 2
    assert pages[-1].rate_limited_until == NOW + timedelta(seconds=420)
    assert pages[-1].health_detail == {"ratelimit_remaining": 0}
    assert len(items_of(pages)) == 5 + 1 + 3  # the search page and the one thread read before the reset
    unread = [name for name, t in pages[-1].cursor["threads"].items() if t["read"] is None]
    assert len(unread) == 4


def test_the_remaining_budget_is_shown_with_the_health(upstream, api):
    a_thread(api, 1)
    api.rate_limit_remaining = 500
    pages = list(connector(upstream).fetch(cursor={}))
    assert pages[-1].health_detail == {"ratelimit_remaining": 498}
    assert pages[-1].rate_limited_until is None


@pytest.mark.parametrize("headers, until", [
    ({"Retry-After": "120", "x-ratelimit-reset": "500"}, NOW + timedelta(seconds=120)),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "321"}, NOW + timedelta(seconds=321)),
    ({}, NOW + timedelta(seconds=60)),
])
def test_429_waits_for_retry_after_then_for_the_reset(upstream, api, headers, until):
    api.overrides["/search"] = Reply(429, {"message": "Too Many Requests", "error": 429}, headers)
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == until


# --- failures --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, reply, error", [
    ("/search", Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError),
    ("/search", Reply(503, "", {}), TemporaryError),
    ("/search", Reply(200, "<html><body>reddit is down</body></html>", {"Content-Type": "text/html"}), MalformedResponse),
    ("/search", Reply(200, '{"kind": "Listing", "data": {"children": [', {}), MalformedResponse),
    ("/search", Reply(200, {"kind": "Listing", "data": {"items": []}}, {}), MalformedResponse),
    ("/comments/", Reply(200, {"kind": "Listing", "data": {"children": []}}, {}), MalformedResponse),
    ("/comments/", Reply(502, "<h1>Bad gateway</h1>", {"Content-Type": "text/html"}), TemporaryError),
])
def test_upstream_failures_raise_the_matching_error(upstream, api, path, reply, error):
    a_thread(api, 1)
    api.overrides[path] = reply
    with pytest.raises(error):
        list(connector(upstream).fetch(cursor={}))


def test_a_changed_field_name_in_the_listing_is_named_in_the_error(upstream, api):
    api.overrides["/search"] = Reply(200, {"kind": "Listing", "data": {"things": []}})
    with pytest.raises(MalformedResponse, match="expected a Listing with data.children") as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.raw == {"kind": "Listing", "data": {"things": []}}


def test_a_comment_with_a_changed_field_is_rejected_and_the_rest_of_the_thread_kept(upstream, api):
    a_thread(api, 1, comments=3)
    api.comments["s00001"][1]["text"] = api.comments["s00001"][1].pop("body")
    pages = list(connector(upstream).fetch(cursor={}))
    thread = pages[-1]
    assert [r.reason for r in thread.rejected] == ["comment body is missing or not a string"]
    assert thread.rejected[0].external_id == "t1_c1x1"
    assert {item.external_id for item in thread.items} == {"t3_s00001", "t1_c1x0", "t1_c1x2"}


def test_a_failing_morechildren_call_keeps_the_tree_already_read_then_fails(upstream, api):
    post = a_thread(api, 1, comments=2)
    api.hidden["s00001"] = [make_comment("h1", link=post["id"])]
    api.overrides["/api/morechildren"] = Reply(500, "<h1>oops</h1>", {"Content-Type": "text/html"})
    pages = []
    with pytest.raises(TemporaryError, match="500"):
        for page in connector(upstream).fetch(cursor={}):
            pages.append(page)
    assert {item.external_id for item in pages[-1].items} == {"t3_s00001", "t1_c1x0", "t1_c1x1"}
    assert pages[-1].cursor["threads"]["t3_s00001"]["read"] is None  # read again on the next run


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream, api):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, {})

    api.overrides["/search"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(upstream, client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


def test_every_request_names_itself(upstream, api):
    a_thread(api, 1)
    client = HttpClient(HttpSettings(user_agent="engagement-test/1 (+https://example.org/bot)", allow_private=True))
    list(connector(upstream, client=client).fetch(cursor={}))
    assert len(api.user_agents) == 3  # login, search, thread
    assert set(api.user_agents) == {"engagement-test/1 (+https://example.org/bot)"}


def test_a_reddit_url_means_the_real_endpoints_and_names_the_subreddit():
    assert reddit._endpoints("https://www.reddit.com/r/worldnews", {}) == (
        "https://oauth.reddit.com", "https://www.reddit.com/api/v1/access_token", "worldnews")
    assert reddit._endpoints("http://127.0.0.1:8000/r/ukraine", {}) == (
        "http://127.0.0.1:8000", "http://127.0.0.1:8000/api/v1/access_token", "ukraine")
    assert reddit._endpoints("https://proxy.example/reddit", {"token_url": "https://auth.example/t"}) == (
        "https://proxy.example/reddit", "https://auth.example/t", "")


# --- through collection, on the real database ------------------------------------------------------


@pytest.fixture
def reddit_credentials(settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "reddit": dict(CREDENTIALS)}


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collection_stores_the_conversation_linked_and_a_second_run_adds_no_rows(upstream, api, reddit_credentials,
                                                                                flushed_redis):
    a_thread(api, 1, comments=3)
    a_thread(api, 2, comments=2)
    api.submissions.append(make_submission(3, title="No tag here, UkrainePeaceTalks only as a word"))
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    first = run(source)
    assert (first.outcome, first.new) == (CollectionRun.Outcome.OK, 2 + 5)
    assert Post.objects.filter(platform="reddit", kind="post").count() == 2
    reply = Post.objects.get(external_id="t1_c1x2")
    assert reply.reply_to.external_id == "t1_c1x1"
    assert Post.objects.get(external_id="t1_c1x0").reply_to.external_id == "t3_s00001"
    assert list(Post.objects.for_hashtag(TAG).filter(kind="comment").order_by("external_id")
                .values_list("external_id", flat=True)) == ["t1_c1x0", "t1_c1x1", "t1_c1x2", "t1_c2x0", "t1_c2x1"]
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 7
    assert len(api.issued) == 1  # the token was kept in Redis between runs
    source.refresh_from_db()
    assert source.health == Source.Health.OK


@pytest.mark.django_db
def test_a_rejected_comment_makes_a_partial_run_with_the_rest_stored(upstream, api, reddit_credentials):
    a_thread(api, 1, comments=3)
    api.comments["s00001"][2]["created_utc"] = "soon"
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    result = run(source)
    assert result.outcome == CollectionRun.Outcome.PARTIAL
    assert Post.objects.count() == 3
    rejected = RejectedItem.objects.get()
    assert rejected.external_id == "t1_c1x2" and "created_utc" in rejected.reason


def timeout_everything(settings, api):
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 0.3

    def slow(path, query):
        time.sleep(1.5)
        return Reply(200, {})

    api.overrides["/search"] = slow


FAILURES = {
    "missing credentials": (lambda settings, api: setattr(settings, "ENGAGEMENT_CREDENTIALS", {}),
                            Source.Health.NEEDS_CREDENTIALS, "set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET"),
    "refused credentials": (lambda settings, api: setattr(api, "client_secret", "rotated"),
                            Source.Health.NEEDS_CREDENTIALS, "(401 from"),
    "forbidden": (lambda settings, api: api.overrides.__setitem__("/search", Reply(403, {"error": 403})),
                  Source.Health.NEEDS_CREDENTIALS, "refused access (403)"),
    "rate-limited": (lambda settings, api: api.overrides.__setitem__(
        "/search", Reply(429, {"error": 429}, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "240"})),
        Source.Health.RATE_LIMITED, "rate-limited (429)"),
    "server error": (lambda settings, api: api.overrides.__setitem__("/search", Reply(500, "<h1>500</h1>")),
                     Source.Health.FAILING, "upstream error 500"),
    "timeout": (timeout_everything, Source.Health.FAILING, "timed out"),
    "html": (lambda settings, api: api.overrides.__setitem__(
        "/search", Reply(200, "<html>we are down</html>", {"Content-Type": "text/html"})),
        Source.Health.FAILING, "expected JSON"),
    "changed field": (lambda settings, api: api.overrides.__setitem__(
        "/search", Reply(200, {"kind": "Listing", "data": {"posts": []}})),
        Source.Health.FAILING, "expected a Listing with data.children"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_each_failure_ends_in_a_clear_source_state_and_message(upstream, api, reddit_credentials, settings,
                                                               flushed_redis, failure):
    arrange, health, message = FAILURES[failure]
    a_thread(api, 1)
    arrange(settings, api)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    started = datetime.now(timezone.utc)
    result = run(source)
    source.refresh_from_db()
    assert message in result.message
    assert source.health == health
    if health == Source.Health.RATE_LIMITED:
        assert result.outcome == CollectionRun.Outcome.RATE_LIMITED
        assert source.rate_limited_until >= started + timedelta(seconds=239)
        assert source.next_poll_at >= source.rate_limited_until  # no request before the reset
    else:
        assert result.outcome == CollectionRun.Outcome.FAILED
        assert message in source.last_error
    if failure in ("html", "changed field"):
        assert source.last_error_kind == Source.ErrorKind.MALFORMED
        assert RejectedItem.objects.filter(source=source).count() == 1
    if failure == "missing credentials":
        assert upstream.requests == []


# --- re-check: edits and deletions -----------------------------------------------------------------


def recorded_info(recorded, name: str, fullname: str) -> dict:
    """The t1 data of a recorded /api/info answer."""
    return recorded_get(recorded(name), f"/api/info/?raw_json=1&id={fullname}")["body"]["data"]["children"][0]["data"]


def test_recorded_info_answers_are_a_deletion_by_the_author_and_the_current_version(upstream, api, recorded):
    deleted = recorded_info(recorded, "reddit/comment_deleted_absent_from_tree.json", "t1_d7ltvl0")
    alive = recorded_info(recorded, "reddit/comments_tree_deleted.json", "t1_d8r4im1")
    upstream.routes["/api/info"] = lambda path, query: Reply(200, listing(
        [thing("t1", data) for data in (deleted, alive) if data["name"] in query["id"].split(",")]))
    results = list(connector(upstream).recheck([("t1_d7ltvl0", {}), ("t1_d8r4im1", {})]))
    assert results[0].deleted_reason == "deleted by its author ([deleted] body, author '[deleted]')"
    assert results[1].item.text.startswith("What has been the strangest thing someone tweeted at you")
    assert results[1].item.hashtags == ("ukrainepeacetalks",) and results[1].item.author.handle == "u/THE_GREAT_SHAZBOT"
    (asked,) = upstream.requests_to("/api/info")
    assert asked.query["id"] == "t1_d7ltvl0,t1_d8r4im1" and asked.query["raw_json"] == "1"


def test_a_removed_body_or_category_is_a_removal_and_a_submission_that_lost_its_tag_is_still_there():
    removed = {"name": "t1_x1", "body": "[removed]", "author": "[deleted]"}
    assert reddit.deletion_reason("t1", removed) == "removed by moderators or Reddit ([removed] body)"
    link = {"name": "t3_y1", "selftext": "", "author": "[deleted]", "removed_by_category": "moderator"}
    assert reddit.deletion_reason("t3", link) == "removed by moderators (removed_by_category: moderator)"
    assert reddit.deletion_reason("t1", {"body": "[deleted] is a fine word", "author": "x"}) == ""
    untagged = thing("t3", make_submission(1, title="Talks resume (edited)"))
    item = reddit.normalise_submission(untagged, tag_keys=("ukrainepeacetalks",), word=False, require_tag=False)
    assert item.external_id == "t3_s00001" and item.hashtags == ()


def test_a_recheck_asks_for_a_hundred_fullnames_a_request(upstream, api):
    for n in range(1, 151):
        api.submissions.append(make_submission(n))
    results = list(connector(upstream).recheck([(f"t3_s{n:05d}", {}) for n in range(1, 151)] + [("x9", {})]))
    assert [len(seen.query["id"].split(",")) for seen in upstream.requests_to("/api/info")] == [100, 50]
    assert sum(1 for r in results if r.item) == 150 and [r.error for r in results if r.error] == [
        "not a comment (t1_) or submission (t3_) fullname"]


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_deleted_or_removed_comments_as_tombstones(
        upstream, api, reddit_credentials, flushed_redis, recorded, api_client):
    a_thread(api, 1, comments=3)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    assert run(source).new == 4
    edited, deleted, removed = api.comments["s00001"]
    edited.update(body="Comment c1x0, corrected", body_html='<div class="md"><p>Comment c1x0, corrected</p></div>',
                  edited=1764000000.0)
    # Deleted by its author: the shape of a recorded /api/info answer, with this thread's ids.
    recorded_deleted = recorded_info(recorded, "reddit/comment_deleted_absent_from_tree.json", "t1_d7ltvl0")
    deleted.update({**recorded_deleted, **{k: deleted[k] for k in ("id", "name", "link_id", "parent_id")}})
    removed.update(body="[removed]", body_html='<div class="md"><p>[removed]</p></div>', author="[deleted]")
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (4, 1, 2, 0)
    (asked,) = upstream.requests_to("/api/info")
    assert sorted(asked.query["id"].split(",")) == ["t1_c1x0", "t1_c1x1", "t1_c1x2", "t3_s00001"]
    post = Post.objects.get(external_id="t1_c1x0")
    assert post.text == "Comment c1x0, corrected" and post.edited_at == datetime.fromtimestamp(1764000000, tz=timezone.utc)
    assert post.hashtags == ["ukrainepeacetalks"]
    assert PostRevision.objects.get(post=post).text == "Comment c1x0"
    reasons = dict(Post.objects.filter(deleted_at__isnull=False).values_list("external_id", "deletion_reason"))
    assert reasons == {"t1_c1x1": "deleted by its author ([deleted] body, author '[deleted]')",
                       "t1_c1x2": "removed by moderators or Reddit ([removed] body)"}
    listed = {p["external_id"] for p in api_client.get("/api/v1/posts/").json()["results"]}
    assert listed == {"t3_s00001", "t1_c1x0"}
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (2, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_fullname_reddit_does_not_return_is_an_error_not_a_deletion(upstream, api, reddit_credentials, flushed_redis):
    a_thread(api, 1, comments=1)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    run(source)
    api.submissions.clear()  # e.g. its subreddit went private: /api/info leaves it out
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (2, 0, 0, 1)
    assert not Post.objects.filter(deleted_at__isnull=False).exists()


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream, api, reddit_credentials, flushed_redis):
    a_thread(api, 1, comments=1)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    run(source)
    upstream.requests.clear()
    api.overrides["/api/info"] = Reply(429, {"error": 429}, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "240"})
    started = datetime.now(timezone.utc)
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until >= started + timedelta(seconds=239)
    assert len(upstream.requests_to("/api/info")) == 1
    assert not Post.objects.filter(deleted_at__isnull=False).exists()


def test_a_spent_budget_after_a_recheck_batch_stops_before_the_next(upstream, api):
    for n in range(1, 151):
        api.submissions.append(make_submission(n))
    api.rate_limit_remaining, api.rate_limit_reset = 1, 300
    results = []
    with pytest.raises(RateLimited) as caught:
        for result in connector(upstream).recheck([(f"t3_s{n:05d}", {}) for n in range(1, 151)]):
            results.append(result)
    assert len(results) == 100 and len(upstream.requests_to("/api/info")) == 1
    assert caught.value.until == NOW + timedelta(seconds=300)


# --- backfill ----------------------------------------------------------------------------------------


def hourly_submissions(api: RedditApi, count: int, now: datetime) -> None:
    """Submission n published n hours ago; submission 3 has two comments an hour after it."""
    for n in range(1, count + 1):
        api.submissions.append(make_submission(n, created=now - timedelta(hours=n)))
    api.comments["s00003"] = [make_comment("b1", link="s00003", created=now - timedelta(hours=2)),
                              make_comment("b2", link="s00003", parent="t1_b1", created=now - timedelta(hours=2))]


@pytest.mark.django_db
def test_backfill_walks_search_back_to_the_date_reads_the_trees_in_bounded_calls_and_then_asks_nothing(
        upstream, api, reddit_credentials, flushed_redis):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    hourly_submissions(api, 150, now)
    since = now - timedelta(hours=40, minutes=30)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG])
    polling = {"search": {"ukrainepeacetalks": {"newest": now.timestamp()}}, "threads": {}}
    Source.objects.filter(pk=source.pk).update(cursor=polling)
    first = collect.backfill_source(source.pk, since=since, owner="test")
    assert first.outcome == CollectionRun.Outcome.OK, first.message
    assert first.new == 40 + 2 and Post.objects.filter(kind="post").count() == 40
    assert min(Post.objects.values_list("created_at", flat=True)) >= since
    (search,) = upstream.requests_to("/search")  # the first page already reaches past the date
    assert search.query["sort"] == "new" and search.query["limit"] == "100" and "after" not in search.query
    assert len(upstream.requests_to("/comments/")) == reddit.MAX_BACKFILL_THREADS
    source.refresh_from_db()
    assert {k: v for k, v in source.cursor.items() if k != "backfill"} == polling  # polling never moves back
    assert len(source.cursor["backfill"]["pending"]) == 40 - reddit.MAX_BACKFILL_THREADS
    upstream.requests.clear()
    second = collect.backfill_source(source.pk, since=since, owner="test")
    assert (second.outcome, second.new) == (CollectionRun.Outcome.OK, 0)
    assert upstream.requests_to("/search") == []
    assert len(upstream.requests_to("/comments/")) == 40 - reddit.MAX_BACKFILL_THREADS
    source.refresh_from_db()
    assert source.cursor["backfill"] == {"since": since.isoformat(), "backfilled_since": since.isoformat()}
    upstream.requests.clear()
    third = collect.backfill_source(source.pk, since=since + timedelta(hours=1), owner="test")
    assert (third.pages, third.new) == (0, 0) and upstream.requests == []
    run(source)  # polling keeps the walk's position
    source.refresh_from_db()
    assert source.cursor["backfill"]["backfilled_since"] == since.isoformat()


def test_backfill_pages_with_after_to_the_end_of_what_search_serves(upstream, api):
    hourly_submissions(api, 150, NOW)
    pages = list(connector(upstream).backfill(since=NOW - timedelta(days=365), cursor={}))
    assert [s.query.get("after") for s in upstream.requests_to("/search")] == [None, "t3_s00100"]
    assert pages[1].cursor["backfill"]["search"]["ukrainepeacetalks"] == {"done": True,
                                                                         "stopped": "end of search results"}
    assert len({item.external_id for page in pages[:2] for item in page.items}) == 150


def test_backfill_stops_at_a_spent_rate_limit_and_keeps_its_place(upstream, api):
    hourly_submissions(api, 150, NOW)
    api.rate_limit_remaining, api.rate_limit_reset = 1, 300
    pages = list(connector(upstream).backfill(since=NOW - timedelta(days=365), cursor={}))
    assert len(pages) == 1 and pages[0].rate_limited_until == NOW + timedelta(seconds=300)
    assert pages[0].cursor["backfill"]["search"]["ukrainepeacetalks"] == {"after": "t3_s00100"}
    assert len(upstream.requests_to("/search")) == 1


# --- the real worker -------------------------------------------------------------------------------


def api_posts(api_client, **params) -> list[dict]:
    response = api_client.get("/api/v1/posts/", params)
    assert response.status_code == 200, response.content
    return response.json()["results"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_collects_reddit_conversations_into_the_api_and_a_second_run_adds_nothing(
    flushed_redis, upstream, api, process_env, start_worker, start_beat, api_client
):
    a_thread(api, 1, comments=3)
    a_thread(api, 2, comments=1)
    source = collect.register_source(platform="reddit", url=upstream.url, hashtags=[TAG], interval=1)
    worker = start_worker({**process_env, "REDDIT_CLIENT_ID": "app-id", "REDDIT_CLIENT_SECRET": "app-secret"})
    start_beat()
    posts = wait_for(lambda: len(api_posts(api_client, platform="reddit")) == 6 and
                     api_posts(api_client, platform="reddit"), timeout=60, message="6 reddit items in the API")
    assert {post["external_id"] for post in posts} == {
        "t3_s00001", "t1_c1x0", "t1_c1x1", "t1_c1x2", "t3_s00002", "t1_c2x0"}
    assert all(post["platform"] == "reddit" for post in posts)
    wait_for(lambda: CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK).count() >= 2,
             timeout=60, message="a second finished run")
    later = CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK).order_by("id")[1:]
    assert all(run.new == 0 for run in later)
    assert Post.objects.filter(platform="reddit").count() == 6
    assert len(api.issued) == 1  # one login, shared through Redis by every run
    assert worker.proc.poll() is None
