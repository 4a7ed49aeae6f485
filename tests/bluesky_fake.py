"""A Bluesky XRPC host served on 127.0.0.1, built from the documented lexicons (no recording covers
the HTTP side: ../shared/fixtures/bluesky/ holds post objects only).

Implements what the connector relies on:
- `GET /xrpc/app.bsky.feed.searchPosts`: `q` (a word or `#tag`, matched in the text and tags like the
  real search, so posts that only mention the word come back too), `sort=latest` (newest sortAt first),
  `since` (inclusive) and `until` (not inclusive), both on sortAt, `limit` (1..100, default 25),
  `cursor` (opaque; an offset here); answers `{"posts": [...], "cursor"?: ...}`.
- `GET /xrpc/app.bsky.feed.getPosts?uris=...&uris=...` (at most 25): `{"posts": [...]}` with the posts
  it has, in the order asked; a URI it does not have (deleted, taken down) is simply left out.
- `POST /xrpc/com.atproto.server.createSession` with `{"identifier", "password"}` and
  `POST /xrpc/com.atproto.server.refreshSession` with `Authorization: Bearer <refreshJwt>`: JWTs with an
  `exp` claim; refresh JWTs are single-use (rotated), as on the Bluesky PDS.
- Expired access JWTs are answered `400 {"error": "ExpiredToken"}`, unknown ones `401 InvalidToken`.
- `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` (epoch seconds) when a budget is set.

Everything is served through FakeUpstream's `routes` and `post_routes`; the handlers read the request's
headers, raw body and query string with `current_request()`, and the tests read FakeUpstream's records.
"""

from __future__ import annotations

import base64
import itertools
import json
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import parse_qs

from tests.upstream import FakeUpstream, Reply, Seen, current_request, current_request_headers

SEARCH_PATH = "/xrpc/app.bsky.feed.searchPosts"
GET_POSTS_PATH = "/xrpc/app.bsky.feed.getPosts"
GET_POSTS_MAX = 25  # the lexicon's maxLength of `uris`
CREATE_SESSION_PATH = "/xrpc/com.atproto.server.createSession"
REFRESH_SESSION_PATH = "/xrpc/com.atproto.server.refreshSession"
HANDLE = "collector.example.social"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
ACCOUNT_DID = "did:plc:collectoraccount0000000"


def utf8_facet(text: str, fragment: str, feature: dict) -> dict:
    """A facet over the first `fragment` in `text`, indexed in UTF-8 bytes as the lexicon says."""
    start = len(text[: text.index(fragment)].encode("utf-8"))
    return {"index": {"byteStart": start, "byteEnd": start + len(fragment.encode("utf-8"))}, "features": [feature]}


def tag_facet(text: str, tag: str) -> dict:
    return utf8_facet(text, f"#{tag}", {"$type": "app.bsky.richtext.facet#tag", "tag": tag})


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_post(n: int, *, tag: str | None = "UkrainePeaceTalks", text: str | None = None,
              created_at: datetime | str | None = None, indexed_at: datetime | str | None = None,
              reply_to: str | None = None, author: int | None = None, facet: bool = True) -> dict:
    """A PostView (app.bsky.feed.defs#postView) as searchPosts returns it. The text starts with
    non-ASCII characters so byte and character offsets differ."""
    did = f"did:plc:reader{(author if author is not None else n % 7):019d}"
    handle = f"reader{author if author is not None else n % 7}.bsky.social"
    created = created_at or datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=n)
    created_text = created if isinstance(created, str) else iso(created)
    indexed = indexed_at or (created + timedelta(milliseconds=400) if isinstance(created, datetime) else created)
    body = text if text is not None else f"Переговори ✌️ post {n} about the talks #{tag}"
    record: dict = {"$type": "app.bsky.feed.post", "createdAt": created_text, "langs": ["en"], "text": body}
    if tag and facet and f"#{tag}" in body:
        record["facets"] = [tag_facet(body, tag)]
    if reply_to:
        record["reply"] = {"root": {"uri": reply_to, "cid": "bafyroot"}, "parent": {"uri": reply_to, "cid": "bafyparent"}}
    return {
        "uri": f"at://{did}/app.bsky.feed.post/3post{n:08d}",
        "cid": f"bafyreipost{n:08d}",
        "author": {"did": did, "handle": handle, "displayName": f"Reader {n % 7}", "labels": [],
                   "createdAt": "2024-01-01T00:00:00.000Z"},
        "record": record,
        "replyCount": n % 3, "repostCount": n % 5, "likeCount": n, "quoteCount": 0,
        "indexedAt": indexed if isinstance(indexed, str) else iso(indexed),
        "labels": [],
    }


def uris_of(seen: Seen) -> list[str]:
    """The `uris` a getPosts request asked for (an XRPC array is a repeated query parameter)."""
    return parse_qs(seen.query_string).get("uris", [])


def _jwt(claims: dict) -> str:
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'typ': 'at+jwt', 'alg': 'ES256K'})}.{part(claims)}.c2lnbmF0dXJl"


def _sort_at(post: dict) -> datetime:
    post = post.get("post", post) if isinstance(post.get("post"), dict) else post
    times = []
    for value in (post.get("record", {}).get("createdAt"), post.get("indexedAt")):
        try:
            moment = datetime.fromisoformat(value)
            times.append(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))
        except (TypeError, ValueError):
            pass
    return min(times) if times else datetime.min.replace(tzinfo=timezone.utc)


class FakeBluesky:
    """The XRPC host on `upstream`: its routes answer searchPosts, getPosts and the two session calls.
    Requests (with their headers, lowercased, and raw bodies) are FakeUpstream's records."""

    def __init__(self, upstream: FakeUpstream, posts: list[dict] | None = None, *, anonymous: bool = True,
                 clock: Callable[[], datetime] | None = None, access_lifetime: timedelta = timedelta(hours=2),
                 refresh_lifetime: timedelta = timedelta(days=60), rate_limit_remaining: int | None = None,
                 rate_limit_reset: datetime | None = None):
        self.upstream = upstream
        self.posts = list(posts or [])
        self.anonymous = anonymous  # whether search and getPosts answer without a session
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.rate_limit_remaining = rate_limit_remaining
        self.rate_limit_reset = rate_limit_reset
        self.search_replies: dict[int, Reply] = {}  # the n-th search request (1-based) gets this reply
        self.search_override: Reply | None = None  # every search request gets this reply
        self.get_posts_replies: dict[int, Reply] = {}  # the n-th getPosts request (1-based) gets this reply
        self.session_override: Reply | None = None  # every createSession gets this reply
        self.expired_access: set[str] = set()  # access JWTs to refuse as expired before their exp
        self.access_tokens: dict[str, datetime] = {}
        self.refresh_tokens: dict[str, datetime] = {}
        self._serial = itertools.count(1)
        upstream.routes[SEARCH_PATH] = self.search
        upstream.routes[GET_POSTS_PATH] = self.get_posts
        upstream.post_routes[CREATE_SESSION_PATH] = self.create_session
        upstream.post_routes[REFRESH_SESSION_PATH] = self.refresh_session

    # --- what the tests look at --------------------------------------------------------------------

    @property
    def seen(self) -> list[Seen]:
        return list(self.upstream.requests)

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.upstream.requests if seen.path == path]

    @property
    def searches(self) -> list[Seen]:
        return self.requests_to(SEARCH_PATH)

    @property
    def lookups(self) -> list[Seen]:
        """getPosts requests; `uris_of(seen)` lists the URIs each one asked for."""
        return self.requests_to(GET_POSTS_PATH)

    @property
    def logins(self) -> list[Seen]:
        return self.requests_to(CREATE_SESSION_PATH)

    @property
    def refreshes(self) -> list[Seen]:
        return self.requests_to(REFRESH_SESSION_PATH)

    # --- HTTP -----------------------------------------------------------------------------------------

    def _rate_headers(self) -> dict:
        if self.rate_limit_remaining is None:
            return {}
        self.rate_limit_remaining = max(0, self.rate_limit_remaining - 1)
        reset = self.rate_limit_reset or self.clock() + timedelta(minutes=5)
        return {"RateLimit-Limit": "3000", "RateLimit-Remaining": str(self.rate_limit_remaining),
                "RateLimit-Reset": str(int(reset.timestamp())), "RateLimit-Policy": "3000;w=300"}

    def _issue(self) -> dict:
        now = self.clock()
        serial = next(self._serial)
        access = _jwt({"scope": "com.atproto.appPass", "sub": ACCOUNT_DID, "n": serial,
                       "iat": int(now.timestamp()), "exp": int((now + self.access_lifetime).timestamp())})
        refresh = _jwt({"scope": "com.atproto.refresh", "sub": ACCOUNT_DID, "n": serial,
                        "exp": int((now + self.refresh_lifetime).timestamp())})
        self.access_tokens[access] = now + self.access_lifetime
        self.refresh_tokens[refresh] = now + self.refresh_lifetime
        return {"did": ACCOUNT_DID, "handle": HANDLE, "email": "x@example.org", "active": True,
                "accessJwt": access, "refreshJwt": refresh}

    def create_session(self, path: str, form: dict) -> Reply:
        if self.session_override is not None:
            return self.session_override
        request = current_request()
        if not request.headers.get("content-type", "").startswith("application/json"):
            return Reply(400, {"error": "InvalidRequest", "message": "Wrong request encoding (Content-Type)"})
        try:
            login = json.loads(request.body)
        except ValueError:
            return Reply(400, {"error": "InvalidRequest", "message": "Input must be JSON"})
        if login.get("identifier") != HANDLE or login.get("password") != APP_PASSWORD:
            return Reply(401, {"error": "AuthenticationRequired", "message": "Invalid identifier or password"})
        return Reply(200, self._issue())

    def refresh_session(self, path: str, form: dict) -> Reply:
        token = current_request_headers().get("authorization", "").removeprefix("Bearer ")
        expires = self.refresh_tokens.pop(token, None)  # single use
        if expires is None:
            return Reply(400, {"error": "InvalidToken", "message": "Token could not be verified"})
        if expires <= self.clock():
            return Reply(400, {"error": "ExpiredToken", "message": "Token has expired"})
        return Reply(200, self._issue())

    def _auth_refusal(self) -> Reply | None:
        authorization = current_request_headers().get("authorization", "")
        if not authorization:
            if self.anonymous:
                return None
            return Reply(403, {"error": "AuthMissing", "message": "Authentication Required"})
        token = authorization.removeprefix("Bearer ")
        expires = self.access_tokens.get(token)
        if expires is None:
            return Reply(401, {"error": "InvalidToken", "message": "Bad token scope"})
        if expires <= self.clock() or token in self.expired_access:
            return Reply(400, {"error": "ExpiredToken", "message": "Token has expired"})
        return None

    def search(self, path: str, query: dict) -> Reply:
        number = len(self.searches)
        if self.search_override is not None:
            return self.search_override
        if number in self.search_replies:
            return self.search_replies[number]
        refusal = self._auth_refusal()
        if refusal is not None:
            return refusal
        if not query.get("q"):
            return Reply(400, {"error": "InvalidRequest", "message": 'Error: Params must have the property "q"'})
        term = query["q"].lstrip("#").casefold()
        limit = max(1, min(int(query.get("limit", 25)), 100))
        matches = [post for post in self.posts if self._mentions(post, term)]
        if query.get("since"):  # inclusive
            since = datetime.fromisoformat(query["since"])
            matches = [post for post in matches if _sort_at(post) >= since]
        if query.get("until"):  # not inclusive
            until = datetime.fromisoformat(query["until"])
            matches = [post for post in matches if _sort_at(post) < until]
        matches.sort(key=_sort_at, reverse=True)
        offset = int(query.get("cursor") or 0)
        page = matches[offset: offset + limit]
        body: dict = {"posts": page, "hitsTotal": len(matches)}
        if offset + limit < len(matches):
            body["cursor"] = str(offset + limit)
        return Reply(200, body, self._rate_headers())

    def get_posts(self, path: str, query: dict) -> Reply:
        number = len(self.lookups)
        if number in self.get_posts_replies:
            return self.get_posts_replies[number]
        refusal = self._auth_refusal()
        if refusal is not None:
            return refusal
        uris = uris_of(current_request())
        if not uris:
            return Reply(400, {"error": "InvalidRequest", "message": 'Error: Params must have the property "uris"'})
        if len(uris) > GET_POSTS_MAX:
            return Reply(400, {"error": "InvalidRequest",
                               "message": f"Error: uris must not have more than {GET_POSTS_MAX} elements"})
        by_uri = {(post["post"] if isinstance(post.get("post"), dict) else post)["uri"]: post for post in self.posts}
        # Like the AppView: the posts it can show, in the order asked; a deleted or taken-down one is left out.
        found = [by_uri[uri] for uri in dict.fromkeys(uris) if uri in by_uri]
        found = [post["post"] if isinstance(post.get("post"), dict) else post for post in found]
        return Reply(200, {"posts": found}, self._rate_headers())

    @staticmethod
    def _mentions(post: dict, term: str) -> bool:
        # Like the real search: the word anywhere in the text, or a tag, whatever its case.
        post = post["post"] if isinstance(post.get("post"), dict) else post
        record = post.get("record") or {}
        words = str(record.get("text") or "").casefold()
        tags = [str(t).casefold() for t in record.get("tags") or []]
        for facet in record.get("facets") or []:
            tags += [str(f.get("tag", "")).casefold() for f in facet.get("features") or [] if isinstance(f, dict)]
        return term in words or term in tags
