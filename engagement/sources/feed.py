"""RSS/Atom comment feeds: one feed URL per source (a WordPress `/comments/feed/`, an article's `/feed/`,
any RSS 2.0 or Atom feed whose entries are comments).

- One conditional GET per run: the ETag / Last-Modified of the last answer are kept in the cursor and
  sent back as If-None-Match / If-Modified-Since; a 304 is an empty, successful run. A feed has no
  pages, so a run is bounded by that one request (and HttpClient's size cap).
- The response's bytes and headers (Content-Type, Content-Location) go to feedparser, never the URL:
  every request goes through HttpClient with its timeouts, User-Agent and URL guard.
- Each entry is one comment. Its id is the entry's id (RSS `guid`, Atom `id`), else its link.
  `created_at` is `published`, else `updated` (feedparser gives them as UTC `*_parsed` tuples).
- Feeds carry no hashtags: every entry gets the source's tracked tags, because the user registered
  the feed for them.
- The article: an entry link with a `#fragment` (WordPress `...#comment-12`) points into its article, so
  the link without the fragment (and without WordPress's `comment-page-N/`) is the article's URL; else
  the feed's own link when it is not the site root. WordPress's English titles name the article
  ("Comment on X by Y" in a site's comments feed, "Comments on: X" for one article's feed); other titles
  leave the article's title empty.
- Replies: WordPress (5.4+) starts a reply in its comment feeds with "In reply to <a href=...#comment-N>".
  When the entry's id is a WordPress comment guid (`<post guid>#comment-M`), the parent becomes
  `<post guid>#comment-N` and that first paragraph is dropped from the text (the parent is linked instead).
- Errors: 429 and a 503 with Retry-After wait until then; other 5xx and timeouts are temporary;
  401/403 need credentials this connector does not have; 404 and other 4xx are permanent; a body that
  feedparser cannot read as a feed at all raises MalformedResponse with the text received.
- Backfill: a feed holds only its latest entries. When it has RFC 5005 links to older entries (a paged
  feed's `rel="next"`, an archived feed's `rel="prev-archive"`), they are followed back to `since`, at
  most MAX_BACKFILL_PAGES documents per call, the next one kept in the cursor as `backfill_next`. Without
  them the feed is read once (unconditionally); when its entries do not reach back to `since` the run
  stores them and says so (the page's note). WordPress comment feeds have no such links, and `?paged=N`
  does not page them: WP_Query builds comment-feed queries with `LIMIT <posts_per_rss>` and no offset.
- Re-check: the feed is read again unconditionally (no If-None-Match / If-Modified-Since). A stored entry
  still in it is an item (the store keeps the old text as a revision when it changed). A stored entry
  missing from it is a deletion only when the feed clearly covers its time: the feed lists its entries
  newest first and the stored entry is newer than the feed's oldest entry. Otherwise it is an error
  (cannot tell): an entry older than what the feed holds has merely dropped off the end.
"""

from __future__ import annotations

import email.utils
import html
import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import feedparser
import requests
from bs4 import BeautifulSoup, NavigableString, Tag

from .base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NormalisedArticle,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    RateLimited,
    Recheck,
    RejectedRaw,
    check_status,
    html_to_text,
    normalise_tag,
    parse_timestamp,
    retry_after,
    sanitise_html,
)

PLATFORM = "feed"
# Where the channel's own title and link are kept inside each entry's raw payload: an RSS item alone
# does not say which article a single-article comment feed is about, its channel does.
FEED_KEY = "_feed"
# Longest article URL kept (Article.url is a 2048-character URLField).
MAX_URL_CHARS = 2048
# The "In reply to ..." paragraph is a short sentence; a longer first paragraph is the comment itself.
MAX_REPLY_PREFIX_CHARS = 300

_COMMENT_GUID = re.compile(r"^(?P<post>.+)#comment-(?P<id>\d+)$")
_COMMENT_FRAGMENT = re.compile(r"^comment-(?P<id>\d+)$")
_COMMENT_PAGE = re.compile(r"/comment-page-\d+/?$")
_POST_ID = re.compile(r"[?&]p=(?P<id>\d+)(?:&|#|$)")
_SITE_TITLE = re.compile(r"^Comment on (?P<title>.+) by (?P<author>.+)$", re.DOTALL)
_ARTICLE_FEED_TITLE = re.compile(r"^Comments on: (?P<title>.+)$", re.DOTALL)
# Warnings feedparser raises for feeds it read completely (a charset or media type it had to guess).
_HARMLESS_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)
# `collect --backfill` reads at most this many feed documents per call (one request each); a later call
# resumes from `backfill_next` in the cursor.
MAX_BACKFILL_PAGES = 50
# RFC 5005 links to older entries: a paged feed's next page (section 3), an archived feed's previous
# archive document (section 4).
OLDER_RELS = ("next", "prev-archive")


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass
class FeedDocument:
    """One answer for a feed URL: the parsed feed (None for 304 Not Modified) and the validators to send
    next time."""

    parsed: Any
    validators: dict
    url: str
    warning: str = ""


class FeedNotFound(PermanentError):
    """404 for a feed URL."""


def check_status_waiting(response: requests.Response, *, now: datetime) -> None:
    """check_status, plus: a 503 that names a Retry-After is waited for like a 429 (the server said when
    to come back), rather than retried after the task's own back-off. Neither feeds nor WordPress core
    send rate-limit headers of their own."""
    if response.status_code == 503:
        until = retry_after(response.headers.get("Retry-After"), now=now)
        if until is not None:
            until = max(until, now)
            raise RateLimited(f"{response.url} is unavailable (503) until {until.isoformat()} (Retry-After)",
                              until=until)
    check_status(response, now=now, reset=lambda _response: None)


def fetch_feed(client: HttpClient, url: str, *, validators: dict, now: datetime) -> FeedDocument:
    """GET a feed with If-None-Match / If-Modified-Since from `validators` (an earlier answer's `etag`
    and `last_modified`). Raises SourceError subclasses; MalformedResponse when the body is no feed."""
    headers = {"Accept": "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.8"}
    if isinstance(validators.get("etag"), str) and validators["etag"]:
        headers["If-None-Match"] = validators["etag"]
    if isinstance(validators.get("last_modified"), str) and validators["last_modified"]:
        headers["If-Modified-Since"] = validators["last_modified"]
    response = client.get(url, headers=headers)
    if response.status_code == 304:
        return FeedDocument(parsed=None, validators=dict(validators), url=response.url)
    check_status_waiting(response, now=now)
    if response.status_code == 404:
        raise FeedNotFound(f"no feed at {response.url} (404): check the feed URL")
    parsed, warning = parse_feed(response)
    fresh = {"etag": response.headers.get("ETag", ""), "last_modified": response.headers.get("Last-Modified", "")}
    return FeedDocument(parsed=parsed, validators={k: v for k, v in fresh.items() if v}, url=response.url,
                        warning=warning)


def parse_feed(response: requests.Response) -> tuple[Any, str]:
    """The feed in a response, read from its bytes, and a warning when feedparser had to recover from
    broken XML. Raises MalformedResponse (with the text) when nothing feed-like could be read."""
    content_type = response.headers.get("Content-Type", "")
    parsed = feedparser.parse(response.content, response_headers={
        "content-type": content_type,
        # Relative links in the feed resolve against where it came from.
        "content-location": response.headers.get("Content-Location") or response.url,
    })
    if not parsed.get("version"):
        reason = parsed.get("bozo_exception") or "no RSS or Atom root element"
        raise MalformedResponse(
            f"expected an RSS or Atom feed from {response.url}, got {content_type or 'no content type'} ({reason})",
            raw=response.text[:10_000],
        )
    warning = ""
    if parsed.get("bozo") and not isinstance(parsed.get("bozo_exception"), _HARMLESS_BOZO):
        warning = f"the feed is not well-formed ({parsed.get('bozo_exception')}); read what could be read"
    return parsed, warning


# --- parsing -------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """feedparser's dicts and time tuples as plain JSON values (the raw payload of a stored item)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, time.struct_time):
        return list(value)
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def feed_meta(parsed: Any) -> dict:
    """The channel facts each entry needs: its title, link and language."""
    channel = parsed.get("feed") or {}
    return {key: str(channel.get(key) or "") for key in ("title", "link", "language")}


def raw_entry(entry: Any, meta: dict) -> dict:
    """An entry as stored: feedparser's fields as plain JSON, with the channel facts under FEED_KEY."""
    raw = plain(entry) if isinstance(entry, dict) else entry
    if isinstance(raw, dict):
        raw[FEED_KEY] = dict(meta)
    return raw


def _utc_from_parsed(value: Any) -> datetime | None:
    if isinstance(value, (list, tuple)) and len(value) >= 6 and all(isinstance(v, int) for v in value[:6]):
        try:
            return datetime(*value[:6], tzinfo=timezone.utc)
        except ValueError:
            return None
    return None


def _utc_from_text(value: Any) -> datetime | None:
    """RFC 822 (RSS) or ISO 8601 (Atom) text, for payloads without feedparser's parsed tuples."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if parsed.year < 1900:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def entry_time(entry: dict, name: str) -> datetime | None:
    """`published` or `updated` of an entry as aware UTC: feedparser's `*_parsed` (UTC) when present."""
    if f"{name}_parsed" in entry:
        return _utc_from_parsed(entry.get(f"{name}_parsed"))
    return _utc_from_text(entry.get(name))


def _entry_html(entry: dict) -> str:
    """The entry's content (else its summary) as HTML; plain text (Atom type="text") is escaped."""
    details = [c for c in entry.get("content") or [] if isinstance(c, dict)]
    details.append(entry.get("summary_detail") if isinstance(entry.get("summary_detail"), dict)
                   else {"value": entry.get("summary"), "type": "text/html"})
    for detail in details:
        value = detail.get("value")
        if isinstance(value, str) and value.strip():
            return html.escape(value, quote=False) if detail.get("type") == "text/plain" else value
    return ""


def _without_fragment(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(fragment="")), parts.fragment


def article_url_of(link: str) -> str:
    """The article a comment link points into: without `#comment-N` and WordPress's `comment-page-N/`."""
    url, _fragment = _without_fragment(link)
    parts = urlsplit(url)
    path = _COMMENT_PAGE.sub("/", parts.path)
    return urlunsplit(parts._replace(path=path))


def _same_page(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return ((pa.hostname or "").lower(), pa.path.rstrip("/"), pa.query) == \
        ((pb.hostname or "").lower(), pb.path.rstrip("/"), pb.query)


def reply_parent(content: str, external_id: str) -> tuple[str, str]:
    """(parent external_id, content without the "In reply to" paragraph) for a WordPress comment-feed
    reply; ("", content) otherwise. Only for ids of the `<post guid>#comment-N` form, so the parent's id
    is certain."""
    own = _COMMENT_GUID.match(external_id)
    if not own or "<a" not in content:
        return "", content
    soup = BeautifulSoup(content, "html.parser")
    first = next((node for node in soup.contents
                  if not (isinstance(node, NavigableString) and not node.strip())), None)
    if not isinstance(first, Tag) or first.name != "p":
        return "", content
    links = first.find_all("a")
    if len(links) != 1 or len(first.get_text()) > MAX_REPLY_PREFIX_CHARS:
        return "", content
    fragment = _COMMENT_FRAGMENT.match(urlsplit(str(links[0].get("href") or "")).fragment)
    if not fragment:
        return "", content
    first.decompose()
    return f"{own.group('post')}#comment-{fragment.group('id')}", str(soup).strip()


def _author(entry: dict, *, site: str) -> NormalisedAuthor | None:
    detail = entry.get("author_detail") if isinstance(entry.get("author_detail"), dict) else {}
    name = str(detail.get("name") or entry.get("author") or "").strip()
    href = detail.get("href") if isinstance(detail.get("href"), str) else ""
    if not name and not href:
        return None
    external_id = href if href.startswith(("http://", "https://")) else f"{site}/#commenter={quote(name)}"
    return NormalisedAuthor(external_id=external_id[:2048], handle=name[:300], display_name=name[:300],
                            url=href if href.startswith(("http://", "https://")) else "")


def _article(entry: dict, *, link: str, external_id: str, author_name: str) -> NormalisedArticle | None:
    meta = entry.get(FEED_KEY) if isinstance(entry.get(FEED_KEY), dict) else {}
    feed_link = str(meta.get("link") or "")
    _url, fragment = _without_fragment(link) if link else ("", "")
    if link and fragment:
        url = article_url_of(link)
    elif feed_link and urlsplit(feed_link).path.strip("/"):
        url = feed_link
    else:
        return None
    if len(url) > MAX_URL_CHARS or not url.startswith(("http://", "https://")):
        return None
    title = ""
    entry_title = str(entry.get("title") or "")
    site_title = _SITE_TITLE.match(entry_title)
    if site_title and (not author_name or site_title.group("author").strip() == author_name):
        title = site_title.group("title").strip()
    elif feed_link and _same_page(url, feed_link):
        article_title = _ARTICLE_FEED_TITLE.match(str(meta.get("title") or ""))
        title = article_title.group("title").strip() if article_title else ""
    post_id = _POST_ID.search(_COMMENT_GUID.match(external_id).group("post")) \
        if _COMMENT_GUID.match(external_id) else None
    return NormalisedArticle(url=url, title=" ".join(title.split())[:1000], external_id=post_id.group("id") if post_id else "")


def normalise_entry(entry: Any, *, hashtags: tuple[str, ...], platform: str = PLATFORM) -> NormalisedItem | RejectedRaw:
    """One feed entry (feedparser's fields as plain JSON, channel facts under FEED_KEY) as a comment."""
    if not isinstance(entry, dict):
        return RejectedRaw(reason="entry is not an object", raw=entry)
    link = entry.get("link") if isinstance(entry.get("link"), str) else ""
    entry_id = entry.get("id") if isinstance(entry.get("id"), str) else ""
    external_id = (entry_id or link).strip()
    if not external_id:
        return RejectedRaw(reason="entry has neither an id (guid) nor a link", raw=entry)
    published, updated = entry_time(entry, "published"), entry_time(entry, "updated")
    created_at = published or updated
    if created_at is None:
        shown = entry.get("published") or entry.get("updated")
        return RejectedRaw(reason=f"entry has no readable published or updated date: {shown!r}", raw=entry,
                           external_id=external_id)
    content = _entry_html(entry)
    if len(content) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"content of {len(content)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=entry, external_id=external_id)
    reply_to, content = reply_parent(content, external_id)
    safe_html = sanitise_html(content)
    site_parts = urlsplit(link or external_id)
    site = f"{site_parts.scheme}://{site_parts.netloc}" if site_parts.scheme in ("http", "https") else "feed:"
    author = _author(entry, site=site)
    meta = entry.get(FEED_KEY) if isinstance(entry.get(FEED_KEY), dict) else {}
    return NormalisedItem(
        platform=platform,
        external_id=external_id[:2048],
        uri=external_id[:2048],
        url=link[:2048],
        kind="comment",
        author=author,
        created_at=created_at,
        edited_at=updated if published and updated and updated > published else None,
        language=str(meta.get("language") or "")[:16],
        html=safe_html,
        text=html_to_text(safe_html),
        hashtags=tuple(sorted({normalise_tag(tag) for tag in hashtags if normalise_tag(tag)})),
        reply_to_external_id=reply_to,
        article=_article(entry, link=link, external_id=external_id, author_name=author.handle if author else ""),
        raw=entry,
    )


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """One feed entry, as this connector stores it in `raw`, as an item tagged with `hashtags`."""
    return normalise_entry(obj, hashtags=hashtags)


def same_article_everywhere(items: list[NormalisedItem]) -> list[NormalisedItem]:
    """Give every comment of one article the fullest description of it found on the page, so a comment
    whose title could not be read does not blank the article's title when the page is stored."""
    best: dict[str, NormalisedArticle] = {}
    for item in items:
        if item.article is None:
            continue
        known = best.get(item.article.url)
        if known is None or (len(item.article.title), bool(item.article.external_id)) > \
                (len(known.title), bool(known.external_id)):
            best[item.article.url] = item.article
    return [replace(item, article=best[item.article.url]) if item.article else item for item in items]


# --- the connector -------------------------------------------------------------------------------


class FeedConnector:
    platform = PLATFORM

    def __init__(self, *, url: str, hashtags: list[str], client: HttpClient, now: Callable[[], datetime]):
        self.url = url
        self.hashtags = tuple(hashtags)
        self.client = client
        self.now = now

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """One page: the feed's entries, or nothing when it has not changed (304). The cursor holds the
        validators (`etag`, `last_modified`) of the last answer, and a backfill's keys, which are kept."""
        validators = {key: cursor[key] for key in ("etag", "last_modified") if isinstance(cursor.get(key), str)}
        kept = {key: value for key, value in cursor.items() if key.startswith("backfill")}
        document = fetch_feed(self.client, self.url, validators=validators, now=self.now())
        if document.parsed is None:
            yield Page(cursor={**kept, **validators}, health_detail={"feed_warning": ""})
            return
        page = self._page(document)
        page.cursor = {**kept, **document.validators}
        page.health_detail = {"feed_warning": document.warning}
        yield page

    def _page(self, document: FeedDocument) -> Page:
        meta = feed_meta(document.parsed)
        page = Page(fetched=len(document.parsed.entries))
        for entry in document.parsed.entries:
            result = normalise_native(raw_entry(entry, meta), hashtags=self.hashtags)
            if isinstance(result, NormalisedItem):
                page.items.append(result)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        page.items = same_article_everywhere(page.items)
        return page

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Read the feed unconditionally, then follow its RFC 5005 links to older documents (`next`,
        `prev-archive`) until one reaches back past `since`, at most MAX_BACKFILL_PAGES per call.

        Entries older than `since` are not yielded. The polling validators are kept as they are; the next
        document to read is kept as `backfill_next`, a finished walk as `backfilled_since`. A feed without
        such links is read once; when its entries do not reach back to `since`, its page carries a note
        saying so (and later calls for the same date yield that note again, without a request).
        """
        cursor = dict(cursor)
        if _reached(cursor.get("backfilled_since"), since):
            limit = cursor.get("backfill_limit")
            # The walk was done; it only fell short when the feed's oldest entry was newer than `since`.
            if isinstance(limit, str) and not _reached(limit, since):
                yield Page(cursor=dict(cursor), note=_no_history(limit))
            return
        url = cursor["backfill_next"] if isinstance(cursor.get("backfill_next"), str) else self.url
        read: set[str] = set()
        for _ in range(MAX_BACKFILL_PAGES):
            document = fetch_feed(self.client, url, validators={}, now=self.now())
            read.add(url)
            page = self._page(document)
            times = [t for t in (entry_time(entry, "published") or entry_time(entry, "updated")
                                 for entry in document.parsed.entries if isinstance(entry, dict)) if t is not None]
            page.items = [item for item in page.items if item.created_at >= since]
            older = older_link(document.parsed)
            reached = bool(times) and min(times) < since
            finished = reached or not older or older in read
            limit = None
            if finished:
                cursor.pop("backfill_next", None)
                cursor["backfilled_since"] = since.astimezone(timezone.utc).isoformat()
                if not reached and url == self.url and not older:
                    # The subscription document alone, and it does not reach back to `since`.
                    limit = min(times).isoformat() if times else ""
                    cursor["backfill_limit"] = limit
                else:
                    cursor.pop("backfill_limit", None)
            else:
                cursor["backfill_next"] = older
            page.cursor = dict(cursor)
            if limit is not None:
                page.note = _no_history(limit)
            yield page
            if finished:
                return
            url = older

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Read the feed again, unconditionally, and compare: one request for every stored entry.

        An entry still in the feed is an item. A missing entry is a deletion only when the feed lists its
        entries newest first and the stored entry is newer than the feed's oldest one (the feed covers its
        time); otherwise it is an error, since entries drop off the end of a feed as new ones come. Raises
        RateLimited, NeedsCredentials, FeedNotFound etc. like `fetch`.
        """
        document = fetch_feed(self.client, self.url, validators={}, now=self.now())
        items = self._page(document).items
        present = {item.external_id: item for item in items}
        times = [item.created_at for item in items]
        newest_first = all(a >= b for a, b in zip(times, times[1:]))
        oldest = min(times) if times else None
        for external_id, raw in posts:
            if external_id in present:
                yield Recheck(external_id=external_id, item=present[external_id])
                continue
            stored = normalise_native(raw, hashtags=self.hashtags) if isinstance(raw, dict) else None
            created_at = stored.created_at if isinstance(stored, NormalisedItem) else None
            if oldest is not None and newest_first and created_at is not None and created_at > oldest:
                yield Recheck(external_id=external_id, deleted_reason=(
                    f"deleted upstream (gone from the feed, which lists every entry back to {oldest.isoformat()})"))
            elif oldest is None:
                yield Recheck(external_id=external_id, error="the feed has no entries now: cannot tell")
            elif not newest_first:
                yield Recheck(external_id=external_id,
                              error="not in the feed, whose entries are not newest first: cannot tell")
            else:
                yield Recheck(external_id=external_id, error=(
                    f"not in the feed, which holds only its latest entries (back to {oldest.isoformat()}): "
                    "cannot tell"))


def older_link(parsed: Any) -> str:
    """The feed's RFC 5005 link to older entries (`next`, else `prev-archive`), absolute, or ""."""
    links = [link for link in (parsed.get("feed") or {}).get("links") or [] if isinstance(link, dict)]
    for rel in OLDER_RELS:
        for link in links:
            href = link.get("href")
            if link.get("rel") == rel and isinstance(href, str) and href.startswith(("http://", "https://")):
                return href
    return ""


def _reached(done: Any, since: datetime) -> bool:
    """Whether a finished walk (`backfilled_since`, ISO) already reaches back to `since`."""
    try:
        return isinstance(done, str) and parse_timestamp(done, field_name="backfilled_since") <= since
    except ValueError:
        return False


def _no_history(oldest: str) -> str:
    held = f"back to {oldest}" if oldest else "none at the moment"
    return (f"the feed holds only its latest entries ({held}) and has no RFC 5005 links to older ones "
            '(rel="next" or rel="prev-archive"): comments before that cannot be backfilled from it')


def build(config, *, client: HttpClient, now: Callable[[], datetime], store=None) -> FeedConnector:
    return FeedConnector(url=config.base_url, hashtags=list(config.hashtags), client=client, now=now)
