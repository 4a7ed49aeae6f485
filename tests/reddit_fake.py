"""Reddit's OAuth API served on 127.0.0.1, built from the documented formats (Listing, t1, t3, more).

Implements what the connector relies on: `POST /api/v1/access_token` (client_credentials, basic auth),
bearer tokens that can expire, `GET /search` and `/r/<sub>/search` (sort=new, `after` paging, a loose
word search like Reddit's), `GET /comments/<id>` ([submission Listing, comment Listing] with nested
`replies` and `more` stubs), `GET /api/morechildren`, `GET /api/info?id=<fullnames>` (at most 100; a
fullname it does not have is left out, as Reddit does), and the `x-ratelimit-*` headers.

Route handlers read the request's headers with `current_headers()` (FakeUpstream records them).
"""

from __future__ import annotations

import base64
import copy
from datetime import datetime, timedelta, timezone
from typing import Callable
from urllib.parse import urlsplit

from tests.upstream import FakeUpstream, Reply, current_request_headers

START = datetime(2026, 11, 20, tzinfo=timezone.utc)
# /api/info answers at most this many fullnames.
INFO_LIMIT = 100


def current_headers() -> dict:
    return current_request_headers()


def current_authorization() -> str:
    return current_headers().get("authorization", "")


def serve_posts_and_headers(upstream: FakeUpstream, post_routes: dict[str, Callable[[str, dict], Reply]]) -> None:
    """Let `upstream` answer POSTs from `post_routes` (form body as the query)."""
    upstream.post_routes.update(post_routes)


# --- things --------------------------------------------------------------------------------------


def make_submission(n: int, *, title: str | None = None, selftext: str = "", subreddit: str = "worldnews",
                    created: datetime | None = None, author: str | None = None, url: str | None = None) -> dict:
    """A t3 data object with the fields the listing documentation names."""
    ident = f"s{n:05d}"
    created = created or START + timedelta(minutes=n)
    permalink = f"/r/{subreddit}/comments/{ident}/post_{n}/"
    return {
        "id": ident, "name": f"t3_{ident}", "subreddit": subreddit, "subreddit_id": "t5_2qh13",
        "title": title if title is not None else f"Submission {n} #UkrainePeaceTalks",
        "selftext": selftext, "selftext_html": f'<!-- SC_OFF --><div class="md"><p>{selftext}</p>\n</div><!-- SC_ON -->'
        if selftext else None,
        "author": author or f"reader{n % 5}", "author_fullname": f"t2_r{n % 5}",
        "created": created.timestamp(), "created_utc": created.timestamp(), "edited": False,
        "is_self": url is None, "url": url or f"https://www.reddit.com{permalink}", "permalink": permalink,
        "domain": f"self.{subreddit}" if url is None else urlsplit(url).hostname,
        "num_comments": 0, "score": 3, "ups": 3, "num_crossposts": 0, "over_18": False, "stickied": False,
    }


def make_comment(ident: str, *, link: str, parent: str | None = None, body: str | None = None,
                 created: datetime | None = None, author: str = "commenter", edited: float | bool = False) -> dict:
    created = created or START + timedelta(hours=1)
    body = body if body is not None else f"Comment {ident}"
    return {
        "id": ident, "name": f"t1_{ident}", "link_id": f"t3_{link}", "parent_id": parent or f"t3_{link}",
        "author": author, "body": body, "body_html": f'<div class="md"><p>{body}</p>\n</div>',
        "created": created.timestamp(), "created_utc": created.timestamp(), "edited": edited, "score": 1,
        "replies": "", "subreddit": "worldnews", "permalink": f"/r/worldnews/comments/{link}/post/{ident}/",
    }


def listing(children: list, *, after: str | None = None) -> dict:
    return {"kind": "Listing", "data": {"after": after, "before": None, "dist": len(children), "modhash": "",
                                        "children": children}}


def thing(kind: str, data: dict) -> dict:
    return {"kind": kind, "data": data}


def more(ids: list[str], *, parent: str) -> dict:
    return thing("more", {"count": len(ids), "name": f"t1_{ids[0]}" if ids else "t1__", "id": ids[0] if ids else "_",
                          "parent_id": parent, "depth": 0, "children": ids})


def nest(comments: list[dict], link: str) -> list[dict]:
    """Comment things nested through `replies` Listings by parent_id (leaves keep `replies: ""`)."""
    things = {c["name"]: thing("t1", copy.deepcopy(c)) for c in comments}
    roots = []
    for c in comments:
        node = things[c["name"]]
        parent = things.get(c["parent_id"])
        if parent is None:
            roots.append(node)
        else:
            replies = parent["data"]["replies"] or listing([])
            replies["data"]["children"].append(node)
            parent["data"]["replies"] = replies
    return roots


# --- the API -------------------------------------------------------------------------------------


class RedditApi:
    """Serves the token endpoint and the API from `submissions` and `comments` (by submission id)."""

    def __init__(self, upstream: FakeUpstream, *, client_id: str = "app-id", client_secret: str = "app-secret",
                 submissions: list[dict] | None = None, expires_in: int = 86400):
        self.upstream = upstream
        self.client_id, self.client_secret = client_id, client_secret
        self.submissions = list(submissions or [])
        self.comments: dict[str, list[dict]] = {}
        # Comments served only through /api/morechildren, with the stubs that point at them.
        self.hidden: dict[str, list[dict]] = {}
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.user_agents: list[str] = []
        self.login_authorizations: list[str] = []
        self.valid_tokens: set[str] = set()
        self.rate_limit_remaining: float | None = None
        self.rate_limit_reset = 300
        self.overrides: dict[str, Reply | Callable[[str, dict], Reply]] = {}
        serve_posts_and_headers(upstream, {"/api/v1/access_token": self.token})
        upstream.prefix_routes.append(("/", self.api))

    # token endpoint
    def token(self, path: str, form: dict) -> Reply:
        self.user_agents.append(current_headers().get("user-agent", ""))
        self.login_authorizations.append(current_authorization())
        if "token" in self.overrides:
            return self._override("token", path, form)
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if current_authorization() != expected:
            return Reply(401, {"message": "Unauthorized", "error": 401})
        if form.get("grant_type") != "client_credentials":
            return Reply(200, {"error": "unsupported_grant_type"})
        token = f"token-{len(self.issued) + 1}"
        self.issued.append(token)
        self.valid_tokens.add(token)
        return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in, "scope": "*"})

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def _override(self, key: str, path: str, query: dict) -> Reply:
        reply = self.overrides[key]
        return reply(path, query) if callable(reply) else reply

    # API
    def api(self, path: str, query: dict) -> Reply:
        self.user_agents.append(current_headers().get("user-agent", ""))
        for prefix in self.overrides:
            if prefix != "token" and path.startswith(prefix):
                return self._with_budget(self._override(prefix, path, query))
        if current_authorization().removeprefix("bearer ") not in self.valid_tokens:
            return Reply(401, {"message": "Unauthorized", "error": 401})
        if path == "/search" or (path.startswith("/r/") and path.endswith("/search")):
            reply = self.search(path, query)
        elif path.startswith("/comments/"):
            reply = self.tree(path.split("/")[2])
        elif path == "/api/morechildren":
            reply = self.morechildren(query)
        elif path == "/api/info":
            reply = self.info(query)
        else:
            reply = Reply(404, {"message": "Not Found", "error": 404})
        return self._with_budget(reply)

    def _with_budget(self, reply: Reply) -> Reply:
        if self.rate_limit_remaining is None:
            return reply
        self.rate_limit_remaining = max(0.0, self.rate_limit_remaining - 1)
        headers = {"x-ratelimit-remaining": f"{self.rate_limit_remaining:.1f}",
                   "x-ratelimit-used": str(int(600 - self.rate_limit_remaining)),
                   "x-ratelimit-reset": str(self.rate_limit_reset)}
        return Reply(reply.status, reply.body, {**headers, **reply.headers})

    def search(self, path: str, query: dict) -> Reply:
        subreddit = path.split("/")[2] if path.startswith("/r/") else None
        known = {s["subreddit"].casefold() for s in self.submissions} | {"all"}
        if subreddit is not None and subreddit.casefold() not in known:
            return Reply(404, {"reason": "banned", "message": "Not Found", "error": 404})
        word = query.get("q", "").casefold()
        # Like Reddit's search, a loose match: mentions count, so the connector must check for itself.
        found = [s for s in self.submissions
                 if word in f"{s['title']} {s['selftext']}".casefold()
                 and (subreddit in (None, "all") or s["subreddit"].casefold() == subreddit.casefold())]
        found.sort(key=lambda s: s["created_utc"], reverse=True)
        names = [s["name"] for s in found]
        start = names.index(query["after"]) + 1 if query.get("after") in names else 0
        limit = min(int(query.get("limit", 25)), 100)
        chunk = found[start:start + limit]
        after = chunk[-1]["name"] if start + limit < len(found) and chunk else None
        return Reply(200, listing([thing("t3", s) for s in chunk], after=after))

    def tree(self, ident: str) -> Reply:
        submission = next((s for s in self.submissions if s["id"] == ident), None)
        if submission is None:
            return Reply(404, {"message": "Not Found", "error": 404})
        comments = self.comments.get(ident, [])
        roots = nest(comments, ident)
        for parent, hidden in self._hidden_by_parent(ident).items():
            stub = more([c["id"] for c in hidden], parent=parent)
            if parent.startswith("t3_"):
                roots.append(stub)
            else:
                node = _find(roots, parent)
                replies = node["data"]["replies"] or listing([])
                replies["data"]["children"].append(stub)
                node["data"]["replies"] = replies
        return Reply(200, [listing([thing("t3", submission)]), listing(roots)])

    def _hidden_by_parent(self, ident: str) -> dict[str, list[dict]]:
        grouped: dict[str, list[dict]] = {}
        for c in self.hidden.get(ident, []):
            grouped.setdefault(c["parent_id"], []).append(c)
        return grouped

    def morechildren(self, query: dict) -> Reply:
        ident = query.get("link_id", "").removeprefix("t3_")
        wanted = set(query.get("children", "").split(","))
        things = [thing("t1", c) for c in self.hidden.get(ident, []) if c["id"] in wanted]
        return Reply(200, {"json": {"errors": [], "data": {"things": things}}})

    def info(self, query: dict) -> Reply:
        names = [name for name in query.get("id", "").split(",") if name]
        if len(names) > INFO_LIMIT:
            return Reply(400, {"message": "Bad Request", "error": 400})
        known = {s["name"]: thing("t3", s) for s in self.submissions}
        for comments in [*self.comments.values(), *self.hidden.values()]:
            known.update({c["name"]: thing("t1", c) for c in comments})
        return Reply(200, listing([known[name] for name in names if name in known]))


def _find(nodes: list[dict], name: str) -> dict:
    for node in nodes:
        if node["data"].get("name") == name:
            return node
        replies = node["data"].get("replies")
        if isinstance(replies, dict):
            found = _find(replies["data"]["children"], name)
            if found:
                return found
    return {}


class MemoryStore:
    """The TokenStore protocol in memory, remembering each key's ttl."""

    def __init__(self):
        self.values: dict = {}
        self.ttls: dict = {}

    def get(self, key):
        return self.values.get(key)

    def set(self, key, value, *, ttl):
        self.values[key], self.ttls[key] = value, ttl

    def delete(self, key):
        self.values.pop(key, None)
