"""The YouTube connector on recorded real responses (../shared/fixtures/youtube/) and a fake Data API.

Recorded files read here: comment_threads__comment_threads_by_video_paged_1.json,
comment_threads__comment_threads_by_video_paged_2.json, comment_threads__comment_threads_all_to_me.json,
comment_threads__insert_response.json, comments__comments_by_parent_paged_1.json,
comments__comments_by_parent_paged_2.json, search__search_by_keywords_p1.json, search__search_by_keywords_p2.json.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timedelta, timezone

import pytest

from engagement import collect
from engagement.models import CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources import youtube
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
from engagement.sources.youtube import (
    SEARCH_COST,
    build,
    normalise_native,
    normalise_thread,
    parse_video_ids,
    quota_day,
)
from tests.conftest import wait_for
from tests.upstream import Reply
from tests.youtube_fake import YouTubeApi, google_error, make_thread, make_video, stamp, thread_id

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)  # 04:00 in Los Angeles (PST)
NEXT_RESET = datetime(2026, 11, 26, 8, 0, tzinfo=timezone.utc)  # midnight PST
TAG = "UkrainePeaceTalks"
RECORDED_VIDEO = "F1UP7wRCPH8"  # the video of by_video_paged_1/2
ABOUT = "vidAbout001"  # a video whose description carries #UkrainePeaceTalks
OTHER = "vidOther002"  # a search hit that only mentions the words


class DictStore:
    def __init__(self):
        self.values: dict = {}

    def get(self, key):
        return self.values.get(key)

    def set(self, key, value, *, ttl):
        self.values[key] = value

    def delete(self, key):
        self.values.pop(key, None)


def connector(api: YouTubeApi, *tags: str, store=None, now=lambda: NOW, credentials=None, client=None, **options):
    config = SourceConfig(platform="youtube", base_url=api.url, hashtags=tags or (TAG,), options=options,
                          credentials={"api_key": "test-key"} if credentials is None else credentials)
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return build(config, client=client, now=now, store=store if store is not None else DictStore())


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


def conversation(api: YouTubeApi) -> None:
    """ABOUT carries the tag (3 untagged threads, one with 8 replies); OTHER only mentions the words."""
    api.add_video(make_video(ABOUT, description="Live from the talks #UkrainePeaceTalks", published=NOW - timedelta(hours=3)),
                  [make_thread(ABOUT, 1), make_thread(ABOUT, 2, replies=2), make_thread(ABOUT, 3, replies=8)])
    api.add_video(make_video(OTHER, title="Ukraine peace talks explained", description="no hashtag here",
                             published=NOW - timedelta(hours=2)),
                  [make_thread(OTHER, 1, text="#UkrainePeaceTalks under an untagged video")])


def recorded_thread(recorded, comment_id: str) -> dict:
    page = recorded("youtube/comment_threads__comment_threads_by_video_paged_1.json")
    return copy.deepcopy(next(item for item in page["items"] if item["id"] == comment_id))


# --- parsing ---------------------------------------------------------------------------------------


def test_it_normalises_a_recorded_comment_thread_with_its_tags_from_the_text(recorded):
    thread = recorded_thread(recorded, "UgwI_ylXVnzPS8Q-oAV4AaABAg")
    item = normalise_native(thread, hashtags=("ChromeDevSummit",))
    assert isinstance(item, NormalisedItem)
    assert item.external_id == "UgwI_ylXVnzPS8Q-oAV4AaABAg"
    assert item.url == "https://www.youtube.com/watch?v=F1UP7wRCPH8&lc=UgwI_ylXVnzPS8Q-oAV4AaABAg"
    assert item.kind == "comment" and item.reply_to_external_id == ""
    # The comment has both #ChromeDevSummit and #chromedevsummit: one tag, casefolded.
    assert item.hashtags == ("chromedevsummit",)
    assert item.text.startswith("Lot's of good light coming in from here #ChromeDevSummit the web")
    assert 'href="http://www.youtube.com/results?search_query=%23ChromeDevSummit"' in item.html
    assert 'rel="nofollow noopener noreferrer"' in item.html
    assert item.author.external_id == "UCACHW4qVHoE4zqhHxcVE3Kw"
    assert item.author.display_name == "matrix uduma"
    assert item.created_at == datetime(2019, 11, 14, 23, 31, 33, tzinfo=timezone.utc)
    assert item.edited_at is None
    assert item.reply_count == 2
    assert item.raw == thread


def test_a_recorded_reply_points_at_its_parent_thread(recorded):
    reply = recorded("youtube/comments__comments_by_parent_paged_1.json")["items"][0]
    item = normalise_native(reply, hashtags=())
    assert item.external_id == "Ugw5zYU6n9pmIgAZWvN4AaABAg.91zT3cYb5B291za6voUoRh"
    assert item.reply_to_external_id == "Ugw5zYU6n9pmIgAZWvN4AaABAg"
    assert item.text == "this is the third reply!"
    assert item.url == ""  # a reply resource does not name its video; fetching passes it in


def test_a_timestamp_without_milliseconds_is_read(recorded):
    item = normalise_native(recorded("youtube/comment_threads__insert_response.json"), hashtags=())
    assert item.created_at == datetime(2022, 11, 15, 2, 20, 1, tzinfo=timezone.utc)


def test_an_untagged_comment_is_dropped_unless_its_video_is_about_the_tag(recorded):
    thread = recorded_thread(recorded, "Ugy4OzAuz5uJuFt3FH54AaABAg")
    assert normalise_native(thread, hashtags=(TAG,)) is None
    item = normalise_thread(thread, tag_keys={"ukrainepeacetalks"}, about=["ukrainepeacetalks"])
    assert item.hashtags == ("ukrainepeacetalks",)


def test_a_renamed_top_level_comment_rejects_the_thread_with_its_raw_payload(recorded):
    thread = recorded_thread(recorded, "Ugy4OzAuz5uJuFt3FH54AaABAg")
    thread["snippet"]["topComment"] = thread["snippet"].pop("topLevelComment")
    result = normalise_native(thread, hashtags=())
    assert isinstance(result, RejectedRaw)
    assert "topLevelComment" in result.reason
    assert result.raw == thread and result.external_id == "Ugy4OzAuz5uJuFt3FH54AaABAg"


@pytest.mark.parametrize("bad", ["0000-10-14T15:06:10.730Z", "yesterday", None, ""])
def test_a_bad_date_rejects_the_comment(recorded, bad):
    thread = recorded_thread(recorded, "Ugy4OzAuz5uJuFt3FH54AaABAg")
    thread["snippet"]["topLevelComment"]["snippet"]["publishedAt"] = bad
    result = normalise_native(thread, hashtags=())
    assert isinstance(result, RejectedRaw) and "publishedAt" in result.reason


@pytest.mark.parametrize("payload", [
    "<script>alert(1)</script>", '<img src=x onerror="alert(1)">', '<a href="javascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>', '<iframe src="javascript:alert(1)"></iframe>',
    '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>',
])
def test_no_script_survives_in_the_stored_html(recorded, payload):
    thread = recorded_thread(recorded, "Ugy4OzAuz5uJuFt3FH54AaABAg")
    thread["snippet"]["topLevelComment"]["snippet"]["textDisplay"] = f"{payload} #UkrainePeaceTalks"
    html = normalise_thread(thread, about=["ukrainepeacetalks"]).html.lower()
    for bad in ("<script", "javascript:", "data:", "onerror", "onload", "<svg", "<iframe", "<img"):
        assert bad not in html


def test_a_huge_comment_is_rejected_not_stored(recorded):
    thread = recorded_thread(recorded, "Ugy4OzAuz5uJuFt3FH54AaABAg")
    thread["snippet"]["topLevelComment"]["snippet"]["textDisplay"] = "x" * 200_000
    result = normalise_native(thread, hashtags=())
    assert isinstance(result, RejectedRaw) and "cap" in result.reason


@pytest.mark.parametrize("moment, day, reset", [
    (NOW, "2026-11-25", NEXT_RESET),
    (datetime(2026, 11, 25, 7, 59, tzinfo=timezone.utc), "2026-11-24", datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)),
    (datetime(2026, 7, 1, 6, 30, tzinfo=timezone.utc), "2026-06-30", datetime(2026, 7, 1, 7, 0, tzinfo=timezone.utc)),
    (datetime(2026, 3, 8, 9, 0, tzinfo=timezone.utc), "2026-03-08", datetime(2026, 3, 9, 7, 0, tzinfo=timezone.utc)),
])
@pytest.mark.parametrize("with_tz_database", [True, False])
def test_the_quota_day_turns_at_midnight_pacific_time(moment, day, reset, with_tz_database):
    from engagement.sources.youtube import PACIFIC

    if with_tz_database and PACIFIC is None:
        pytest.skip("no tz database here; the fallback rule is tested below")
    assert quota_day(moment, zone=PACIFIC if with_tz_database else None) == (day, reset)


def test_videos_are_listed_by_id_or_watch_url():
    assert parse_video_ids("F1UP7wRCPH8, https://www.youtube.com/watch?v=JE8xdDp5B8Q&t=3 youtu.be/D-lhorsDlUQ "
                           "https://www.youtube.com/shorts/gQ_1zX-F_No F1UP7wRCPH8") == [
        "F1UP7wRCPH8", "JE8xdDp5B8Q", "D-lhorsDlUQ", "gQ_1zX-F_No"]
    with pytest.raises(PermanentError, match="not a YouTube video id"):
        parse_video_ids("https://www.youtube.com/channel/UCa-vrCLQHviTOVnEKDOdetQ")


@pytest.mark.parametrize("options, message", [
    ({"daily_quota": "lots"}, "daily_quota must be a whole number"),
    ({"search": "yes please"}, "search must be true or false"),
    ({"search": "false"}, "nothing to collect"),
])
def test_a_bad_option_is_a_clear_permanent_error(upstream, options, message):
    with pytest.raises(PermanentError, match=message):
        connector(YouTubeApi(upstream), **options)


# --- fetching --------------------------------------------------------------------------------------


def test_without_an_api_key_it_needs_credentials_before_any_request(upstream):
    api = YouTubeApi(upstream)
    with pytest.raises(NeedsCredentials, match="YOUTUBE_API_KEY"):
        connector(api, credentials={})
    assert upstream.requests == []


def test_a_listed_video_keeps_only_its_tagged_comments_and_a_repeated_page_ends_the_paging(upstream, recorded):
    api = YouTubeApi(upstream)
    api.videos[RECORDED_VIDEO] = make_video(RECORDED_VIDEO, title="Chrome Dev Summit keynote", description="")
    api.thread_pages[RECORDED_VIDEO] = [recorded("youtube/comment_threads__comment_threads_by_video_paged_1.json"),
                                        recorded("youtube/comment_threads__comment_threads_by_video_paged_2.json")]
    pages = list(connector(api, "ChromeDevSummit", videos=RECORDED_VIDEO).fetch(cursor={}))
    assert [item.external_id for item in items_of(pages)] == ["UgwI_ylXVnzPS8Q-oAV4AaABAg"]
    threads = api.requests("commentThreads")
    # Page 2 repeats page 1 (same items, same etag): it is read once and paging stops.
    assert [seen.query.get("pageToken") for seen in threads] == [
        None, recorded("youtube/comment_threads__comment_threads_by_video_paged_1.json")["nextPageToken"]]
    assert threads[0].query["part"] == "snippet,replies" and threads[0].query["maxResults"] == "100"
    assert api.requests("search") == []  # listed videos only: no search unless asked
    video_state = pages[-1].cursor["videos"][RECORDED_VIDEO]
    assert video_state["about"] == [] and video_state["seen_until"] == "2019-11-26T15:51:44Z"


def test_a_page_served_again_with_the_same_token_does_not_loop(upstream, recorded):
    api = YouTubeApi(upstream)
    page_1 = recorded("youtube/comment_threads__comment_threads_by_video_paged_1.json")
    api.videos[RECORDED_VIDEO] = make_video(RECORDED_VIDEO, description="#ChromeDevSummit")
    api.thread_pages[RECORDED_VIDEO] = [page_1, page_1, page_1]  # each page names the same next token
    pages = list(connector(api, "ChromeDevSummit", videos=RECORDED_VIDEO).fetch(cursor={}))
    assert len(api.requests("commentThreads")) == 2
    assert len({item.external_id for item in items_of(pages)}) == len(items_of(pages)) == 5


def test_a_page_repeated_under_ever_new_tokens_does_not_loop(upstream, recorded):
    api = YouTubeApi(upstream)
    page_1 = recorded("youtube/comment_threads__comment_threads_by_video_paged_1.json")
    api.videos[RECORDED_VIDEO] = make_video(RECORDED_VIDEO, description="#ChromeDevSummit")
    served = []

    def same_items_new_token(path, query):
        served.append(query)
        return Reply(200, {**page_1, "nextPageToken": f"token-{len(served)}"})

    upstream.routes["/youtube/v3/commentThreads"] = same_items_new_token
    pages = list(connector(api, "ChromeDevSummit", videos=RECORDED_VIDEO).fetch(cursor={}))
    assert len(served) == 2 and len(items_of(pages)) == 5
    assert "scan" not in pages[-1].cursor["videos"][RECORDED_VIDEO]


def test_recorded_replies_are_fetched_page_by_page_when_more_than_the_inline_ones(upstream, recorded):
    api = YouTubeApi(upstream)
    all_to_me = recorded("youtube/comment_threads__comment_threads_all_to_me.json")
    thread = copy.deepcopy(next(t for t in all_to_me["items"] if t["id"] == "Ugw5zYU6n9pmIgAZWvN4AaABAg"))
    thread["snippet"]["totalReplyCount"] = 3  # the replies recorded later under this thread
    api.videos["JE8xdDp5B8Q"] = make_video("JE8xdDp5B8Q", description="#UkrainePeaceTalks")
    api.thread_pages["JE8xdDp5B8Q"] = [{"kind": "youtube#commentThreadListResponse", "items": [thread]}]
    api.reply_pages[thread["id"]] = [recorded("youtube/comments__comments_by_parent_paged_1.json"),
                                     recorded("youtube/comments__comments_by_parent_paged_2.json")]
    items = items_of(connector(api, videos="JE8xdDp5B8Q").fetch(cursor={}))
    replies = [item for item in items if item.reply_to_external_id]
    assert len(replies) == 3 and {r.reply_to_external_id for r in replies} == {thread["id"]}
    assert all(r.url.startswith("https://www.youtube.com/watch?v=JE8xdDp5B8Q&lc=") for r in replies)
    assert all(r.hashtags == ("ukrainepeacetalks",) for r in items)
    assert [seen.query.get("pageToken") for seen in api.requests("comments")] == [
        None, recorded("youtube/comments__comments_by_parent_paged_1.json")["nextPageToken"]]


def test_videos_found_by_the_tag_are_checked_and_their_whole_conversation_kept(upstream):
    api = YouTubeApi(upstream)
    conversation(api)
    pages = list(connector(api).fetch(cursor={}))
    search = api.requests("search")[0].query
    assert (search["q"], search["type"], search["order"], search["maxResults"]) == ("#UkrainePeaceTalks", "video", "date", "50")
    assert search["publishedAfter"] == "2026-11-18T12:00:00Z"  # the first search looks back track_days
    assert sorted(api.requests("videos")[0].query["id"].split(",")) == [ABOUT, OTHER]
    # OTHER only mentions the words: its comments are not read at all.
    assert [seen.query["videoId"] for seen in api.requests("commentThreads")] == [ABOUT]
    items = items_of(pages)
    assert len(items) == 3 + 2 + 8
    assert all(item.hashtags == ("ukrainepeacetalks",) for item in items)
    # The thread with 8 replies shows 5 inline: the rest come from comments.list?parentId=.
    assert [seen.query["parentId"] for seen in api.requests("comments")] == ["UgvidAbout001000003AaABAg"]
    replies = [item for item in items if item.reply_to_external_id == "UgvidAbout001000003AaABAg"]
    assert len(replies) == 8 and len({r.external_id for r in replies}) == 8
    assert pages[-1].health_detail == {"quota_used": SEARCH_COST + 1 + 1 + 1, "quota_left": 10_000 - 103,
                                       "quota_day": "2026-11-25", "videos_tracked": 1, "videos_skipped": {}}


def test_recorded_search_pages_are_followed_deduplicated_and_resumed(upstream, recorded):
    api = YouTubeApi(upstream)
    api.search_pages = [recorded("youtube/search__search_by_keywords_p1.json"),
                        recorded("youtube/search__search_by_keywords_p2.json")]
    api.add_video(make_video("gQ_1zX-F_No", description="Surf report #UkrainePeaceTalks"), [make_thread("gQ_1zX-F_No", 1)],
                  searchable=False)
    pages = list(connector(api).fetch(cursor={}))
    assert [seen.query.get("pageToken") for seen in api.requests("search")] == [None, "CBkQAA"]
    cursor = pages[-1].cursor
    assert len(cursor["videos"]) == 49  # 50 results, one video on both pages
    assert cursor["search"]["scan"]["token"] == "CDIQAA"  # two search pages per run; the next run goes on
    assert [seen.query["videoId"] for seen in api.requests("commentThreads")] == ["gQ_1zX-F_No"]
    upstream.requests.clear()
    list(connector(api).fetch(cursor=cursor))
    assert api.requests("search")[0].query["pageToken"] == "CDIQAA"


def test_a_later_run_reads_only_comments_newer_than_the_cursor_and_searches_only_when_due(upstream):
    api = YouTubeApi(upstream)
    conversation(api)
    store, clock = DictStore(), [NOW]
    first = list(connector(api, store=store, now=lambda: clock[0]).fetch(cursor={}))
    upstream.requests.clear()
    clock[0] = NOW + timedelta(minutes=30)
    second = list(connector(api, store=store, now=lambda: clock[0]).fetch(cursor=first[-1].cursor))
    assert items_of(second) == []
    assert api.requests("search") == [] and len(api.requests("commentThreads")) == 1
    api.threads[ABOUT].append(make_thread(ABOUT, 90, text="Late #news"))
    clock[0] = NOW + timedelta(minutes=61)
    third = list(connector(api, store=store, now=lambda: clock[0]).fetch(cursor=second[-1].cursor))
    assert [item.external_id for item in items_of(third)] == ["UgvidAbout001000090AaABAg"]
    # Searched again after the interval, from the newest video already found.
    assert api.requests("search")[0].query["publishedAfter"] == "2026-11-25T10:00:00Z"


def test_the_daily_quota_is_never_spent_past_its_budget(upstream):
    api = YouTubeApi(upstream)
    for n in range(60):  # two search pages
        api.add_video(make_video(f"vidMany{n:04d}", published=NOW - timedelta(minutes=n)))
    store = DictStore()
    pages = list(connector(api, store=store, daily_quota="150").fetch(cursor={}))
    assert len(api.requests("search")) == 1  # the second page would cost 100 with 50 left
    assert pages[-1].rate_limited_until == NEXT_RESET
    assert pages[-1].health_detail["quota_used"] == 100 and pages[-1].health_detail["quota_left"] == 50
    upstream.requests.clear()
    again = list(connector(api, store=store, daily_quota="150").fetch(cursor=pages[-1].cursor))
    assert upstream.requests == [] and again[-1].rate_limited_until == NEXT_RESET


def test_the_quota_is_shared_by_every_source_with_the_same_key(upstream):
    api = YouTubeApi(upstream)
    conversation(api)
    store = DictStore()
    list(connector(api, store=store).fetch(cursor={}))
    pages = list(connector(api, "OtherTag", store=store).fetch(cursor={}))
    # The first: search, videos.list, one thread page, one reply page; the second finds nothing to poll.
    assert pages[-1].health_detail["quota_used"] == (SEARCH_COST + 3) + (SEARCH_COST + 1)


def test_a_quota_exceeded_refusal_rests_until_midnight_pacific(upstream):
    api = YouTubeApi(upstream)
    api.override = google_error(403, "quotaExceeded", "The request cannot be completed because you have exceeded "
                                "your quota.", domain="youtube.quota")
    store = DictStore()
    with pytest.raises(RateLimited, match="quota") as caught:
        list(connector(api, store=store).fetch(cursor={}))
    assert caught.value.until == NEXT_RESET
    upstream.requests.clear()
    pages = list(connector(api, store=store).fetch(cursor={}))
    assert upstream.requests == [] and pages[-1].rate_limited_until == NEXT_RESET


def test_comments_disabled_on_one_video_skips_it_and_keeps_the_others(upstream):
    api = YouTubeApi(upstream)
    conversation(api)
    api.add_video(make_video("vidClosed03", description="#UkrainePeaceTalks", published=NOW - timedelta(hours=1)))
    api.errors["vidClosed03"] = google_error(403, "commentsDisabled", "The video identified by the videoId "
                                             "parameter has disabled comments.")
    pages = list(connector(api).fetch(cursor={}))
    assert len(items_of(pages)) == 13
    assert pages[-1].health_detail["videos_skipped"] == {"vidClosed03": "commentsDisabled"}
    assert pages[-1].cursor["videos"]["vidClosed03"]["skipped"] == "commentsDisabled"


def test_a_malformed_thread_is_rejected_and_the_rest_of_the_page_kept(upstream):
    api = YouTubeApi(upstream)
    broken = make_thread(ABOUT, 2)
    del broken["snippet"]["topLevelComment"]["snippet"]
    api.add_video(make_video(ABOUT), [make_thread(ABOUT, 1), broken, make_thread(ABOUT, 3)])
    pages = list(connector(api, videos=ABOUT).fetch(cursor={}))
    assert len(items_of(pages)) == 2
    assert [r.reason for page in pages for r in page.rejected] == ["comment has no snippet object"]


@pytest.mark.parametrize("reply, error, message", [
    (google_error(400, "keyInvalid", "API key not valid. Please pass a valid API key.", domain="usageLimits"),
     NeedsCredentials, "YOUTUBE_API_KEY"),
    (google_error(403, "accessNotConfigured", "YouTube Data API v3 has not been used in project 1", domain="usageLimits"),
     NeedsCredentials, "accessNotConfigured"),
    (google_error(403, "forbidden", "Requests from referer <empty> are blocked.", domain="global"),
     NeedsCredentials, "forbidden"),
    (Reply(401, {"error": {"code": 401, "message": "Login Required"}}), NeedsCredentials, "401"),
    (google_error(400, "invalidSearchFilter", domain="youtube.search"), PermanentError, "invalidSearchFilter"),
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(503, "", {}), TemporaryError, "503"),
    (Reply(200, "<html><body>Sorry, maintenance</body></html>", {"Content-Type": "text/html"}), MalformedResponse, "JSON"),
    (Reply(200, '{"kind": "youtube#searchListResponse", "items": [', {}), MalformedResponse, "JSON"),
    (Reply(200, {"kind": "youtube#searchListResponse", "results": []}), MalformedResponse, "'items'"),
    (Reply(429, {"error": {"code": 429, "message": "Too many requests"}}, {"Retry-After": "120"}), RateLimited, "429"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    api = YouTubeApi(upstream)
    api.override = reply
    with pytest.raises(error, match=message) as caught:
        list(connector(api).fetch(cursor={}))
    if error is RateLimited:
        assert caught.value.until == NOW + timedelta(seconds=120)
    assert "test-key" not in str(caught.value)


def test_the_api_key_travels_in_a_header_never_in_a_url(upstream):
    api = YouTubeApi(upstream)
    conversation(api)
    client = HttpClient(HttpSettings(user_agent="engagement-test/1", allow_private=True))
    sent = []
    client.session.hooks["response"].append(lambda response, *args, **kwargs: sent.append(response.request))
    list(connector(api, client=client).fetch(cursor={}))
    assert sent and all(request.headers["X-Goog-Api-Key"] == "test-key" for request in sent)
    assert all("test-key" not in request.url for request in sent)
    assert all(request.headers["User-Agent"] == "engagement-test/1" for request in sent)


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, {"items": []})

    api = YouTubeApi(upstream)
    upstream.routes["/youtube/v3/search"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(api, client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


# --- collecting into the database ------------------------------------------------------------------


@pytest.fixture
def youtube_key(settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "youtube": {"api_key": "test-key"}}


def live_conversation(api: YouTubeApi) -> None:
    """conversation() published just now: collection runs on the real clock."""
    now = datetime.now(timezone.utc)
    api.add_video(make_video(ABOUT, description="#UkrainePeaceTalks", published=now - timedelta(hours=1)),
                  [make_thread(ABOUT, 1), make_thread(ABOUT, 2, replies=2), make_thread(ABOUT, 3, replies=8)])


def add_source(api: YouTubeApi, **options) -> Source:
    return collect.register_source(platform="youtube", url=api.url, hashtags=[TAG], options=options)


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collecting_stores_comments_and_linked_replies_and_a_second_run_adds_nothing(
        upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    live_conversation(api)
    source = add_source(api)
    first = run(source)
    assert (first.outcome, first.new, first.errors) == (CollectionRun.Outcome.OK, 13, 0)
    reply = Post.objects.get(external_id="UgvidAbout001000003AaABAg.reply0007")
    assert reply.reply_to.external_id == "UgvidAbout001000003AaABAg"
    assert list(Post.objects.for_hashtag(TAG).filter(platform="youtube").values_list("kind", flat=True).distinct()) == ["comment"]
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 13
    source.refresh_from_db()
    assert source.health == Source.Health.OK
    assert source.health_detail["quota_used"] == SEARCH_COST + 1 + 1 + 1 + 1  # + the second run's one page
    assert set(source.health_detail) >= {"quota_left", "quota_day"}


@pytest.mark.django_db
def test_without_an_api_key_the_source_needs_credentials(upstream, settings):
    settings.ENGAGEMENT_CREDENTIALS = {**settings.ENGAGEMENT_CREDENTIALS, "youtube": {}}
    api = YouTubeApi(upstream)
    source = add_source(api)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "YOUTUBE_API_KEY" in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS and "YOUTUBE_API_KEY" in source.last_error
    assert upstream.requests == []


@pytest.mark.django_db
def test_a_refused_key_marks_the_source_as_needing_credentials(upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    api.override = google_error(403, "ipRefererBlocked", "The request did not match an IP restriction.",
                                domain="usageLimits")
    source = add_source(api)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "ipRefererBlocked" in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS


@pytest.mark.django_db
def test_a_spent_quota_rests_the_source_and_no_request_goes_out_before_the_reset(upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    api.override = google_error(403, "quotaExceeded", domain="youtube.quota")
    source = add_source(api)
    result = run(source)
    source.refresh_from_db()
    _day, reset = quota_day(datetime.now(timezone.utc))
    assert result.outcome == CollectionRun.Outcome.RATE_LIMITED and "quota" in result.message
    assert source.health == Source.Health.RATE_LIMITED and source.rate_limited_until == reset
    requests_before = len(upstream.requests)
    assert collect.run_source(source.pk, owner="test") is None  # the lease is refused until the reset
    assert len(upstream.requests) == requests_before


@pytest.mark.django_db
def test_html_instead_of_json_fails_the_run_and_keeps_the_pages_stored_before(upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    live_conversation(api)
    # Found after ABOUT (older), so ABOUT's comments are stored before the broken page.
    api.add_video(make_video("vidBroken04", description="#UkrainePeaceTalks",
                             published=datetime.now(timezone.utc) - timedelta(hours=2)))
    api.errors["vidBroken04"] = Reply(200, "<html><body>Our systems have detected unusual traffic</body></html>",
                                      {"Content-Type": "text/html"})
    source = add_source(api)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "expected JSON" in result.message
    assert Post.objects.filter(source=source).count() == 13
    assert "unusual traffic" in RejectedItem.objects.get(run=result).raw
    assert source.health == Source.Health.FAILING and source.last_error_kind == Source.ErrorKind.MALFORMED


@pytest.mark.django_db
def test_a_5xx_fails_the_run_as_temporary_and_asks_for_a_retry(upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    api.override = Reply(503, "", {})
    source = add_source(api)
    report = collect.run_source(source.pk, owner="test")
    source.refresh_from_db()
    assert report.retry and "503" in report.run.message
    assert source.last_error_kind == Source.ErrorKind.TEMPORARY


# --- re-check: edits and deletions -----------------------------------------------------------------


def recent_conversation(api: YouTubeApi) -> datetime:
    """ABOUT, published 3 hours ago: threads 1 and 3 alone, thread 2 with 2 inline replies."""
    now = datetime.now(timezone.utc)
    api.add_video(make_video(ABOUT, description="#UkrainePeaceTalks", published=now - timedelta(hours=3)),
                  [make_thread(ABOUT, n, published=now - timedelta(hours=2) + timedelta(minutes=n),
                               replies=2 if n == 2 else 0) for n in (1, 2, 3)])
    return now


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_a_comment_no_longer_returned_as_a_tombstone(
        upstream, flushed_redis, youtube_key, api_client):
    api = YouTubeApi(upstream)
    now = recent_conversation(api)
    source = add_source(api)
    assert run(source).new == 5
    top = api.threads[ABOUT][0]["snippet"]["topLevelComment"]
    top["snippet"].update(textDisplay="Corrected: talks resume on Monday", textOriginal="Corrected: talks resume on Monday",
                          updatedAt=stamp(now))
    gone = api.threads[ABOUT][1]["replies"]["comments"].pop(0)
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 1, 1, 0)
    (call,) = api.requests("comments")  # one call for all five ids
    assert sorted(call.query["id"].split(",")) == sorted(Post.objects.values_list("external_id", flat=True))
    assert call.query["part"] == "snippet" and "maxResults" not in call.query
    assert upstream.requests == [call]
    edited = Post.objects.get(external_id=thread_id(ABOUT, 1))
    assert edited.text == "Corrected: talks resume on Monday" and edited.edited_at == now.replace(microsecond=0)
    assert edited.hashtags == ["ukrainepeacetalks"]
    assert edited.url == f"https://www.youtube.com/watch?v={ABOUT}&lc={thread_id(ABOUT, 1)}"
    assert edited.raw["kind"] == "youtube#commentThread"  # still stored as the thread
    assert PostRevision.objects.get().text == "Comment 1 on the talks"
    deleted = Post.objects.get(external_id=gone["id"])
    assert deleted.deleted_at is not None and "no longer returned" in deleted.deletion_reason
    listed = {p["external_id"] for p in api_client.get("/api/v1/posts/").json()["results"]}
    assert len(listed) == 4 and gone["id"] not in listed
    assert api_client.get(f"/api/v1/posts/{deleted.pk}/").status_code == 404
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (4, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_recheck_that_youtube_answers_with_an_error_deletes_nothing(upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    recent_conversation(api)
    source = add_source(api)
    run(source)
    upstream.routes["/youtube/v3/comments"] = lambda path, query: google_error(
        404, "commentNotFound", "The comment identified by the id parameter could not be found.", domain="youtube.comment")
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 0, 0, 5)
    assert not Post.objects.filter(deleted_at__isnull=False).exists()
    assert Post.objects.filter(last_checked_at__isnull=True).count() == 0


@pytest.mark.django_db
def test_a_spent_quota_during_a_recheck_stops_it_and_rests_the_source_until_midnight_pacific(
        upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    recent_conversation(api)
    source = add_source(api)
    run(source)
    upstream.requests.clear()
    api.override = google_error(403, "quotaExceeded", domain="youtube.quota")
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "quota" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until == quota_day(datetime.now(timezone.utc))[1]
    assert len(upstream.requests) == 1
    assert not Post.objects.filter(deleted_at__isnull=False).exists()


def test_a_recheck_asks_for_fifty_ids_a_call_and_counts_each_call_against_the_quota(upstream):
    api = YouTubeApi(upstream)
    threads = [make_thread(ABOUT, n) for n in range(1, 61)]
    api.add_video(make_video(ABOUT), threads)
    store = DictStore()
    results = list(connector(api, store=store).recheck([(t["id"], t) for t in threads]))
    assert [len(seen.query["id"].split(",")) for seen in api.requests("comments")] == [50, 10]
    assert len(results) == 60 and all(r.item is not None for r in results)
    assert connector(api, store=store).quota.detail()["quota_used"] == 2


def test_recorded_replies_without_their_video_are_asked_for_with_the_parent_that_names_it(upstream, recorded):
    api = YouTubeApi(upstream)
    all_to_me = recorded("youtube/comment_threads__comment_threads_all_to_me.json")
    thread = copy.deepcopy(next(t for t in all_to_me["items"] if t["id"] == "Ugw5zYU6n9pmIgAZWvN4AaABAg"))
    replies = (recorded("youtube/comments__comments_by_parent_paged_1.json")["items"]
               + recorded("youtube/comments__comments_by_parent_paged_2.json")["items"])
    api.threads["JE8xdDp5B8Q"] = [thread]
    api.replies[thread["id"]] = replies[1:]  # the first reply was deleted since
    results = list(connector(api).recheck([(reply["id"], reply) for reply in replies]))
    (call,) = api.requests("comments")
    assert call.query["id"].split(",") == [reply["id"] for reply in replies] + [thread["id"]]
    assert [bool(r.deleted_reason) for r in results] == [True, False, False]
    assert all(r.item.url == f"https://www.youtube.com/watch?v=JE8xdDp5B8Q&lc={r.external_id}" for r in results[1:])
    assert all(r.item.reply_to_external_id == thread["id"] for r in results[1:])


def test_a_returned_comment_that_cannot_be_read_is_an_error_not_a_deletion(upstream):
    api = YouTubeApi(upstream)
    threads = [make_thread(ABOUT, 1), make_thread(ABOUT, 2)]
    api.add_video(make_video(ABOUT), copy.deepcopy(threads))
    api.threads[ABOUT][0]["snippet"]["topLevelComment"]["snippet"]["publishedAt"] = "soon"
    results = list(connector(api).recheck([(t["id"], t) for t in threads]))
    assert ["publishedAt" in r.error for r in results] == [True, False]
    assert results[1].item is not None and not any(r.deleted_reason for r in results)


# --- backfill ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_backfill_walks_videos_and_their_comments_back_to_the_date_and_a_second_call_asks_nothing(
        upstream, flushed_redis, youtube_key):
    api = YouTubeApi(upstream)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    day = timedelta(days=1)
    since = now - 30 * day
    api.add_video(make_video("vidTenDays1", published=now - 10 * day),
                  [make_thread("vidTenDays1", n, published=now - 9 * day + n * timedelta(minutes=5)) for n in range(150)])
    api.add_video(make_video("vidTwenty02", published=now - 20 * day),
                  [make_thread("vidTwenty02", 1, published=now - 19 * day, replies=3)])
    api.add_video(make_video(OTHER, title="Ukraine peace talks explained", description="", published=now - 15 * day),
                  [make_thread(OTHER, 1)])
    api.add_video(make_video("vidForty003", published=now - 40 * day), [make_thread("vidForty003", 1)])
    # Listed by the editor, published long ago: only its tagged comments since the date.
    api.add_video(make_video("vidListed04", title="Old interview", description="", published=now - 60 * day),
                  [make_thread("vidListed04", 1, text="#UkrainePeaceTalks again", published=now - 5 * day),
                   make_thread("vidListed04", 2, text="untagged", published=now - 4 * day),
                   make_thread("vidListed04", 3, text="#UkrainePeaceTalks long ago", published=now - 50 * day)],
                  searchable=False)
    source = add_source(api, videos="vidListed04", search="true")
    polling = {"search": {"after": "2026-01-01T00:00:00Z", "at": "2026-01-01T00:00:00Z"}, "videos": {}}
    Source.objects.filter(pk=source.pk).update(cursor=polling)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert backfill.outcome == CollectionRun.Outcome.OK, backfill.message
    assert backfill.new == 150 + (1 + 3) + 1 == Post.objects.count()
    assert min(Post.objects.values_list("created_at", flat=True)) >= since
    searches = api.requests("search")
    assert [s.query.get("publishedBefore") for s in searches] == [None, youtube._iso(now - 20 * day)]
    assert {s.query["publishedAfter"] for s in searches} == {youtube._iso(since)}
    # OTHER only mentions the words and vidForty003 is older than the date: their comments are not read.
    assert sorted(seen.query["videoId"] for seen in api.requests("commentThreads")) == [
        "vidListed04", "vidTenDays1", "vidTenDays1", "vidTwenty02"]
    source.refresh_from_db()
    assert {k: v for k, v in source.cursor.items() if k != "backfill"} == polling  # polling never moves back
    assert source.cursor["backfill"]["backfilled_since"] == youtube._iso(since)
    # Counted in the shared ledger (backfill_source does not copy page health into the source's).
    assert collect.connector_for(source).quota.detail()["quota_used"] == 2 * SEARCH_COST + 1 + 4
    asked = len(upstream.requests)
    again = collect.backfill_source(source.pk, since=since + day, owner="test")
    assert (again.pages, again.new) == (0, 0) and len(upstream.requests) == asked
    # A polling run keeps the walk's position.
    run(source)
    source.refresh_from_db()
    assert source.cursor["backfill"]["backfilled_since"] == youtube._iso(since)


def test_backfill_stops_at_its_quota_units_and_the_next_call_resumes_the_search(upstream, monkeypatch):
    monkeypatch.setattr(youtube, "MAX_BACKFILL_UNITS", 250)
    api = YouTubeApi(upstream)
    for n in range(120):
        api.add_video(make_video(f"vidMany{n:04d}", published=NOW - timedelta(hours=n + 1)))
    store = DictStore()
    since = NOW - timedelta(days=30)
    first = list(connector(api, store=store).backfill(since=since, cursor={"search": {"at": "x"}}))
    assert [s.query.get("pageToken") for s in api.requests("search")] == [None, "page-50"]
    walk = first[-1].cursor["backfill"]
    assert walk["token"] == "page-100" and len(walk["videos"]) == 100 and first[-1].cursor["search"] == {"at": "x"}
    upstream.requests.clear()
    second = list(connector(api, store=store).backfill(since=since, cursor=first[-1].cursor))
    searches = api.requests("search")
    assert [s.query.get("pageToken") for s in searches] == ["page-100", None]
    assert searches[1].query["publishedBefore"] == youtube._iso(NOW - timedelta(hours=120))
    assert second[-1].cursor["backfill"]["search_done"] is True
    assert len(second[-1].cursor["backfill"]["videos"]) == 120


def test_backfill_rests_until_midnight_pacific_before_a_search_the_quota_cannot_pay_for(upstream):
    api = YouTubeApi(upstream)
    for n in range(60):
        api.add_video(make_video(f"vidMany{n:04d}", published=NOW - timedelta(hours=n + 1)))
    pages = list(connector(api, daily_quota="150").backfill(since=NOW - timedelta(days=30), cursor={}))
    assert len(api.requests("search")) == 1
    assert pages[-1].rate_limited_until == NEXT_RESET
    assert pages[-1].cursor["backfill"]["token"] == "page-50"
    assert pages[-1].health_detail["quota_used"] == 100


# --- the real worker -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_collects_youtube_comments_into_the_api_and_a_second_run_adds_none(
        flushed_redis, upstream, start_worker, start_beat, api_client, process_env):
    api = YouTubeApi(upstream)
    live_conversation(api)
    source = collect.register_source(platform="youtube", url=api.url, hashtags=[TAG], interval=2)
    start_worker({**process_env, "YOUTUBE_API_KEY": "worker-key"})
    start_beat()

    def listed():
        response = api_client.get("/api/v1/posts/", {"platform": "youtube"})
        assert response.status_code == 200, response.content
        return response.json()["results"]

    posts = wait_for(lambda: len(listed()) == 13 and listed(), timeout=60, message="13 YouTube comments in the API")
    assert {post["platform"] for post in posts} == {"youtube"}
    assert "UgvidAbout001000001AaABAg" in {post["external_id"] for post in posts}

    def finished_runs():
        return list(CollectionRun.objects.filter(source=source, finished_at__isnull=False).order_by("started_at"))

    runs = wait_for(lambda: len(finished_runs()) >= 2 and finished_runs(), timeout=60, message="a second run")
    assert runs[0].new == 13 and runs[1].new == 0 and runs[1].outcome == CollectionRun.Outcome.OK
    assert Post.objects.filter(platform="youtube").count() == 13
