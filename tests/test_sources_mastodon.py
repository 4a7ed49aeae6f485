"""The Mastodon connector on recorded real responses (../shared/fixtures/mastodon/) and a fake upstream.

Recorded files read here: hashtag_tl.json, pagination_iterator.json, entity_status.json.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timedelta, timezone

import pytest

from engagement.sources.base import (
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NormalisedItem,
    PermanentError,
    RateLimited,
    RejectedRaw,
    TemporaryError,
)
from engagement.sources.mastodon import MastodonConnector, normalise_status
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import Reply, serve_recorded

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
PAGINATION_TAG = "fgiztsshwiaqqiztpmmjbtvmescsculuvmgjgopwoeidbcrixp"


def connector(upstream, *tags: str) -> MastodonConnector:
    client = HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return MastodonConnector(base_url=upstream.url, hashtags=list(tags), client=client, now=lambda: NOW)


def timeline_body(interactions: list[dict]) -> list[dict]:
    return next(i["body"] for i in interactions if "/timelines/tag/" in i["url"] and i["method"] == "GET")


# --- parsing ---------------------------------------------------------------------------------------


def test_it_normalises_a_recorded_tag_timeline_status(recorded):
    status = timeline_body(recorded("mastodon/hashtag_tl.json"))[0]
    item = normalise_status(status, tag_key="hoot")
    assert isinstance(item, NormalisedItem)
    assert item.external_id == "http://localhost:3000/ap/users/117020566092212359/statuses/117020593741189701"
    assert item.url == "http://localhost:3000/@mastodonpy_test_2/117020593741189701"
    assert item.text == "#hoot (hashtag toot)"
    assert item.hashtags == ("hoot",)
    assert item.created_at == datetime(2026, 8, 1, 13, 55, 55, 867000, tzinfo=timezone.utc)
    assert item.author.handle == "@mastodonpy_test_2@localhost"
    assert item.author.external_id == "http://localhost:3000/ap/users/117020566092212359"
    assert item.kind == "post"
    assert item.raw == status


def test_a_remote_status_is_identified_by_its_uri_and_matched_whatever_the_tag_case(recorded):
    interactions = recorded("mastodon/entity_status.json")
    status = next(i["body"] for i in interactions if i["url"].endswith("/110446223051565765"))
    assert "#ThisIsAHashtag" in status["content"] or "ThisIsAHashtag" in status["content"]
    item = normalise_status(status, tag_key="ThisIsAHashtag".casefold())
    assert isinstance(item, NormalisedItem)
    assert item.external_id == status["uri"]
    assert "icosahedron.website" in item.external_id
    assert status["id"] not in item.external_id  # the local id is not the identity
    assert item.edited_at is not None


def test_a_status_without_the_tag_is_not_stored_as_tagged(recorded):
    status = timeline_body(recorded("mastodon/hashtag_tl.json"))[0]
    assert normalise_status(status, tag_key="ukrainepeacetalks") is None


def test_a_boost_is_normalised_as_its_original():
    original = make_status(1)
    boost = {**make_status(2), "uri": "https://other.example/users/booster/statuses/9/activity",
             "content": "", "tags": [], "reblog": original}
    item = normalise_status(boost, tag_key="ukrainepeacetalks")
    assert item.external_id == original["uri"]
    assert item.raw == original


@pytest.mark.parametrize("bad", ["0000-10-14T15:06:10.730Z", "yesterday", None, ""])
def test_a_bad_date_rejects_the_item_with_its_raw_payload(bad):
    status = make_status(1)
    status["created_at"] = bad
    result = normalise_status(status, tag_key="ukrainepeacetalks")
    assert isinstance(result, RejectedRaw)
    assert "created_at" in result.reason
    assert result.raw == status
    assert result.external_id == status["uri"]


def test_a_huge_status_is_rejected_with_its_raw_payload():
    status = make_status(1, text="x" * 10_000_000)
    result = normalise_status(status, tag_key="ukrainepeacetalks")
    assert isinstance(result, RejectedRaw)
    assert "cap" in result.reason
    assert result.raw is status


XSS_PAYLOADS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<a href="JaVaScRiPt:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<svg onload="alert(1)"><circle/></svg>',
    '<p onclick="alert(1)">click</p>',
    '<iframe src="javascript:alert(1)"></iframe>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    '<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>',
    '<<script>script>alert(1)<</script>/script>',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<body onload=alert(1)>',
    '<a href=" javascript:alert(1)">x</a>',
    '<object data="javascript:alert(1)"></object>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_no_script_survives_in_stored_html(payload):
    status = make_status(1)
    status["content"] = f"<p>{payload} #UkrainePeaceTalks</p>"
    item = normalise_status(status, tag_key="ukrainepeacetalks")
    lowered = item.html.lower()
    assert "<script" not in lowered
    assert "javascript:" not in lowered
    assert "data:" not in lowered
    assert " on" not in lowered.replace(" onclick", " on")  # no event handler attribute of any name
    for tag in ("<svg", "<iframe", "<object", "<img", "<style", "<math", "<body"):
        assert tag not in lowered


# --- fetching --------------------------------------------------------------------------------------


def test_the_first_run_walks_back_through_the_recorded_link_headers(upstream, recorded):
    serve_recorded(upstream, recorded("mastodon/pagination_iterator.json"), recorded_base="http://localhost:3000")
    pages = list(connector(upstream, PAGINATION_TAG).fetch(cursor={}))
    assert [len(page.items) for page in pages] == [10, 10, 10, 0]
    assert len({item.external_id for page in pages for item in page.items}) == 30
    newest = "117020582251615632"
    assert pages[-1].cursor[PAGINATION_TAG] == {"newest_id": newest}
    assert pages[-1].cursor["@instance"]["hashtag_feeds"] == {"local": "public", "remote": "public"}
    assert [seen.query.get("max_id") for seen in upstream.requests_to("/api/v1/timelines/")] == [
        None, "117020582177108552", "117020582097668259", "117020582018205171"]


def test_a_later_run_asks_only_for_statuses_after_the_cursor(upstream, recorded):
    serve_recorded(upstream, recorded("mastodon/pagination_iterator.json"), recorded_base="http://localhost:3000")
    cursor = {PAGINATION_TAG: {"newest_id": "117020582251615632"}}
    pages = list(connector(upstream, PAGINATION_TAG).fetch(cursor=cursor))
    assert [len(page.items) for page in pages] == [0]
    assert upstream.requests_to("/api/v1/timelines/")[0].query["min_id"] == "117020582251615632"
    assert pages[-1].cursor[PAGINATION_TAG] == cursor[PAGINATION_TAG]


def test_polling_follows_min_id_until_it_has_caught_up(upstream):
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(n) for n in range(1, 101)])
    cursor = {"ukrainepeacetalks": {"newest_id": str(make_status(10)["id"])}}
    pages = list(connector(upstream, "UkrainePeaceTalks").fetch(cursor=cursor))
    stored = sorted(int(item.raw["id"]) for page in pages for item in page.items)
    assert stored == [int(make_status(n)["id"]) for n in range(11, 101)]
    assert pages[-1].cursor["ukrainepeacetalks"] == {"newest_id": make_status(100)["id"]}


def test_an_unknown_tag_is_an_empty_page_not_an_error(upstream):
    pages = list(connector(upstream, "NoSuchTag").fetch(cursor={}))
    assert len(pages) == 1 and pages[0].items == [] and pages[0].rejected == []


def test_429_with_retry_after_raises_rate_limited_until_then(upstream):
    timeline = MastodonTimeline(upstream, "UkrainePeaceTalks")
    timeline.override = Reply(429, {"error": "Too many requests"}, {"Retry-After": "120"})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream, "UkrainePeaceTalks").fetch(cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=120)


def test_429_with_only_a_reset_header_waits_for_the_reset(upstream):
    timeline = MastodonTimeline(upstream, "UkrainePeaceTalks")
    timeline.override = Reply(429, {"error": "Too many requests"}, {"X-RateLimit-Reset": "2026-11-25T12:30:00.000Z"})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream, "UkrainePeaceTalks").fetch(cursor={}))
    assert caught.value.until == datetime(2026, 11, 25, 12, 30, tzinfo=timezone.utc)


def test_a_spent_budget_stops_paging_until_the_reset(upstream):
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(n) for n in range(1, 200)], rate_limit_remaining=2)
    pages = list(connector(upstream, "UkrainePeaceTalks").fetch(cursor={}))
    assert len(upstream.requests_to("/api/v1/timelines/")) == 2
    assert pages[-1].rate_limited_until is not None
    assert sum(len(page.items) for page in pages) == 80


@pytest.mark.parametrize("reply, error", [
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError),
    (Reply(503, "", {}), TemporaryError),
    (Reply(200, "<html><body>Sorry, maintenance</body></html>", {"Content-Type": "text/html"}), MalformedResponse),
    (Reply(200, '[{"id": "1", "uri": "x"', {}), MalformedResponse),
    (Reply(200, {"error": "not a list"}, {}), MalformedResponse),
    (Reply(401, {"error": "This method requires an authenticated user"}, {}), PermanentError),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error):
    MastodonTimeline(upstream, "UkrainePeaceTalks").override = reply
    with pytest.raises(error):
        list(connector(upstream, "UkrainePeaceTalks").fetch(cursor={}))


def test_a_malformed_status_is_rejected_and_the_rest_of_the_page_kept(upstream):
    broken = copy.deepcopy(make_status(2))
    del broken["uri"]
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(1), broken, make_status(3)])
    pages = list(connector(upstream, "UkrainePeaceTalks").fetch(cursor={}))
    assert len(pages[0].items) == 2
    assert [r.reason for r in pages[0].rejected] == ["status has no uri"]
    assert pages[0].rejected[0].raw == broken


def test_every_request_names_itself(upstream):
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(1)])
    client = HttpClient(HttpSettings(user_agent="engagement-test/1", allow_private=True))
    list(MastodonConnector(base_url=upstream.url, hashtags=["UkrainePeaceTalks"], client=client,
                           now=lambda: NOW).fetch(cursor={}))
    assert client.session.headers["User-Agent"] == "engagement-test/1"


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, [])

    upstream.routes["/api/v1/timelines/tag/ukrainepeacetalks"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(MastodonConnector(base_url=upstream.url, hashtags=["UkrainePeaceTalks"], client=client,
                               now=lambda: NOW).fetch(cursor={}))
    assert time.monotonic() - started < 1.5
