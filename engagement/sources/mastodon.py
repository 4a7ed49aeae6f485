"""Mastodon: the public tag timeline of one instance, `GET /api/v1/timelines/tag/:hashtag`.

- First run: the newest page, then older pages through the `Link: rel="next"` (`max_id`) header, up to
  BACKFILL_PAGES. Later runs: `min_id=<newest id seen>`, which returns the statuses just after it, page
  after page until an empty or short page, up to MAX_PAGES_PER_RUN (the next run carries on).
- The post's id is its ActivityPub `uri`, identical on every instance; the per-instance `id` is only
  the paging cursor of this source.
- A boost is stored as the boosted original (one post however often it is boosted).
- Servers normalise tags, so the tag is verified locally against `tags[]`, casefolded.
- `X-RateLimit-Remaining` / `X-RateLimit-Reset` (an ISO timestamp) and `Retry-After` are honoured.
- 404 means the instance does not know the tag (or has no such timeline): a normal, empty outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterator
from urllib.parse import quote

import requests

from .base import (
    count_value,
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NeedsCredentials,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    Recheck,
    RejectedRaw,
    check_status,
    html_to_text,
    json_body,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "mastodon"
# Mastodon's largest page for tag timelines.
PAGE_LIMIT = 40
# One run reads at most this many pages (400 posts) so a busy tag cannot hold a worker; the cursor
# makes the next run continue where this one stopped.
MAX_PAGES_PER_RUN = 10
# How far the first run of a new source reaches back.
BACKFILL_PAGES = 5
# `collect --backfill` reads at most this many pages per tag per call (10,000 posts); a later call resumes.
MAX_BACKFILL_PAGES = 250
# The instance's settings (is the tag timeline public?) are read again after this long.
INSTANCE_CHECK_SECONDS = 24 * 3600
# The cursor entry that holds the instance check ('@' cannot occur in a tag).
INSTANCE_KEY = "@instance"


def _status_id(value: Any) -> int:
    # Snowflake ids are strings of digits; compare them as numbers.
    return int(value)


def _author(account: Any) -> NormalisedAuthor | None:
    if not isinstance(account, dict):
        return None
    external_id = account.get("uri") or account.get("url")
    if not isinstance(external_id, str) or not external_id:
        return None
    acct = account.get("acct") or account.get("username") or ""
    if acct and "@" not in acct and isinstance(account.get("url"), str):
        # A local account's acct has no domain; the domain of its profile URL makes it global.
        host = requests.utils.urlparse(account["url"]).hostname or ""
        acct = f"{acct}@{host}" if host else acct
    return NormalisedAuthor(
        external_id=external_id,
        handle=f"@{acct}" if acct else "",
        display_name=str(account.get("display_name") or "")[:300],
        url=str(account.get("url") or ""),
    )


def normalise_status(status: Any, *, tag_key: str | None) -> NormalisedItem | RejectedRaw | None:
    """One status as a NormalisedItem; RejectedRaw when unusable; None when it lacks the tag.

    `tag_key=None` accepts any status (re-checking a stored post whose edit may have removed the tag).
    """
    if not isinstance(status, dict):
        return RejectedRaw(reason="status is not a JSON object", raw=status)
    original = status.get("reblog") or status
    if not isinstance(original, dict):
        return RejectedRaw(reason="reblog is not a JSON object", raw=status)
    uri = original.get("uri")
    if not isinstance(uri, str) or not uri:
        return RejectedRaw(reason="status has no uri", raw=status, external_id=str(status.get("id") or ""))
    tags = original.get("tags")
    if not isinstance(tags, list):
        return RejectedRaw(reason="status has no tags list", raw=original, external_id=uri)
    keys = sorted({normalise_tag(t["name"]) for t in tags if isinstance(t, dict) and isinstance(t.get("name"), str)})
    if tag_key is not None and tag_key not in keys:
        return None
    try:
        created_at = parse_timestamp(original.get("created_at"), field_name="created_at")
        edited_at = (
            parse_timestamp(original["edited_at"], field_name="edited_at") if original.get("edited_at") else None
        )
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=original, external_id=uri)
    content = original.get("content")
    if not isinstance(content, str):
        return RejectedRaw(reason="content is missing or not a string", raw=original, external_id=uri)
    if len(content) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(
            reason=f"content of {len(content)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
            raw=original, external_id=uri,
        )
    html = sanitise_html(content)
    return NormalisedItem(
        platform=PLATFORM,
        external_id=uri,
        uri=uri,
        url=original.get("url") if isinstance(original.get("url"), str) else "",
        kind="comment" if original.get("in_reply_to_id") else "post",
        author=_author(original.get("account")),
        created_at=created_at,
        edited_at=edited_at,
        language=str(original.get("language") or "")[:16],
        html=html,
        text=html_to_text(html),
        hashtags=tuple(keys),
        reply_count=count_value(original.get("replies_count")),
        repost_count=count_value(original.get("reblogs_count")),
        like_count=count_value(original.get("favourites_count")),
        raw=original,
    )


def rate_limit_reset(response: requests.Response) -> datetime | None:
    try:
        return parse_timestamp(response.headers.get("X-RateLimit-Reset"), field_name="X-RateLimit-Reset")
    except ValueError:
        return None


class MastodonConnector:
    platform = PLATFORM

    def __init__(self, *, base_url: str, hashtags: list[str], client: HttpClient, now: Callable[[], datetime]):
        self.base_url = base_url.rstrip("/")
        self.tag_keys = [normalise_tag(tag) for tag in hashtags]
        self.client = client
        self.now = now

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Pages for each hashtag; each page's `cursor` is the whole source cursor once it is stored.

        Raises NeedsCredentials when the instance shows tag timelines to logged-in users only.
        """
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        cursor[INSTANCE_KEY] = self._check_instance(cursor.get(INSTANCE_KEY, {}))
        detail = {"hashtag_feeds": cursor[INSTANCE_KEY].get("hashtag_feeds")}
        for tag_key in self.tag_keys:
            for page in self._fetch_tag(tag_key, cursor.get(tag_key, {})):
                if "newest_id" in page.cursor:
                    cursor[tag_key] = page.cursor
                page.cursor = {key: dict(value) for key, value in cursor.items()}
                page.health_detail = detail
                yield page
                if page.rate_limited_until:
                    return

    def _fetch_tag(self, tag_key: str, state: dict) -> Iterator[Page]:
        url = f"{self.base_url}/api/v1/timelines/tag/{quote(tag_key, safe='')}"
        newest = state.get("newest_id")
        if newest is None:
            # First run: newest page, then older ones. The cursor is the newest id of the first page.
            params: dict | None = {"limit": PAGE_LIMIT}
            first_newest: str | None = None
            for _ in range(BACKFILL_PAGES):
                page, statuses, response = self._get_page(url, params, tag_key)
                if first_newest is None and statuses:
                    first_newest = max((s.get("id") for s in statuses if _valid_id(s)), key=_status_id, default=None)
                if first_newest is not None:
                    page.cursor = {"newest_id": first_newest}
                yield page
                next_url = response.links.get("next", {}).get("url") if response is not None else None
                if not statuses or page.rate_limited_until or not next_url:
                    return
                url, params = next_url, None
            return
        for _ in range(MAX_PAGES_PER_RUN):
            page, statuses, _response = self._get_page(url, {"limit": PAGE_LIMIT, "min_id": newest}, tag_key)
            ids = [s.get("id") for s in statuses if _valid_id(s)]
            if ids:
                newest = max(ids + [newest], key=_status_id)
            page.cursor = {"newest_id": newest}
            yield page
            if len(statuses) < PAGE_LIMIT or page.rate_limited_until:
                return

    def _check_instance(self, state: dict) -> dict:
        """Read /api/v2/instance (at most daily): may the tag timeline be read without login?

        Mastodon 4.5+ reports `configuration.timelines_access.hashtag_feeds.{local,remote}` as "public",
        "authenticated" or "disabled"; older servers have no such key (or no v2 endpoint) and are read.
        """
        now = self.now()
        checked_at = state.get("checked_at")
        if checked_at:
            try:
                fresh = (now - parse_timestamp(checked_at, field_name="checked_at")).total_seconds() < INSTANCE_CHECK_SECONDS
            except ValueError:
                fresh = False
        else:
            fresh = False
        if not fresh:
            response = self.client.get(f"{self.base_url}/api/v2/instance", headers={"Accept": "application/json"})
            check_status(response, now=now, reset=rate_limit_reset)
            feeds = None
            if response.status_code != 404:
                body = json_body(response)
                access = body.get("configuration", {}).get("timelines_access") if isinstance(body, dict) else None
                feeds = access.get("hashtag_feeds") if isinstance(access, dict) else None
            state = {"checked_at": now.isoformat(), "hashtag_feeds": feeds if isinstance(feeds, dict) else None}
        feeds = state.get("hashtag_feeds") or {}
        local, remote = feeds.get("local", "public"), feeds.get("remote", "public")
        if "public" not in (local, remote):
            if "authenticated" in (local, remote):
                raise NeedsCredentials(
                    f"{self.base_url} shows tag timelines to logged-in users only "
                    f"(timelines_access.hashtag_feeds: local={local}, remote={remote})"
                )
            raise PermanentError(f"{self.base_url} has disabled tag timelines (local={local}, remote={remote})")
        return state

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Walk older pages (max_id) back to `since`, at most MAX_BACKFILL_PAGES per tag per call.

        The polling cursor is kept; the walk's position is saved as `backfill_max_id`, so a later
        call resumes where this one stopped and a finished walk is not repeated.
        """
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag_key in self.tag_keys:
            state = cursor.setdefault(tag_key, {})
            if state.get("backfilled_since") and state["backfilled_since"] <= since.isoformat():
                continue
            url = f"{self.base_url}/api/v1/timelines/tag/{quote(tag_key, safe='')}"
            max_id = state.get("backfill_max_id")
            for _ in range(MAX_BACKFILL_PAGES):
                params = {"limit": PAGE_LIMIT, **({"max_id": max_id} if max_id else {})}
                page, statuses, _response = self._get_page(url, params, tag_key)
                tagged = len(page.items)
                page.items = [item for item in page.items if item.created_at >= since]
                ids = [s["id"] for s in statuses if _valid_id(s)]
                if ids:
                    max_id = min(ids, key=_status_id)
                    state["backfill_max_id"] = max_id
                    state.setdefault("newest_id", max(ids, key=_status_id))
                # Done when the timeline ends or this page already reaches back past `since`.
                reached = not statuses or len(page.items) < tagged
                if reached:
                    state.pop("backfill_max_id", None)
                    state["backfilled_since"] = since.isoformat()
                page.cursor = {key: dict(value) for key, value in cursor.items()}
                yield page
                if reached or page.rate_limited_until:
                    break

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Fetch stored statuses again by their id on this instance: edits come back as items, a 404
        or 410 as a deletion. `posts` are (external_id, raw) of posts this source collected."""
        for external_id, raw in posts:
            local_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(local_id, str) or not local_id.isdigit():
                yield Recheck(external_id=external_id, error="no instance-local id in the stored payload")
                continue
            now = self.now()
            response = self.client.get(f"{self.base_url}/api/v1/statuses/{local_id}",
                                       headers={"Accept": "application/json"})
            if response.status_code in (404, 410):
                yield Recheck(external_id=external_id,
                              deleted_reason=f"deleted upstream ({response.status_code} from {self.base_url})")
                continue
            check_status(response, now=now, reset=rate_limit_reset)
            result = normalise_status(json_body(response), tag_key=None)
            if isinstance(result, NormalisedItem) and result.external_id == external_id:
                yield Recheck(external_id=external_id, item=result)
            else:
                reason = result.reason if isinstance(result, RejectedRaw) else "the instance returned another status"
                yield Recheck(external_id=external_id, error=reason)

    def _get_page(self, url: str, params: dict | None, tag_key: str) -> tuple[Page, list, requests.Response | None]:
        now = self.now()
        response = self.client.get(url, params=params, headers={"Accept": "application/json"})
        check_status(response, now=now, reset=rate_limit_reset)
        page = Page()
        remaining = response.headers.get("X-RateLimit-Remaining", "")
        if remaining.strip().isdigit() and int(remaining) <= 0:
            page.rate_limited_until = rate_limit_reset(response)
        if response.status_code == 404:
            return page, [], None
        statuses = json_body(response)
        if not isinstance(statuses, list):
            raise MalformedResponse(f"expected a list of statuses from {response.url}", raw=statuses)
        page.fetched = len(statuses)
        for status in statuses:
            result = normalise_status(status, tag_key=tag_key)
            if isinstance(result, NormalisedItem):
                page.items.append(result)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        return page, statuses, response


def _valid_id(status: Any) -> bool:
    return isinstance(status, dict) and isinstance(status.get("id"), str) and status["id"].isdigit()


def build(config, *, client: HttpClient, now: Callable[[], datetime], store=None) -> MastodonConnector:
    return MastodonConnector(base_url=config.base_url, hashtags=list(config.hashtags), client=client, now=now)


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """A status as the API returns it (an import line, a stored raw payload): tagged with any of `hashtags`."""
    for tag in hashtags:
        result = normalise_status(obj, tag_key=normalise_tag(tag))
        if result is not None:
            return result
    return None
