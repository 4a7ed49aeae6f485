"""YouTube: the comments under the videos about a hashtag, through the YouTube Data API v3.

Which videos
- Found by the tag: `search.list` (q="#tag", type=video, order=date, publishedAfter) at most once per
  `search_interval` (a search costs 100 of the day's 10,000 units), then checked once with `videos.list`
  (1 unit per 50 videos). A hit is *about the tag* when its title, description or keywords carry it;
  hits that merely mention the words are remembered (not checked again) but not polled.
- Listed by the editor: option `videos` (ids or watch URLs), checked the same way.
- A found video is polled for `track_days` after it was found; listed videos as long as they are listed.

Which comments
- Under a video about the tag: every comment and reply (the conversation the newsroom wants); the
  video's tracked tags are added to the comment's own `#tags`.
- Under a listed video that does not carry the tag: only comments whose text has `#tag` (casefolded).

Paging: `commentThreads.list` newest first (100 per page, 1 unit), until the threads already seen, the
end, or a page / token / etag seen before in this run (the API can repeat a page: never loop on it).
Replies: the inline ones, or `comments.list?parentId=` when `totalReplyCount` is larger.

Quota: every request's units are counted per API key and Pacific-time day in the shared store (the key
is shared by every YouTube source); a request that would pass the daily budget is not sent and the
source rests until midnight Pacific time. A 403 `quotaExceeded` means the same. The key travels in the
`X-Goog-Api-Key` header, never in a URL (URLs end up in run messages).

Backfill (`collect --backfill --since DATE`): `search.list` with `publishedAfter=since` and
`publishedBefore=<oldest video already walked>`, then each found video's threads back to the date; bounded
per call by requests and by quota units, the position kept under the cursor's `backfill` key.
Re-check: `comments.list?id=` (at most 50 ids a call, 1 unit); an id it no longer returns was deleted, or
is held for review or hidden by the channel, which the API does not tell apart.
"""

from __future__ import annotations

import copy
import hashlib
import re
from datetime import datetime, time, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests

from .base import (
    count_value,
    hashtags_in,
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
    html_to_text,
    json_body,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "youtube"
# Quota costs of the calls used (https://developers.google.com/youtube/v3/determine_quota_cost).
SEARCH_COST = 100
LIST_COST = 1
# Google's default allocation for a project; raise it with --option daily_quota=N after an increase.
DEFAULT_DAILY_QUOTA = 10_000
# The largest pages the API serves: search.list 50, commentThreads.list and comments.list 100.
SEARCH_PAGE_SIZE = 50
LIST_PAGE_SIZE = 100
VIDEOS_LIST_BATCH = 50
# Searches are dear: one per hour costs 2,400 units a day, leaving most of the budget for comments.
DEFAULT_SEARCH_INTERVAL = 3600
SEARCH_PAGES_PER_RUN = 2
DEFAULT_TRACK_DAYS = 7
# The cursor keeps one entry per video; beyond this the oldest found are forgotten.
MAX_TRACKED_VIDEOS = 200
# Videos polled per run (least recently polled first), so many videos cannot hold a worker.
VIDEOS_PER_RUN = 10
# Thread pages per video per run; a video's first poll backfills at most this many pages (500 threads).
THREAD_PAGES_PER_VIDEO = 5
# Reply pages per thread (200 replies besides the inline ones); a longer thread keeps only those.
REPLY_PAGES_PER_THREAD = 2
# A thread page with all its replies needs at most this many requests; one is only started when the
# run still has them, so a page is never cut in half by the run's bound.
WORST_CASE_PAGE_REQUESTS = 1 + LIST_PAGE_SIZE * REPLY_PAGES_PER_THREAD
# Requests per run: bounds a run to a couple of minutes, under the poll task's time limit.
MAX_REQUESTS_PER_RUN = 300
# How many skipped videos (comments disabled, private ...) the health detail names.
MAX_SKIPPED_SHOWN = 20
# comments.list takes at most 50 ids per call (Google's page gives no number; python-youtube, whose
# recordings the tests read, refuses more than 50 after the API did).
COMMENTS_BY_ID_BATCH = 50
# `collect --backfill`: search pages per call (100 units each; 250 videos) ...
MAX_BACKFILL_SEARCH_PAGES = 5
# ... units per call, a fifth of the default daily allocation so polling keeps the rest of the day ...
MAX_BACKFILL_UNITS = 2_000
# ... requests per call (a few minutes of work), and thread pages per video per call (1,000 threads).
MAX_BACKFILL_REQUESTS = 1_000
MAX_BACKFILL_THREAD_PAGES = 10

QUOTA_REASONS = {"quotaExceeded", "dailyLimitExceeded"}
BURST_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
# Refusals of the key itself (Google puts the precise one in error.details[].reason).
KEY_REASONS = {"keyInvalid", "keyExpired", "accessNotConfigured", "ipRefererBlocked", "SERVICE_DISABLED"}
# Refusals that concern one video (or one comment), not the source: skip it and carry on.
SKIPPABLE_REASONS = {"commentsDisabled", "forbidden", "videoNotFound", "commentNotFound", "notFound"}
BURST_PAUSE = timedelta(minutes=1)

VIDEO_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")

try:
    PACIFIC: ZoneInfo | None = ZoneInfo("America/Los_Angeles")
except ZoneInfoNotFoundError:  # a slim image without the tz database: the US rule below stands in
    PACIFIC = None


# --- the quota day -------------------------------------------------------------------------------


def _us_pacific_offset(moment: datetime) -> timedelta:
    """UTC offset of US Pacific time at `moment` (DST from the 2nd Sunday of March to the 1st of November)."""
    march_8 = datetime(moment.year, 3, 8, 10, tzinfo=timezone.utc)  # 02:00 PST
    november_1 = datetime(moment.year, 11, 1, 9, tzinfo=timezone.utc)  # 02:00 PDT
    dst_start = march_8 + timedelta(days=(6 - march_8.weekday()) % 7)
    dst_end = november_1 + timedelta(days=(6 - november_1.weekday()) % 7)
    return timedelta(hours=-7) if dst_start <= moment < dst_end else timedelta(hours=-8)


def quota_day(moment: datetime, *, zone: ZoneInfo | None = PACIFIC) -> tuple[str, datetime]:
    """The quota day at `moment` ("YYYY-MM-DD", Pacific time) and when it ends (the reset, UTC)."""
    moment = moment.astimezone(timezone.utc)
    if zone is not None:
        local_day = moment.astimezone(zone).date()
        midnight = datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=zone)
        return local_day.isoformat(), midnight.astimezone(timezone.utc)
    offset = _us_pacific_offset(moment)
    local_day = (moment + offset).date()
    midnight_as_utc = datetime.combine(local_day + timedelta(days=1), time(0), tzinfo=timezone.utc)
    return local_day.isoformat(), midnight_as_utc - _us_pacific_offset(midnight_as_utc - offset)


class _MemoryStore:
    """Stands in for the shared store when none is given (a one-off run, a test)."""

    def __init__(self):
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any, *, ttl: int) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class QuotaLedger:
    """Units spent today with one API key, shared through the store by every source using the key.

    Read-add-write without a lock: two sources spending at the same instant may undercount by a
    request; the API's own 403 quotaExceeded is the backstop.
    """

    def __init__(self, *, store: TokenStore, api_key: str, limit: int, now: Callable[[], datetime]):
        self.store, self.limit, self.now = store, limit, now
        self.fingerprint = hashlib.sha256(api_key.encode()).hexdigest()[:16]

    def _key(self) -> str:
        return f"youtube:quota:{self.fingerprint}:{quota_day(self.now())[0]}"

    def used(self) -> int:
        value = self.store.get(self._key())
        return value if isinstance(value, int) and value > 0 else 0

    def can_spend(self, units: int) -> bool:
        return self.used() + units <= self.limit

    def spend(self, units: int) -> None:
        self._set(self.used() + units)

    def spend_all(self) -> None:
        self._set(max(self.used(), self.limit))

    def _set(self, value: int) -> None:
        ttl = int((self.reset_at() - self.now()).total_seconds()) + 3600
        self.store.set(self._key(), value, ttl=max(ttl, 60))

    def reset_at(self) -> datetime:
        return quota_day(self.now())[1]

    def detail(self) -> dict:
        used = self.used()
        return {"quota_used": used, "quota_left": max(0, self.limit - used), "quota_day": quota_day(self.now())[0]}


# --- parsing ---------------------------------------------------------------------------------------


def _author(snippet: dict) -> NormalisedAuthor | None:
    channel = snippet.get("authorChannelId")
    channel_id = channel.get("value") if isinstance(channel, dict) else channel
    if not isinstance(channel_id, str) or not channel_id:
        return None
    name = str(snippet.get("authorDisplayName") or "")[:300]
    return NormalisedAuthor(
        external_id=channel_id,
        handle=name if name.startswith("@") else "",
        display_name=name,
        url=str(snippet.get("authorChannelUrl") or ""),
    )


def watch_url(video_id: str, comment_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}&lc={comment_id}"


def normalise_comment(comment: Any, *, video_id: str = "", tag_keys: Iterable[str] = (),
                      about: Iterable[str] = (), raw: Any = None, reply_count: int = 0,
                      ) -> NormalisedItem | RejectedRaw | None:
    """One `youtube#comment` (top-level or reply) as an item.

    `about`: tracked tags of the video it is under (the video is about them): added to the item's tags
    and no tag is required of the text. Otherwise, with `tag_keys`, an item without one of them in its
    text is None (dropped). RejectedRaw when unusable; `raw` is what is kept (defaults to the comment).
    """
    raw = comment if raw is None else raw
    if not isinstance(comment, dict):
        return RejectedRaw(reason="comment is not a JSON object", raw=raw)
    comment_id = comment.get("id")
    if not isinstance(comment_id, str) or not comment_id:
        return RejectedRaw(reason="comment has no id", raw=raw)
    snippet = comment.get("snippet")
    if not isinstance(snippet, dict):
        return RejectedRaw(reason="comment has no snippet object", raw=raw, external_id=comment_id)
    try:
        created_at = parse_timestamp(snippet.get("publishedAt"), field_name="publishedAt")
        updated_at = parse_timestamp(snippet["updatedAt"], field_name="updatedAt") if snippet.get("updatedAt") else None
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=raw, external_id=comment_id)
    display = snippet.get("textDisplay")
    if not isinstance(display, str):
        return RejectedRaw(reason="textDisplay is missing or not a string", raw=raw, external_id=comment_id)
    if len(display) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"textDisplay of {len(display)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=raw, external_id=comment_id)
    html = sanitise_html(display)
    # textOriginal is only promised to the comment's author; without it the display text serves.
    original = snippet.get("textOriginal")
    text = original if isinstance(original, str) else html_to_text(html)
    tags = hashtags_in(text)
    applied = {normalise_tag(tag) for tag in about}
    wanted = {normalise_tag(tag) for tag in tag_keys}
    if applied:
        tags |= applied
    elif wanted and not tags & wanted:
        return None
    video = snippet.get("videoId") if isinstance(snippet.get("videoId"), str) else video_id
    parent = snippet.get("parentId")
    if not isinstance(parent, str):
        # Reply ids are "<parent id>.<suffix>".
        parent = comment_id.split(".", 1)[0] if "." in comment_id else ""
    return NormalisedItem(
        platform=PLATFORM,
        external_id=comment_id,
        url=watch_url(video, comment_id) if video else "",
        kind="comment",
        author=_author(snippet),
        created_at=created_at,
        edited_at=updated_at if updated_at and updated_at != created_at else None,
        html=html,
        text=text,
        hashtags=tuple(sorted(tags)),
        reply_to_external_id=parent,
        reply_count=reply_count,
        like_count=count_value(snippet.get("likeCount")),
        raw=raw,
    )


def _top_level(thread: dict) -> Any:
    snippet = thread.get("snippet")
    return snippet.get("topLevelComment") if isinstance(snippet, dict) else None


def normalise_thread(thread: Any, *, tag_keys: Iterable[str] = (), about: Iterable[str] = (),
                     ) -> NormalisedItem | RejectedRaw | None:
    """A `youtube#commentThread`'s top-level comment as an item (replies are separate items)."""
    if not isinstance(thread, dict):
        return RejectedRaw(reason="comment thread is not a JSON object", raw=thread)
    top = _top_level(thread)
    if not isinstance(top, dict):
        return RejectedRaw(reason="comment thread has no snippet.topLevelComment object", raw=thread,
                           external_id=str(thread.get("id") or ""))
    snippet = thread["snippet"]
    return normalise_comment(top, video_id=str(snippet.get("videoId") or ""), tag_keys=tag_keys, about=about,
                             raw=thread, reply_count=count_value(snippet.get("totalReplyCount")))


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """A commentThread (its top-level comment) or a comment, as the API returns them; None when it
    does not carry one of `hashtags` (no filter when `hashtags` is empty)."""
    if isinstance(obj, dict) and (obj.get("kind") == "youtube#commentThread" or isinstance(_top_level(obj), dict)):
        return normalise_thread(obj, tag_keys=hashtags)
    return normalise_comment(obj, tag_keys=hashtags)


def video_tags(video: dict) -> set[str]:
    """Tags a `youtube#video` carries: `#tags` of its title and description, and its keywords."""
    snippet = video.get("snippet") if isinstance(video.get("snippet"), dict) else {}
    text = f"{snippet.get('title') or ''}\n{snippet.get('description') or ''}"
    keywords = snippet.get("tags") if isinstance(snippet.get("tags"), list) else []
    return hashtags_in(text) | {normalise_tag(word) for word in keywords if isinstance(word, str)}


def parse_video_ids(value: str) -> list[str]:
    """Video ids from option `videos`: ids or watch / youtu.be / shorts URLs, comma or space separated."""
    ids: list[str] = []
    for entry in re.split(r"[,\s]+", value or ""):
        if not entry:
            continue
        candidate = entry
        if "/" in entry or "?" in entry:
            parts = urlsplit(entry if "://" in entry else f"https://{entry}")
            segments = [segment for segment in parts.path.split("/") if segment]
            if (parts.hostname or "").endswith("youtu.be"):
                candidate = segments[0] if segments else ""
            elif "v" in parse_qs(parts.query):
                candidate = parse_qs(parts.query)["v"][0]
            elif len(segments) >= 2 and segments[0] in ("shorts", "live", "embed"):
                candidate = segments[1]
            else:
                candidate = ""
        if not VIDEO_ID.match(candidate):
            raise PermanentError(f"option videos: {entry!r} is not a YouTube video id or watch URL")
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _int_option(options: dict, name: str, default: int, *, minimum: int) -> int:
    raw = options.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise PermanentError(f"option {name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise PermanentError(f"option {name} must be at least {minimum}, not {value}")
    return value


def _bool_option(options: dict, name: str, default: bool) -> bool:
    raw = options.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    lowered = str(raw).strip().lower()
    if lowered in ("true", "1", "on"):
        return True
    if lowered in ("false", "0", "off"):
        return False
    raise PermanentError(f"option {name} must be true or false, not {raw!r}")


def _error_details(response: requests.Response) -> tuple[set[str], str]:
    """Reasons and message of a Google API error body ({"error": {"errors": [{"reason"}], "message"}})."""
    try:
        body = response.json()
    except ValueError:
        return set(), response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return set(), ""
    reasons = {e["reason"] for e in error.get("errors") or [] if isinstance(e, dict) and isinstance(e.get("reason"), str)}
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
            reasons.add(detail["reason"])
    return reasons, str(error.get("message") or "")[:300]


def _items(body: dict, endpoint: str) -> list:
    items = body.get("items")
    if not isinstance(items, list):
        raise MalformedResponse(f"expected an 'items' list from YouTube {endpoint}, got keys {sorted(body)[:10]}",
                                raw=body)
    return items


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value, field_name="cursor time")
    except ValueError:
        return None


def _stored_video(obj: Any) -> str:
    """The video id a stored thread or comment names (`snippet.videoId`), else ""."""
    snippet = obj.get("snippet") if isinstance(obj, dict) else None
    video = snippet.get("videoId") if isinstance(snippet, dict) else None
    return video if isinstance(video, str) else ""


def _thread_published(thread: Any) -> datetime | None:
    top = _top_level(thread) if isinstance(thread, dict) else None
    snippet = top.get("snippet") if isinstance(top, dict) else None
    return _parse(snippet.get("publishedAt")) if isinstance(snippet, dict) else None


# --- fetching ------------------------------------------------------------------------------------


class _QuotaSpent(Exception):
    """The next request would pass the day's budget: stop before sending it."""


class _RunBudgetSpent(Exception):
    """This run made its share of requests; the cursor lets the next one go on."""


class _Skipped(Exception):
    """The API refused one video or comment (comments disabled, private, gone), not the source."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class YouTubeConnector:
    platform = PLATFORM

    def __init__(self, *, base_url: str, hashtags: Iterable[str], api_key: str, options: dict,
                 client: HttpClient, now: Callable[[], datetime], store: TokenStore):
        self.base_url = base_url.rstrip("/")
        self.hashtags = [tag.strip().lstrip("#") for tag in hashtags if normalise_tag(tag)]
        self.tag_keys = {normalise_tag(tag) for tag in self.hashtags}
        self.api_key = api_key
        self.client = client
        self.now = now
        self.given_videos = parse_video_ids(str(options.get("videos") or ""))
        self.search_enabled = _bool_option(options, "search", default=not self.given_videos)
        if not self.search_enabled and not self.given_videos:
            raise PermanentError("nothing to collect: leave search on or list videos with --option videos=ID,ID")
        self.search_interval = _int_option(options, "search_interval", DEFAULT_SEARCH_INTERVAL, minimum=0)
        self.track_days = _int_option(options, "track_days", DEFAULT_TRACK_DAYS, minimum=1)
        self.quota = QuotaLedger(store=store, api_key=api_key,
                                 limit=_int_option(options, "daily_quota", DEFAULT_DAILY_QUOTA, minimum=1), now=now)
        self.requests_made = 0
        self.saved: dict = {}
        self._start_call(requests=MAX_REQUESTS_PER_RUN)

    def _start_call(self, *, requests: int, units: int | None = None) -> None:
        """Bounds of one fetch / backfill / recheck call: requests, and quota units (None: the day's budget)."""
        self.requests_made = 0
        self.units_spent = 0
        self.request_budget = requests
        self.unit_budget = units

    # The cursor: {"search": {"after", "at", "scan"?}, "videos": {id: {"found", "search"?, "given"?,
    # "about"?, "polled"?, "seen_until"?, "scan"?: {"token", "top"}, "skipped"?}}}.

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Search (when due), check new videos, then poll up to VIDEOS_PER_RUN videos' comments.

        Each page's cursor is the whole state once that page is stored. Stops quietly at the run's
        request bound; yields a page with `rate_limited_until` (the quota reset) before a request the
        day's budget cannot pay for. Raises RateLimited, NeedsCredentials, PermanentError,
        TemporaryError, MalformedResponse.
        """
        self._start_call(requests=MAX_REQUESTS_PER_RUN)
        state = self._load(cursor)
        self.saved = copy.deepcopy(state)
        try:
            yield from self._collect(state)
        except _QuotaSpent:
            yield self._page(self.saved, Page(), rate_limited_until=self.quota.reset_at())
        except _RunBudgetSpent:
            return

    def _load(self, cursor: dict) -> dict:
        state = copy.deepcopy(cursor) if isinstance(cursor, dict) else {}
        search = state.get("search") if isinstance(state.get("search"), dict) else {}
        videos = {vid: v for vid, v in (state.get("videos") or {}).items()
                  if isinstance(v, dict) and isinstance(vid, str)} if isinstance(state.get("videos"), dict) else {}
        horizon = self.now() - timedelta(days=self.track_days)
        for vid in list(videos):
            v = videos[vid]
            if v.get("given") and vid not in self.given_videos:
                v.pop("given")
            found = _parse(v.get("found"))
            if not v.get("given") and (not v.get("search") or found is None or found < horizon):
                del videos[vid]
        for vid in self.given_videos:
            videos.setdefault(vid, {"found": _iso(self.now())})["given"] = True
        if len(videos) > MAX_TRACKED_VIDEOS:
            keep = sorted(videos, key=lambda vid: (bool(videos[vid].get("given")), videos[vid].get("found") or ""),
                          reverse=True)[:MAX_TRACKED_VIDEOS]
            videos = {vid: videos[vid] for vid in keep}
        loaded = {"search": search, "videos": videos}
        if isinstance(state.get("backfill"), dict):
            loaded["backfill"] = state["backfill"]  # the backfill's position, kept as it is by polling
        return loaded

    def _collect(self, state: dict) -> Iterator[Page]:
        if self.search_enabled and self._search_due(state["search"]):
            yield from self._search(state)
        yield from self._check_videos(state)
        for vid in self._videos_to_poll(state):
            yield from self._poll_video(state, vid)

    def _page(self, state: dict, page: Page, *, rate_limited_until: datetime | None = None) -> Page:
        page.cursor = copy.deepcopy(state)
        page.rate_limited_until = rate_limited_until
        videos = state["videos"] if isinstance(state.get("videos"), dict) else {}
        skipped = {vid: v["skipped"] for vid, v in videos.items() if isinstance(v, dict) and v.get("skipped")}
        page.health_detail = {
            **self.quota.detail(),
            "videos_tracked": sum(1 for v in videos.values()
                                  if isinstance(v, dict) and "about" in v and (v["about"] or v.get("given"))),
            "videos_skipped": dict(sorted(skipped.items())[:MAX_SKIPPED_SHOWN]),
        }
        self.saved = page.cursor
        return page

    def _request(self, endpoint: str, params: dict, *, cost: int, skippable: bool = False) -> dict:
        if self.requests_made >= self.request_budget:
            raise _RunBudgetSpent
        if self.unit_budget is not None and self.units_spent + cost > self.unit_budget:
            raise _RunBudgetSpent
        if not self.quota.can_spend(cost):
            raise _QuotaSpent
        # Google charges a request whatever its outcome, so it is counted before it goes out.
        self.quota.spend(cost)
        self.requests_made += 1
        self.units_spent += cost
        now = self.now()
        response = self.client.get(f"{self.base_url}/{endpoint}", params=params,
                                   headers={"Accept": "application/json", "X-Goog-Api-Key": self.api_key})
        status = response.status_code
        if status in (400, 401, 403, 404):
            reasons, message = _error_details(response)
            named = ", ".join(sorted(reasons)) or str(status)
            if reasons & QUOTA_REASONS:
                self.quota.spend_all()
                until = self.quota.reset_at()
                raise RateLimited(f"YouTube daily quota spent ({named}); next request after {until.isoformat()} "
                                  "(midnight Pacific time)", until=until)
            if reasons & BURST_REASONS:
                raise RateLimited(f"YouTube rate limit ({named})", until=now + BURST_PAUSE)
            key_refused = bool(reasons & KEY_REASONS) or any(reason.startswith("API_KEY") for reason in reasons)
            if skippable and not key_refused and (status == 404 or (status == 403 and reasons & SKIPPABLE_REASONS)):
                raise _Skipped(named)
            if status in (401, 403) or key_refused:
                raise NeedsCredentials(f"YouTube refused the API key on {endpoint} ({named}): {message} "
                                       "- check YOUTUBE_API_KEY and that the key may use the YouTube Data API v3")
            raise PermanentError(f"YouTube answered {status} ({named}) to {endpoint}: {message}")
        check_status(response, now=now, reset=lambda _response: None)
        body = json_body(response)
        if not isinstance(body, dict):
            raise MalformedResponse(f"expected a JSON object from YouTube {endpoint}", raw=body)
        return body

    # --- search ----------------------------------------------------------------------------------

    def _search_due(self, search: dict) -> bool:
        if search.get("scan"):
            return True
        last = _parse(search.get("at"))
        return last is None or self.now() - last >= timedelta(seconds=self.search_interval)

    def _search(self, state: dict) -> Iterator[Page]:
        search = state["search"]
        scan = search.get("scan") if isinstance(search.get("scan"), dict) else {}
        token, top = scan.get("token"), _parse(scan.get("top"))
        after = search.get("after") or _iso(self.now() - timedelta(days=self.track_days))
        query = " | ".join(f"#{tag}" for tag in self.hashtags)
        for _ in range(SEARCH_PAGES_PER_RUN):
            params = {"part": "snippet", "q": query, "type": "video", "order": "date",
                      "maxResults": SEARCH_PAGE_SIZE, "publishedAfter": after}
            if token:
                params["pageToken"] = token
            body = self._request("search", params, cost=SEARCH_COST)
            results = _items(body, "search")
            page = Page(fetched=len(results))
            for result in results:
                ids = result.get("id") if isinstance(result, dict) else None
                vid = ids.get("videoId") if isinstance(ids, dict) else None
                if not isinstance(vid, str) or not VIDEO_ID.match(vid):
                    page.rejected.append(RejectedRaw(reason="search result has no id.videoId", raw=result))
                    continue
                snippet = result.get("snippet") if isinstance(result.get("snippet"), dict) else {}
                published = _parse(snippet.get("publishedAt"))
                if published and (top is None or published > top):
                    top = published
                state["videos"].setdefault(vid, {"found": _iso(self.now())})["search"] = True
            next_token = body.get("nextPageToken")
            done = not results or not isinstance(next_token, str) or not next_token or next_token == token
            if done:
                newest = max(filter(None, [top, _parse(after)]))
                state["search"] = {"after": _iso(newest), "at": _iso(self.now())}
            else:
                state["search"] = {**{k: v for k, v in search.items() if k != "scan"}, "after": after,
                                   "scan": {"token": next_token, "top": _iso(top) if top else None}}
            yield self._page(state, page)
            if done:
                return
            token = next_token

    def _check_videos(self, state: dict) -> Iterator[Page]:
        """Which tracked tags each new video carries (videos.list, 1 unit per 50)."""
        videos = state["videos"]
        unchecked = [vid for vid, v in videos.items() if "about" not in v]
        for start in range(0, len(unchecked), VIDEOS_LIST_BATCH):
            batch = unchecked[start:start + VIDEOS_LIST_BATCH]
            body = self._request("videos", {"part": "snippet", "id": ",".join(batch),
                                            "maxResults": VIDEOS_LIST_BATCH}, cost=LIST_COST)
            found = {video["id"]: video for video in _items(body, "videos")
                     if isinstance(video, dict) and isinstance(video.get("id"), str)}
            for vid in batch:
                video = found.get(vid)
                if video is None and videos[vid].get("given"):
                    # Checked again next run: a private or scheduled video may become public.
                    videos[vid]["skipped"] = "video not found or not public"
                    continue
                # A search hit that does not carry the tag keeps an empty list: remembered, not polled.
                videos[vid]["about"] = sorted(video_tags(video) & self.tag_keys) if video else []
                videos[vid].pop("skipped", None)
            yield self._page(state, Page(fetched=len(found)))

    def _videos_to_poll(self, state: dict) -> list[str]:
        videos = state["videos"]
        # A video is polled when it is about the tag, or listed by the editor (tagged comments only).
        candidates = [vid for vid, v in videos.items() if "about" in v and (v["about"] or v.get("given"))]
        candidates.sort(key=lambda vid: (0 if videos[vid].get("scan") else 1, videos[vid].get("polled") or ""))
        return candidates[:VIDEOS_PER_RUN]

    # --- comments --------------------------------------------------------------------------------

    def _poll_video(self, state: dict, vid: str) -> Iterator[Page]:
        v = state["videos"][vid]
        about = v.get("about") or []
        boundary = _parse(v.get("seen_until"))
        scan = v.get("scan") if isinstance(v.get("scan"), dict) else {}
        token, top = scan.get("token"), _parse(scan.get("top"))
        seen_ids: set[str] = set()
        seen_tokens: set[str] = set()
        seen_etags: set[str] = set()
        for page_number in range(1, THREAD_PAGES_PER_VIDEO + 1):
            if not self._room_for_a_thread_page():
                raise _RunBudgetSpent
            params = {"part": "snippet,replies", "videoId": vid, "maxResults": LIST_PAGE_SIZE, "order": "time",
                      "textFormat": "html"}
            if token:
                params["pageToken"] = token
                seen_tokens.add(token)
            try:
                body = self._request("commentThreads", params, cost=LIST_COST, skippable=True)
            except _Skipped as skipped:
                # Comments disabled, a private or removed video: this video only, not the source.
                state["videos"][vid] = {**{k: x for k, x in v.items() if k != "scan"},
                                        "polled": _iso(self.now()), "skipped": skipped.reason}
                yield self._page(state, Page())
                return
            threads = _items(body, "commentThreads")
            page = Page(fetched=len(threads))
            fresh = 0
            caught_up = False
            for thread in threads:
                thread_id = thread.get("id") if isinstance(thread, dict) else None
                if isinstance(thread_id, str):
                    if thread_id in seen_ids:
                        continue
                    seen_ids.add(thread_id)
                fresh += 1
                published = _thread_published(thread)
                if boundary and published and published <= boundary:
                    caught_up = True  # newest first: the rest was stored by an earlier run
                    continue
                if published and (top is None or published > top):
                    top = published
                self._add(page, normalise_thread(thread, tag_keys=self.tag_keys, about=about))
                if isinstance(thread, dict):
                    for reply in self._replies(thread, vid):
                        self._add(page, normalise_comment(reply, video_id=vid, tag_keys=self.tag_keys, about=about))
            etag = body.get("etag")
            next_token = body.get("nextPageToken")
            repeated = (isinstance(etag, str) and etag in seen_etags) or (bool(threads) and not fresh)
            if isinstance(etag, str):
                seen_etags.add(etag)
            finished = (caught_up or repeated or not isinstance(next_token, str) or not next_token
                        or next_token in seen_tokens)
            first_poll_done = boundary is None and page_number == THREAD_PAGES_PER_VIDEO  # bounded backfill
            rest = {k: x for k, x in v.items() if k not in ("scan", "skipped")}
            if finished or first_poll_done:
                newest = max(filter(None, [top, boundary]), default=None)
                v = {**rest, "polled": _iso(self.now()), **({"seen_until": _iso(newest)} if newest else {})}
            else:
                v = {**rest, "polled": _iso(self.now()),
                     "scan": {"token": next_token, "top": _iso(top) if top else None}}
            state["videos"][vid] = v
            yield self._page(state, page)
            if finished or first_poll_done:
                return
            token = next_token

    def _replies(self, thread: dict, vid: str) -> list:
        replies = thread.get("replies")
        inline = replies.get("comments") if isinstance(replies, dict) else None
        inline = list(inline) if isinstance(inline, list) else []
        snippet = thread.get("snippet") if isinstance(thread.get("snippet"), dict) else {}
        thread_id = thread.get("id")
        if count_value(snippet.get("totalReplyCount")) <= len(inline) or not isinstance(thread_id, str):
            return inline
        fetched = self._fetch_replies(thread_id)
        known = {reply.get("id") for reply in fetched if isinstance(reply, dict)}
        return fetched + [reply for reply in inline if not isinstance(reply, dict) or reply.get("id") not in known]

    def _fetch_replies(self, parent_id: str) -> list:
        replies: list = []
        token: str | None = None
        for _ in range(REPLY_PAGES_PER_THREAD):
            params = {"part": "snippet", "parentId": parent_id, "maxResults": LIST_PAGE_SIZE, "textFormat": "html"}
            if token:
                params["pageToken"] = token
            try:
                body = self._request("comments", params, cost=LIST_COST, skippable=True)
            except _Skipped:
                break  # the parent was removed meanwhile: its replies went with it
            replies.extend(_items(body, "comments"))
            next_token = body.get("nextPageToken")
            if not isinstance(next_token, str) or not next_token or next_token == token:
                break
            token = next_token
        return replies

    def _room_for_a_thread_page(self) -> bool:
        """A thread page with all its replies fits in what this call may still request and spend."""
        if self.request_budget - self.requests_made < WORST_CASE_PAGE_REQUESTS:
            return False
        return self.unit_budget is None or self.unit_budget - self.units_spent >= WORST_CASE_PAGE_REQUESTS * LIST_COST

    # --- backfill --------------------------------------------------------------------------------

    # The walk's position, under the cursor's "backfill" key: {"since", "before"?: the oldest video
    # published time already searched, "token"?: the next search page of the current window,
    # "search_done"?, "videos": {id: {"about"?, "token"?, "done"?, "skipped"?}}, "backfilled_since"?}.

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Comments under the videos about the tag published since `since`, and under listed videos.

        Bounded per call by MAX_BACKFILL_REQUESTS, MAX_BACKFILL_UNITS and MAX_BACKFILL_SEARCH_PAGES; each
        page's cursor is the whole cursor (polling keys as given) with the walk's position, so a later call
        goes on and a finished walk (`backfilled_since` <= since) makes no request. Comments older than
        `since` are not yielded. Raises like fetch; yields a page with `rate_limited_until` before a request
        the day's quota cannot pay for.
        """
        self._start_call(requests=MAX_BACKFILL_REQUESTS, units=MAX_BACKFILL_UNITS)
        state = copy.deepcopy(cursor) if isinstance(cursor, dict) else {}
        walk = self._load_walk(state.get("backfill"), since)
        if walk is None:
            return
        state["backfill"] = walk
        self.saved = copy.deepcopy(state)
        try:
            yield from self._walk(state, since)
        except _QuotaSpent:
            yield self._page(self.saved, Page(), rate_limited_until=self.quota.reset_at())
        except _RunBudgetSpent:
            return

    def _load_walk(self, walk: Any, since: datetime) -> dict | None:
        """The walk to go on with for `since`; None when one already reached back that far."""
        walk = copy.deepcopy(walk) if isinstance(walk, dict) else {}
        finished = _parse(walk.get("backfilled_since"))
        if finished is not None and finished <= since:
            return None
        videos = {vid: v for vid, v in (walk.get("videos") or {}).items()
                  if isinstance(vid, str) and VIDEO_ID.match(vid) and isinstance(v, dict)} \
            if isinstance(walk.get("videos"), dict) else {}
        if walk.get("since") != _iso(since):
            # A new date: search tokens belong to their query, so the search starts a new window below
            # the oldest video already walked (or below the date a finished walk reached); videos already
            # walked are read again further back.
            before = [moment for moment in (_parse(walk.get("before")), finished) if moment is not None]
            walk = {"since": _iso(since), **({"before": _iso(min(before))} if before else {})}
            videos = {vid: {k: x for k, x in v.items() if k in ("about", "given")} for vid, v in videos.items()}
        walk["videos"] = videos
        for vid in self.given_videos:
            videos.setdefault(vid, {})["given"] = True
        if not self.search_enabled:
            walk["search_done"] = True
        return walk

    def _walk(self, state: dict, since: datetime) -> Iterator[Page]:
        walk = state["backfill"]
        if not walk.get("search_done"):
            yield from self._backfill_search(state, since)
        unchecked = [vid for vid, v in walk["videos"].items() if "about" not in v]
        for start in range(0, len(unchecked), VIDEOS_LIST_BATCH):
            batch = unchecked[start:start + VIDEOS_LIST_BATCH]
            body = self._request("videos", {"part": "snippet", "id": ",".join(batch),
                                            "maxResults": VIDEOS_LIST_BATCH}, cost=LIST_COST)
            found = {video["id"]: video for video in _items(body, "videos")
                     if isinstance(video, dict) and isinstance(video.get("id"), str)}
            for vid in batch:
                walk["videos"][vid]["about"] = sorted(video_tags(found[vid]) & self.tag_keys) if vid in found else []
                if vid not in found:
                    walk["videos"][vid].update(done=True, skipped="video not found or not public")
            yield self._page(state, Page(fetched=len(found)))
        for vid, v in list(walk["videos"].items()):
            if v.get("done"):
                continue
            if not (v.get("about") or v.get("given")):
                v["done"] = True  # a search hit that only mentions the words: not the conversation
                continue
            yield from self._backfill_video(state, vid, since)
        if walk.get("search_done") and all(v.get("done") for v in walk["videos"].values()):
            state["backfill"] = {"since": walk["since"], "backfilled_since": walk["since"]}
            yield self._page(state, Page())

    def _backfill_search(self, state: dict, since: datetime) -> Iterator[Page]:
        walk = state["backfill"]
        query = " | ".join(f"#{tag}" for tag in self.hashtags)
        for _ in range(MAX_BACKFILL_SEARCH_PAGES):
            before, token = walk.get("before"), walk.get("token")
            params = {"part": "snippet", "q": query, "type": "video", "order": "date",
                      "maxResults": SEARCH_PAGE_SIZE, "publishedAfter": _iso(since)}
            if before:
                params["publishedBefore"] = before
            if token:
                params["pageToken"] = token
            body = self._request("search", params, cost=SEARCH_COST)
            results = _items(body, "search")
            page = Page(fetched=len(results))
            oldest = _parse(walk.get("oldest"))
            for result in results:
                ids = result.get("id") if isinstance(result, dict) else None
                vid = ids.get("videoId") if isinstance(ids, dict) else None
                if not isinstance(vid, str) or not VIDEO_ID.match(vid):
                    page.rejected.append(RejectedRaw(reason="search result has no id.videoId", raw=result))
                    continue
                snippet = result.get("snippet") if isinstance(result.get("snippet"), dict) else {}
                published = _parse(snippet.get("publishedAt"))
                if published and (oldest is None or published < oldest):
                    oldest = published
                walk["videos"].setdefault(vid, {})
            if oldest is not None:
                walk["oldest"] = _iso(oldest)
            next_token = body.get("nextPageToken")
            if isinstance(next_token, str) and next_token and next_token != token and results:
                walk["token"] = next_token
            else:
                # This window is read to its end. YouTube serves a few hundred results per query, so
                # a new window below the oldest video found goes on, until one finds nothing older.
                walk.pop("token", None)
                progressed = oldest is not None and (_parse(before) is None or oldest < _parse(before))
                if progressed and oldest > since:
                    walk["before"] = _iso(oldest)
                else:
                    walk["search_done"] = True
            yield self._page(state, page)
            if walk.get("search_done"):
                return

    def _backfill_video(self, state: dict, vid: str, since: datetime) -> Iterator[Page]:
        v = state["backfill"]["videos"][vid]
        about = v.get("about") or []
        seen_tokens: set[str] = set()
        for _ in range(MAX_BACKFILL_THREAD_PAGES):
            if not self._room_for_a_thread_page():
                raise _RunBudgetSpent
            token = v.get("token")
            params = {"part": "snippet,replies", "videoId": vid, "maxResults": LIST_PAGE_SIZE, "order": "time",
                      "textFormat": "html"}
            if token:
                params["pageToken"] = token
                seen_tokens.add(token)
            try:
                body = self._request("commentThreads", params, cost=LIST_COST, skippable=True)
            except _Skipped as skipped:
                v.pop("token", None)
                v.update(done=True, skipped=skipped.reason)
                yield self._page(state, Page())
                return
            threads = _items(body, "commentThreads")
            page = Page(fetched=len(threads))
            reached = False
            for thread in threads:
                published = _thread_published(thread)
                if published is not None and published < since:
                    reached = True  # newest first: the rest is older than the date
                    continue
                self._add_since(page, normalise_thread(thread, tag_keys=self.tag_keys, about=about), since)
                if isinstance(thread, dict):
                    for reply in self._replies(thread, vid):
                        self._add_since(page, normalise_comment(reply, video_id=vid, tag_keys=self.tag_keys,
                                                                about=about), since)
            next_token = body.get("nextPageToken")
            if reached or not threads or not isinstance(next_token, str) or not next_token or next_token in seen_tokens:
                v.pop("token", None)
                v["done"] = True
            else:
                v["token"] = next_token
            yield self._page(state, page)
            if v.get("done"):
                return

    @classmethod
    def _add_since(cls, page: Page, result: NormalisedItem | RejectedRaw | None, since: datetime) -> None:
        if isinstance(result, NormalisedItem) and result.created_at < since:
            return
        cls._add(page, result)

    # --- re-check --------------------------------------------------------------------------------

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Read stored comments again with `comments.list?id=`, COMMENTS_BY_ID_BATCH ids (1 unit) a call.

        A comment returned is the current version (tagged with the source's tracked tags, as the
        conversation it was collected in, plus its own #tags); an id not returned was deleted, or is
        held for review or hidden by the channel (the API does not say which): a deletion with that
        reason. A reply whose video is named neither by the API nor by its stored payload is asked for
        with its parent, whose snippet names it. Raises RateLimited when the day's quota is spent.
        """
        self._start_call(requests=MAX_REQUESTS_PER_RUN)
        for batch, extra in self._recheck_batches(posts):
            ids = [external_id for external_id, _raw in batch] + extra
            try:
                body = self._request("comments", {"part": "snippet", "id": ",".join(ids), "textFormat": "html"},
                                     cost=LIST_COST, skippable=True)
            except _Skipped as skipped:
                for external_id, _raw in batch:
                    yield Recheck(external_id=external_id,
                                  error=f"YouTube refused comments.list for this id ({skipped.reason})")
                continue
            except _QuotaSpent:
                until = self.quota.reset_at()
                raise RateLimited(f"YouTube daily quota spent; next request after {until.isoformat()} "
                                  "(midnight Pacific time)", until=until) from None
            except _RunBudgetSpent:
                return
            found = {comment["id"]: comment for comment in _items(body, "comments")
                     if isinstance(comment, dict) and isinstance(comment.get("id"), str)}
            for external_id, raw in batch:
                yield self._recheck_one(external_id, raw, found)

    def _recheck_batches(self, posts: list[tuple[str, dict]]) -> list[tuple[list, list[str]]]:
        """Posts in calls of at most COMMENTS_BY_ID_BATCH ids, each reply with the parent that names its video."""
        groups: dict[str, list[tuple[str, dict]]] = {}
        for external_id, raw in posts:
            groups.setdefault(external_id.split(".", 1)[0], []).append((external_id, raw))
        batches: list[tuple[list, list[str]]] = []
        batch: list = []
        extra: list[str] = []
        for parent, members in groups.items():
            needs_parent = (all(external_id != parent for external_id, _raw in members)
                            and any(not _stored_video(raw) for _external_id, raw in members))
            while members:
                room = COMMENTS_BY_ID_BATCH - len(batch) - len(extra) - (1 if needs_parent else 0)
                if room <= 0:
                    batches.append((batch, extra))
                    batch, extra = [], []
                    continue
                taken, members = members[:room], members[room:]
                batch.extend(taken)
                if needs_parent and parent not in extra:
                    extra.append(parent)
                if members:
                    batches.append((batch, extra))
                    batch, extra = [], []
        if batch:
            batches.append((batch, extra))
        return batches

    def _recheck_one(self, external_id: str, raw: Any, found: dict) -> Recheck:
        comment = found.get(external_id)
        if comment is None:
            return Recheck(external_id=external_id,
                           deleted_reason="no longer returned by YouTube comments.list?id= (deleted, or held for "
                                          "review / hidden by the channel)")
        about = sorted(self.tag_keys)
        if isinstance(raw, dict) and (raw.get("kind") == "youtube#commentThread" or isinstance(_top_level(raw), dict)):
            thread = copy.deepcopy(raw)
            thread["snippet"]["topLevelComment"] = comment  # stored as a thread: kept as one
            result = normalise_thread(thread, about=about)
        else:
            parent = found.get(external_id.split(".", 1)[0])
            video = _stored_video(comment) or _stored_video(raw) or (_stored_video(parent) if parent else "")
            result = normalise_comment(comment, video_id=video, about=about)
        if isinstance(result, NormalisedItem) and result.external_id == external_id:
            return Recheck(external_id=external_id, item=result)
        reason = result.reason if isinstance(result, RejectedRaw) else "YouTube returned another comment"
        return Recheck(external_id=external_id, error=reason)

    @staticmethod
    def _add(page: Page, result: NormalisedItem | RejectedRaw | None) -> None:
        if isinstance(result, NormalisedItem):
            page.items.append(result)
        elif isinstance(result, RejectedRaw):
            page.rejected.append(result)


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime],
          store: TokenStore | None = None) -> YouTubeConnector:
    api_key = config.credentials.get("api_key")
    if not api_key:
        raise NeedsCredentials("YouTube needs an API key: set YOUTUBE_API_KEY (a Google Cloud key with the "
                               "YouTube Data API v3 enabled)")
    return YouTubeConnector(base_url=config.base_url, hashtags=config.hashtags, api_key=api_key,
                            options=dict(config.options or {}), client=client, now=now,
                            store=store if store is not None else _MemoryStore())
