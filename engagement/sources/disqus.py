"""Disqus: the comments of one article, one thread or a whole forum, through the Disqus API 3.0.

- One article: `threads/listPosts.json?thread:link=<URL>&forum=<shortname>` (options `article` and
  `forum`); one thread by id: `threads/listPosts.json?thread=<id>` (option `thread`); a whole forum:
  `forums/listPosts.json?forum=<shortname>` (option `forum` alone).
- Oldest first (`order=asc`), 100 a page, `related=thread` so each post names its article. Pages follow
  `cursor.next` while `cursor.hasNext`; a run stopped midway resumes from the saved `next`. Once caught
  up, later runs ask with `since=<newest createdAt seen>` (the boundary post comes again and is stored
  as the same row). A whole forum's first run looks back `backfill_days`, an article's reads it all.
- Comments carry no hashtags: registering a Disqus source says "these comments are about the tag", so
  every collected comment gets the source's tracked tags (besides any `#tags` in its text).
- Deleted and spam posts (`isDeleted`, `isSpam`) are skipped and counted in the health detail.
- Every answer is an envelope {"code": 0, "response": ...}; another code is an error whatever the HTTP
  status: 4/5/9/11/12/17/18 the key (NeedsCredentials), 13/14 the rate limit (RateLimited until
  `X-Ratelimit-Reset`, an epoch), 15/16 temporary, the rest (2 = invalid argument) permanent.
- The key goes in the `api_key` parameter (the API has no header for it), so messages never quote the
  requested URL.
- Backfill (`backfill`): the same list from `since=<date>`, oldest first, MAX_BACKFILL_PAGES a call, the
  walk under `history`. Re-check (`recheck`): `posts/details.json`, one post a request (no batch by id
  exists), MAX_RECHECKS_PER_CALL a call; `isDeleted` / `isSpam` / `isApproved: false` are deletions.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlsplit

import requests

from .base import (
    count_value,
    hashtags_in,
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NeedsCredentials,
    NormalisedArticle,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    RateLimited,
    Recheck,
    RejectedRaw,
    SourceConfig,
    TemporaryError,
    html_to_text,
    normalise_tag,
    parse_timestamp,
    retry_after,
    sanitise_html,
)

PLATFORM = "disqus"
# The API's largest page.
PAGE_LIMIT = 100
# One run reads at most this many pages (1,000 comments); the cursor lets the next run go on.
MAX_PAGES_PER_RUN = 10
# How far the first run of a whole-forum source looks back (an article's first run reads it all).
DEFAULT_BACKFILL_DAYS = 7
# Disqus budgets requests per hour; without a reset header, wait this long before asking again.
RATE_LIMIT_FALLBACK = timedelta(minutes=15)

# `collect --backfill` reads at most this many pages (5,000 comments) per call; a later call resumes.
MAX_BACKFILL_PAGES = 50
# posts/details reads one post per request and the API has no call that takes several post ids
# (posts/list filters by forum, thread or category only). A basic key has 1,000 requests an hour,
# shared with polling: one re-check reads at most this many posts; the others come first next time.
MAX_RECHECKS_PER_CALL = 50
# The cursor key of the backfill walk, kept by polling as it is.
HISTORY_KEY = "history"

CREDENTIAL_CODES = {4, 5, 9, 11, 12, 17, 18}
RATE_LIMIT_CODES = {13, 14}
TEMPORARY_CODES = {15, 16}
INVALID_ARGUMENT = 2


def _author(author: Any) -> NormalisedAuthor | None:
    if not isinstance(author, dict):
        return None
    name = str(author.get("name") or "").strip()[:300]
    author_id = author.get("id")
    if author.get("isAnonymous") or author_id in (None, ""):
        # Guests have no account id: the same name is taken for the same guest, on this platform only.
        if not name:
            return None
        return NormalisedAuthor(external_id=f"anonymous:{hashlib.sha256(name.encode()).hexdigest()[:24]}",
                                display_name=name)
    return NormalisedAuthor(
        external_id=str(author_id),
        handle=str(author.get("username") or "")[:300],
        display_name=name,
        url=str(author.get("profileUrl") or author.get("url") or ""),
    )


def _http_url(value: Any) -> str:
    return value if isinstance(value, str) and urlsplit(value).scheme in ("http", "https") else ""


def _article(thread: Any, fallback_url: str) -> NormalisedArticle | None:
    if isinstance(thread, dict):
        link = _http_url(thread.get("link"))
        if not link:
            return None
        try:
            published = parse_timestamp(thread.get("createdAt"), field_name="thread.createdAt")
        except ValueError:
            published = None
        return NormalisedArticle(url=link, title=str(thread.get("clean_title") or thread.get("title") or "")[:1000],
                                 published_at=published, external_id=str(thread.get("id") or ""))
    return NormalisedArticle(url=fallback_url) if fallback_url else None


def normalise_post(post: Any, *, tag_keys: Iterable[str] = (), article_url: str = "",
                   ) -> NormalisedItem | RejectedRaw | None:
    """One Disqus post as a comment with `tag_keys` applied; None for a deleted or spam post.

    `article_url`: the article when the post names its thread by id only (no `related=thread`).
    """
    if not isinstance(post, dict):
        return RejectedRaw(reason="post is not a JSON object", raw=post)
    post_id = post.get("id")
    if not isinstance(post_id, (str, int)) or isinstance(post_id, bool) or str(post_id) == "":
        return RejectedRaw(reason="post has no id", raw=post)
    external_id = str(post_id)
    if post.get("isDeleted") or post.get("isSpam"):
        return None
    try:
        created_at = parse_timestamp(post.get("createdAt"), field_name="createdAt")  # no zone: UTC
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=post, external_id=external_id)
    message = post.get("message")
    if not isinstance(message, str):
        return RejectedRaw(reason="message is missing or not a string", raw=post, external_id=external_id)
    if len(message) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"message of {len(message)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=post, external_id=external_id)
    html = sanitise_html(message)
    raw_message = post.get("raw_message")
    text = raw_message if isinstance(raw_message, str) else html_to_text(html)
    article = _article(post.get("thread"), article_url)
    parent = post.get("parent")
    return NormalisedItem(
        platform=PLATFORM,
        external_id=external_id,
        url=f"{article.url}#comment-{external_id}" if article else "",
        kind="comment",
        author=_author(post.get("author")),
        created_at=created_at,
        html=html,
        text=text,
        hashtags=tuple(sorted(hashtags_in(text) | {normalise_tag(tag) for tag in tag_keys if normalise_tag(tag)})),
        reply_to_external_id=str(parent) if parent not in (None, "", 0, False) else "",
        article=article,
        like_count=count_value(post.get("likes")),
        raw=post,
    )


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """A post as the API returns it, with `hashtags` applied (Disqus comments have none of their own)."""
    return normalise_post(obj, tag_keys=hashtags)


def rate_limit_reset(response: requests.Response) -> datetime | None:
    value = response.headers.get("X-Ratelimit-Reset", "").strip()
    if not value.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(value), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _since_value(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _parse(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value, field_name="cursor since")
    except ValueError:
        return None


class DisqusConnector:
    platform = PLATFORM

    def __init__(self, *, base_url: str, hashtags: Iterable[str], api_key: str, options: dict,
                 client: HttpClient, now: Callable[[], datetime]):
        self.base_url = base_url.rstrip("/")
        self.tag_keys = tuple(sorted({normalise_tag(tag) for tag in hashtags if normalise_tag(tag)}))
        self.api_key = api_key
        self.client = client
        self.now = now
        forum = str(options.get("forum") or "").strip()
        article = str(options.get("article") or "").strip()
        thread = str(options.get("thread") or "").strip()
        self.article_url = ""
        if thread:
            self.endpoint, self.params = "threads/listPosts.json", {"thread": thread, **({"forum": forum} if forum else {})}
        elif article:
            if not _http_url(article):
                raise PermanentError(f"option article must be the article's http(s) URL, not {article!r}")
            if not forum:
                raise PermanentError("option article needs the site's Disqus shortname too: --option forum=SHORTNAME")
            self.endpoint, self.params = "threads/listPosts.json", {"thread:link": article, "forum": forum}
            self.article_url = article
        elif forum:
            self.endpoint, self.params = "forums/listPosts.json", {"forum": forum}
        else:
            raise PermanentError("nothing to collect: set --option forum=SHORTNAME (the whole forum), with "
                                 "--option article=URL for one article, or --option thread=ID")
        self.whole_forum = not thread and not article
        raw_days = str(options.get("backfill_days") or DEFAULT_BACKFILL_DAYS).strip()
        if not raw_days.isdigit() or int(raw_days) < 1:
            raise PermanentError(f"option backfill_days must be a whole number of days, not {raw_days!r}")
        self.first_run_lookback = timedelta(days=int(raw_days))

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Pages oldest first from the cursor ({"since", "next"?, "newest"?, "skipped_deleted"}).

        Bounded by MAX_PAGES_PER_RUN; stops at a page whose X-Ratelimit-Remaining is 0. Raises
        NeedsCredentials, RateLimited, PermanentError, TemporaryError, MalformedResponse.
        """
        since = _parse(cursor.get("since"))
        if since is None and self.whole_forum:
            since = self.now() - self.first_run_lookback
        token = cursor.get("next") if isinstance(cursor.get("next"), str) and cursor.get("next") else None
        newest = _parse(cursor.get("newest")) or since
        skipped = count_value(cursor.get("skipped_deleted"))
        seen: set[str] = set()
        for _ in range(MAX_PAGES_PER_RUN):
            params = {**self.params, "api_key": self.api_key, "limit": PAGE_LIMIT, "order": "asc", "related": "thread"}
            if since is not None:
                params["since"] = _since_value(since)
            if token:
                params["cursor"] = token
            body, response = self._get(params)
            posts = body["response"]
            page = Page(fetched=len(posts))
            fresh = 0
            for post in posts:
                post_id = str(post.get("id")) if isinstance(post, dict) and post.get("id") is not None else None
                if post_id is not None:
                    if post_id in seen:
                        continue
                    seen.add(post_id)
                fresh += 1
                if isinstance(post, dict) and (post.get("isDeleted") or post.get("isSpam")):
                    skipped += 1  # removed by its author or a moderator: not part of the conversation
                    continue
                result = normalise_post(post, tag_keys=self.tag_keys, article_url=self.article_url)
                if isinstance(result, NormalisedItem):
                    page.items.append(result)
                    newest = max(newest, result.created_at) if newest else result.created_at
                elif isinstance(result, RejectedRaw):
                    page.rejected.append(result)
            page.rate_limited_until = self._spent(response)
            paging = body.get("cursor") if isinstance(body.get("cursor"), dict) else {}
            next_token = paging.get("next")
            more = (bool(paging.get("hasNext")) and isinstance(next_token, str) and bool(next_token)
                    and next_token != token and fresh > 0)
            if more:
                page.cursor = {"since": _since_value(since) if since else None, "next": next_token,
                               "newest": _since_value(newest) if newest else None, "skipped_deleted": skipped}
            else:
                page.cursor = {"since": _since_value(newest) if newest else None, "skipped_deleted": skipped}
            page.cursor = {key: value for key, value in page.cursor.items() if value is not None}
            if isinstance(cursor.get(HISTORY_KEY), dict):
                page.cursor[HISTORY_KEY] = dict(cursor[HISTORY_KEY])  # the backfill's walk, untouched
            page.health_detail = {"skipped_deleted": skipped}
            yield page
            if not more or page.rate_limited_until:
                return
            token = next_token

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """The comments written since `since`: the same list as polling, oldest first from
        `since=<since>` (Disqus's `since` with `order=asc`), through `cursor.next` to the newest comment,
        at most MAX_BACKFILL_PAGES pages per call.

        The walk's position is kept under `history` (`since`, `next`), the polling keys untouched; a
        finished walk leaves `history.backfilled_since`, and a later call for that date or a later one
        makes no request. Stops at a page whose X-Ratelimit-Remaining is 0. Raises like `fetch`.
        """
        state = dict(cursor) if isinstance(cursor, dict) else {}
        history = dict(state[HISTORY_KEY]) if isinstance(state.get(HISTORY_KEY), dict) else {}
        done = _parse(history.get("backfilled_since"))
        if done is not None and done <= since:
            return
        wanted = _since_value(since)
        if history.get("since") != wanted:
            history = {"since": wanted, **({"backfilled_since": history["backfilled_since"]} if done else {})}
        token = history.get("next") if isinstance(history.get("next"), str) and history.get("next") else None
        seen: set[str] = set()
        for _ in range(MAX_BACKFILL_PAGES):
            params = {**self.params, "api_key": self.api_key, "limit": PAGE_LIMIT, "order": "asc",
                      "related": "thread", "since": wanted}
            if token:
                params["cursor"] = token
            body, response = self._get(params)
            posts = body["response"]
            page = Page(fetched=len(posts))
            fresh = 0
            for post in posts:
                post_id = str(post.get("id")) if isinstance(post, dict) and post.get("id") is not None else None
                if post_id is not None:
                    if post_id in seen:
                        continue
                    seen.add(post_id)
                fresh += 1
                result = normalise_post(post, tag_keys=self.tag_keys, article_url=self.article_url)
                if isinstance(result, NormalisedItem) and result.created_at >= since:
                    page.items.append(result)
                elif isinstance(result, RejectedRaw):
                    page.rejected.append(result)
            page.rate_limited_until = self._spent(response)
            paging = body.get("cursor") if isinstance(body.get("cursor"), dict) else {}
            next_token = paging.get("next")
            more = (bool(paging.get("hasNext")) and isinstance(next_token, str) and bool(next_token)
                    and next_token != token and fresh > 0)
            if more:
                history["next"] = next_token
            else:
                history = {"backfilled_since": wanted}
            page.cursor = {**state, HISTORY_KEY: dict(history)}
            yield page
            if not more or page.rate_limited_until:
                return
            token = next_token

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Read stored posts again with `posts/details.json?post=<id>`, one request each (the API reads
        posts by id one at a time), at most MAX_RECHECKS_PER_CALL per call.

        A post flagged `isDeleted`, `isSpam` or `isApproved: false` is gone from public view: a deletion
        naming the flag. Otherwise it is its current version (an edit becomes a revision when stored).
        Error 2 (invalid argument, e.g. an id Disqus does not find) is an error, not a deletion: Disqus
        keeps deleted posts, flagged, and does not document that answer as a deletion. Raises
        RateLimited (also once X-Ratelimit-Remaining reaches 0, after yielding that post),
        NeedsCredentials, TemporaryError, PermanentError, MalformedResponse.
        """
        for external_id, _raw in posts[:MAX_RECHECKS_PER_CALL]:
            if not external_id.isdigit():
                yield Recheck(external_id=external_id, error="not a Disqus post id")
                continue
            try:
                body, response = self._get({"post": external_id, "api_key": self.api_key, "related": "thread"},
                                           endpoint="posts/details.json", shape=dict)
            except _InvalidArgument as exc:
                yield Recheck(external_id=external_id, error=f"{exc}; Disqus does not say whether it was deleted")
                continue
            yield self._recheck_result(external_id, body["response"])
            until = self._spent(response)
            if until is not None:
                raise RateLimited(f"Disqus rate limit spent (X-Ratelimit-Remaining: 0) until {until.isoformat()}",
                                  until=until)

    def _recheck_result(self, external_id: str, post: dict) -> Recheck:
        if str(post.get("id")) != external_id:
            return Recheck(external_id=external_id, error=f"Disqus answered with another post ({post.get('id')!r})")
        for flag, reason in (("isDeleted", "deleted on Disqus (isDeleted)"),
                             ("isSpam", "marked as spam on Disqus (isSpam)")):
            if post.get(flag) is True:
                return Recheck(external_id=external_id, deleted_reason=reason)
        if post.get("isApproved") is False:
            return Recheck(external_id=external_id,
                           deleted_reason="no longer approved on Disqus (isApproved: false, held for moderation)")
        result = normalise_post(post, tag_keys=self.tag_keys, article_url=self.article_url)
        if isinstance(result, NormalisedItem):
            return Recheck(external_id=external_id, item=result)
        reason = result.reason if isinstance(result, RejectedRaw) else "Disqus flags the post as removed"
        return Recheck(external_id=external_id, error=reason)

    def _spent(self, response: requests.Response) -> datetime | None:
        """When the budget may be used again, if this answer says it is spent (X-Ratelimit-Remaining 0)."""
        remaining = response.headers.get("X-Ratelimit-Remaining", "").strip()
        if remaining.isdigit() and int(remaining) <= 0:
            return rate_limit_reset(response) or self.now() + RATE_LIMIT_FALLBACK
        return None

    def _get(self, params: dict, *, endpoint: str | None = None, shape: type = list) -> tuple[dict, requests.Response]:
        """GET an endpoint (the source's list by default) and check its envelope, whose `response` must
        be a `shape` (a list of posts; one post for posts/details)."""
        endpoint = endpoint or self.endpoint
        now = self.now()
        response = self.client.get(f"{self.base_url}/{endpoint}", params=params,
                                   headers={"Accept": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("code"), int) and body["code"] != 0:
            raise self._api_error(body, response, now, endpoint)
        status = response.status_code
        if status == 429:
            until = retry_after(response.headers.get("Retry-After"), now=now) or rate_limit_reset(response)
            until = max(until or now + RATE_LIMIT_FALLBACK, now)
            raise RateLimited(f"Disqus rate limit (429) until {until.isoformat()}", until=until)
        if status >= 500:
            raise TemporaryError(f"Disqus answered {status} to {endpoint}")
        if status in (401, 403):
            raise NeedsCredentials(f"Disqus refused {endpoint} ({status}): check DISQUS_API_KEY")
        if status != 200:
            raise PermanentError(f"Disqus answered {status} to {endpoint}")
        if body is None:
            raise MalformedResponse(f"expected JSON from Disqus {endpoint}, got "
                                    f"{response.headers.get('Content-Type', 'no content type')}", raw=response.text[:10_000])
        if not isinstance(body, dict) or "code" not in body or not isinstance(body.get("response"), shape):
            found = sorted(body)[:10] if isinstance(body, dict) else type(body).__name__
            expected = "[posts]" if shape is list else "post"
            raise MalformedResponse(f"expected the Disqus envelope {{code, response: {expected}}} from {endpoint}, "
                                    f"got {found}", raw=body)
        return body, response

    def _api_error(self, body: dict, response: requests.Response, now: datetime, endpoint: str) -> Exception:
        code = body["code"]
        detail = str(body.get("response") or "")[:300].replace(self.api_key, "<key>")
        what = f"Disqus error {code} on {endpoint}: {detail}"
        if code in CREDENTIAL_CODES:
            return NeedsCredentials(f"{what} - check DISQUS_API_KEY")
        if code in RATE_LIMIT_CODES:
            until = retry_after(response.headers.get("Retry-After"), now=now) or rate_limit_reset(response)
            until = max(until or now + RATE_LIMIT_FALLBACK, now)
            return RateLimited(f"{what} (rate limit; next request after {until.isoformat()})", until=until)
        if code in TEMPORARY_CODES:
            return TemporaryError(what)
        if code == INVALID_ARGUMENT:
            return _InvalidArgument(what)
        return PermanentError(what)


class _InvalidArgument(PermanentError):
    """Disqus error 2: an argument it cannot use (an unknown thread link, a post id it does not find)."""


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime], store=None) -> DisqusConnector:
    api_key = config.credentials.get("api_key")
    if not api_key:
        raise NeedsCredentials("Disqus needs an API key: set DISQUS_API_KEY (the public key of a Disqus API application)")
    return DisqusConnector(base_url=config.base_url, hashtags=config.hashtags, api_key=api_key,
                           options=dict(config.options or {}), client=client, now=now)
