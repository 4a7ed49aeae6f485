"""A Mastodon tag timeline served on 127.0.0.1, built from the documented Status entity.

Implements what the connector relies on: newest first, `limit`, `max_id` (older), `min_id` (the
statuses just after it), `Link` next/prev headers, and X-RateLimit-* headers.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.upstream import FakeUpstream, Reply

TEMPLATE = json.loads((Path(__file__).parent / "fixtures" / "mastodon_status.json").read_text())
FIRST_ID = 113_000_000_000_000_000


def make_status(n: int, *, tag: str = "UkrainePeaceTalks", host: str = "social.example", text: str | None = None,
                created_at: datetime | None = None) -> dict:
    status = copy.deepcopy(TEMPLATE)
    status_id = str(FIRST_ID + n)
    status["id"] = status_id
    status["uri"] = f"https://{host}/users/reader{n % 7}/statuses/{status_id}"
    status["url"] = f"https://{host}/@reader{n % 7}/{status_id}"
    created = created_at or datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(seconds=n)
    status["created_at"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = text if text is not None else f"Post number {n} about the talks"
    status["content"] = f'<p>{body} <a href="https://{host}/tags/{tag}" class="mention hashtag" rel="tag">#<span>{tag}</span></a></p>'
    status["tags"] = [{"name": tag.lower(), "url": f"https://{host}/tags/{tag.lower()}"}]
    status["account"] = {**status["account"], "username": f"reader{n % 7}", "acct": f"reader{n % 7}",
                         "url": f"https://{host}/@reader{n % 7}", "uri": f"https://{host}/users/reader{n % 7}"}
    return status


class MastodonTimeline:
    """Serves /api/v1/timelines/tag/<tag> from `statuses` (any order; served newest first)."""

    def __init__(self, upstream: FakeUpstream, tag: str, statuses: list[dict] | None = None,
                 rate_limit_remaining: int | None = None):
        self.upstream = upstream
        self.path = f"/api/v1/timelines/tag/{tag.lower()}"
        self.statuses = list(statuses or [])
        self.rate_limit_remaining = rate_limit_remaining
        self.override: Reply | None = None  # when set, every request gets this reply
        self.instance: dict | None = None  # when set, served at /api/v2/instance
        upstream.routes[self.path] = self.handle
        upstream.prefix_routes.append(("/api/v1/statuses/", self.handle_status))
        upstream.routes["/api/v2/instance"] = self.handle_instance

    def handle_status(self, path: str, query: dict) -> Reply:
        """GET /api/v1/statuses/:id, for re-checks; a status removed from `statuses` is a 404."""
        status_id = path.rsplit("/", 1)[-1]
        found = next((s for s in self.statuses if s["id"] == status_id), None)
        return Reply(200, found) if found else Reply(404, {"error": "Record not found"})

    def handle_instance(self, path: str, query: dict) -> Reply:
        return Reply(200, self.instance) if self.instance else Reply(404, {"error": "Not found"})

    def handle(self, path: str, query: dict) -> Reply:
        if self.override is not None:
            return self.override
        limit = min(int(query.get("limit", 20)), 40)
        ordered = sorted(self.statuses, key=lambda s: int(s["id"]), reverse=True)
        if "min_id" in query:
            newer = [s for s in ordered if int(s["id"]) > int(query["min_id"])]
            page = newer[-limit:]  # the ones just after min_id
        else:
            older = [s for s in ordered if "max_id" not in query or int(s["id"]) < int(query["max_id"])]
            page = older[:limit]
        headers = {}
        if page:
            base = f"{self.upstream.url}{self.path}?limit={limit}"
            headers["Link"] = (f'<{base}&max_id={page[-1]["id"]}>; rel="next", '
                               f'<{base}&min_id={page[0]["id"]}>; rel="prev"')
        reset = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        if self.rate_limit_remaining is not None:
            self.rate_limit_remaining = max(0, self.rate_limit_remaining - 1)
            headers.update({"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": str(self.rate_limit_remaining),
                            "X-RateLimit-Reset": reset})
        return Reply(200, page, headers)
