"""Bluesky: `app.bsky.feed.searchPosts` with `q=#<tag>` and `sort=latest`, newest first.

- `config.base_url` is the XRPC host: `https://public.api.bsky.app` (the public AppView) for anonymous
  search, `https://bsky.social` (the entryway, or the account's own PDS) with an app password.
- With BLUESKY_HANDLE / BLUESKY_APP_PASSWORD, `com.atproto.server.createSession` runs once per account
  and host; the session lives in `store` (Redis, shared by every worker process) until its refresh JWT
  expires, and `com.atproto.server.refreshSession` renews the access JWT. Never a login per request or
  per run: createSession is limited to 30 per 5 minutes and 300 (entryway: 100) per day per account.
- Without credentials the search is anonymous, best effort; a refusal (401/403) is NeedsCredentials.
- First run: the newest BACKFILL_PAGES pages. Later runs: `since=<newest sortAt seen>` (inclusive), paged
  with the API `cursor` down to it, at most MAX_PAGES_PER_RUN pages; an unfinished walk is kept in the
  source's cursor and resumed by the next run, so a busy tag leaves no gap.
- Search matches words, so the tag is verified locally: a `app.bsky.richtext.facet#tag` facet or the
  record's `tags`, casefolded. A post that only mentions the word is not stored.
- `RateLimit-Remaining` / `RateLimit-Reset` (epoch seconds) and `Retry-After` are honoured; the reset is
  kept in `store` so no source of the same host sends a request before it.
- `backfill`: searchPosts with `since` and `until` (the oldest post walked), MAX_BACKFILL_PAGES pages per
  tag per call, resumed from the tag's `backfill_until`. `recheck`: `app.bsky.feed.getPosts`,
  GET_POSTS_BATCH URIs per request; a URI it leaves out is deleted or taken down.
"""

from __future__ import annotations

import base64
import dataclasses
import html as html_lib
import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

import requests

from .base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NeedsCredentials,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    RateLimited,
    Recheck,
    RejectedRaw,
    SourceConfig,
    TokenStore,
    check_status,
    json_body,
    normalise_tag,
    parse_timestamp,
    retry_after,
    sanitise_html,
)

PLATFORM = "bluesky"
SEARCH_POSTS = "app.bsky.feed.searchPosts"
GET_POSTS = "app.bsky.feed.getPosts"
CREATE_SESSION = "com.atproto.server.createSession"
REFRESH_SESSION = "com.atproto.server.refreshSession"
POST_COLLECTION = "app.bsky.feed.post"
TAG_FEATURE = "app.bsky.richtext.facet#tag"
LINK_FEATURE = "app.bsky.richtext.facet#link"
MENTION_FEATURE = "app.bsky.richtext.facet#mention"
WEB_APP = "https://bsky.app"

# searchPosts' largest page.
PAGE_LIMIT = 100
# One run reads at most this many pages per tag (1,000 posts) so a busy tag cannot hold a worker; an
# unfinished walk is saved in the cursor and the next run carries on from it.
MAX_PAGES_PER_RUN = 10
# How far the first run of a new source reaches back (500 posts).
BACKFILL_PAGES = 5
# `collect --backfill` reads at most this many pages per tag per call (10,000 posts); a later call resumes.
MAX_BACKFILL_PAGES = 100
# A resumed backfill asks for posts before the oldest one walked plus this: `until` is not inclusive, so
# posts sharing that millisecond are read again (and stored once) rather than skipped.
UNTIL_OVERLAP = timedelta(milliseconds=1)
# getPosts' lexicon allows at most 25 `uris` per request.
GET_POSTS_BATCH = 25
# The tag cursor's keys that polling owns; the others (the backfill's) are kept as they are by fetch.
POLLING_KEYS = ("newest", "walk")
# A token this close to its expiry is renewed before use rather than sent and refused.
TOKEN_MARGIN = timedelta(seconds=60)
# When a JWT's `exp` cannot be read: assume a short-lived access token (the PDS issues 2 hours) and
# keep the session one day (refresh JWTs last far longer; a new login once a day is well in budget).
FALLBACK_ACCESS_LIFETIME = timedelta(minutes=15)
FALLBACK_REFRESH_LIFETIME = timedelta(days=1)
# A 429 or a spent budget without a usable reset header waits this long.
FALLBACK_RATE_LIMIT_WAIT = timedelta(seconds=60)
# Timestamps this far in the future are clock skew at most (Bluesky's own recommendation is 2 minutes);
# anything later is not trusted as the newest post seen, or `since` would skip real posts.
CLOCK_SKEW = timedelta(minutes=2)
# The Post and Author columns these values go into.
MAX_URI_CHARS = 2048
MAX_TAG_CHARS = 200
MAX_COUNT = 2**31 - 1
# XRPC error names that mean "log in" rather than "this request is wrong".
AUTH_ERRORS = {"AuthMissing", "AuthRequired", "AuthenticationRequired", "InvalidToken", "ExpiredToken"}
AUTH_MODES = ("auto", "anonymous", "required")


# --- parsing ---------------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return min(max(0, value), MAX_COUNT)


def _contains_nul(value: Any, depth: int = 0) -> bool:
    """PostgreSQL cannot store U+0000 in text or jsonb; such an item is rejected, not stored."""
    if isinstance(value, str):
        return "\x00" in value
    if depth > 64:
        return False
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v, depth + 1) for v in value)
    return False


def _scrub_nul(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if depth > 64:
        return None
    if isinstance(value, dict):
        return {_scrub_nul(k): _scrub_nul(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_nul(v, depth + 1) for v in value]
    return value


def unwrap_post(obj: Any) -> Any:
    """The PostView inside what a Bluesky API returns: a bare PostView (searchPosts), a FeedViewPost
    (`{post, reason}` for a repost, `{post, reply}`, `{post, ...}`) or a thread (`{thread: {post}}`)."""
    if isinstance(obj, dict) and isinstance(obj.get("thread"), dict):
        obj = obj["thread"]
    if isinstance(obj, dict) and isinstance(obj.get("post"), dict):
        return obj["post"]
    return obj


def post_hashtags(record: dict) -> tuple[str, ...]:
    """The post's tags, casefolded without '#': `#tag` facets and the record's out-of-text `tags`.

    Only the lexicon's `app.bsky.richtext.facet#tag` feature with a string `tag` counts; look-alike
    types that some clients write (`facet#hashtag`, `facet#Tag`, a `text` instead of a `tag`) are
    not tags to the Bluesky app either.
    """
    found: set[str] = set()
    facets = record.get("facets")
    for facet in facets if isinstance(facets, list) else []:
        features = facet.get("features") if isinstance(facet, dict) else None
        for feature in features if isinstance(features, list) else []:
            if isinstance(feature, dict) and feature.get("$type") == TAG_FEATURE and isinstance(feature.get("tag"), str):
                found.add(normalise_tag(feature["tag"]))
    tags = record.get("tags")
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, str):
            found.add(normalise_tag(tag))
    return tuple(sorted(tag for tag in found if tag and len(tag) <= MAX_TAG_CHARS))


def _facet_href(features: Any) -> str:
    for feature in features if isinstance(features, list) else []:
        if not isinstance(feature, dict):
            continue
        kind = feature.get("$type")
        if kind == LINK_FEATURE and isinstance(feature.get("uri"), str):
            # Only absolute web links; anything else stays plain text (the sanitiser would keep a
            # relative href such as '" onmouseover=...' as an inert but misleading link).
            uri = feature["uri"].strip()
            return uri if uri.lower().startswith(("https://", "http://")) else ""
        if kind == MENTION_FEATURE and isinstance(feature.get("did"), str):
            return f"{WEB_APP}/profile/{quote(feature['did'], safe=':')}"
        if kind == TAG_FEATURE and isinstance(feature.get("tag"), str):
            return f"{WEB_APP}/hashtag/{quote(feature['tag'], safe='')}"
    return ""


def _on_boundary(data: bytes, offset: int) -> bool:
    # A UTF-8 continuation byte is 0b10xxxxxx: an offset there would split a character.
    return offset == len(data) or (data[offset] & 0xC0) != 0x80


def _text_html(text: str) -> str:
    return html_lib.escape(text, quote=False).replace("\n", "<br>")


def render_html(text: str, facets: Any) -> str:
    """The post's text as HTML, with its link, mention and tag facets as links.

    Facet ranges are byte offsets into the UTF-8 encoding of the text (start inclusive, end
    exclusive). As Bluesky advises renderers, facets are taken in order of their start and one that
    overlaps an earlier one is dropped; so is one outside the text or splitting a character.
    """
    if not text:
        return ""
    data = text.encode("utf-8")
    spans: list[tuple[int, int, str]] = []
    for facet in facets if isinstance(facets, list) else []:
        index = facet.get("index") if isinstance(facet, dict) else None
        if not isinstance(index, dict):
            continue
        start, end = index.get("byteStart"), index.get("byteEnd")
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (start, end)):
            continue
        if not (0 <= start < end <= len(data)) or not (_on_boundary(data, start) and _on_boundary(data, end)):
            continue
        href = _facet_href(facet.get("features"))
        if href:
            spans.append((start, end, href))
    parts, position = [], 0
    for start, end, href in sorted(spans):
        if start < position:
            continue
        parts.append(_text_html(data[position:start].decode("utf-8")))
        parts.append(f'<a href="{html_lib.escape(href, quote=True)}">{_text_html(data[start:end].decode("utf-8"))}</a>')
        position = end
    parts.append(_text_html(data[position:].decode("utf-8")))
    return sanitise_html("<p>" + "".join(parts) + "</p>")


def _split_at_uri(uri: str) -> tuple[str, str, str] | None:
    """(authority, collection, rkey) of `at://<did>/<collection>/<rkey>`, else None."""
    if not uri.startswith("at://"):
        return None
    parts = uri[len("at://"):].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def _usable_handle(handle: Any) -> str:
    # "handle.invalid" is what the AppView shows when a handle no longer resolves to its DID.
    if isinstance(handle, str) and handle and handle != "handle.invalid" and "/" not in handle:
        return handle
    return ""


def _author(author: dict) -> NormalisedAuthor:
    did = author["did"]
    handle = _usable_handle(author.get("handle"))
    display_name = author.get("displayName")
    return NormalisedAuthor(
        external_id=did,
        handle=f"@{handle}"[:300] if handle else "",
        display_name=display_name[:300] if isinstance(display_name, str) else "",
        url=f"{WEB_APP}/profile/{quote(handle or did, safe=':')}",
    )


def _reply_parent(record: dict) -> str:
    reply = record.get("reply")
    parent = reply.get("parent") if isinstance(reply, dict) else None
    uri = parent.get("uri") if isinstance(parent, dict) else None
    if isinstance(uri, str) and _split_at_uri(uri) and len(uri) <= MAX_URI_CHARS:
        return uri
    return ""


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """One Bluesky post as a NormalisedItem; RejectedRaw when unusable; None when it lacks every tag.

    `obj` is a PostView, a FeedViewPost wrapper or a thread view, as the API returns them. `hashtags`
    are the tracked tags (as written); an empty tuple keeps every post (a file import of known posts).
    """
    tag_keys = {normalise_tag(tag) for tag in hashtags} - {""}
    post = unwrap_post(obj)
    if not isinstance(post, dict):
        return RejectedRaw(reason="post is not a JSON object", raw=obj)
    uri = post.get("uri")
    parts = _split_at_uri(uri) if isinstance(uri, str) else None
    if parts is None or len(uri) > MAX_URI_CHARS:
        return RejectedRaw(reason="post has no at:// uri", raw=obj)
    if parts[1] != POST_COLLECTION:
        return RejectedRaw(reason=f"not an {POST_COLLECTION} record: {uri}", raw=obj, external_id=uri)
    if _contains_nul(post):
        return RejectedRaw(reason="post contains a NUL character (U+0000), which cannot be stored",
                           raw=_scrub_nul(post), external_id=uri)
    record = post.get("record")
    if not isinstance(record, dict):
        return RejectedRaw(reason="post has no record object", raw=post, external_id=uri)
    author = post.get("author")
    if not isinstance(author, dict) or not isinstance(author.get("did"), str) or not author["did"].startswith("did:"):
        return RejectedRaw(reason="post has no author did", raw=post, external_id=uri)
    keys = post_hashtags(record)
    if tag_keys and not tag_keys & set(keys):
        return None
    try:
        created_at = parse_timestamp(record.get("createdAt"), field_name="record.createdAt")
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=post, external_id=uri)
    text = record.get("text", "")
    if not isinstance(text, str):
        return RejectedRaw(reason="record.text is not a string", raw=post, external_id=uri)
    if len(text) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"text of {len(text)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=post, external_id=uri)
    html = render_html(text, record.get("facets"))
    if len(html) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"HTML of {len(html)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=post, external_id=uri)
    langs = record.get("langs")
    language = langs[0] if isinstance(langs, list) and langs and isinstance(langs[0], str) else ""
    parent = _reply_parent(record)
    handle = _usable_handle(author.get("handle"))
    return NormalisedItem(
        platform=PLATFORM,
        external_id=uri,
        uri=uri,
        url=f"{WEB_APP}/profile/{quote(handle or parts[0], safe=':')}/post/{quote(parts[2], safe='')}",
        kind="comment" if parent else "post",
        author=_author(author),
        created_at=created_at,
        language=language[:16],
        html=html,
        text=text,
        hashtags=keys,
        reply_to_external_id=parent,
        reply_count=_count(post.get("replyCount")),
        repost_count=_count(post.get("repostCount")),
        like_count=_count(post.get("likeCount")),
        raw=post,
    )


def sort_at(obj: Any) -> datetime | None:
    """The time searchPosts sorts and filters `since` by: the earlier of createdAt and indexedAt
    (a post dated in the future sorts at its indexing time). None when neither parses."""
    post = unwrap_post(obj)
    if not isinstance(post, dict):
        return None
    record = post.get("record") if isinstance(post.get("record"), dict) else {}
    times = []
    for value, name in ((record.get("createdAt"), "createdAt"), (post.get("indexedAt"), "indexedAt")):
        try:
            times.append(parse_timestamp(value, field_name=name))
        except ValueError:
            pass
    return min(times) if times else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_saved(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value, field_name="cursor")
    except ValueError:
        return None


# --- XRPC with the shared rate-limit budget --------------------------------------------------------


class _MemoryStore:
    """A TokenStore for a connector built without one (a one-off script): this process only."""

    def __init__(self):
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any, *, ttl: int) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def _xrpc_error(response: requests.Response) -> tuple[str, str]:
    """(error, message) of an XRPC error body, or ("", "") when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    error, message = body.get("error"), body.get("message")
    return (error if isinstance(error, str) else "")[:100], (message if isinstance(message, str) else "")[:300]


def _describe(response: requests.Response) -> str:
    error, message = _xrpc_error(response)
    detail = ": ".join(part for part in (error, message) if part)
    return f"{response.status_code} {detail}" if detail else str(response.status_code)


class Xrpc:
    """Calls to one XRPC host. Before each request it checks the host's rate-limit reset saved in the
    store (by any worker), and it saves the reset when a response says the budget is spent."""

    def __init__(self, *, base_url: str, client: HttpClient, now: Callable[[], datetime], store: TokenStore):
        self.base_url = base_url.rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.client = client
        self.now = now
        self.store = store
        self.blocked_key = f"bluesky:rate-limited:{self.host}"

    def url(self, method: str) -> str:
        return f"{self.base_url}/xrpc/{method}"

    def reset(self, response: requests.Response) -> datetime | None:
        value = (response.headers.get("RateLimit-Reset") or "").strip()
        if not value.isdigit():
            return None
        seconds = int(value)
        try:
            if seconds < 1_000_000_000:
                # A delta in seconds (the IETF draft's meaning) rather than Bluesky's epoch seconds.
                return self.now() + timedelta(seconds=seconds)
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None

    def remaining(self, response: requests.Response) -> int | None:
        value = (response.headers.get("RateLimit-Remaining") or "").strip()
        return int(value) if value.isdigit() else None

    def blocked_until(self) -> datetime | None:
        saved = self.store.get(self.blocked_key)
        if not isinstance(saved, (int, float)) or isinstance(saved, bool):
            return None
        try:
            until = datetime.fromtimestamp(saved, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
        return until if until > self.now() else None

    def block(self, until: datetime) -> None:
        seconds = math.ceil((until - self.now()).total_seconds())
        if seconds > 0:
            self.store.set(self.blocked_key, until.timestamp(), ttl=seconds + 1)

    def call(self, http_method: str, method: str, *, params: dict | None = None, json_body: Any = None,
             token: str = "") -> requests.Response:
        until = self.blocked_until()
        if until is not None:
            raise RateLimited(f"{self.host} rate limit spent; no request before {until.isoformat()}", until=until)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if http_method == "GET":
            response = self.client.get(self.url(method), params=params, headers=headers)
        else:
            response = self.client.post(self.url(method), json=json_body, headers=headers)
        now = self.now()
        if response.status_code == 429:
            until = retry_after(response.headers.get("Retry-After"), now=now) or self.reset(response)
            until = max(until or now + FALLBACK_RATE_LIMIT_WAIT, now)
            self.block(until)
            raise RateLimited(f"rate-limited (429) by {self.host} until {until.isoformat()}", until=until)
        if self.remaining(response) == 0:
            self.block(self.reset(response) or now + FALLBACK_RATE_LIMIT_WAIT)
        return response


# --- the app-password session -----------------------------------------------------------------------


def jwt_expiry(token: str) -> datetime | None:
    """The `exp` claim of a JWT, read without verifying it (only to know when to renew it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            return None
        return datetime.fromtimestamp(exp, tz=timezone.utc)
    except (IndexError, KeyError, TypeError, ValueError, OverflowError, OSError):
        return None


def _redacted(body: Any) -> Any:
    # A session body is never kept with its tokens, not even in a rejected item.
    if isinstance(body, dict):
        return {k: "REDACTED" if "jwt" in str(k).lower() or "token" in str(k).lower() else v for k, v in body.items()}
    return body


class AppPasswordSession:
    """One login per account and host, shared by every worker through the store.

    createSession runs only when there is no saved session or its refresh JWT is spent; an access JWT
    near its expiry (or refused by the server as expired) is renewed with refreshSession.
    """

    def __init__(self, *, xrpc: Xrpc, handle: str, app_password: str):
        self.xrpc = xrpc
        self.handle = handle
        self.app_password = app_password
        self.key = f"bluesky:session:{xrpc.host}:{handle.casefold()}"

    def _load(self) -> dict | None:
        saved = self.xrpc.store.get(self.key)
        if isinstance(saved, dict) and all(isinstance(saved.get(k), str) for k in ("access", "refresh")) and all(
            isinstance(saved.get(k), (int, float)) for k in ("access_expires", "refresh_expires")
        ):
            return saved
        return None

    def access_token(self) -> str:
        saved = self._load()
        now = (self.xrpc.now() + TOKEN_MARGIN).timestamp()
        if saved and saved["access_expires"] > now:
            return saved["access"]
        if saved and saved["refresh_expires"] > now:
            return self._refresh(saved)
        return self._create()

    def replace(self, refused: str) -> str:
        """The server refused the access token `refused`: a renewed one (refreshed once, or logged in)."""
        saved = self._load()
        if saved and saved["access"] != refused:
            return saved["access"]  # another worker renewed it meanwhile
        if saved:
            return self._refresh(saved)
        return self._create()

    def _create(self) -> str:
        response = self.xrpc.call("POST", CREATE_SESSION,
                                  json_body={"identifier": self.handle, "password": self.app_password})
        status = response.status_code
        if status in (404, 501):
            raise PermanentError(
                f"{self.xrpc.host} does not offer {CREATE_SESSION} ({status}): with BLUESKY_HANDLE set, register "
                "the source at the account's PDS (https://bsky.social), or set --option auth=anonymous"
            )
        if status in (400, 401, 403):
            raise NeedsCredentials(
                f"Bluesky refused the login of {self.handle} at {self.xrpc.host} ({_describe(response)}); "
                "check BLUESKY_HANDLE and BLUESKY_APP_PASSWORD (an app password, not the account password)"
            )
        check_status(response, now=self.xrpc.now(), reset=self.xrpc.reset)
        return self._save(json_body(response), CREATE_SESSION)

    def _refresh(self, saved: dict) -> str:
        response = self.xrpc.call("POST", REFRESH_SESSION, token=saved["refresh"])
        if response.status_code in (400, 401):
            # Expired, revoked, or already rotated by another worker (refresh JWTs are single-use).
            latest = self._load()
            if latest and latest["refresh"] != saved["refresh"]:
                return latest["access"]
            self.xrpc.store.delete(self.key)
            return self._create()
        check_status(response, now=self.xrpc.now(), reset=self.xrpc.reset)
        return self._save(json_body(response), REFRESH_SESSION)

    def _save(self, body: Any, method: str) -> str:
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) and body[k] for k in ("accessJwt", "refreshJwt")):
            raise MalformedResponse(f"expected accessJwt and refreshJwt from {method}", raw=_redacted(body))
        if body.get("active") is False:
            raise NeedsCredentials(f"the Bluesky account {self.handle} is {body.get('status') or 'not active'}")
        now = self.xrpc.now()
        access_expires = jwt_expiry(body["accessJwt"]) or now + FALLBACK_ACCESS_LIFETIME
        refresh_expires = jwt_expiry(body["refreshJwt"]) or now + FALLBACK_REFRESH_LIFETIME
        ttl = math.ceil((refresh_expires - now).total_seconds())
        if ttl > 0:
            self.xrpc.store.set(self.key, {
                "access": body["accessJwt"], "refresh": body["refreshJwt"],
                "access_expires": access_expires.timestamp(), "refresh_expires": refresh_expires.timestamp(),
                "did": body.get("did") if isinstance(body.get("did"), str) else "",
            }, ttl=ttl)
        return body["accessJwt"]


# --- the connector ----------------------------------------------------------------------------------


class _StaleCursor(Exception):
    """A resumed API cursor was refused (400): the walk starts again from the newest post."""


class BlueskyConnector:
    platform = PLATFORM

    def __init__(self, *, xrpc: Xrpc, hashtags: list[str], session: AppPasswordSession | None,
                 needs_login: bool = False):
        self.xrpc = xrpc
        self.tags = {normalise_tag(tag): tag.strip().lstrip("#") for tag in hashtags if normalise_tag(tag)}
        self.session = session
        self.needs_login = needs_login

    def _require_login(self) -> None:
        if self.session is None and self.needs_login:
            raise NeedsCredentials("this Bluesky source is set to auth=required: set BLUESKY_HANDLE and "
                                   "BLUESKY_APP_PASSWORD")

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Pages for each hashtag; each page's `cursor` is the whole source cursor once it is stored."""
        self._require_login()
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag_key, tag in self.tags.items():
            state = cursor.get(tag_key, {})
            kept = {key: value for key, value in state.items() if key not in POLLING_KEYS}  # the backfill's
            for page in self._fetch_tag(tag_key, tag, state):
                cursor[tag_key] = {**kept, **page.cursor}
                page.cursor = {key: dict(value) for key, value in cursor.items()}
                yield page
                if page.rate_limited_until:
                    return

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Walk each tag back to `since` with searchPosts (`since`, and `until` = the oldest post walked),
        at most MAX_BACKFILL_PAGES pages per tag per call. Posts older than `since` are not yielded.

        The polling keys of the cursor are kept as they are; the walk's position is saved in the tag's
        `backfill_until` (the next `until` to ask for), so a later call resumes there, and a finished walk
        is marked `backfilled_since` and not repeated for that date or a later one.
        """
        self._require_login()
        since = since.astimezone(timezone.utc)
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag_key, tag in self.tags.items():
            state = cursor.setdefault(tag_key, {})
            finished = _parse_saved(state.get("backfilled_since"))
            if finished is not None and finished <= since:
                continue
            until = _parse_saved(state.get("backfill_until"))
            if until is not None and until <= since:
                # An earlier, deeper walk already passed `since`: nothing left to ask for.
                state["backfilled_since"] = _iso(since)
                continue
            for page in self._backfill_tag(tag_key, tag, since=since, until=until, state=state):
                page.cursor = {key: dict(value) for key, value in cursor.items()}
                yield page
                if page.rate_limited_until:
                    return

    def _backfill_tag(self, tag_key: str, tag: str, *, since: datetime, until: datetime | None,
                      state: dict) -> Iterator[Page]:
        """One tag's walk; `state` (the tag's cursor entry) is updated before each page is yielded."""
        api_cursor, restarted = None, False
        for _ in range(MAX_BACKFILL_PAGES):
            try:
                page, posts, next_cursor = self._search(tag_key, tag, since=since, until=until,
                                                        api_cursor=api_cursor)
            except _StaleCursor:
                if restarted:
                    raise PermanentError(f"{self.xrpc.host} refused the search for #{tag} (400)") from None
                # Start a new search below the oldest post walked so far (saved in the state).
                restarted, api_cursor = True, None
                until = _parse_saved(state.get("backfill_until")) or until
                continue
            times = [moment for moment in map(sort_at, posts) if moment is not None]
            page.items = [item for item in page.items if item.created_at >= since]
            if times:
                resume_at = min(times) + UNTIL_OVERLAP
                saved = _parse_saved(state.get("backfill_until"))
                state["backfill_until"] = _iso(min(resume_at, saved) if saved else resume_at)
            done = (
                not posts or not next_cursor or next_cursor == api_cursor
                # An upstream that ignores `since` would page back forever: stop once past it.
                or (bool(times) and min(times) < since)
            )
            if done:
                # Everything from the newest post down to `since` (inclusive) has been walked.
                state["backfill_until"] = _iso(since)
                state["backfilled_since"] = _iso(since)
            yield page
            if done or page.rate_limited_until:
                return
            api_cursor = next_cursor

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Look stored posts up again with getPosts, GET_POSTS_BATCH URIs per request.

        A post getPosts returns comes back as an item, normalised as in fetch; its hashtags are its current
        ones plus the tracked tags of the stored copy (see `_with_stored_tags`), so removing the tag facet
        is recorded as an edit, not a reason to drop the post. A URI getPosts leaves out is reported
        deleted (the AppView returns every post it can show; a deleted or taken-down one is left out).
        May raise RateLimited, NeedsCredentials, TemporaryError, MalformedResponse, PermanentError.
        """
        self._require_login()
        wanted: dict[str, Any] = {}
        for external_id, raw in posts:
            parts = _split_at_uri(external_id) if isinstance(external_id, str) else None
            if parts is None or parts[1] != POST_COLLECTION or len(external_id) > MAX_URI_CHARS:
                yield Recheck(external_id=external_id, error=f"not the at:// URI of an {POST_COLLECTION} record")
            else:
                wanted.setdefault(external_id, raw)
        pending = list(wanted.items())
        for start in range(0, len(pending), GET_POSTS_BATCH):
            yield from self._recheck_batch(pending[start:start + GET_POSTS_BATCH])

    def _recheck_batch(self, batch: list[tuple[str, Any]]) -> Iterator[Recheck]:
        uris = [external_id for external_id, _raw in batch]
        response, token = self._call(GET_POSTS, {"uris": uris})
        error, _message = _xrpc_error(response)
        if response.status_code == 400 and error not in AUTH_ERRORS:
            for uri in uris:
                yield Recheck(external_id=uri, error=f"{self.xrpc.host} refused {GET_POSTS} ({_describe(response)})")
            return
        self._check(response, method=GET_POSTS, authenticated=bool(token), resumed=False)
        body = json_body(response)
        found = body.get("posts") if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise MalformedResponse(f"expected an object with a posts list from {GET_POSTS} at {self.xrpc.host}",
                                    raw=body)
        by_uri: dict[str, Any] = {}
        for obj in found:
            post = unwrap_post(obj)
            if isinstance(post, dict) and isinstance(post.get("uri"), str):
                by_uri.setdefault(post["uri"], obj)
        missing = f"not returned by {GET_POSTS} at {self.xrpc.host}: deleted by its author or taken down"
        if token:  # the AppView also leaves out posts hidden from the viewer by a block
            missing += f" (or hidden from @{self.session.handle} by a block)"
        for external_id, raw in batch:
            obj = by_uri.get(external_id)
            if obj is None:
                yield Recheck(external_id=external_id, deleted_reason=missing)
                continue
            result = normalise_native(obj, hashtags=())
            if isinstance(result, NormalisedItem):
                yield Recheck(external_id=external_id, item=self._with_stored_tags(result, raw))
            else:
                yield Recheck(external_id=external_id, error=result.reason)

    def _with_stored_tags(self, item: NormalisedItem, raw: Any) -> NormalisedItem:
        """The item with the tracked tags its stored copy carried, even if the author removed them since:
        the post was collected for them and stays listed under them (its old text is kept as a revision).
        A stored copy without any tracked tag (its tag already removed at an earlier re-check, which
        stored the new copy) keeps all of the source's tracked tags."""
        stored = unwrap_post(raw)
        record = stored.get("record") if isinstance(stored, dict) else None
        tracked = set(self.tags)
        kept = set(post_hashtags(record)) & tracked if isinstance(record, dict) else set()
        missing = (kept or tracked) - set(item.hashtags)
        if not missing:
            return item
        return dataclasses.replace(item, hashtags=tuple(sorted(set(item.hashtags) | missing)))

    def _fetch_tag(self, tag_key: str, tag: str, state: dict) -> Iterator[Page]:
        """One tag: `state` is {"newest": ISO sortAt} plus, while a walk is unfinished, {"walk": {"cursor":
        the API cursor, "newest": newest sortAt of the walk, "pages_left": pages left of a backfill}}."""
        since = _parse_saved(state.get("newest"))
        walk = state.get("walk") if isinstance(state.get("walk"), dict) else {}
        api_cursor = walk.get("cursor") if isinstance(walk.get("cursor"), str) else None
        walk_newest = _parse_saved(walk.get("newest"))
        pages_left = walk.get("pages_left") if isinstance(walk.get("pages_left"), int) else None
        if since is None and pages_left is None:
            pages_left = BACKFILL_PAGES
        restarted = False
        for _ in range(MAX_PAGES_PER_RUN):
            try:
                page, posts, next_cursor = self._search(tag_key, tag, since=since, api_cursor=api_cursor)
            except _StaleCursor:
                if restarted:
                    raise PermanentError(f"{self.xrpc.host} refused the search for #{tag} (400)") from None
                restarted, api_cursor = True, None
                continue
            skew_limit = self.xrpc.now() + CLOCK_SKEW
            times = [moment for moment in map(sort_at, posts) if moment is not None and moment <= skew_limit]
            if times:
                walk_newest = max([walk_newest, *times] if walk_newest else times)
            if pages_left is not None:
                pages_left -= 1
            done = (
                not posts or not next_cursor or next_cursor == api_cursor
                or (pages_left is not None and pages_left <= 0)
                # An upstream that ignores `since` would page back forever: stop below the watermark.
                or (since is not None and times and max(times) < since)
            )
            newest = max(moment for moment in (since, walk_newest) if moment) if (since or walk_newest) else None
            if done:
                page.cursor = {"newest": _iso(newest)} if newest else {}
            else:
                unfinished = {"cursor": next_cursor}
                if walk_newest:
                    unfinished["newest"] = _iso(walk_newest)
                if pages_left is not None:
                    unfinished["pages_left"] = pages_left
                page.cursor = {"walk": unfinished, **({"newest": _iso(since)} if since else {})}
            yield page
            if done or page.rate_limited_until:
                return
            api_cursor = next_cursor

    def _call(self, method: str, params: dict) -> tuple[requests.Response, str]:
        """A GET with the session's access token (renewed once when refused), or anonymous without one."""
        token = self.session.access_token() if self.session else ""
        response = self.xrpc.call("GET", method, params=params, token=token)
        if token and self._token_refused(response):
            token = self.session.replace(token)
            response = self.xrpc.call("GET", method, params=params, token=token)
        return response, token

    def _search(self, tag_key: str, tag: str, *, since: datetime | None, api_cursor: str | None,
                until: datetime | None = None) -> tuple[Page, list, str | None]:
        params: dict = {"q": f"#{tag}", "sort": "latest", "limit": PAGE_LIMIT}
        if since is not None:
            params["since"] = _iso(since)
        if until is not None:
            params["until"] = _iso(until)
        if api_cursor:
            params["cursor"] = api_cursor
        response, token = self._call(SEARCH_POSTS, params)
        self._check(response, method=SEARCH_POSTS, authenticated=bool(token), resumed=bool(api_cursor))
        page = Page(health_detail={"auth": f"app password of @{self.session.handle}" if token else "anonymous"})
        remaining = self.xrpc.remaining(response)
        if remaining is not None:
            page.health_detail["rate_limit_remaining"] = remaining
            if remaining == 0:
                page.rate_limited_until = self.xrpc.blocked_until() or self.xrpc.now() + FALLBACK_RATE_LIMIT_WAIT
        body = json_body(response)
        posts = body.get("posts") if isinstance(body, dict) else None
        if not isinstance(posts, list):
            raise MalformedResponse(f"expected an object with a posts list from {SEARCH_POSTS} at {self.xrpc.host}",
                                    raw=body)
        next_cursor = body.get("cursor")
        page.fetched = len(posts)
        for obj in posts:
            result = normalise_native(obj, hashtags=(tag_key,))
            if isinstance(result, NormalisedItem):
                page.items.append(result)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        return page, posts, next_cursor if isinstance(next_cursor, str) and next_cursor else None

    @staticmethod
    def _token_refused(response: requests.Response) -> bool:
        if response.status_code == 401:
            return True
        return response.status_code == 400 and _xrpc_error(response)[0] in ("ExpiredToken", "InvalidToken")

    def _check(self, response: requests.Response, *, method: str, authenticated: bool, resumed: bool) -> None:
        status = response.status_code
        error, _message = _xrpc_error(response)
        what = "search" if method == SEARCH_POSTS else method
        if status in (401, 403) or (status == 400 and error in AUTH_ERRORS):
            if authenticated:
                raise NeedsCredentials(
                    f"{self.xrpc.host} refused the session of {self.session.handle} ({_describe(response)}); "
                    "check BLUESKY_HANDLE and BLUESKY_APP_PASSWORD"
                )
            raise NeedsCredentials(
                f"{self.xrpc.host} refused anonymous {what} ({_describe(response)}); set BLUESKY_HANDLE and "
                "BLUESKY_APP_PASSWORD and register the source at https://bsky.social"
            )
        if status == 400 and resumed:
            raise _StaleCursor()
        if status == 400:
            raise PermanentError(f"{self.xrpc.host} refused the {what} ({_describe(response)})")
        if status in (404, 501):
            raise PermanentError(
                f"{self.xrpc.host} does not serve {method} ({status}): register an XRPC host such as "
                "https://public.api.bsky.app or https://bsky.social"
            )
        check_status(response, now=self.xrpc.now(), reset=self.xrpc.reset)


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime],
          store: TokenStore | None = None) -> BlueskyConnector:
    """A connector for one source. Raises PermanentError for an unknown `auth` option and
    NeedsCredentials when only one of the two credentials is set."""
    auth = str(config.options.get("auth", "auto")).strip().lower()
    if auth not in AUTH_MODES:
        raise PermanentError(f"unknown Bluesky option auth={auth!r}; one of: {', '.join(AUTH_MODES)}")
    xrpc = Xrpc(base_url=config.base_url, client=client, now=now, store=store if store is not None else _MemoryStore())
    handle = str(config.credentials.get("handle") or "").strip().lstrip("@")
    app_password = str(config.credentials.get("app_password") or "")
    session = None
    if auth != "anonymous" and (handle or app_password):
        if not (handle and app_password):
            missing = "BLUESKY_APP_PASSWORD" if handle else "BLUESKY_HANDLE"
            raise NeedsCredentials(f"BLUESKY_HANDLE and BLUESKY_APP_PASSWORD go together: set {missing} too")
        session = AppPasswordSession(xrpc=xrpc, handle=handle, app_password=app_password)
    return BlueskyConnector(xrpc=xrpc, hashtags=list(config.hashtags), session=session,
                            needs_login=auth == "required")
