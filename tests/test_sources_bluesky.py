"""The Bluesky connector on recorded real posts (../shared/fixtures/bluesky/) and a fake XRPC host.

Recorded files read here: bluesky/twitwi_bluesky-posts.json, bluesky/atproto_thread_view_post_with_embed_media.json.
They hold post objects only (no HTTP exchange), so the search, session and rate-limit exchanges are
served by tests/bluesky_fake.py, built from the documented lexicons.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from engagement import collect
from engagement.models import CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources.base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NeedsCredentials,
    NormalisedItem,
    PermanentError,
    RateLimited,
    Recheck,
    RejectedRaw,
    SourceConfig,
    TemporaryError,
)
from engagement.sources import bluesky
from engagement.sources.bluesky import (
    BACKFILL_PAGES,
    GET_POSTS_BATCH,
    MAX_PAGES_PER_RUN,
    PAGE_LIMIT,
    build,
    normalise_native,
)
from tests.bluesky_fake import (
    APP_PASSWORD,
    CREATE_SESSION_PATH,
    HANDLE,
    SEARCH_PATH,
    FakeBluesky,
    iso,
    make_post,
    tag_facet,
    uris_of,
    utf8_facet,
)
from tests.conftest import wait_for
from tests.upstream import Reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
CREDENTIALS = {"handle": HANDLE, "app_password": APP_PASSWORD}
POSTS_FILE = "bluesky/twitwi_bluesky-posts.json"
THREAD_FILE = "bluesky/atproto_thread_view_post_with_embed_media.json"


class DictStore:
    """The TokenStore contract in memory; `sets` records what was saved and for how long."""

    def __init__(self):
        self.values: dict = {}
        self.sets: list[tuple[str, int]] = []

    def get(self, key):
        return self.values.get(key)

    def set(self, key, value, *, ttl):
        self.values[key] = copy.deepcopy(value)
        self.sets.append((key, ttl))

    def delete(self, key):
        self.values.pop(key, None)


def connector(upstream, *tags: str, credentials: dict | None = None, options: dict | None = None,
              store: DictStore | None = None, now: datetime = NOW, client: HttpClient | None = None):
    config = SourceConfig(platform="bluesky", base_url=upstream.url, hashtags=tags or (TAG,),
                          options=options or {}, credentials=credentials or {})
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return build(config, client=client, now=lambda: now, store=store if store is not None else DictStore())


def fetch_all(upstream, *tags: str, cursor: dict | None = None, **kwargs) -> list:
    return list(connector(upstream, *tags, **kwargs).fetch(cursor=cursor or {}))


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


def recorded_post(recorded, uri_suffix: str) -> dict:
    return next(obj for obj in recorded(POSTS_FILE) if obj.get("post", obj)["uri"].endswith(uri_suffix))


# --- parsing recorded posts ---------------------------------------------------------------------------


def test_it_normalises_a_recorded_post_with_its_at_uri_did_and_bsky_app_url(recorded):
    post = recorded_post(recorded, "/3lkizm6uvhc2b")
    item = normalise_native(post, hashtags=("HCERES",))
    assert isinstance(item, NormalisedItem)
    assert item.external_id == item.uri == "at://did:plc:crmrddqmbqzyqd24yjlpibz2/app.bsky.feed.post/3lkizm6uvhc2b"
    assert item.url == "https://bsky.app/profile/pecqueuxanthony.bsky.social/post/3lkizm6uvhc2b"
    assert item.author.external_id == "did:plc:crmrddqmbqzyqd24yjlpibz2"
    assert item.author.handle == "@pecqueuxanthony.bsky.social"
    assert item.author.display_name == "Anthony Pecqueux"
    assert item.created_at == datetime(2025, 3, 16, 16, 9, 9, 779000, tzinfo=timezone.utc)
    assert item.hashtags == ("esr", "hceres")
    assert item.kind == "post" and item.reply_to_external_id == ""
    assert item.language == "fr"
    assert item.text == post["record"]["text"]
    assert (item.reply_count, item.repost_count, item.like_count) == (
        post["replyCount"], post["repostCount"], post["likeCount"])
    assert item.raw == post


def test_recorded_posts_that_only_mention_the_word_are_not_stored_as_tagged(recorded):
    posts = recorded(POSTS_FILE)
    mentions = [p for p in posts if "hceres" in p.get("post", p)["record"]["text"].casefold()]
    kept = [p["uri"] for p in mentions if isinstance(normalise_native(p, hashtags=("HCERES",)), NormalisedItem)]
    dropped = [p["uri"] for p in mentions if normalise_native(p, hashtags=("HCERES",)) is None]
    assert len(kept) == 6
    # Two recorded posts say "Hcéres"/"HCERES" in their text but carry no #tag facet.
    assert dropped == ["at://did:plc:gf474l4mkf7icwpvesuejesr/app.bsky.feed.post/3lkdnb2gtzk2c",
                       "at://did:plc:2tcpwnpvacttgambthndvcas/app.bsky.feed.post/3lkd73d7zlj2w"]


def test_a_post_whose_text_says_the_hashtag_without_a_tag_facet_is_not_stored_as_tagged():
    untagged = make_post(1, text=f"Nothing new on the #{TAG} today", facet=False)
    assert f"#{TAG}" in untagged["record"]["text"] and "facets" not in untagged["record"]
    assert normalise_native(untagged, hashtags=(TAG,)) is None
    assert isinstance(normalise_native(make_post(1), hashtags=(TAG,)), NormalisedItem)


def test_tags_match_casefolded_from_facets_and_from_the_records_out_of_text_tags(recorded):
    in_tags = recorded_post(recorded, "/3lagdncjsu22y")  # record.tags ["tag1", "tag2"], no facets
    assert normalise_native(in_tags, hashtags=("TAG2",)).hashtags == ("tag1", "tag2")
    accented = recorded_post(recorded, "/3li6d5cduibg2")  # record.tags ["Vídeo da TV"]
    assert normalise_native(accented, hashtags=("VÍDEO DA TV",)).hashtags == ("vídeo da tv",)
    post = make_post(1, tag="ukrainepeacetalks")
    assert normalise_native(post, hashtags=("#UKRAINEPEACETALKS",)).hashtags == ("ukrainepeacetalks",)


def test_look_alike_tag_facets_from_odd_clients_are_not_tags(recorded):
    no_tag_key = recorded_post(recorded, "/3lhwag3mzoo2k")  # facet#tag carrying "text" instead of "tag"
    assert normalise_native(no_tag_key, hashtags=("falsed",)) is None
    wrong_type = recorded_post(recorded, "/3knvsl6h4x22i")  # "app.bsky.richtext.tag#tag", no tag key
    assert normalise_native(wrong_type, hashtags=("tango",)) is None


def test_facet_offsets_count_utf8_bytes_so_links_land_on_the_right_characters(recorded):
    chinese = normalise_native(next(p for p in recorded(POSTS_FILE) if p.get("post", p)["record"]["text"].startswith("2025二月上市新品")),
                               hashtags=())
    assert '">#上市</a>' in chinese.html and '">#新品</a>' in chinese.html
    emoji = normalise_native(recorded_post(recorded, "/3lkizm6uvhc2b"), hashtags=())
    assert '<a href="https://bsky.app/hashtag/HCERES" rel="nofollow noopener noreferrer">#HCERES</a>' in emoji.html
    built = normalise_native(make_post(3), hashtags=(TAG,))
    assert built.html.endswith(f'">#{TAG}</a></p>')
    assert "Переговори ✌️ post 3" in built.html


def test_a_facet_that_splits_a_character_overlaps_or_leaves_the_text_is_ignored():
    text = "Мир ✌️ #Peace https://example.org"
    link = utf8_facet(text, "https://example.org", {"$type": "app.bsky.richtext.facet#link", "uri": "https://example.org"})
    facets = [
        tag_facet(text, "Peace"),
        {"index": {"byteStart": 1, "byteEnd": 4}, "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://split.example"}]},
        {"index": {"byteStart": link["index"]["byteStart"] - 2, "byteEnd": link["index"]["byteEnd"]},
         "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://overlap.example"}]},
        link,
        {"index": {"byteStart": 0, "byteEnd": 10_000}, "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://outside.example"}]},
        {"index": {"byteStart": "0", "byteEnd": None}, "features": "not a list"},
        "not a facet",
    ]
    post = make_post(1, text=text, tag=None)
    post["record"]["facets"] = facets
    item = normalise_native(post, hashtags=("peace",))
    assert item.text == text
    assert "split.example" not in item.html and "outside.example" not in item.html
    assert item.html.count("<a ") == 2
    assert ">#Peace</a>" in item.html


def test_feed_view_wrappers_are_unwrapped_to_the_post_and_replies_point_at_their_parent(recorded):
    repost = recorded_post(recorded, "/3lloj4ipqqh27")
    assert set(repost) == {"post", "reason"}
    item = normalise_native(repost, hashtags=())
    assert item.external_id == repost["post"]["uri"] and item.raw == repost["post"]
    reply = recorded_post(recorded, "/3llp2zd2lec2r")
    assert set(reply) == {"post", "reply"}
    item = normalise_native(reply, hashtags=())
    assert item.kind == "comment"
    assert item.reply_to_external_id == "at://did:plc:oqynptsozcuxi52v5srdwau2/app.bsky.feed.post/3lloyjul7ec2u"
    bare_reply = normalise_native(recorded_post(recorded, "/3lkhaibfxv22b"), hashtags=())
    assert bare_reply.kind == "comment" and bare_reply.reply_to_external_id.startswith("at://")
    with_uri = recorded_post(recorded, "/3m2n2fstwy223")
    assert set(with_uri) == {"post", "uri"}
    assert normalise_native(with_uri, hashtags=()).external_id == with_uri["uri"]


def test_every_recorded_date_form_parses_and_only_the_year_zero_post_is_rejected(recorded):
    posts = recorded(POSTS_FILE)
    results = [normalise_native(post, hashtags=()) for post in posts]
    rejected = [r for r in results if isinstance(r, RejectedRaw)]
    assert len(results) == 123 and len(rejected) == 1
    assert "record.createdAt" in rejected[0].reason and "0000-10-14" in rejected[0].reason
    assert rejected[0].raw == posts[-1] and rejected[0].external_id == posts[-1]["uri"]
    by_uri = {r.external_id: r for r in results if isinstance(r, NormalisedItem)}
    offset = next(p for p in posts if p.get("post", p)["record"]["createdAt"] == "2025-05-02T13:08:32-04:00")
    assert by_uri[offset.get("post", offset)["uri"]].created_at == datetime(2025, 5, 2, 17, 8, 32, tzinfo=timezone.utc)
    micro = next(p for p in posts if p.get("post", p)["record"]["createdAt"] == "2025-06-03T08:09:12.057943+00:00")
    assert by_uri[micro.get("post", micro)["uri"]].created_at == datetime(2025, 6, 3, 8, 9, 12, 57943, tzinfo=timezone.utc)
    assert all(item.created_at.tzinfo == timezone.utc for item in by_uri.values())


def test_the_recorded_thread_view_is_read_through_its_post(recorded):
    thread = recorded(THREAD_FILE)
    item = normalise_native(thread, hashtags=())
    assert item.external_id == "at://did:plc:kvwvcn5iqfooopmyzvb4qzba/app.bsky.feed.post/3kaheyt6vpc22"
    assert item.url == "https://bsky.app/profile/test.marshal.dev/post/3kaheyt6vpc22"
    assert (item.text, item.html, item.language) == ("", "", "en")
    assert normalise_native(thread, hashtags=(TAG,)) is None


@pytest.mark.parametrize("bad", ["0000-10-14T15:06:10.730Z", "yesterday", None, "", 1732536000])
def test_a_bad_date_rejects_the_item_with_its_raw_payload(bad):
    post = make_post(1)
    post["record"]["createdAt"] = bad
    result = normalise_native(post, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw)
    assert "record.createdAt" in result.reason
    assert result.raw == post and result.external_id == post["uri"]


def _renamed(post: dict, old: str, new: str) -> dict:
    post = copy.deepcopy(post)
    post[new] = post.pop(old)
    return post


@pytest.mark.parametrize("change, reason", [
    (lambda p: _renamed(p, "record", "value"), "post has no record object"),
    (lambda p: _renamed(p, "uri", "atUri"), "post has no at:// uri"),
    (lambda p: {**p, "author": {"id": "did:plc:x", "handle": "x"}}, "post has no author did"),
    (lambda p: {**p, "record": {**p["record"], "text": ["not", "text"]}}, "record.text is not a string"),
    (lambda p: {**p, "uri": p["uri"].replace("app.bsky.feed.post", "app.bsky.feed.like")}, "not an app.bsky.feed.post"),
    (lambda p: {**p, "record": {**p["record"], "text": "nul \x00 inside #UkrainePeaceTalks"}}, "NUL"),
    (lambda p: ["not", "an", "object"], "post is not a JSON object"),
])
def test_a_changed_field_name_or_shape_rejects_the_item_with_its_raw_payload(change, reason):
    changed = change(make_post(1))
    result = normalise_native(changed, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw)
    assert reason in result.reason
    assert "\\u0000" not in json.dumps(result.raw)  # storable in PostgreSQL as it is


def test_a_huge_post_is_rejected_with_its_raw_payload():
    post = make_post(1, text="x" * (MAX_ITEM_HTML_CHARS + 1) + f" #{TAG}")
    result = normalise_native(post, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "cap" in result.reason and result.raw is post


HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>',
    '"><iframe src="javascript:alert(1)"></iframe>',
]


@pytest.mark.parametrize("payload", HOSTILE)
def test_no_markup_in_the_text_survives_as_markup(payload):
    text = f"{payload} #{TAG}"
    item = normalise_native(make_post(1, text=text), hashtags=(TAG,))
    assert item.text == text
    lowered = item.html.lower()
    for tag in ("<script", "<img", "<svg", "<iframe"):
        assert tag not in lowered
    assert item.html.count("<a ") == 1  # only the tag facet is a link


@pytest.mark.parametrize("uri", ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html;base64,PHNjcmlwdD4=",
                                 '" onmouseover="alert(1)'])
def test_a_hostile_link_facet_is_not_rendered_as_a_link(uri):
    text = f"click me #{TAG}"
    post = make_post(1, text=text)
    post["record"]["facets"].append(utf8_facet(text, "click me", {"$type": "app.bsky.richtext.facet#link", "uri": uri}))
    lowered = normalise_native(post, hashtags=(TAG,)).html.lower()
    assert "javascript:" not in lowered and "data:" not in lowered and "onmouseover" not in lowered


# --- fetching: paging and the cursor ---------------------------------------------------------------------


def test_the_first_run_searches_the_latest_posts_with_the_hashtag_and_backfills_a_bounded_number_of_pages(upstream):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 601)], clock=lambda: NOW)
    pages = fetch_all(upstream)
    assert len(pages) == BACKFILL_PAGES
    assert len({item.external_id for item in items_of(pages)}) == BACKFILL_PAGES * PAGE_LIMIT
    first = fake.searches[0].query
    assert (first["q"], first["sort"], first["limit"]) == (f"#{TAG}", "latest", str(PAGE_LIMIT))
    assert "since" not in first and "cursor" not in first
    assert [s.query.get("cursor") for s in fake.searches[1:]] == ["100", "200", "300", "400"]
    newest = iso(datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=600))
    assert pages[-1].cursor == {"ukrainepeacetalks": {"newest": newest}}
    assert fake.logins == []


def test_a_later_run_asks_only_for_posts_since_the_newest_seen(upstream):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 61)], clock=lambda: NOW)
    newest_seen = iso(datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=50))
    pages = fetch_all(upstream, cursor={"ukrainepeacetalks": {"newest": newest_seen}})
    assert [s.query["since"] for s in fake.searches] == [newest_seen]
    assert sorted(item.raw["likeCount"] for item in items_of(pages)) == list(range(50, 61))  # since is inclusive
    assert pages[-1].cursor == {"ukrainepeacetalks": {
        "newest": iso(datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=60))}}


def test_a_catch_up_longer_than_one_run_is_saved_and_resumed_with_the_api_cursor(upstream):
    total = MAX_PAGES_PER_RUN * PAGE_LIMIT + 250
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, total + 1)], clock=lambda: NOW)
    start = iso(datetime(2026, 11, 20, tzinfo=timezone.utc))
    first = fetch_all(upstream, cursor={"ukrainepeacetalks": {"newest": start}})
    assert len(first) == MAX_PAGES_PER_RUN
    saved = first[-1].cursor["ukrainepeacetalks"]
    newest = iso(datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=total))
    assert saved == {"newest": start, "walk": {"cursor": str(MAX_PAGES_PER_RUN * PAGE_LIMIT), "newest": newest}}
    second = fetch_all(upstream, cursor=first[-1].cursor)
    assert fake.searches[MAX_PAGES_PER_RUN].query == {
        "q": f"#{TAG}", "sort": "latest", "limit": str(PAGE_LIMIT), "since": start, "cursor": "1000"}
    assert len({item.external_id for item in items_of(first + second)}) == total
    assert second[-1].cursor == {"ukrainepeacetalks": {"newest": newest}}


def test_a_refused_resumed_api_cursor_restarts_the_walk_from_the_newest_post(upstream):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 31)], clock=lambda: NOW)
    fake.search_replies[1] = Reply(400, {"error": "InvalidRequest", "message": "malformed cursor"})
    start = iso(datetime(2026, 11, 20, tzinfo=timezone.utc))
    pages = fetch_all(upstream, cursor={"ukrainepeacetalks": {"newest": start, "walk": {"cursor": "stale"}}})
    assert [s.query.get("cursor") for s in fake.searches] == ["stale", None]
    assert len(items_of(pages)) == 30


def test_recorded_posts_found_by_search_keep_only_those_with_the_tag(upstream, recorded):
    fake = FakeBluesky(upstream, recorded(POSTS_FILE), clock=lambda: NOW)
    pages = fetch_all(upstream, "HCERES")
    assert fake.searches[0].query["q"] == "#HCERES"
    assert pages[0].fetched == 8  # the search also returns the two posts that only say the word
    assert len(items_of(pages)) == 6
    assert all("hceres" in item.hashtags for item in items_of(pages))


def test_a_post_with_a_bad_date_is_rejected_and_the_rest_of_the_page_kept(upstream):
    broken = make_post(2, created_at="0000-10-14T15:06:10.730Z", indexed_at="0000-10-14T15:06:10.730Z")
    renamed = _renamed(make_post(3), "record", "value")
    fake = FakeBluesky(upstream, clock=lambda: NOW)
    fake.search_override = Reply(200, {"posts": [make_post(1), broken, renamed, make_post(4)]})
    page, = fetch_all(upstream)
    assert sorted(item.raw["likeCount"] for item in page.items) == [1, 4]
    assert {r.reason for r in page.rejected} == {
        "record.createdAt is not an ISO 8601 timestamp: '0000-10-14T15:06:10.730Z'", "post has no record object"}
    assert page.fetched == 4
    assert page.cursor["ukrainepeacetalks"]["newest"] == iso(datetime(2026, 11, 20, 0, 0, 4, tzinfo=timezone.utc))


def test_a_post_dated_in_the_future_does_not_move_the_cursor_past_now(upstream):
    future = make_post(9, created_at=NOW + timedelta(days=300), indexed_at=NOW + timedelta(days=300))
    FakeBluesky(upstream, [make_post(1), future], clock=lambda: NOW)
    pages = fetch_all(upstream)
    assert len(items_of(pages)) == 2
    assert pages[-1].cursor["ukrainepeacetalks"]["newest"] == iso(datetime(2026, 11, 20, 0, 0, 1, tzinfo=timezone.utc))


def test_each_hashtag_has_its_own_search_and_cursor(upstream):
    fake = FakeBluesky(upstream, [make_post(1, tag="Alpha"), make_post(2, tag="Beta")], clock=lambda: NOW)
    pages = fetch_all(upstream, "Alpha", "Beta")
    assert [s.query["q"] for s in fake.searches] == ["#Alpha", "#Beta"]
    assert set(pages[-1].cursor) == {"alpha", "beta"}
    assert [item.hashtags for item in items_of(pages)] == [("alpha",), ("beta",)]


# --- fetching: credentials and the session ----------------------------------------------------------------


def test_without_credentials_it_searches_anonymously_and_never_logs_in(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)
    pages = fetch_all(upstream)
    assert len(items_of(pages)) == 1
    assert fake.logins == [] and "authorization" not in fake.searches[0].headers
    assert pages[0].health_detail["auth"] == "anonymous"


def test_a_refused_anonymous_search_needs_credentials_and_names_the_variables(upstream):
    FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: NOW)
    with pytest.raises(NeedsCredentials, match="refused anonymous search \\(403 AuthMissing.*BLUESKY_HANDLE"):
        fetch_all(upstream)


def test_with_credentials_it_logs_in_once_and_every_worker_reuses_the_session_from_the_store(upstream):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 4)], anonymous=False, clock=lambda: NOW)
    store = DictStore()
    for _ in range(3):  # three runs, as three worker processes sharing Redis would make them
        assert len(items_of(fetch_all(upstream, credentials=CREDENTIALS, store=store))) == 3
    assert len(fake.logins) == 1 and fake.refreshes == []
    assert json.loads(fake.logins[0].body) == {"identifier": HANDLE, "password": APP_PASSWORD}
    tokens = {s.headers["authorization"] for s in fake.searches}
    assert len(tokens) == 1 and tokens.pop().startswith("Bearer ")
    (key, ttl), = store.sets
    assert key.startswith("bluesky:session:") and ttl == 60 * 24 * 3600  # kept as long as the refresh JWT


def test_an_expired_access_token_is_renewed_with_the_refresh_jwt_not_a_new_login(upstream):
    clock = {"now": NOW}
    fake = FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: clock["now"])
    store = DictStore()
    fetch_all(upstream, credentials=CREDENTIALS, store=store)
    refresh_jwt = next(iter(store.values.values()))["refresh"]
    clock["now"] = NOW + timedelta(hours=3)
    assert len(items_of(fetch_all(upstream, credentials=CREDENTIALS, store=store, now=clock["now"]))) == 1
    assert len(fake.logins) == 1 and len(fake.refreshes) == 1
    assert fake.refreshes[0].headers["authorization"] == f"Bearer {refresh_jwt}"
    assert fake.searches[-1].headers["authorization"] != fake.searches[0].headers["authorization"]


def test_an_access_token_the_server_calls_expired_is_refreshed_once_and_the_search_retried(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: NOW)
    store = DictStore()
    fetch_all(upstream, credentials=CREDENTIALS, store=store)
    fake.expired_access.add(next(iter(store.values.values()))["access"])
    assert len(items_of(fetch_all(upstream, credentials=CREDENTIALS, store=store))) == 1
    assert (len(fake.logins), len(fake.refreshes), len(fake.searches)) == (1, 1, 3)


def test_a_spent_refresh_token_falls_back_to_one_new_login(upstream):
    clock = {"now": NOW}
    fake = FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: clock["now"],
                       refresh_lifetime=timedelta(hours=4))
    store = DictStore()
    fetch_all(upstream, credentials=CREDENTIALS, store=store)
    fake.refresh_tokens.clear()  # revoked (or rotated by a worker whose save was lost)
    clock["now"] = NOW + timedelta(hours=3)
    assert len(items_of(fetch_all(upstream, credentials=CREDENTIALS, store=store, now=clock["now"]))) == 1
    assert (len(fake.logins), len(fake.refreshes)) == (2, 1)


def test_a_refused_login_needs_credentials_and_never_shows_the_password(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: NOW)
    with pytest.raises(NeedsCredentials) as caught:
        fetch_all(upstream, credentials={"handle": HANDLE, "app_password": "wrong-pass-word"})
    message = str(caught.value)
    assert "AuthenticationRequired" in message and "BLUESKY_APP_PASSWORD" in message
    assert "wrong-pass-word" not in message
    assert fake.searches == []


def test_a_session_answer_without_tokens_is_malformed_and_keeps_no_token(upstream):
    fake = FakeBluesky(upstream, clock=lambda: NOW)
    fake.session_override = Reply(200, {"did": "did:plc:x", "accessJwt": "secret-access", "refresh": "x"})
    with pytest.raises(MalformedResponse) as caught:
        fetch_all(upstream, credentials=CREDENTIALS)
    assert "accessJwt and refreshJwt" in str(caught.value)
    assert "secret-access" not in json.dumps(caught.value.raw)


@pytest.mark.parametrize("credentials, missing", [
    ({"handle": HANDLE}, "BLUESKY_APP_PASSWORD"), ({"app_password": APP_PASSWORD}, "BLUESKY_HANDLE")])
def test_only_one_of_the_two_credentials_needs_credentials_before_any_request(upstream, credentials, missing):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)
    with pytest.raises(NeedsCredentials, match=f"set {missing} too"):
        fetch_all(upstream, credentials=credentials)
    assert fake.seen == []


def test_credentials_against_a_host_without_logins_say_where_to_register(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)
    fake.session_override = Reply(501, {"error": "MethodNotImplemented", "message": "Method Not Implemented"})
    with pytest.raises(PermanentError, match="https://bsky.social.*auth=anonymous"):
        fetch_all(upstream, credentials=CREDENTIALS)


def test_the_auth_option_forces_anonymous_search_or_requires_credentials(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)
    assert len(items_of(fetch_all(upstream, credentials=CREDENTIALS, options={"auth": "anonymous"}))) == 1
    assert fake.logins == []
    with pytest.raises(NeedsCredentials, match="auth=required"):
        fetch_all(upstream, options={"auth": "required"})
    with pytest.raises(PermanentError, match="unknown Bluesky option auth='sometimes'"):
        fetch_all(upstream, options={"auth": "sometimes"})
    assert len(fake.searches) == 1


# --- fetching: rate limits and failures ----------------------------------------------------------------------


def test_429_with_retry_after_raises_rate_limited_until_then(upstream):
    fake = FakeBluesky(upstream, clock=lambda: NOW)
    fake.search_override = Reply(429, {"error": "RateLimitExceeded"}, {"Retry-After": "120"})
    with pytest.raises(RateLimited) as caught:
        fetch_all(upstream)
    assert caught.value.until == NOW + timedelta(seconds=120)


def test_429_with_only_a_reset_header_waits_for_the_epoch_reset(upstream):
    fake = FakeBluesky(upstream, clock=lambda: NOW)
    reset = NOW + timedelta(minutes=4)
    fake.search_override = Reply(429, {"error": "RateLimitExceeded"}, {
        "RateLimit-Limit": "3000", "RateLimit-Remaining": "0", "RateLimit-Reset": str(int(reset.timestamp()))})
    with pytest.raises(RateLimited) as caught:
        fetch_all(upstream)
    assert caught.value.until == reset


def test_no_request_goes_to_the_host_before_a_known_reset(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)
    fake.search_replies[1] = Reply(429, {"error": "RateLimitExceeded"}, {"Retry-After": "300"})
    store = DictStore()
    with pytest.raises(RateLimited):
        fetch_all(upstream, store=store)
    with pytest.raises(RateLimited) as caught:  # another source of the same host, another worker
        fetch_all(upstream, "OtherTag", store=store, now=NOW + timedelta(seconds=299))
    assert caught.value.until == NOW + timedelta(seconds=300)
    assert len(fake.searches) == 1
    assert len(items_of(fetch_all(upstream, store=store, now=NOW + timedelta(seconds=301)))) == 1


def test_a_spent_budget_stops_paging_until_the_reset(upstream):
    reset = NOW + timedelta(minutes=5)
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 601)], clock=lambda: NOW,
                       rate_limit_remaining=2, rate_limit_reset=reset)
    pages = fetch_all(upstream)
    assert len(fake.searches) == 2
    assert pages[-1].rate_limited_until == reset
    assert [page.health_detail["rate_limit_remaining"] for page in pages] == [1, 0]
    assert len(items_of(pages)) == 200
    assert pages[-1].cursor["ukrainepeacetalks"]["walk"]["cursor"] == "200"


@pytest.mark.parametrize("reply, error, message", [
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(502, "", {}), TemporaryError, "502"),
    (Reply(200, "<html><body>Bluesky is down</body></html>", {"Content-Type": "text/html"}), MalformedResponse,
     "expected JSON"),
    (Reply(200, '{"posts": [{"uri": "at://', {}), MalformedResponse, "expected JSON"),
    (Reply(200, {"feed": [make_post(1)]}, {}), MalformedResponse, "posts list"),
    (Reply(200, {"posts": {"0": make_post(1)}}, {}), MalformedResponse, "posts list"),
    (Reply(200, [make_post(1)], {}), MalformedResponse, "posts list"),
    (Reply(400, {"error": "BadQueryString", "message": "Invalid query"}, {}), PermanentError, "BadQueryString"),
    (Reply(404, {"error": "XRPCNotSupported"}, {}), PermanentError, "does not serve app.bsky.feed.searchPosts"),
    (Reply(401, {"error": "AuthMissing", "message": "Authentication Required"}, {}), NeedsCredentials, "401"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    FakeBluesky(upstream, clock=lambda: NOW).search_override = reply
    with pytest.raises(error, match=message):
        fetch_all(upstream)


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], clock=lambda: NOW)

    def slow(path, query):
        time.sleep(2)  # the upstream is slow; the test waits for no worker
        return fake.search(path, query)

    upstream.routes[SEARCH_PATH] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        fetch_all(upstream, client=client)
    assert time.monotonic() - started < 1.5


def test_every_request_names_itself_with_the_user_agent(upstream):
    fake = FakeBluesky(upstream, [make_post(1)], anonymous=False, clock=lambda: NOW)
    client = HttpClient(HttpSettings(user_agent="engagement-test/1 (+https://example.org)", allow_private=True))
    fetch_all(upstream, credentials=CREDENTIALS, client=client)
    assert [s.path for s in fake.seen] == [CREATE_SESSION_PATH, SEARCH_PATH]
    assert {s.headers["user-agent"] for s in fake.seen} == {"engagement-test/1 (+https://example.org)"}


# --- through collect, on the real database -------------------------------------------------------------------


def add_source(upstream, **options) -> Source:
    return collect.register_source(platform="bluesky", url=upstream.url, hashtags=[TAG], options=options)


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_a_run_stores_tagged_posts_links_replies_and_a_second_run_adds_nothing(upstream):
    parent = make_post(1)
    reply = make_post(2, reply_to=parent["uri"])
    untagged = make_post(3, text=f"just saying {TAG}", facet=False)
    bad_date = make_post(4, created_at="0000-10-14T15:06:10.730Z", indexed_at="0000-10-14T15:06:10.730Z")
    FakeBluesky(upstream, [parent, reply, untagged, bad_date, make_post(5)])
    source = add_source(upstream)
    first = run(source)
    assert (first.outcome, first.fetched, first.new, first.errors) == (CollectionRun.Outcome.PARTIAL, 5, 3, 1)
    stored = Post.objects.filter(source=source)
    assert set(stored.values_list("external_id", flat=True)) == {parent["uri"], reply["uri"], make_post(5)["uri"]}
    child = stored.get(external_id=reply["uri"])
    assert child.kind == "comment" and child.reply_to.external_id == parent["uri"]
    assert child.author.external_id == reply["author"]["did"] and child.author.handle == "@reader2.bsky.social"
    rejected = RejectedItem.objects.get(source=source)
    assert "record.createdAt" in rejected.reason and rejected.raw == bad_date
    second = run(source)
    assert (second.new, second.updated) == (0, 0)
    assert stored.count() == 3
    source.refresh_from_db()
    assert source.health == Source.Health.OK and source.health_detail["auth"] == "anonymous"


def _timeout(fake: FakeBluesky, upstream, settings):
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 0.3
    answer = fake.search

    def slow_second_page(path, query):
        if query.get("cursor"):
            time.sleep(2)  # the upstream is slow; the test waits for no worker
        return answer(path, query)

    upstream.routes[SEARCH_PATH] = slow_second_page


FAILURES = {
    "401": (Reply(401, {"error": "InvalidToken", "message": "Bad token"}), CollectionRun.Outcome.FAILED,
            Source.Health.NEEDS_CREDENTIALS, "refused anonymous search (401 InvalidToken"),
    "403": (Reply(403, {"error": "Forbidden"}), CollectionRun.Outcome.FAILED, Source.Health.NEEDS_CREDENTIALS,
            "set BLUESKY_HANDLE and BLUESKY_APP_PASSWORD"),
    "429 with reset": (Reply(429, {"error": "RateLimitExceeded"}, {"RateLimit-Remaining": "0", "RateLimit-Reset": "RESET"}),
                       CollectionRun.Outcome.RATE_LIMITED, Source.Health.RATE_LIMITED, "rate-limited (429)"),
    "5xx": (Reply(503, "<h1>Service Unavailable</h1>", {"Content-Type": "text/html"}), CollectionRun.Outcome.FAILED,
            Source.Health.FAILING, "upstream error 503"),
    "timeout": (_timeout, CollectionRun.Outcome.FAILED, Source.Health.FAILING, "timed out"),
    "HTML instead of JSON": (Reply(200, "<html><body>Just a moment...</body></html>", {"Content-Type": "text/html"}),
                             CollectionRun.Outcome.FAILED, Source.Health.FAILING, "expected JSON"),
    "changed field name": (Reply(200, {"results": [], "cursor": "x"}), CollectionRun.Outcome.FAILED,
                           Source.Health.FAILING, "expected an object with a posts list"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failure_on_the_second_page_is_recorded_clearly_and_the_first_page_kept(upstream, settings, flushed_redis,
                                                                                 failure):
    reply, outcome, health, message = FAILURES[failure]
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 151)])
    reset = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(minutes=10)
    if callable(reply):
        reply(fake, upstream, settings)
    else:
        reply.headers = {k: v.replace("RESET", str(int(reset.timestamp()))) for k, v in reply.headers.items()}
        fake.search_replies[2] = reply
    source = add_source(upstream)
    result = run(source)
    assert result.outcome == outcome and message in result.message
    assert Post.objects.filter(source=source).count() == PAGE_LIMIT  # the first page is stored
    source.refresh_from_db()
    assert source.health == health
    assert source.cursor["ukrainepeacetalks"]["walk"]["cursor"] == "100"  # the next run resumes after page 1
    if outcome == CollectionRun.Outcome.FAILED:
        assert source.last_error == result.message
    else:
        assert source.rate_limited_until == reset and source.next_poll_at >= reset
        assert collect.run_source(source.pk, owner="test") is None  # no run, so no request, before the reset
        assert len(fake.searches) == 2
    if "JSON" in message or "posts list" in message:
        assert RejectedItem.objects.filter(source=source, reason=result.message).exists()


@pytest.mark.django_db
def test_a_source_without_credentials_refused_anonymously_shows_needs_credentials(upstream, flushed_redis):
    FakeBluesky(upstream, [make_post(1)], anonymous=False)
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED
    assert source.health == Source.Health.NEEDS_CREDENTIALS
    assert source.last_error_kind == Source.ErrorKind.CREDENTIALS and "BLUESKY_HANDLE" in source.last_error


@pytest.mark.django_db
def test_runs_share_one_login_through_redis(upstream, settings, flushed_redis):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "bluesky": dict(CREDENTIALS)}
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 4)], anonymous=False)
    sources = [add_source(upstream), collect.register_source(platform="bluesky", url=upstream.url, hashtags=["Other"])]
    for source in sources + sources:
        assert run(source).outcome == CollectionRun.Outcome.OK
    assert len(fake.logins) == 1 and len(fake.searches) == 4
    assert Post.objects.count() == 3
    assert Source.objects.get(pk=sources[0].pk).health_detail["auth"] == f"app password of @{HANDLE}"


# --- re-checks: app.bsky.feed.getPosts -------------------------------------------------------------------


def recheck_all(upstream, posts: list[dict], **kwargs) -> list[Recheck]:
    return list(connector(upstream, **kwargs).recheck([(post["uri"], post) for post in posts]))


def test_a_recheck_asks_get_posts_for_25_uris_at_a_time_and_reports_those_left_out_as_deleted(upstream):
    stored = [make_post(n) for n in range(1, 61)]
    gone = {stored[3]["uri"], stored[40]["uri"]}
    fake = FakeBluesky(upstream, [post for post in stored if post["uri"] not in gone], clock=lambda: NOW)
    results = recheck_all(upstream, stored)
    assert GET_POSTS_BATCH == 25
    assert [uris_of(seen) for seen in fake.lookups] == [
        [p["uri"] for p in stored[:25]], [p["uri"] for p in stored[25:50]], [p["uri"] for p in stored[50:]]]
    assert [r.external_id for r in results] == [p["uri"] for p in stored]
    deleted = [r for r in results if r.deleted_reason]
    assert {r.external_id for r in deleted} == gone
    assert deleted[0].deleted_reason == (f"not returned by app.bsky.feed.getPosts at {upstream.url.split('//')[1]}: "
                                         "deleted by its author or taken down")
    items = [r.item for r in results if r.item is not None]
    assert len(items) == 58 and not any(r.error for r in results)
    assert items[0] == normalise_native(stored[0], hashtags=(TAG,))  # normalised as fetch does
    assert fake.searches == [] and fake.logins == []


def test_a_recheck_reads_recorded_post_views_as_get_posts_returns_them(upstream, recorded):
    views = [obj.get("post", obj) for obj in recorded(POSTS_FILE)[:30]]
    kept = views[:29]  # the last one was deleted since
    fake = FakeBluesky(upstream, kept, clock=lambda: NOW)
    results = list(connector(upstream, "HCERES").recheck([(view["uri"], view) for view in views]))
    assert len(fake.lookups) == 2
    by_id = {r.external_id: r for r in results}
    assert by_id[views[29]["uri"]].deleted_reason.startswith("not returned by app.bsky.feed.getPosts")
    for view in kept:
        item = by_id[view["uri"]].item
        assert item is not None and item.raw == view and item.text == view["record"]["text"]
        # Its current tags, plus the source's tag it was collected for (kept even where it is gone).
        assert set(item.hashtags) == set(normalise_native(view, hashtags=()).hashtags) | {"hceres"}


def test_a_recheck_reports_what_it_cannot_tell_as_errors_and_never_as_deletions(upstream):
    readable, broken = make_post(1), make_post(2)
    fake = FakeBluesky(upstream, [readable, {**broken, "record": "not an object"}], clock=lambda: NOW)
    not_a_post = "at://did:plc:reader0000000000000000001/app.bsky.feed.like/3like"
    results = list(connector(upstream).recheck([(readable["uri"], readable), (broken["uri"], broken),
                                                (not_a_post, {}), ("https://bsky.app/x", {})]))
    by_id = {r.external_id: r for r in results}
    assert by_id[readable["uri"]].item is not None
    assert by_id[broken["uri"]].error == "post has no record object"
    assert by_id[not_a_post].error == "not the at:// URI of an app.bsky.feed.post record"
    assert by_id["https://bsky.app/x"].error
    assert not any(r.deleted_reason for r in results)
    assert [uris_of(seen) for seen in fake.lookups] == [[readable["uri"], broken["uri"]]]
    fake.get_posts_replies[2] = Reply(400, {"error": "InvalidRequest", "message": "Error: uris/0 must be a valid at-uri"})
    refused = recheck_all(upstream, [readable])
    assert refused == [Recheck(external_id=readable["uri"], error=(
        f"{upstream.url.split('//')[1]} refused app.bsky.feed.getPosts (400 InvalidRequest: "
        "Error: uris/0 must be a valid at-uri)"))]


def test_a_recheck_uses_the_session_of_the_search_and_refused_anonymous_lookups_need_credentials(upstream):
    post = make_post(1)
    fake = FakeBluesky(upstream, [post], anonymous=False, clock=lambda: NOW)
    store = DictStore()
    fetch_all(upstream, credentials=CREDENTIALS, store=store)
    assert recheck_all(upstream, [post], credentials=CREDENTIALS, store=store)[0].item is not None
    assert len(fake.logins) == 1
    assert fake.lookups[0].headers["authorization"] == fake.searches[0].headers["authorization"]
    fake.posts = []
    (gone,) = recheck_all(upstream, [post], credentials=CREDENTIALS, store=store)
    assert gone.deleted_reason.endswith(f"deleted by its author or taken down (or hidden from @{HANDLE} by a block)")
    with pytest.raises(NeedsCredentials, match="refused anonymous app.bsky.feed.getPosts \\(403 AuthMissing.*BLUESKY_HANDLE"):
        recheck_all(upstream, [post])
    with pytest.raises(NeedsCredentials, match="auth=required"):
        recheck_all(upstream, [post], options={"auth": "required"})
    assert len(fake.lookups) == 3 and len(fake.logins) == 1


def test_a_recheck_keeps_the_tracked_tags_of_the_stored_copy_when_the_author_removed_them(upstream):
    stored = make_post(1, text=f"Переговори ✌️ post 1 #{TAG} #Other #Untracked")
    stored["record"]["facets"] = [tag_facet(stored["record"]["text"], tag) for tag in (TAG, "Other", "Untracked")]
    untagged = make_post(1, text="Переговори ✌️ post 1, tags removed", tag=None)
    retagged = make_post(1, tag="SomethingElse")
    fake = FakeBluesky(upstream, [untagged], clock=lambda: NOW)
    (result,) = list(connector(upstream, TAG, "Other", "Third").recheck([(stored["uri"], stored)]))
    # The tracked tags the stored copy had, not its untracked one, nor a tracked tag it never had.
    assert result.item.hashtags == ("other", "ukrainepeacetalks") and result.item.text == untagged["record"]["text"]
    fake.posts = [retagged]
    (result,) = list(connector(upstream, TAG, "Other", "Third").recheck([(stored["uri"], stored)]))
    assert result.item.hashtags == ("other", "somethingelse", "ukrainepeacetalks")
    # A stored copy without any tracked tag (removed before an earlier re-check) keeps the source's tags.
    fake.posts = [untagged]
    (result,) = list(connector(upstream, TAG).recheck([(untagged["uri"], untagged)]))
    assert result.item.hashtags == ("ukrainepeacetalks",)


def recent_posts(count: int, *, tag: str | None = TAG) -> list[dict]:
    now = datetime.now(timezone.utc)
    return [make_post(n, tag=tag, created_at=now - timedelta(hours=n)) for n in range(1, count + 1)]


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_a_deleted_post_as_a_tombstone(upstream, api_client,
                                                                                    flushed_redis):
    posts = recent_posts(3)
    fake = FakeBluesky(upstream, posts)
    source = add_source(upstream)
    assert run(source).new == 3
    edited = copy.deepcopy(posts[0])
    edited["record"]["text"] = edited["record"]["text"].replace("about the talks", "about the new talks")
    edited["record"]["facets"] = [tag_facet(edited["record"]["text"], TAG)]
    fake.posts = [edited, posts[2]]  # posts[1] was deleted by its author
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors, report.message) == (3, 1, 1, 0, "")
    assert len(fake.lookups) == 1 and sorted(uris_of(fake.lookups[0])) == sorted(p["uri"] for p in posts)
    post = Post.objects.get(external_id=edited["uri"])
    assert "about the new talks" in post.text and post.raw == edited
    revision = PostRevision.objects.get(post=post)
    assert "about the talks" in revision.text and revision.raw == posts[0]
    tombstone = Post.objects.get(external_id=posts[1]["uri"])
    assert tombstone.deleted_at is not None
    assert tombstone.deletion_reason.startswith("not returned by app.bsky.feed.getPosts")
    assert "deleted by its author or taken down" in tombstone.deletion_reason
    listed = {p["external_id"] for p in api_posts(api_client, platform="bluesky")}
    assert listed == {posts[0]["uri"], posts[2]["uri"]}
    assert api_client.get(f"/api/v1/posts/{tombstone.pk}/").status_code == 404
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (2, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_post_whose_tag_was_removed_stays_listed_under_the_tag_after_a_recheck(upstream, api_client,
                                                                                flushed_redis):
    post, = recent_posts(1)
    fake = FakeBluesky(upstream, [post])
    source = add_source(upstream)
    run(source)
    untagged = copy.deepcopy(post)
    untagged["record"]["text"] = "Переговори ✌️ without the tag now"
    del untagged["record"]["facets"]
    fake.posts = [untagged]
    for _ in range(2):  # the second re-check reads the untagged copy stored by the first
        report = collect.recheck_source(source.pk, owner="test")
        assert (report.checked, report.deleted, report.errors) == (1, 0, 0)
    stored = Post.objects.get()
    assert stored.text == "Переговори ✌️ without the tag now" and stored.hashtags == ["ukrainepeacetalks"]
    assert PostRevision.objects.filter(post=stored).count() == 1
    assert [p["external_id"] for p in api_posts(api_client, hashtag=TAG)] == [post["uri"]]


@pytest.mark.django_db
def test_a_recheck_that_cannot_tell_records_an_error_and_deletes_nothing(upstream, flushed_redis):
    posts = recent_posts(2)
    fake = FakeBluesky(upstream, posts)
    source = add_source(upstream)
    run(source)
    broken = copy.deepcopy(posts[0])
    broken["record"]["createdAt"] = "0000-10-14T15:06:10.730Z"
    fake.posts = [broken, posts[1]]
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (2, 0, 0, 1)
    assert Post.objects.filter(deleted_at__isnull=False).count() == 0
    assert Post.objects.get(external_id=posts[0]["uri"]).raw == posts[0]  # the stored copy is kept
    fake.get_posts_replies[2] = Reply(503, "<h1>Service Unavailable</h1>", {"Content-Type": "text/html"})
    failed = collect.recheck_source(source.pk, owner="test")
    assert (failed.checked, failed.deleted) == (0, 0) and "upstream error 503" in failed.message
    assert Post.objects.filter(deleted_at__isnull=False).count() == 0


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream, flushed_redis):
    fake = FakeBluesky(upstream, recent_posts(GET_POSTS_BATCH + 5))
    source = add_source(upstream)
    run(source)
    fake.get_posts_replies[2] = Reply(429, {"error": "RateLimitExceeded"}, {"Retry-After": "300"})
    started = datetime.now(timezone.utc)
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.deleted) == (GET_POSTS_BATCH, 0) and "rate-limited (429)" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until >= started + timedelta(seconds=299)
    assert len(fake.lookups) == 2
    assert Post.objects.filter(last_checked_at__isnull=True).count() == 5
    assert collect.recheck_source(source.pk, owner="test") is None  # the source waits for its reset
    # The host's reset is shared through Redis: even with the source released, no request goes out before it.
    Source.objects.filter(pk=source.pk).update(rate_limited_until=None)
    blocked = collect.recheck_source(source.pk, owner="test")
    assert blocked.checked == 0 and "no request before" in blocked.message
    assert len(fake.lookups) == 2


# --- backfill: searchPosts with until and since -----------------------------------------------------------


START = datetime(2026, 11, 20, tzinfo=timezone.utc)  # make_post(n) is dated START + n seconds


def backfill_all(upstream, *, since: datetime, cursor: dict, **kwargs) -> list:
    return list(connector(upstream, **kwargs).backfill(since=since, cursor=cursor))


def test_a_backfill_pages_back_with_the_api_cursor_and_resumes_below_the_oldest_post_walked(upstream, monkeypatch):
    monkeypatch.setattr(bluesky, "MAX_BACKFILL_PAGES", 2)
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 401)], clock=lambda: NOW)
    polling = {"newest": iso(START + timedelta(seconds=400))}
    since = START + timedelta(seconds=101)
    first = backfill_all(upstream, since=since, cursor={"ukrainepeacetalks": dict(polling)})
    assert len(first) == 2
    assert [s.query for s in fake.searches] == [
        {"q": f"#{TAG}", "sort": "latest", "limit": str(PAGE_LIMIT), "since": iso(since)},
        {"q": f"#{TAG}", "sort": "latest", "limit": str(PAGE_LIMIT), "since": iso(since), "cursor": "100"},
    ]
    oldest_walked = START + timedelta(seconds=201)  # sortAt of post 201 (createdAt; indexedAt is later)
    assert first[-1].cursor == {"ukrainepeacetalks": {
        **polling, "backfill_until": iso(oldest_walked + timedelta(milliseconds=1))}}
    second = backfill_all(upstream, since=since, cursor=first[-1].cursor)
    assert fake.searches[2].query == {"q": f"#{TAG}", "sort": "latest", "limit": str(PAGE_LIMIT),
                                      "since": iso(since), "until": iso(oldest_walked + timedelta(milliseconds=1))}
    assert len(second) == 2 and "cursor" in fake.searches[3].query
    likes = sorted(item.raw["likeCount"] for item in items_of(first + second))
    assert likes == sorted(list(range(101, 401)) + [201])  # post 201 read again at the overlap, stored once
    assert second[-1].cursor == {"ukrainepeacetalks": {
        **polling, "backfill_until": iso(since), "backfilled_since": iso(since)}}
    asked = len(fake.searches)
    assert backfill_all(upstream, since=since, cursor=second[-1].cursor) == []
    assert backfill_all(upstream, since=since + timedelta(days=1), cursor=second[-1].cursor) == []
    assert len(fake.searches) == asked
    # An earlier date carries on below the finished walk.
    backfill_all(upstream, since=START, cursor=second[-1].cursor)
    assert fake.searches[asked].query["until"] == iso(since) and fake.searches[asked].query["since"] == iso(START)


def test_a_backfill_never_yields_posts_older_than_the_date_even_when_the_upstream_ignores_it(upstream):
    fake = FakeBluesky(upstream, clock=lambda: NOW)
    fake.search_override = Reply(200, {"posts": [make_post(n) for n in (300, 200, 100, 50)], "cursor": "4"})
    since = START + timedelta(seconds=150)
    pages = backfill_all(upstream, since=since, cursor={})
    assert len(pages) == 1 and len(fake.searches) == 1
    assert [item.raw["likeCount"] for item in pages[0].items] == [300, 200]
    assert pages[0].fetched == 4
    assert pages[0].cursor == {"ukrainepeacetalks": {"backfill_until": iso(since), "backfilled_since": iso(since)}}


def test_a_backfill_stops_on_a_spent_budget_and_keeps_its_position(upstream):
    reset = NOW + timedelta(minutes=5)
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 301)], clock=lambda: NOW,
                       rate_limit_remaining=1, rate_limit_reset=reset)
    pages = backfill_all(upstream, since=START, cursor={})
    assert len(pages) == 1 and len(fake.searches) == 1
    assert pages[0].rate_limited_until == reset
    assert pages[0].cursor["ukrainepeacetalks"] == {"backfill_until": iso(START + timedelta(seconds=201, milliseconds=1))}
    fake.search_override = Reply(429, {"error": "RateLimitExceeded"}, {"Retry-After": "30"})
    with pytest.raises(RateLimited):
        backfill_all(upstream, since=START, cursor=pages[0].cursor, now=reset + timedelta(seconds=1))


def test_polling_keeps_the_backfill_position_in_the_cursor(upstream):
    FakeBluesky(upstream, [make_post(n) for n in range(1, 4)], clock=lambda: NOW)
    walked = {"backfill_until": iso(START), "backfilled_since": iso(START)}
    pages = fetch_all(upstream, cursor={"ukrainepeacetalks": {"newest": iso(START), **walked}})
    assert pages[-1].cursor == {"ukrainepeacetalks": {"newest": iso(START + timedelta(seconds=3)), **walked}}


@pytest.mark.django_db
def test_a_backfill_through_collect_walks_back_to_the_date_and_a_second_call_makes_no_request(upstream,
                                                                                           flushed_redis):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 351)])
    source = add_source(upstream)
    polling = {"ukrainepeacetalks": {"newest": iso(START + timedelta(seconds=350))}}
    Source.objects.filter(pk=source.pk).update(cursor=polling)
    since = START + timedelta(seconds=101)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert (backfill.outcome, backfill.pages, backfill.fetched, backfill.new) == (CollectionRun.Outcome.OK, 3, 250, 250)
    assert [s.query.get("cursor") for s in fake.searches] == [None, "100", "200"]
    assert {s.query["since"] for s in fake.searches} == {iso(since)} and "until" not in fake.searches[0].query
    stored = sorted(Post.objects.values_list("created_at", flat=True))
    assert len(stored) == 250 and stored[0] == since
    source.refresh_from_db()
    assert source.cursor["ukrainepeacetalks"]["newest"] == polling["ukrainepeacetalks"]["newest"]  # unchanged
    assert source.cursor["ukrainepeacetalks"]["backfilled_since"] == iso(since)
    again = collect.backfill_source(source.pk, since=since, owner="test")
    assert (again.outcome, again.pages, again.new) == (CollectionRun.Outcome.OK, 0, 0)
    assert len(fake.searches) == 3
    assert run(source).new == 0  # polling afterwards keeps the finished walk
    source.refresh_from_db()
    assert source.cursor["ukrainepeacetalks"]["backfilled_since"] == iso(since)
    assert collect.backfill_source(source.pk, since=since, owner="test").pages == 0


# --- the real worker ------------------------------------------------------------------------------------


def api_posts(api_client, **params) -> list[dict]:
    """Every post the API lists for these filters, following its cursor pages."""
    posts, url = [], "/api/v1/posts/"
    while url:
        response = api_client.get(url, params) if not posts else api_client.get(url)
        assert response.status_code == 200, response.content
        posts += response.json()["results"]
        url = response.json()["next"]
    return posts


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_and_a_worker_collect_bluesky_posts_into_the_api_and_a_second_run_adds_nothing(
    flushed_redis, upstream, start_worker, start_beat, api_client, process_env
):
    fake = FakeBluesky(upstream, [make_post(n) for n in range(1, 151)], anonymous=False)
    source = collect.register_source(platform="bluesky", url=upstream.url, hashtags=[TAG], interval=2)
    worker = start_worker(env={**process_env, "BLUESKY_HANDLE": HANDLE, "BLUESKY_APP_PASSWORD": APP_PASSWORD})
    start_beat()
    posts = wait_for(lambda: len(api_posts(api_client, platform="bluesky")) == 150 and
                     api_posts(api_client, platform="bluesky"), timeout=60, message="150 posts in the API")
    assert {post["external_id"] for post in posts} == {make_post(n)["uri"] for n in range(1, 151)}
    assert all(post["url"].startswith("https://bsky.app/profile/reader") for post in posts)
    runs = CollectionRun.objects.filter(source=source, finished_at__isnull=False).order_by("id")
    wait_for(lambda: runs.count() >= 2, timeout=60, message="a second run by the worker")
    assert runs[0].new == 150 and runs[0].outcome == CollectionRun.Outcome.OK
    assert runs[1].new == 0 and runs[1].outcome == CollectionRun.Outcome.OK
    assert Post.objects.filter(platform="bluesky").count() == 150
    assert len(fake.logins) == 1  # the second run used the session kept in Redis
    assert fake.searches[-1].query["since"]  # and asked only for what is new
    assert worker.proc.poll() is None
