"""Telegram: the public web preview of one channel, `https://t.me/s/<channel>`, searched for each hashtag.

- Reading a channel through Telegram's API needs a user account; the web preview needs nothing, so this
  connector reads the preview's HTML (Beautiful Soup with the stdlib "html.parser"). Each
  `.tgme_widget_message` block with `data-post="<channel>/<id>"` is one message; a page lists its messages
  oldest first.
- Search: `?q=%23<tag>` gives the newest messages matching the tag, `&before=<id>` older ones (the page's
  "load more" link, `data-before`), `&after=<id>` the ones just after an id (`data-after` when there are
  more). The first run backfills up to BACKFILL_PAGES through `before`; later runs ask for
  `after=<highest id seen>` page after page, up to MAX_PAGES_PER_RUN (the next run carries on).
- Message ids are per channel and not contiguous (an album uses one id per photo, deleted messages leave
  gaps), so they are only compared, never counted.
- The search also matches words, so the tag is verified locally: a message counts when its text has the
  tag as a `#tag` search link (how t.me renders hashtags) or as `#tag` in the text, casefolded.
- t.me sends no rate-limit headers; a 429 is honoured through its Retry-After.
- Backfill (`collect --backfill --since`): the same search with `before=<oldest id walked>`, page after page
  until a page reaches messages older than `since` (or the search ends), MAX_BACKFILL_PAGES per tag per
  call; the position (`backfill_before`) and the finished walk (`backfilled_since`) sit beside
  `newest_id` in the tag's cursor entry.
- Re-check: the channel preview without a search, `?before=<highest stored id not yet seen + 1>`, which
  lists the newest messages below that id. Such a page covers every id from its lowest message up to the
  id it was asked below: a stored id in that range that is not on it has been deleted. A stored id
  below every page read is reported as an error (cannot tell), never as a deletion.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

import requests
from bs4 import BeautifulSoup, Tag

from .base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    Recheck,
    RejectedRaw,
    SourceConfig,
    check_status,
    html_to_text,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "telegram"
# How far the first run of a new source reaches back: t.me serves about 20 messages a page, so ~100.
BACKFILL_PAGES = 5
# One run reads at most this many pages of newer messages (~200) so a busy channel cannot hold a
# worker; the cursor makes the next run continue where this one stopped.
MAX_PAGES_PER_RUN = 10
# `collect --backfill` reads at most this many search pages (~1,000 messages) per tag per call; a later call
# resumes from the cursor.
MAX_BACKFILL_PAGES = 50
# A re-check reads at most this many channel pages (~20 messages each); stored ids it does not reach are
# reported as errors and looked at again on the next re-check.
MAX_RECHECK_PAGES = 20
# Links inside messages are made absolute against the public site, whatever host served the page.
PUBLIC_SITE = "https://t.me"

_DATA_POST = re.compile(r"^([A-Za-z0-9_]+)/(\d+)$")
_CHANNEL = re.compile(r"^[A-Za-z0-9_]+$")
_MESSAGE_URL = re.compile(r"^https?://(?:t\.me|telegram\.me)/(?:s/)?([A-Za-z0-9_]+)/(\d+)(?:[/?#].*)?$")
# A hashtag written in the text: '#' not glued to a word, a URL path or a query ('page#frag', '/#x').
_TAG_IN_TEXT = re.compile(r"(?<![\w#/&?=])#(\w+)")
_COUNT = re.compile(r"(\d+(?:[.,]\d+)?)\s*([KMB]?)$", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "K": 1_000, "M": 1_000_000, "B": 1_000_000_000}


# --- parsing -------------------------------------------------------------------------------------


@dataclass
class Listing:
    """One preview page: its messages as raw payloads, and its paging links."""

    messages: list[dict] = field(default_factory=list)
    before: int | None = None  # the older page: ?before=<id>
    after: int | None = None  # the newer page, when there is one: ?after=<id>
    no_results: bool = False  # t.me's "No posts found"

    @property
    def ids(self) -> list[int]:
        return [raw["id"] for raw in self.messages if isinstance(raw.get("id"), int)]


def parse_count(text: str) -> int:
    """A count as t.me shows it ("37.2K", "1.5M", "812") as a number; 0 when it is not one."""
    match = _COUNT.search(" ".join(text.split()))
    if not match:
        return 0
    try:
        number = Decimal(match.group(1).replace(",", "."))
    except InvalidOperation:
        return 0
    return int(number * _MULTIPLIERS[match.group(2).upper()])


def _link_value(soup: BeautifulSoup, attribute: str, rel: str) -> int | None:
    """The id of the "load more" link (data-before / data-after), else of <link rel=prev/next>."""
    more = soup.select_one(f"a.tme_messages_more[data-{attribute}]")
    value = more.get(f"data-{attribute}") if more else None
    if value is None:
        link = soup.select_one(f'link[rel="{rel}"][href]')
        if link is not None:
            value = (parse_qs(urlsplit(str(link["href"])).query).get(attribute) or [None])[0]
    value = str(value or "").strip()
    return int(value) if value.isdigit() else None


def _raw_message(block: Tag) -> dict:
    match = _DATA_POST.match(str(block.get("data-post") or "").strip())
    return {"html": str(block), "channel": match.group(1) if match else "",
            "id": int(match.group(2)) if match else None}


def parse_page(html: str, *, url: str = "") -> Listing:
    """Split a preview page into raw messages ({"html", "channel", "id"}) and its paging links.

    Does not filter. Raises MalformedResponse (keeping the page) when the page is not a channel preview
    (a login or landing page, a redirect away from /s/) or holds message frames without messages.
    """
    soup = BeautifulSoup(html, "html.parser")
    if soup.select_one(".tgme_channel_history") is None:
        raise MalformedResponse(
            f"{url or 'the page'} is not a Telegram channel preview (no .tgme_channel_history): the channel "
            "may not exist, be private, or have its web preview turned off",
            raw=html[:10_000],
        )
    blocks = [block for block in soup.select("div.tgme_widget_message")
              if block.find_parent("div", class_="tgme_widget_message") is None]
    wraps = soup.select(".tgme_widget_message_wrap")
    no_results = any(wrap.select_one(".tme_no_messages_found") for wrap in wraps)
    if not blocks and not no_results and wraps:
        raise MalformedResponse(
            f"{url or 'the page'} has {len(wraps)} .tgme_widget_message_wrap frames but no "
            ".tgme_widget_message blocks: the preview's layout has changed",
            raw=html[:10_000],
        )
    return Listing(messages=[_raw_message(block) for block in blocks], before=_link_value(soup, "before", "prev"),
                   after=_link_value(soup, "after", "next"), no_results=no_results and not blocks)


def _message_text(block: Tag) -> Tag | None:
    # The quoted text of a replied-to message is a .tgme_widget_message_text too, and long messages
    # nest a second one inside the first: take the outermost one that belongs to this message.
    for candidate in block.select(".tgme_widget_message_text"):
        if (candidate.find_parent(class_="tgme_widget_message_reply") is None
                and candidate.find_parent(class_="tgme_widget_message_text") is None):
            return candidate
    return None


def _search_tag(href: str) -> str:
    parts = urlsplit(href)
    if parts.netloc and parts.hostname not in ("t.me", "telegram.me"):
        return ""
    query = (parse_qs(parts.query).get("q") or [""])[0]
    return query[1:] if query.startswith("#") else ""


def _hashtags(text_element: Tag | None, text: str) -> tuple[str, ...]:
    tags = set()
    if text_element is not None:
        for link in text_element.find_all("a", href=True):
            if link.get_text().strip().startswith("#"):
                tags.add(normalise_tag(_search_tag(str(link["href"]))))
    tags.update(normalise_tag(tag) for tag in _TAG_IN_TEXT.findall(text))
    tags.discard("")
    return tuple(sorted(tags))


def _collapse_whitespace(text_element: Tag) -> None:
    # In HTML a newline in the source is a space (t.me marks line breaks with <br/>); without this a
    # re-indented page would break lines in the middle of sentences. Code blocks keep theirs.
    for string in text_element.find_all(string=True):
        if string.find_parent("pre") is None and re.search(r"\s", string):
            string.replace_with(re.sub(r"\s+", " ", str(string)))


def _absolute_links(text_element: Tag, *, channel: str) -> None:
    base = f"{PUBLIC_SITE}/s/{channel}"
    for link in text_element.find_all("a", href=True):
        href = str(link["href"])
        if link.has_attr("onclick"):
            # t.me escapes '&' twice in the hrefs of the links that ask for confirmation (those with
            # onclick); undo it so the stored link is the one the author wrote.
            href = href.replace("&amp;", "&")
        link["href"] = urljoin(base, href)


def _reply_to(block: Tag) -> str:
    reply = block.select_one("a.tgme_widget_message_reply[href]")
    match = _MESSAGE_URL.match(str(reply["href"])) if reply is not None else None
    return f"{PUBLIC_SITE}/{match.group(1)}/{match.group(2)}" if match else ""


def _reactions(block: Tag) -> int:
    total = 0
    for reaction in block.select(".tgme_widget_message_reactions .tgme_reaction"):
        emoji = reaction.find(["i", "b", "tg-emoji"])
        label = reaction.get_text(" ")
        if emoji is not None:
            label = label.replace(emoji.get_text(" "), " ", 1)
        total += parse_count(label.strip())
    return total


def parse_message(obj: Any) -> NormalisedItem | RejectedRaw | None:
    """One raw message ({"html": the block's outer HTML, ...}) as an item, without any tag filter.

    RejectedRaw (with `obj` as its raw) when it cannot be read: no data-post, no date, over the size cap.
    None for service messages ("channel created", "pinned a photo"), which are not posts. The HTML is
    the source of truth: `channel` and `id` in `obj` are conveniences and are not trusted.
    """
    if not isinstance(obj, dict):
        return RejectedRaw(reason="a Telegram message must be a dict with its HTML under 'html'", raw=obj)
    html = obj.get("html")
    if not isinstance(html, str) or not html:
        return RejectedRaw(reason="message has no 'html' string", raw=obj)
    if len(html) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"message HTML of {len(html)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=obj)
    block = BeautifulSoup(html, "html.parser").select_one("div.tgme_widget_message")
    if block is None:
        return RejectedRaw(reason="no .tgme_widget_message block in the message HTML", raw=obj)
    data_post = str(block.get("data-post") or "").strip()
    match = _DATA_POST.match(data_post)
    if not match:
        return RejectedRaw(reason=f'message has no data-post="<channel>/<id>" (found {data_post!r})', raw=obj)
    channel, message_id = match.group(1), match.group(2)
    url = f"{PUBLIC_SITE}/{channel}/{message_id}"
    if "service_message" in (block.get("class") or []):
        return None
    stamp = block.select_one("a.tgme_widget_message_date time[datetime]")
    if stamp is None:
        return RejectedRaw(reason="message has no date (time[datetime] in a.tgme_widget_message_date)", raw=obj,
                           external_id=url)
    try:
        created_at = parse_timestamp(str(stamp["datetime"]), field_name="time[datetime]")
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=obj, external_id=url)
    text_element = _message_text(block)
    if text_element is not None:
        _collapse_whitespace(text_element)
        _absolute_links(text_element, channel=channel)
        body = sanitise_html(text_element.decode_contents().strip())
    else:
        body = ""  # a photo, video or sticker without a caption
    text = html_to_text(body)
    owner = block.select_one(".tgme_widget_message_owner_name")
    return NormalisedItem(
        platform=PLATFORM,
        external_id=url,
        uri=url,
        url=url,
        kind="post",
        author=NormalisedAuthor(
            external_id=f"{PUBLIC_SITE}/{channel}",
            handle=f"@{channel}",
            display_name=" ".join(owner.get_text().split())[:300] if owner is not None else "",
            url=f"{PUBLIC_SITE}/{channel}",
        ),
        created_at=created_at,
        html=body,
        text=text,
        hashtags=_hashtags(text_element, text),
        reply_to_external_id=_reply_to(block),
        like_count=_reactions(block),
        raw=obj,
    )


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """One raw message as an item when it carries one of `hashtags` (casefolded, '#' optional).

    None when it carries none of them (nothing tracked means nothing matches) or is a service message;
    RejectedRaw when it cannot be read (see parse_message).
    """
    result = parse_message(obj)
    if not isinstance(result, NormalisedItem):
        return result
    wanted = {normalise_tag(tag) for tag in hashtags}
    return result if wanted.intersection(result.hashtags) else None


# --- fetching ------------------------------------------------------------------------------------


def _no_reset_header(response: requests.Response) -> datetime | None:
    return None  # t.me documents no rate-limit headers; Retry-After (read by check_status) is all there is


def preview_url(base_url: str) -> str:
    """The channel preview URL, `<site>/s/<channel>`, from a preview or channel URL. PermanentError if neither."""
    parts = urlsplit(base_url.strip())
    segments = [segment for segment in parts.path.split("/") if segment]
    if len(segments) == 2 and segments[0] == "s":
        channel = segments[1]
    elif len(segments) == 1 and segments[0] != "s":
        channel = segments[0]
    else:
        channel = ""
    if not parts.scheme or not parts.netloc or not _CHANNEL.match(channel):
        raise PermanentError(f"{base_url!r} is not a Telegram channel preview URL like https://t.me/s/<channel>")
    return urlunsplit((parts.scheme, parts.netloc, f"/s/{channel}", "", ""))


def _newest(state: Any) -> int | None:
    value = state.get("newest_id") if isinstance(state, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reached(done: Any, since: datetime) -> bool:
    """Whether a finished walk (`backfilled_since`, ISO) already reaches back to `since`."""
    try:
        return isinstance(done, str) and parse_timestamp(done, field_name="backfilled_since") <= since
    except ValueError:
        return False


def _stored_message_id(external_id: str, channel: str) -> int | None:
    """The message id of a stored post of `channel`, from its URL (`https://t.me/<channel>/<id>`)."""
    match = _MESSAGE_URL.match(external_id)
    if match is None or match.group(1).casefold() != channel:
        return None
    return int(match.group(2))


class TelegramConnector:
    platform = PLATFORM

    def __init__(self, *, base_url: str, hashtags: list[str], client: HttpClient, now: Callable[[], datetime]):
        self.url = preview_url(base_url)
        # Searched as written (t.me matches case-insensitively), kept in the cursor by their casefolded key.
        self.hashtags = tuple(tag.strip().lstrip("#") for tag in hashtags if normalise_tag(tag))
        self.client = client
        self.now = now

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Pages for each hashtag; each page's `cursor` is the whole source cursor once it is stored.

        The cursor is {tag key: {"newest_id": highest message id seen in that tag's search}}.
        """
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag in self.hashtags:
            key = normalise_tag(tag)
            for page in self._fetch_tag(tag, _newest(cursor.get(key))):
                if "newest_id" in page.cursor:
                    # Polling moves `newest_id`; a backfill's position and finished walk stay.
                    kept = {k: v for k, v in cursor.get(key, {}).items() if k.startswith("backfill")}
                    cursor[key] = {**kept, **page.cursor}
                page.cursor = {name: dict(value) for name, value in cursor.items()}
                yield page

    def _fetch_tag(self, tag: str, newest: int | None) -> Iterator[Page]:
        query = f"#{tag}"
        if newest is None:
            # First run: the newest matches, then older pages. The cursor is the first page's highest id.
            params: dict = {"q": query}
            first_newest: int | None = None
            for _ in range(BACKFILL_PAGES):
                page, listing = self._get_page(params)
                if first_newest is None and listing.ids:
                    first_newest = max(listing.ids)
                if first_newest is not None:
                    page.cursor = {"newest_id": first_newest}
                yield page
                # The older link names the page's oldest id; one that does not lead back would loop.
                if not listing.ids or listing.before is None or listing.before > min(listing.ids):
                    return
                params = {"q": query, "before": listing.before}
            return
        for _ in range(MAX_PAGES_PER_RUN):
            page, listing = self._get_page({"q": query, "after": newest})
            highest = max(listing.ids, default=newest)
            advanced = highest > newest
            newest = max(newest, highest)
            page.cursor = {"newest_id": newest}
            yield page
            if listing.after is None or not advanced:
                return

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Walk each hashtag's search back to `since`, at most MAX_BACKFILL_PAGES per tag per call.

        The walk starts below the highest id polling has seen (`before=<newest_id + 1>`, else the newest
        page) and follows `before=<oldest id of the page>`; it ends on a page that reaches messages older
        than `since`, an empty page, or a page without an older link. Messages older than `since` are not
        yielded. The position (`backfill_before`) and the finished walk (`backfilled_since`) are kept beside
        the polling key, so a later call resumes and a finished walk is not repeated.
        """
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag in self.hashtags:
            state = cursor.setdefault(normalise_tag(tag), {})
            if _reached(state.get("backfilled_since"), since):
                continue
            before = _int(state.get("backfill_before"))
            if before is None and _newest(state) is not None:
                before = _newest(state) + 1
            for _ in range(MAX_BACKFILL_PAGES):
                params = {"q": f"#{tag}", **({"before": before} if before is not None else {})}
                page, listing = self._get_page(params)
                dates = [result.created_at for result in map(parse_message, listing.messages)
                         if isinstance(result, NormalisedItem)]
                page.items = [item for item in page.items if item.created_at >= since]
                finished = (not listing.ids or (dates and min(dates) < since) or listing.before is None
                            or listing.before > min(listing.ids))
                if finished:
                    state.pop("backfill_before", None)
                    state["backfilled_since"] = since.astimezone(timezone.utc).isoformat()
                else:
                    before = listing.before
                    state["backfill_before"] = before
                page.cursor = {name: dict(value) for name, value in cursor.items()}
                yield page
                if finished:
                    break

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Read the channel around the stored message ids: `?before=<highest pending id + 1>` until every
        id is settled or MAX_RECHECK_PAGES pages have been read.

        A page asked for below id X lists the newest messages below X, so it covers the ids from its lowest
        message to X - 1: a stored id in that range is either on the page (an item: the store keeps the
        old text as a revision when it changed) or deleted. Ids no page covers are errors. Raises
        RateLimited on 429 and the other SourceErrors of `fetch`.
        """
        channel = self.url.rsplit("/", 1)[1].casefold()
        pending: dict[int, str] = {}
        for external_id, _raw in posts:
            message_id = _stored_message_id(external_id, channel)
            if message_id is None:
                yield Recheck(external_id=external_id, error=f"not a message of the channel {channel}")
            else:
                pending[message_id] = external_id
        for _ in range(MAX_RECHECK_PAGES):
            if not pending:
                return
            before = max(pending) + 1
            now = self.now()
            response = self.client.get(self.url, params={"before": before}, headers={"Accept": "text/html"})
            check_status(response, now=now, reset=_no_reset_header)
            if response.status_code == 404:
                raise PermanentError(f"no Telegram channel preview at {response.url} (404)")
            listing = parse_page(response.text, url=response.url)
            shown = {raw["id"]: raw for raw in listing.messages
                     if isinstance(raw.get("id"), int) and str(raw.get("channel")).casefold() == channel}
            if not shown:
                break  # nothing below `before` is shown: the remaining ids cannot be told
            lowest = min(shown)
            for message_id in sorted(n for n in pending if lowest <= n < before):
                external_id = pending.pop(message_id)
                if message_id not in shown:
                    yield Recheck(external_id=external_id, deleted_reason=(
                        f"deleted upstream (missing from the channel preview, which shows messages "
                        f"{lowest} to {before - 1})"))
                    continue
                result = parse_message(shown[message_id])
                if isinstance(result, NormalisedItem):
                    yield Recheck(external_id=external_id, item=result)
                else:
                    reason = result.reason if isinstance(result, RejectedRaw) else "now a service message"
                    yield Recheck(external_id=external_id, error=reason)
        for message_id, external_id in sorted(pending.items()):
            yield Recheck(external_id=external_id,
                          error="no channel page read in this re-check covers this message: cannot tell")

    def _get_page(self, params: dict) -> tuple[Page, Listing]:
        now = self.now()
        response = self.client.get(self.url, params=params, headers={"Accept": "text/html"})
        check_status(response, now=now, reset=_no_reset_header)
        if response.status_code == 404:
            raise PermanentError(f"no Telegram channel preview at {response.url} (404)")
        listing = parse_page(response.text, url=response.url)
        page = Page(fetched=len(listing.messages))
        for raw in listing.messages:
            result = normalise_native(raw, hashtags=self.hashtags)
            if isinstance(result, NormalisedItem):
                page.items.append(result)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        return page, listing


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime], store=None) -> TelegramConnector:
    return TelegramConnector(base_url=config.base_url, hashtags=list(config.hashtags), client=client, now=now)
