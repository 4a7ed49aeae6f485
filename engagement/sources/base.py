"""What every connector shares: the normalised item, the errors, HTTP with limits, HTML and dates.

Connectors import neither Django models nor Celery: they turn upstream pages into `Page`s of plain
dataclasses, and `engagement/collect.py` stores them.
"""

from __future__ import annotations

import email.utils
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urljoin, urlsplit

import nh3
import requests

# A page bigger than this is refused rather than read into memory (a tag timeline page is ~100 KB).
MAX_RESPONSE_BYTES = 5 * 1024 * 1024
# An item whose HTML is longer than this is kept raw with a reason instead of stored (Mastodon's
# default limit is 500 characters; 100,000 leaves room for any instance setting or long comment).
MAX_ITEM_HTML_CHARS = 100_000
MAX_REDIRECTS = 5


def normalise_tag(tag: str) -> str:
    """The key a hashtag is compared by: no leading '#', Unicode casefolded (servers normalise case)."""
    return tag.strip().lstrip("#").casefold()


# Counts are stored in PositiveIntegerField columns.
MAX_COUNT = 2**31 - 1
# A `#tag` in plain text: not inside a word, not `##`, not an HTML entity (`&#39;`).
HASHTAG = re.compile(r"(?<![\w#&])#(\w+)")


def count_value(value: Any) -> int:
    """An engagement count from upstream data: a whole number from 0 to MAX_COUNT, else 0."""
    if isinstance(value, bool):
        return 0
    try:
        return min(max(0, int(value or 0)), MAX_COUNT)
    except (TypeError, ValueError, OverflowError):
        return 0


def hashtags_in(text: str) -> set[str]:
    """`#tag` words of a plain text, casefolded; all-digit words (#1) are not tags."""
    return {normalise_tag(word) for word in HASHTAG.findall(text) if not word.isdigit()}


# --- normalised items ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NormalisedAuthor:
    external_id: str
    handle: str = ""
    display_name: str = ""
    url: str = ""


@dataclass(frozen=True)
class NormalisedArticle:
    """The article a comment belongs to (WordPress, comment feeds, Disqus); `url` identifies it."""

    url: str
    title: str = ""
    published_at: datetime | None = None
    external_id: str = ""


@dataclass(frozen=True)
class NormalisedItem:
    platform: str
    external_id: str
    created_at: datetime
    raw: dict
    uri: str = ""
    url: str = ""
    kind: str = "post"
    author: NormalisedAuthor | None = None
    edited_at: datetime | None = None
    language: str = ""
    html: str = ""
    text: str = ""
    hashtags: tuple[str, ...] = ()
    # The parent's external_id (same platform) when the platform gives a global one; linked on store.
    reply_to_external_id: str = ""
    article: NormalisedArticle | None = None
    reply_count: int = 0
    repost_count: int = 0
    like_count: int = 0


@dataclass(frozen=True)
class RejectedRaw:
    """An item (or a whole page) that could not be normalised, as received, with the reason."""

    reason: str
    raw: Any
    external_id: str = ""


@dataclass
class Page:
    items: list[NormalisedItem] = field(default_factory=list)
    rejected: list[RejectedRaw] = field(default_factory=list)
    fetched: int = 0
    # The source's cursor once this page is stored; collection saves it after the page's rows.
    cursor: dict = field(default_factory=dict)
    # Set when the upstream said its budget is spent: collection stops and waits until then.
    rate_limited_until: datetime | None = None
    # Facts shown with the source's health, merged into Source.health_detail (e.g. {"quota_left": 9400}).
    health_detail: dict = field(default_factory=dict)
    # Something the run should say without failing (e.g. "the feed holds only its latest entries").
    note: str = ""


@dataclass(frozen=True)
class Recheck:
    """What a second look at a stored item found: its current version, its deletion, or an error."""

    external_id: str
    item: NormalisedItem | None = None
    deleted_reason: str = ""
    error: str = ""


@dataclass(frozen=True)
class SourceConfig:
    """What a connector knows of its source: plain values, no ORM."""

    platform: str
    base_url: str
    hashtags: tuple[str, ...]
    options: dict = field(default_factory=dict)  # Source.settings: platform-specific options
    credentials: dict = field(default_factory=dict)  # from the environment, e.g. {"api_key": ...}


class TokenStore(Protocol):
    """Shared, expiring storage for things like login sessions (kept in Redis by collect.py)."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any, *, ttl: int) -> None: ...

    def delete(self, key: str) -> None: ...


class Connector(Protocol):
    """`fetch` is required. Optional: `backfill(*, since, cursor) -> Iterator[Page]` (walk back to a
    date without moving the polling cursor backwards) and `recheck(posts) -> Iterator[Recheck]` (look
    at stored items again for edits and deletions; `posts` are (external_id, raw) pairs)."""

    platform: str

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Yield pages from `cursor` onwards; bounded per call. May raise SourceError subclasses.

        Each page's `cursor` is the whole cursor to save once that page is stored, so a run that stops
        after any page resumes after it.
        """


# --- errors --------------------------------------------------------------------------------------


class SourceError(Exception):
    """A run of a source failed. The message is shown to operators as it is."""


class TemporaryError(SourceError):
    """Worth retrying later: a timeout, a refused connection, a 5xx."""


class RateLimited(SourceError):
    def __init__(self, message: str, *, until: datetime):
        super().__init__(message)
        self.until = until


class PermanentError(SourceError):
    """Retrying will not help until someone changes the source (401/403, a blocked URL, ...)."""


class BlockedUrl(PermanentError):
    pass


class NeedsCredentials(PermanentError):
    """The upstream wants credentials we do not have, or refused the ones we have."""


class MalformedResponse(SourceError):
    """The upstream answered with something we cannot read; `raw` keeps what it sent."""

    def __init__(self, message: str, *, raw: Any):
        super().__init__(message)
        self.raw = raw


# --- URLs ----------------------------------------------------------------------------------------


def check_url_allowed(url: str, *, allow_private: bool, unresolvable_ok: bool = False,
                      trusted_hosts: frozenset[str] = frozenset()) -> None:
    """Refuse URLs that are not http(s), or whose host resolves to a non-public address.

    Loopback, private, link-local (cloud metadata at 169.254.169.254), shared, reserved and
    IPv4-mapped forms of those are refused unless `allow_private` (ENGAGEMENT_ALLOW_PRIVATE_HOSTS).
    Raises BlockedUrl; TemporaryError when the host does not resolve, unless `unresolvable_ok`
    (registering a source offline: every request checks again before it goes out). Hosts named in
    `trusted_hosts` ("host" or "host:port", ENGAGEMENT_TRUSTED_HOSTS) pass, e.g. a newsroom's own
    WordPress on its private network.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BlockedUrl(f"only http and https URLs are allowed, not {url!r}")
    if not parts.hostname:
        raise BlockedUrl(f"the URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BlockedUrl(f"the URL {url!r} has a bad port") from None
    if allow_private or parts.hostname in trusted_hosts or f"{parts.hostname}:{port}" in trusted_hosts:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, ValueError) as exc:
        if unresolvable_ok:
            return
        raise TemporaryError(f"cannot resolve {parts.hostname}: {exc}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if not address.is_global or (mapped is not None and not mapped.is_global):
            raise BlockedUrl(
                f"{parts.hostname} resolves to the non-public address {address}; "
                "set ENGAGEMENT_ALLOW_PRIVATE_HOSTS=true to allow it"
            )


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float = 5
    read_timeout: float = 20
    user_agent: str = "engagement"
    allow_private: bool = False
    trusted_hosts: frozenset[str] = frozenset()
    max_bytes: int = MAX_RESPONSE_BYTES


class HttpClient:
    """requests with the limits every call needs: timeouts, a size cap, the URL guard on every hop.

    No retries here: retrying is the Celery task's job (with a countdown), never a sleep in a worker.
    """

    def __init__(self, http: HttpSettings, session: requests.Session | None = None):
        self.http = http
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = http.user_agent

    def get(self, url: str, *, params: dict | None = None, headers: dict | None = None) -> requests.Response:
        return self.request("GET", url, params=params, headers=headers)

    def post(self, url: str, *, json: Any = None, data: Any = None, headers: dict | None = None,
             auth: Any = None) -> requests.Response:
        """A POST (logins, token requests); redirects are not followed for it."""
        return self.request("POST", url, json=json, data=data, headers=headers, auth=auth)

    def request(self, method: str, url: str, *, params: dict | None = None, headers: dict | None = None,
                **kwargs) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            check_url_allowed(url, allow_private=self.http.allow_private, trusted_hosts=self.http.trusted_hosts)
            try:
                response = self.session.request(
                    method, url, params=params, headers=headers, stream=True, allow_redirects=False,
                    timeout=(self.http.connect_timeout, self.http.read_timeout), **kwargs,
                )
                if response.is_redirect and method == "GET":
                    url, params = urljoin(response.url, response.headers["Location"]), None
                    response.close()
                    continue
                self._read_capped(response)
            except requests.Timeout as exc:
                raise TemporaryError(f"timed out: {url}") from exc
            except requests.ConnectionError as exc:
                raise TemporaryError(f"cannot connect: {url} ({exc.__class__.__name__})") from exc
            return response
        raise PermanentError(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _read_capped(self, response: requests.Response) -> None:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.http.max_bytes:
            response.close()
            raise MalformedResponse(
                f"response of {declared} bytes is over the {self.http.max_bytes} byte cap: {response.url}",
                raw=None,
            )
        body = bytearray()
        for chunk in response.iter_content(64 * 1024):
            body.extend(chunk)
            if len(body) > self.http.max_bytes:
                response.close()
                raise MalformedResponse(
                    f"response is over the {self.http.max_bytes} byte cap: {response.url}",
                    raw=bytes(body[:2000]).decode("utf-8", "replace"),
                )
        response._content = bytes(body)  # requests' documented way to hold a streamed body


def retry_after(value: str | None, *, now: datetime) -> datetime | None:
    """Parse a Retry-After header: delay in seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + timedelta(seconds=int(value))
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def check_status(
    response: requests.Response, *, now: datetime, reset: Callable[[requests.Response], datetime | None]
) -> None:
    """Turn an error status into the matching SourceError. 404 is left to the connector."""
    status = response.status_code
    if status == 429:
        until = retry_after(response.headers.get("Retry-After"), now=now) or reset(response)
        until = max(until or now + timedelta(seconds=60), now)
        raise RateLimited(f"rate-limited (429) until {until.isoformat()}", until=until)
    if status >= 500:
        raise TemporaryError(f"upstream error {status} from {response.url}")
    if status in (401, 403):
        raise NeedsCredentials(f"access refused ({status}) by {response.url}: credentials or login needed")
    if status >= 400 and status != 404:
        raise PermanentError(f"upstream answered {status} for {response.url}")


def json_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise MalformedResponse(
            f"expected JSON from {response.url}, got {response.headers.get('Content-Type', 'no content type')}",
            raw=response.text[:10_000],
        ) from None


# --- dates ---------------------------------------------------------------------------------------


def parse_timestamp(value: Any, *, field_name: str) -> datetime:
    """An ISO 8601 timestamp as an aware UTC datetime. Raises ValueError naming the field."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name} is missing or not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field_name} is not an ISO 8601 timestamp: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


# --- HTML ----------------------------------------------------------------------------------------

ALLOWED_TAGS = {"p", "br", "a", "span", "em", "strong", "b", "i", "u", "s", "del", "blockquote", "code",
                "pre", "ul", "ol", "li"}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}}
ALLOWED_URL_SCHEMES = {"http", "https", "mailto"}


def sanitise_html(html: str) -> str:
    """Keep text structure and links; drop scripts, styles, event handlers and non-http(s) URLs."""
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_URL_SCHEMES,
        link_rel="nofollow noopener noreferrer",
    )


_BLOCK_TAGS = {"p", "div", "blockquote", "li", "pre", "ul", "ol"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(html: str) -> str:
    """Plain text of (already sanitised) HTML: entities decoded, paragraphs as blank lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()
