"""The Telegram connector on the recorded real preview page (../shared/fixtures/telegram/) and a fake t.me.

Recorded file read here: telegram/full.html (a real page of t.me/s/topwar_official; it has no hashtags).
Pages built for the cases it lacks: tests/fixtures/telegram_*.html.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from string import Template

import pytest
import requests
from django.utils import timezone as django_timezone

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
    RejectedRaw,
    TemporaryError,
)
from engagement.sources import telegram
from engagement.sources.telegram import (
    BACKFILL_PAGES,
    MAX_PAGES_PER_RUN,
    TelegramConnector,
    normalise_native,
    parse_count,
    parse_message,
    parse_page,
    preview_url,
)
from tests.conftest import wait_for
from tests.test_sources_mastodon import XSS_PAYLOADS
from tests.upstream import FakeUpstream, Reply

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"
CHANNEL = "peacewatch"
FIXTURES = Path(__file__).parent / "fixtures"
HTML = {"Content-Type": "text/html; charset=utf-8"}
PAGE = Template((FIXTURES / "telegram_page.html").read_text(encoding="utf-8"))
MESSAGE = Template((FIXTURES / "telegram_message.html").read_text(encoding="utf-8"))
TAGGED_PAGE = (FIXTURES / "telegram_tagged.html").read_text(encoding="utf-8")
NOT_A_PREVIEW = (FIXTURES / "telegram_not_a_preview.html").read_text(encoding="utf-8")
NO_RESULTS = (FIXTURES / "telegram_no_results.html").read_text(encoding="utf-8")
RECORDED_IDS = [70989, 70990, 70992, 70995, 70996, 70997, 70998, 70999, 71000, 71006, 71007, 71008]


@pytest.fixture
def recorded_page(shared_fixtures):
    # The `recorded` fixture reads JSON; this page is HTML, read in place all the same.
    return (shared_fixtures / "telegram" / "full.html").read_text(encoding="utf-8")


def tagged_text(n: int, tag: str = TAG) -> str:
    return f'Report number {n} from the talks <a href="?q=%23{tag}">#{tag}</a>'


def message(n: int, *, text: str | None = None, channel: str = CHANNEL, when: datetime | None = None) -> str:
    when = when or datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(minutes=n)
    return MESSAGE.substitute(channel=channel, id=n, text=tagged_text(n) if text is None else text,
                              views="1.2K", datetime=when.isoformat())


def page(messages: list[str], *, channel: str = CHANNEL, query: str = "", older: int | None = None,
         newer: int | None = None) -> str:
    more = '<div class="tgme_widget_message_centered js-messages_more_wrap"><a href="/s/{c}?{k}={v}" ' \
           'class="tme_messages_more js-messages_more" data-{k}="{v}"></a></div>'
    return PAGE.substitute(
        title="Peace Watch", channel=channel, query=query, head_links="",
        older=more.format(c=channel, k="before", v=older) if older else "",
        newer=more.format(c=channel, k="after", v=newer) if newer else "",
        messages="".join(messages),
    )


class TelegramChannel:
    """Serves /s/<channel> like t.me: `q` matches words (with or without '#'), case-insensitively;
    `before` gives the PAGE_SIZE matches just older than an id, `after` those just newer; a page lists
    its messages oldest first with "load more" links (data-before / data-after) where there are more."""

    PAGE_SIZE = 20

    def __init__(self, upstream: FakeUpstream, messages: dict[int, str] | None = None, *, channel: str = CHANNEL):
        self.channel = channel
        self.texts = dict(messages or {})  # id -> message text HTML
        self.blocks: dict[int, str] = {}  # id -> a whole block, for blocks the tests break on purpose
        self.override: Reply | None = None
        upstream.routes[f"/s/{channel}"] = self.handle

    def block(self, n: int) -> str:
        return self.blocks.get(n) or message(n, text=self.texts[n], channel=self.channel)

    def handle(self, path: str, query: dict) -> Reply:
        if self.override is not None:
            return self.override
        word = query.get("q", "").lstrip("#").casefold()
        matching = sorted(n for n in {*self.texts, *self.blocks}
                          if word in (self.texts.get(n) or self.blocks.get(n, "")).casefold())
        if "after" in query:
            shown = [n for n in matching if n > int(query["after"])][: self.PAGE_SIZE]
        else:
            limit = int(query["before"]) if "before" in query else float("inf")
            shown = [n for n in matching if n < limit][-self.PAGE_SIZE:]
        if not shown:
            return Reply(200, NO_RESULTS, HTML)
        older = shown[0] if any(n < shown[0] for n in matching) else None
        newer = shown[-1] if any(n > shown[-1] for n in matching) else None
        return Reply(200, page([self.block(n) for n in shown], channel=self.channel, query=query.get("q", ""),
                               older=older, newer=newer), HTML)


def connector(upstream, *tags: str, channel: str = CHANNEL, client: HttpClient | None = None) -> TelegramConnector:
    client = client or HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return TelegramConnector(base_url=f"{upstream.url}/s/{channel}", hashtags=list(tags or [TAG]), client=client,
                             now=lambda: NOW)


def items(pages) -> list[NormalisedItem]:
    return [item for p in pages for item in p.items]


def ids(found: list[NormalisedItem]) -> list[int]:
    return [int(item.external_id.rsplit("/", 1)[1]) for item in found]


# --- parsing the recorded page (no filter) ----------------------------------------------------------


def test_every_message_of_the_recorded_page_is_read_with_its_id_url_and_date(recorded_page):
    listing = parse_page(recorded_page)
    parsed = [parse_message(raw) for raw in listing.messages]
    assert all(isinstance(item, NormalisedItem) for item in parsed)
    assert ids(parsed) == RECORDED_IDS
    first = parsed[0]
    assert first.external_id == first.url == first.uri == "https://t.me/topwar_official/70989"
    assert first.created_at == datetime(2023, 2, 28, 7, 47, 53, tzinfo=timezone.utc)
    assert parsed[-1].created_at == datetime(2023, 2, 28, 13, 14, 3, tzinfo=timezone.utc)
    assert first.platform == "telegram" and first.kind == "post"


def test_ids_of_the_recorded_page_skip_numbers_and_an_album_is_one_message(recorded_page):
    parsed = [parse_message(raw) for raw in parse_page(recorded_page).messages]
    by_id = dict(zip(ids(parsed), parsed))
    # 70993-70994 are the other media of album 70992; 71001-71005 those of album 71000 (and deletions).
    assert {70991, 70993, 70994, 71001, 71002, 71003, 71004, 71005}.isdisjoint(by_id)
    assert by_id[70992].text.startswith("Сегодня ночью в Республике Адыгея упал неизвестный летательный аппарат")
    assert by_id[71000].text.startswith("Последствия ночного удара БПЛА-камикадзе ВСУ по нефтебазе в Туапсе")


def test_the_recorded_text_keeps_its_line_breaks_and_links_and_leaves_out_the_link_preview(recorded_page):
    parsed = {item.external_id: item for item in map(parse_message, parse_page(recorded_page).messages)}
    first = parsed["https://t.me/topwar_official/70989"]
    assert first.text == (
        "В Санкт-Петербурге в небо над городом подняли истребители из-за неизвестного объекта в воздухе, "
        "аэропорт Пулково не принимает самолеты, сообщает Baza.\nСудя по сервису Flightradar, гражданские "
        "самолеты не приближаются к Санкт-Петербургу."
    )
    with_preview = parsed["https://t.me/topwar_official/70996"]
    link = '<a href="https://t.me/infantmilitario/93419" rel="nofollow noopener noreferrer">на расстояние 180 метров</a>'
    assert link in with_preview.html
    assert "Милитарист" not in with_preview.text  # the link preview's title
    assert "стелу с истребителем" not in with_preview.text  # and its description


def test_a_forwarded_message_is_authored_by_the_channel_that_posted_it(recorded_page):
    forwarded = next(item for item in map(parse_message, parse_page(recorded_page).messages)
                     if item.external_id.endswith("/70992"))
    assert forwarded.author.external_id == "https://t.me/topwar_official"
    assert forwarded.author.handle == "@topwar_official"
    assert forwarded.author.display_name == "Военное обозрение"
    assert "Военкор Ярем" not in forwarded.text  # "Forwarded from" is not part of the message


def test_views_are_not_counted_as_likes(recorded_page):
    parsed = [parse_message(raw) for raw in parse_page(recorded_page).messages]
    assert 'tgme_widget_message_views">37.2K<' in parsed[0].raw["html"]
    assert [item.like_count for item in parsed] == [0] * 12


def test_the_raw_payload_is_the_message_html_with_its_channel_and_id(recorded_page):
    raw = parse_page(recorded_page).messages[0]
    assert set(raw) == {"html", "channel", "id"}
    assert (raw["channel"], raw["id"]) == ("topwar_official", 70989)
    assert raw["html"].startswith('<div class="tgme_widget_message text_not_supported_wrap js-widget_message"')
    assert 'data-post="topwar_official/70989"' in raw["html"] and raw["html"].count("data-post=") == 1
    assert json.loads(json.dumps(raw)) == raw
    assert parse_message(raw).raw is raw


def test_the_recorded_page_has_no_hashtags_so_none_of_its_messages_is_stored_as_tagged(recorded_page):
    raws = parse_page(recorded_page).messages
    assert [parse_message(raw).hashtags for raw in raws] == [()] * 12
    assert [normalise_native(raw, hashtags=(TAG,)) for raw in raws] == [None] * 12


def test_the_recorded_older_page_link_is_found(recorded_page):
    listing = parse_page(recorded_page)
    assert (listing.before, listing.after, listing.no_results) == (70989, None, False)


# --- parsing built pages with hashtags ---------------------------------------------------------------


def tagged_page_items() -> dict[int, NormalisedItem | RejectedRaw | None]:
    return {raw["id"]: normalise_native(raw, hashtags=(TAG,)) for raw in parse_page(TAGGED_PAGE).messages}


def test_only_messages_carrying_the_tag_are_kept():
    kept = {n for n, result in tagged_page_items().items() if isinstance(result, NormalisedItem)}
    # 502 says "Peace talks" only, 503 has the tag in its link preview only, 509 only as URL fragments,
    # 506 is a service message.
    assert kept == {501, 505, 507, 508}


def test_a_service_message_is_not_a_post():
    service = next(raw for raw in parse_page(TAGGED_PAGE).messages if raw["id"] == 506)
    assert "Channel photo updated" in service["html"]
    assert parse_message(service) is None


def test_a_tagged_message_keeps_its_hashtags_casefolded_and_its_links_absolute():
    item = tagged_page_items()[501]
    assert item.hashtags == ("diplomacy", "ukrainepeacetalks")
    assert item.text == "Delegations meet in Istanbul today 🕊️\n#UkrainePeaceTalks #Diplomacy"
    assert '<a href="https://t.me/s/peacewatch?q=%23UkrainePeaceTalks" rel="nofollow noopener noreferrer">' \
           "#UkrainePeaceTalks</a>" in item.html
    assert item.created_at == datetime(2026, 11, 20, 9, 15, tzinfo=timezone.utc)


def test_a_tag_in_lower_case_or_in_plain_text_counts_and_any_tracked_tag_does():
    found = tagged_page_items()
    assert found[505].hashtags == ("ukrainepeacetalks",)  # linked as #ukrainepeacetalks
    assert found[507].hashtags == ("ukrainepeacetalks",)  # not linked by t.me, written in the text
    raw = parse_page(TAGGED_PAGE).messages[0]
    assert isinstance(normalise_native(raw, hashtags=("#DIPLOMACY", "other")), NormalisedItem)
    assert normalise_native(raw, hashtags=()) is None


def test_reactions_are_summed_into_the_like_count():
    assert tagged_page_items()[501].like_count == 1200 + 85


@pytest.mark.parametrize("shown, count", [
    ("37.2K", 37200), ("1.2K", 1200), ("85", 85), ("5K", 5000), ("1.5M", 1_500_000), ("2,5K", 2500),
    ("👍 14", 14), ("", 0), ("views", 0),
])
def test_counts_are_read_as_t_me_abbreviates_them(shown, count):
    assert parse_count(shown) == count


def test_a_reply_points_at_the_message_it_answers_and_the_quote_is_not_its_text():
    reply = tagged_page_items()[505]
    assert reply.reply_to_external_id == "https://t.me/peacewatch/501"
    assert reply.text == "Update: the talks resume tomorrow at 10:00. #ukrainepeacetalks"
    assert reply.author.handle == "@peacewatch"  # the signature "Olena K." is not an account
    assert reply.edited_at is None  # t.me shows "edited" but not when


def test_the_nested_text_of_a_long_message_is_read_once_and_its_escaped_link_repaired():
    long_read = tagged_page_items()[508]
    assert long_read.text.count("The second day of talks") == 1
    assert '<a href="https://news.example/day-two?a=1&amp;b=2"' in long_read.html
    assert "onclick" not in long_read.html


def broken(old: str, new: str, n: int = 7) -> dict:
    html = message(n)
    assert old in html
    return {"html": html.replace(old, new), "channel": CHANNEL, "id": n}


@pytest.mark.parametrize("raw, reason", [
    (broken('data-post="peacewatch/7"', 'data-message="peacewatch/7"'), 'no data-post="<channel>/<id>"'),
    (broken('data-post="peacewatch/7"', 'data-post="peacewatch"'), "no data-post"),
    (broken("<time\n", "<span\n"), "has no date"),
    (broken('datetime="2026-11-20T00:07:00+00:00"', 'data-time="2026-11-20T00:07:00+00:00"'), "has no date"),
    (broken('datetime="2026-11-20T00:07:00+00:00"', 'datetime="yesterday"'), "time[datetime] is not"),
    (broken('datetime="2026-11-20T00:07:00+00:00"', 'datetime="0000-10-14T15:06:10+00:00"'), "time[datetime]"),
])
def test_a_message_that_cannot_be_read_is_rejected_with_its_reason_and_raw_html(raw, reason):
    result = normalise_native(raw, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw)
    assert reason in result.reason
    assert result.raw is raw


def test_a_rejected_message_with_an_id_names_it():
    result = parse_message(broken("<time\n", "<span\n"))
    assert result.external_id == "https://t.me/peacewatch/7"


def test_a_huge_message_is_rejected_with_its_raw_payload():
    raw = {"html": message(1, text="x" * MAX_ITEM_HTML_CHARS), "channel": CHANNEL, "id": 1}
    result = normalise_native(raw, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "cap" in result.reason and result.raw is raw


@pytest.mark.parametrize("obj", [None, "<div></div>", [], {}, {"html": 5}, {"html": "<p>#UkrainePeaceTalks</p>"}])
def test_an_importer_gets_a_rejection_not_an_exception_for_what_is_not_a_message(obj):
    result = normalise_native(obj, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and result.raw == obj


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_no_script_survives_in_stored_html(payload):
    raw = {"html": message(1, text=f"{payload} {tagged_text(1)}")}
    item = normalise_native(raw, hashtags=(TAG,))
    lowered = item.html.lower()
    assert "<script" not in lowered and "javascript:" not in lowered and "data:" not in lowered
    assert " on" not in lowered.replace(" onclick", " on")
    for tag in ("<svg", "<iframe", "<object", "<img", "<style", "<math", "<body"):
        assert tag not in lowered


def test_a_page_that_is_not_a_channel_preview_is_malformed_and_kept():
    with pytest.raises(MalformedResponse, match="not a Telegram channel preview") as caught:
        parse_page(NOT_A_PREVIEW, url="https://t.me/peacewatch")
    assert "View in Telegram" in caught.value.raw


def test_message_frames_without_message_blocks_mean_the_layout_changed():
    renamed = page([message(1)]).replace('class="tgme_widget_message text_not', 'class="tgme_post text_not')
    with pytest.raises(MalformedResponse, match="layout has changed"):
        parse_page(renamed)


def test_a_search_without_results_is_an_empty_page():
    listing = parse_page(NO_RESULTS)
    assert (listing.messages, listing.no_results, listing.before, listing.after) == ([], True, None, None)


# --- fetching ------------------------------------------------------------------------------------


def test_the_first_run_reads_the_recorded_page_keeps_nothing_untagged_and_follows_its_older_link(
    upstream, recorded_page
):
    def handler(path, query):
        return Reply(200, NO_RESULTS if "before" in query else recorded_page, HTML)

    upstream.routes["/s/topwar_official"] = handler
    pages = list(connector(upstream, channel="topwar_official").fetch(cursor={}))
    assert [(p.fetched, len(p.items), len(p.rejected)) for p in pages] == [(12, 0, 0), (0, 0, 0)]
    assert [seen.query for seen in upstream.requests] == [
        {"q": "#UkrainePeaceTalks"}, {"q": "#UkrainePeaceTalks", "before": "70989"}]
    # The highest id seen, tagged or not: the next run asks only for what is newer.
    assert pages[-1].cursor == {"ukrainepeacetalks": {"newest_id": 71008}}


def test_the_first_run_backfills_a_bounded_number_of_older_pages(upstream):
    TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 201)})
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(pages) == BACKFILL_PAGES
    assert sorted(ids(items(pages))) == list(range(201 - 20 * BACKFILL_PAGES, 201))
    assert [seen.query.get("before") for seen in upstream.requests] == [None, "181", "161", "141", "121"]
    assert all(p.cursor == {"ukrainepeacetalks": {"newest_id": 200}} for p in pages)


def test_an_older_link_that_does_not_lead_back_ends_the_backfill(upstream):
    TelegramChannel(upstream).override = Reply(200, page([message(n) for n in (5, 6, 7)], older=7), HTML)
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(pages) == len(upstream.requests) == 1


def test_a_later_run_asks_only_for_messages_after_the_cursor_until_it_has_caught_up(upstream):
    TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 46)})
    pages = list(connector(upstream).fetch(cursor={"ukrainepeacetalks": {"newest_id": 10}}))
    assert sorted(ids(items(pages))) == list(range(11, 46))
    assert [seen.query for seen in upstream.requests] == [
        {"q": "#UkrainePeaceTalks", "after": "10"}, {"q": "#UkrainePeaceTalks", "after": "30"}]
    # Each page's cursor lets a run that stops after it resume right after it.
    assert [p.cursor for p in pages] == [{"ukrainepeacetalks": {"newest_id": 30}},
                                         {"ukrainepeacetalks": {"newest_id": 45}}]


def test_polling_is_bounded_and_the_next_run_carries_on(upstream):
    TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 301)})
    first = list(connector(upstream).fetch(cursor={"ukrainepeacetalks": {"newest_id": 0}}))
    assert len(first) == MAX_PAGES_PER_RUN and len(items(first)) == 20 * MAX_PAGES_PER_RUN
    second = list(connector(upstream).fetch(cursor=first[-1].cursor))
    assert sorted(ids(items(first)) + ids(items(second))) == list(range(1, 301))
    assert second[-1].cursor == {"ukrainepeacetalks": {"newest_id": 300}}


def test_nothing_new_leaves_the_cursor_where_it_was(upstream):
    TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 6)})
    cursor = {"ukrainepeacetalks": {"newest_id": 5}}
    pages = list(connector(upstream).fetch(cursor=cursor))
    assert [(p.fetched, p.items, p.cursor) for p in pages] == [(0, [], cursor)]


def test_messages_the_search_matched_without_the_tag_are_fetched_but_not_kept(upstream):
    texts = {n: tagged_text(n) for n in range(1, 11)}
    texts.update({n: f"UkrainePeaceTalks is trending, says report {n}" for n in range(11, 16)})
    TelegramChannel(upstream, texts)
    pages = list(connector(upstream).fetch(cursor={}))
    assert pages[0].fetched == 15
    assert sorted(ids(items(pages))) == list(range(1, 11))
    assert pages[-1].cursor == {"ukrainepeacetalks": {"newest_id": 15}}


def test_each_hashtag_is_searched_with_its_own_cursor(upstream):
    TelegramChannel(upstream, {**{n: tagged_text(n) for n in range(1, 4)},
                               **{n: tagged_text(n, "Ceasefire") for n in range(4, 6)}})
    pages = list(connector(upstream, TAG, "Ceasefire").fetch(cursor={"ceasefire": {"newest_id": 4}}))
    assert sorted(ids(items(pages))) == [1, 2, 3, 5]
    assert [seen.query for seen in upstream.requests] == [{"q": "#UkrainePeaceTalks"},
                                                          {"q": "#Ceasefire", "after": "4"}]
    assert pages[-1].cursor == {"ukrainepeacetalks": {"newest_id": 3}, "ceasefire": {"newest_id": 5}}


@pytest.mark.parametrize("url, expected", [
    ("https://t.me/s/peacewatch", "https://t.me/s/peacewatch"),
    ("https://t.me/s/peacewatch/", "https://t.me/s/peacewatch"),
    ("https://t.me/peacewatch", "https://t.me/s/peacewatch"),
    ("https://t.me/s/peacewatch?q=%23x", "https://t.me/s/peacewatch"),
    ("http://127.0.0.1:8080/s/peace_watch", "http://127.0.0.1:8080/s/peace_watch"),
])
def test_the_source_url_is_read_as_a_channel_preview(url, expected):
    assert preview_url(url) == expected


@pytest.mark.parametrize("url", ["https://t.me/", "https://t.me/s/", "https://t.me/peacewatch/501",
                                 "https://t.me/s/peace-watch", "t.me/s/peacewatch"])
def test_a_url_that_names_no_channel_is_refused(url):
    with pytest.raises(PermanentError, match="not a Telegram channel preview URL"):
        preview_url(url)


def test_a_redirect_away_from_the_preview_is_a_malformed_response(upstream):
    # t.me sends /s/<channel> of a private channel, or one without a preview, to /<channel>.
    TelegramChannel(upstream).override = Reply(302, "", {"Location": f"/{CHANNEL}"})
    upstream.routes[f"/{CHANNEL}"] = lambda path, query: Reply(200, NOT_A_PREVIEW, HTML)
    with pytest.raises(MalformedResponse, match="not a Telegram channel preview") as caught:
        list(connector(upstream).fetch(cursor={}))
    assert "tgme_page_action" in caught.value.raw


def test_429_with_retry_after_raises_rate_limited_until_then(upstream):
    TelegramChannel(upstream).override = Reply(429, "Too Many Requests", {"Retry-After": "120", **HTML})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=120)


def test_429_without_retry_after_waits_a_minute(upstream):
    TelegramChannel(upstream).override = Reply(429, "Too Many Requests", HTML)
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).fetch(cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=60)


@pytest.mark.parametrize("reply, error", [
    (Reply(500, "<html>Internal Server Error</html>", HTML), TemporaryError),
    (Reply(502, "<html>Bad Gateway</html>", HTML), TemporaryError),
    (Reply(401, "Unauthorized", HTML), NeedsCredentials),
    (Reply(403, "<html>Forbidden</html>", HTML), NeedsCredentials),
    (Reply(404, "<html>Not Found</html>", HTML), PermanentError),
    (Reply(200, {"ok": False, "error_code": 400}, {}), MalformedResponse),
    (Reply(200, NOT_A_PREVIEW, HTML), MalformedResponse),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error):
    TelegramChannel(upstream).override = reply
    with pytest.raises(error):
        list(connector(upstream).fetch(cursor={}))


def test_a_slow_upstream_times_out_as_a_temporary_error(upstream):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, NO_RESULTS, HTML)

    upstream.routes[f"/s/{CHANNEL}"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(connector(upstream, client=client).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


class RecordingSession(requests.Session):
    def __init__(self):
        super().__init__()
        self.sent: list[dict] = []

    def request(self, method, url, **kwargs):
        self.sent.append({"url": url, "timeout": kwargs.get("timeout"), "user_agent": self.headers["User-Agent"]})
        return super().request(method, url, **kwargs)


def test_every_request_goes_through_the_client_with_timeouts_and_a_user_agent(upstream):
    TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 50)})
    session = RecordingSession()
    client = HttpClient(HttpSettings(connect_timeout=3, read_timeout=7, user_agent="engagement-test/1 (+ops@example)",
                                     allow_private=True), session=session)
    list(connector(upstream, client=client).fetch(cursor={}))
    assert len(session.sent) == len(upstream.requests) == 3
    assert all(sent["timeout"] == (3, 7) and sent["user_agent"] == "engagement-test/1 (+ops@example)"
               for sent in session.sent)


# --- collecting into the database ------------------------------------------------------------------


def add_source(upstream, channel: str = CHANNEL, **kwargs) -> Source:
    return collect.register_source(platform="telegram", url=f"{upstream.url}/s/{channel}", hashtags=[TAG], **kwargs)


def serve_tagged_page(upstream) -> None:
    """The built page for the newest search results; nothing older or newer than it."""
    def handler(path, query):
        return Reply(200, NO_RESULTS if {"before", "after"} & set(query) else TAGGED_PAGE, HTML)

    upstream.routes[f"/s/{CHANNEL}"] = handler


@pytest.mark.django_db
def test_collecting_stores_the_tagged_messages_and_a_second_run_adds_nothing(upstream, settings):
    serve_tagged_page(upstream)
    settings.ENGAGEMENT_CREDENTIALS = {}  # a public channel needs none
    source = add_source(upstream)
    report = collect.run_source(source.pk, owner="test")
    assert (report.run.outcome, report.run.fetched, report.run.new) == (CollectionRun.Outcome.OK, 8, 4)
    stored = {post.external_id: post for post in Post.objects.select_related("author")}
    assert set(stored) == {f"https://t.me/peacewatch/{n}" for n in (501, 505, 507, 508)}
    post = stored["https://t.me/peacewatch/501"]
    assert (post.platform, post.hashtags, post.like_count) == ("telegram", ["diplomacy", "ukrainepeacetalks"], 1285)
    assert post.author.handle == "@peacewatch" and post.raw["id"] == 501
    source.refresh_from_db()
    assert source.cursor == {"ukrainepeacetalks": {"newest_id": 509}}
    assert source.health == Source.Health.OK

    again = collect.run_source(source.pk, owner="test")
    assert (again.run.outcome, again.run.new, again.run.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 4
    assert upstream.requests[-1].query == {"q": "#UkrainePeaceTalks", "after": "509"}


@pytest.mark.django_db
def test_collecting_the_recorded_page_stores_no_post_and_succeeds(upstream, recorded_page):
    upstream.routes["/s/topwar_official"] = lambda path, query: Reply(
        200, NO_RESULTS if "before" in query else recorded_page, HTML)
    source = add_source(upstream, channel="topwar_official")
    report = collect.run_source(source.pk, owner="test")
    assert (report.run.outcome, report.run.fetched, report.run.new) == (CollectionRun.Outcome.OK, 12, 0)
    assert Post.objects.count() == 0 and RejectedItem.objects.count() == 0


@pytest.mark.django_db
def test_a_message_with_a_changed_field_is_rejected_and_the_rest_of_the_page_stored(upstream):
    channel = TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 6)})
    channel.blocks[3] = message(3).replace('data-post="peacewatch/3"', 'data-message="peacewatch/3"')
    channel.blocks[4] = message(4).replace("datetime=", "data-time=")
    source = add_source(upstream)
    run = collect.run_source(source.pk, owner="test").run
    assert (run.outcome, run.new, run.errors) == (CollectionRun.Outcome.PARTIAL, 3, 2)
    assert sorted(Post.objects.values_list("external_id", flat=True)) == [
        f"https://t.me/peacewatch/{n}" for n in (1, 2, 5)]
    rejected = {r.reason: r for r in RejectedItem.objects.filter(source=source)}
    assert len(rejected) == 2
    missing_id = next(r for reason, r in rejected.items() if "data-post" in reason)
    assert 'data-message="peacewatch/3"' in missing_id.raw["html"]
    missing_date = next(r for reason, r in rejected.items() if "no date" in reason)
    assert missing_date.external_id == "https://t.me/peacewatch/4"
    source.refresh_from_db()
    assert source.health == Source.Health.OK and source.cursor == {"ukrainepeacetalks": {"newest_id": 5}}


@pytest.mark.django_db
@pytest.mark.parametrize("reply, kind, health, expected", [
    (Reply(403, "<html>Forbidden</html>", HTML), Source.ErrorKind.CREDENTIALS, Source.Health.NEEDS_CREDENTIALS,
     "access refused (403)"),
    (Reply(401, "Unauthorized", HTML), Source.ErrorKind.CREDENTIALS, Source.Health.NEEDS_CREDENTIALS,
     "access refused (401)"),
    (Reply(503, "<html>Service Unavailable</html>", HTML), Source.ErrorKind.TEMPORARY, Source.Health.FAILING,
     "upstream error 503"),
    (Reply(404, "<html>Not Found</html>", HTML), Source.ErrorKind.PERMANENT, Source.Health.FAILING,
     "no Telegram channel preview at"),
    (Reply(200, NOT_A_PREVIEW, HTML), Source.ErrorKind.MALFORMED, Source.Health.FAILING,
     "is not a Telegram channel preview"),
    (Reply(200, {"ok": True, "result": []}, {}), Source.ErrorKind.MALFORMED, Source.Health.FAILING,
     "is not a Telegram channel preview"),
    (Reply(200, page([message(1)]).replace('class="tgme_widget_message text_not', 'class="tgme_post text_not'), HTML),
     Source.ErrorKind.MALFORMED, Source.Health.FAILING, "layout has changed"),
])
def test_a_failing_upstream_ends_in_a_clear_source_state_and_message(upstream, reply, kind, health, expected):
    TelegramChannel(upstream).override = reply
    source = add_source(upstream)
    report = collect.run_source(source.pk, owner="test")
    assert report.run.outcome == CollectionRun.Outcome.FAILED and expected in report.run.message
    assert report.retry == (kind == Source.ErrorKind.TEMPORARY)
    source.refresh_from_db()
    assert (source.last_error_kind, source.health, source.enabled) == (kind, health, True)
    assert expected in source.last_error
    if kind == Source.ErrorKind.MALFORMED:
        kept = RejectedItem.objects.get(source=source)
        assert kept.raw == reply.encoded().decode()[:10_000]


@pytest.mark.django_db
def test_a_source_url_that_names_no_channel_fails_its_run_with_the_reason(upstream):
    source = collect.register_source(platform="telegram", url=f"{upstream.url}/", hashtags=[TAG])
    report = collect.run_source(source.pk, owner="test")
    assert report.run.outcome == CollectionRun.Outcome.FAILED and not report.retry
    assert "is not a Telegram channel preview URL" in report.run.message
    source.refresh_from_db()
    assert source.last_error_kind == Source.ErrorKind.PERMANENT and upstream.requests == []


@pytest.mark.django_db
def test_a_timeout_fails_the_run_as_temporary_and_it_is_retried(upstream, settings):
    def slow(path, query):
        time.sleep(2)
        return Reply(200, NO_RESULTS, HTML)

    upstream.routes[f"/s/{CHANNEL}"] = slow
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 0.3
    source = add_source(upstream)
    report = collect.run_source(source.pk, owner="test")
    assert report.run.outcome == CollectionRun.Outcome.FAILED and report.retry
    source.refresh_from_db()
    assert source.last_error_kind == Source.ErrorKind.TEMPORARY and "timed out" in source.last_error


@pytest.mark.django_db
def test_after_a_429_no_request_goes_to_the_channel_before_retry_after(upstream):
    channel = TelegramChannel(upstream, {n: tagged_text(n) for n in range(1, 4)})
    channel.override = Reply(429, "Too Many Requests", {"Retry-After": "300", **HTML})
    source = add_source(upstream)
    before = django_timezone.now()
    assert collect.run_source(source.pk, owner="test").run.outcome == CollectionRun.Outcome.RATE_LIMITED
    source.refresh_from_db()
    assert source.rate_limited_until >= before + timedelta(seconds=298)
    assert source.health == Source.Health.RATE_LIMITED
    requests_so_far = len(upstream.requests)
    Source.objects.filter(pk=source.pk).update(next_poll_at=None)
    assert collect.claim_due_sources() == []
    assert collect.run_source(source.pk, owner="test") is None
    assert len(upstream.requests) == requests_so_far
    channel.override = None
    Source.objects.filter(pk=source.pk).update(rate_limited_until=django_timezone.now() - timedelta(seconds=1))
    assert collect.run_source(source.pk, owner="test").run.new == 3


# --- the real worker ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_collects_tagged_messages_into_the_api_and_its_next_run_adds_none(
    flushed_redis, upstream, start_worker, start_beat, api_client
):
    serve_tagged_page(upstream)
    # Due again every second, so the worker itself makes the second run.
    source = add_source(upstream, interval=1)
    worker = start_worker()
    start_beat()

    def api_posts() -> list[dict]:
        response = api_client.get("/api/v1/posts/", {"platform": "telegram"})
        assert response.status_code == 200, response.content
        return response.json()["results"]

    posts = wait_for(lambda: len(api_posts()) == 4 and api_posts(), timeout=60, message="4 posts in the API")
    assert {post["external_id"] for post in posts} == {f"https://t.me/peacewatch/{n}" for n in (501, 505, 507, 508)}

    def finished_runs() -> list[CollectionRun]:
        finished = CollectionRun.objects.filter(source=source, outcome=CollectionRun.Outcome.OK)
        return list(finished.order_by("started_at"))

    runs = wait_for(lambda: len(finished_runs()) >= 2 and finished_runs(), timeout=60, message="two finished runs")
    assert [run.new for run in runs[:2]] == [4, 0]
    assert Post.objects.filter(platform="telegram").count() == 4
    assert any(seen.query.get("after") == "509" for seen in upstream.requests)
    assert worker.proc.poll() is None


# --- backfill and re-check -------------------------------------------------------------------------


def dated_channel(upstream, ids, *, when) -> TelegramChannel:
    """A channel whose messages (all tagged) carry the dates `when(n)` gives."""
    channel = TelegramChannel(upstream)
    channel.blocks = {n: message(n, when=when(n)) for n in ids}
    return channel


def hours_ago(n: int) -> datetime:
    return django_timezone.now() - timedelta(hours=200 - n)  # higher ids are newer, all within the week


def edited_mark(block: str) -> str:
    # How t.me marks an edited message: "edited" before the date link in .tgme_widget_message_meta.
    return block.replace('<span\n                                    class="tgme_widget_message_meta">',
                         '<span\n                                    class="tgme_widget_message_meta">edited &nbsp;')


def test_a_recheck_of_the_recorded_page_reads_ids_in_its_range_and_cannot_tell_below_it(upstream, recorded_page):
    # The recorded page was asked for below 71009 and shows 70989 ... 71008 with gaps.
    upstream.routes["/s/topwar_official"] = lambda path, query: Reply(
        200, recorded_page if query == {"before": "71009"} else NO_RESULTS, HTML)
    stored = [f"https://t.me/topwar_official/{n}" for n in (71008, 71004, 70991, 70980)]
    results = {r.external_id.rsplit("/", 1)[1]: r for r in
               connector(upstream, channel="topwar_official").recheck([(url, {}) for url in stored])}
    assert results["71008"].item.external_id == stored[0] and results["71008"].item.text
    assert results["71004"].deleted_reason == results["70991"].deleted_reason == (
        "deleted upstream (missing from the channel preview, which shows messages 70989 to 71008)")
    assert "cannot tell" in results["70980"].error and not results["70980"].deleted_reason
    assert [seen.query for seen in upstream.requests] == [{"before": "71009"}, {"before": "70981"}]


def test_a_stored_post_of_another_channel_is_an_error_and_asks_nothing(upstream):
    TelegramChannel(upstream, {1: tagged_text(1)})
    (result,) = connector(upstream).recheck([("https://t.me/otherchannel/1", {})])
    assert (result.error, result.deleted_reason, result.item) == ("not a message of the channel peacewatch", "", None)
    assert upstream.requests == []


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_a_missing_message_as_a_tombstone(upstream, api_client):
    channel = dated_channel(upstream, range(101, 106), when=hours_ago)
    source = add_source(upstream)
    assert collect.run_source(source.pk, owner="test").run.new == 5
    upstream.requests.clear()
    del channel.blocks[102]
    channel.blocks[103] = edited_mark(message(103, text=f"Report 103, corrected #{TAG}", when=hours_ago(103)))
    report = collect.recheck_source(source.pk, owner="test")
    assert (report.checked, report.edited, report.deleted, report.errors) == (5, 1, 1, 0)
    assert [seen.query for seen in upstream.requests] == [{"before": "106"}]
    deleted = Post.objects.get(external_id="https://t.me/peacewatch/102")
    assert deleted.deleted_at is not None
    assert deleted.deletion_reason == ("deleted upstream (missing from the channel preview, which shows "
                                       "messages 101 to 105)")
    revision = PostRevision.objects.get()
    assert revision.post.external_id == "https://t.me/peacewatch/103"
    assert revision.text.startswith("Report number 103") and revision.post.text == f"Report 103, corrected #{TAG}"
    assert "edited" in revision.post.raw["html"]
    listed = {post["external_id"] for post in api_client.get("/api/v1/posts/").json()["results"]}
    assert listed == {f"https://t.me/peacewatch/{n}" for n in (101, 103, 104, 105)}
    again = collect.recheck_source(source.pk, owner="test")
    assert (again.checked, again.edited, again.deleted) == (4, 0, 0) and PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_recheck_that_cannot_reach_stored_ids_reports_errors_and_deletes_nothing(upstream, monkeypatch):
    monkeypatch.setattr(telegram, "MAX_RECHECK_PAGES", 1)
    dated_channel(upstream, range(101, 131), when=hours_ago)
    source = add_source(upstream)
    assert collect.run_source(source.pk, owner="test").run.new == 30
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test")
    # One page shows the 20 newest (111 ... 130); 101 ... 110 lie below it.
    assert (report.checked, report.edited, report.deleted, report.errors) == (30, 0, 0, 10)
    assert Post.objects.alive().count() == 30 and len(upstream.requests) == 1


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_blocks_the_source(upstream):
    channel = dated_channel(upstream, (101, 102), when=hours_ago)
    source = add_source(upstream)
    collect.run_source(source.pk, owner="test")
    upstream.requests.clear()
    channel.override = Reply(429, "Too Many Requests", {"Retry-After": "300", **HTML})
    report = collect.recheck_source(source.pk, owner="test")
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until > django_timezone.now() + timedelta(seconds=250)
    assert len(upstream.requests) == 1 and Post.objects.alive().count() == 2


def hourly(n: int) -> datetime:
    return datetime(2026, 10, 1, tzinfo=timezone.utc) + timedelta(hours=n)


@pytest.mark.django_db
def test_backfill_walks_back_to_the_date_and_a_second_call_makes_no_request(upstream):
    dated_channel(upstream, range(1, 61), when=hourly)
    source = add_source(upstream)
    Source.objects.filter(pk=source.pk).update(cursor={"ukrainepeacetalks": {"newest_id": 60}})
    backfill = collect.backfill_source(source.pk, since=hourly(15), owner="test")
    assert (backfill.outcome, backfill.pages, backfill.fetched, backfill.new) == (CollectionRun.Outcome.OK, 3, 60, 46)
    assert min(Post.objects.values_list("created_at", flat=True)) == hourly(15)
    assert [seen.query for seen in upstream.requests] == [
        {"q": f"#{TAG}", "before": before} for before in ("61", "41", "21")]
    source.refresh_from_db()
    assert source.cursor == {"ukrainepeacetalks": {"newest_id": 60, "backfilled_since": hourly(15).isoformat()}}
    again = collect.backfill_source(source.pk, since=hourly(15), owner="test")
    assert (again.outcome, again.pages) == (CollectionRun.Outcome.OK, 0) and len(upstream.requests) == 3
    collect.run_source(source.pk, owner="test")  # polling keeps the finished walk
    source.refresh_from_db()
    assert source.cursor["ukrainepeacetalks"]["backfilled_since"] == hourly(15).isoformat()


@pytest.mark.django_db
def test_backfill_is_bounded_per_call_and_the_next_call_resumes_below_the_last_page(upstream, monkeypatch):
    monkeypatch.setattr(telegram, "MAX_BACKFILL_PAGES", 1)
    dated_channel(upstream, range(1, 51), when=hourly)
    source = add_source(upstream)
    pages = [collect.backfill_source(source.pk, since=hourly(0), owner="test").pages for _ in range(4)]
    assert pages == [1, 1, 1, 0]
    assert [seen.query for seen in upstream.requests] == [
        {"q": f"#{TAG}"}, {"q": f"#{TAG}", "before": "31"}, {"q": f"#{TAG}", "before": "11"}]
    assert Post.objects.count() == 50


def test_a_rate_limit_during_backfill_raises_like_fetch(upstream):
    TelegramChannel(upstream, {1: tagged_text(1)}).override = Reply(429, "", {"Retry-After": "120", **HTML})
    with pytest.raises(RateLimited) as caught:
        list(connector(upstream).backfill(since=NOW - timedelta(days=30), cursor={}))
    assert caught.value.until == NOW + timedelta(seconds=120)
