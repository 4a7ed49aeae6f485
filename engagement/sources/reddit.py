"""Reddit: submissions that carry the tag, found by search, and the conversation under each of them.

- App-only OAuth: `POST https://www.reddit.com/api/v1/access_token` with `grant_type=client_credentials`
  and HTTP basic auth (REDDIT_CLIENT_ID / REDDIT_CLIENT_SECRET). The token is kept in the shared store
  until `expires_in` (less a margin), so every worker uses one token, never a login per request; a 401
  on a kept token drops it and logs in once more.
- API calls go to the OAuth root (`https://oauth.reddit.com`) with `Authorization: bearer <token>` and
  `raw_json=1` (HTML fields unescaped): `GET /search` (or `/r/<sub>/search` with `restrict_sr=on`),
  `sort=new`, paged with `after`; then `GET /comments/<id>?sort=new` for each matching submission, with
  its `more` stubs resolved through `GET /api/morechildren` (bounded per thread).
- A submission matches when its title or selftext carries `#tag` (casefolded); in a named subreddit
  (option `subreddit`) the bare word is enough by default (option `match`). Comments under a matching
  submission are the conversation: stored with the submission's tags whatever their own text says.
- `external_id` is the fullname (`t3_…` for submissions, `t1_…` for comments); `reply_to_external_id`
  is the parent's fullname (`parent_id`), so replies link to stored parents.
- A comment whose body is `[deleted]` or `[removed]` is not stored (its replies are); an author
  `[deleted]` keeps the text with no author. `edited` is `false` or an epoch: `edited_at`.
- `x-ratelimit-remaining` / `x-ratelimit-reset` (seconds) are honoured: at 0 collection stops until the
  reset; a 429 waits for `Retry-After`, else the reset.
- Backfill (`collect --backfill --since DATE`): the same search, `sort=new`, paged with `after` until a
  submission older than the date (Reddit serves at most about 1,000 results of a search), then the
  trees of the matching submissions, bounded per call; the position is kept under the cursor's `backfill`.
- Re-check: `GET /api/info?id=t1_…,t3_…` (100 fullnames a request). `[deleted]` is a deletion by the
  author, `[removed]` (or `removed_by_category`) a removal; a fullname it does not return is an error.
"""

from __future__ import annotations

import copy
import hashlib
import html as html_lib
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit

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
    RateLimited,
    Recheck,
    RejectedRaw,
    SourceConfig,
    SourceError,
    TokenStore,
    check_status,
    html_to_text,
    json_body,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "reddit"
API_ROOT = "https://oauth.reddit.com"
TOKEN_URL = "https://www.reddit.com/api/v1/access_token"
WEB_ROOT = "https://www.reddit.com"
# Hosts a user may register for the real Reddit; all of them mean the OAuth API root above.
REDDIT_HOSTS = {"reddit.com", "www.reddit.com", "old.reddit.com", "new.reddit.com", "np.reddit.com",
                "oauth.reddit.com"}

# Reddit's largest listing page.
SEARCH_LIMIT = 100
# Search pages per hashtag per run; the cursor (newest submission seen) lets the next run go on.
MAX_SEARCH_PAGES = 3
# Comment trees read per run: each costs 1 request plus its morechildren calls, so a busy tag cannot
# spend the 10-minute budget (about 1,000 requests for an app) or hold a worker; the rest wait in the cursor.
MAX_THREADS_PER_RUN = 10
# Comments asked for in one tree request (Reddit returns fewer, with `more` stubs for the rest).
COMMENT_LIMIT = 500
# /api/morechildren takes at most 100 ids per call; 3 calls bound a thread to ~4 requests.
MORE_CHILDREN_BATCH = 100
MAX_MORE_CALLS_PER_THREAD = 3
# A thread is read again on later runs while it is this young: replies come in for a few days.
THREAD_WATCH = timedelta(days=3)
# Threads kept in the cursor (newest first); older ones are not followed any more.
MAX_WATCHED_THREADS = 100
# A token is dropped this long before Reddit's expiry so no request goes out with a dying token.
TOKEN_EXPIRY_MARGIN = 60
# `collect --backfill`: search pages per tag per call; Reddit serves at most about 1,000 results (10
# pages of 100) of one search, so one call reaches as far back as search can.
MAX_BACKFILL_SEARCH_PAGES = 10
# Comment trees read per backfill call (each 1 request plus at most 3 morechildren calls: ~100 requests,
# a tenth of the 10-minute budget); the others wait in the cursor for the next call.
MAX_BACKFILL_THREADS = 25
# /api/info takes at most 100 fullnames per request (praw asks in batches of 100).
INFO_BATCH = 100
DELETED = {"[deleted]", "[removed]"}
SUBREDDIT_NAME = re.compile(r"^[A-Za-z0-9_+]{2,64}$")
HASHTAG = re.compile(r"(?<![\w#&/])#(\w*[^\W\d_]\w*)")
LINK = re.compile(r"https?://[^\s)\]>\"']+")


# --- matching --------------------------------------------------------------------------------------


def matched_tags(text: str, tag_keys: tuple[str, ...] | list[str], *, word: bool) -> tuple[str, ...]:
    """The tag keys `text` carries: as `#tag` (casefolded), or as the bare word too when `word`.

    Matched on the Markdown source, where `\\#tag` (a hashtag escaped from becoming a heading) counts,
    with links taken out: a word inside a URL (`https://oauth.reddit.com/...`) is not a mention.
    """
    folded = LINK.sub(" ", text).casefold()
    found = []
    for key in tag_keys:
        prefix = r"(?<!\w)" if word else r"(?<![\w#&/])#"
        if re.search(prefix + re.escape(key) + r"(?!\w)", folded):
            found.append(key)
    return tuple(found)


def hashtags_in(text: str) -> set[str]:
    return {normalise_tag(tag) for tag in HASHTAG.findall(LINK.sub(" ", text))}


# --- parsing ---------------------------------------------------------------------------------------


def _unwrap(thing: Any) -> tuple[str, Any]:
    """(kind, data) of a thing `{"kind": "t1", "data": {...}}`, or of a bare data object."""
    if isinstance(thing, dict) and "kind" in thing and "data" in thing:
        return str(thing["kind"]), thing["data"]
    if isinstance(thing, dict):
        name = thing.get("name")
        return (name.split("_", 1)[0] if isinstance(name, str) and "_" in name else ""), thing
    return "", thing


def _fullname(data: dict, prefix: str) -> str:
    name = data.get("name")
    if isinstance(name, str) and name.startswith(prefix + "_") and len(name) > 3:
        return name
    ident = data.get("id")
    if isinstance(ident, str) and ident.isalnum():
        return f"{prefix}_{ident}"
    return ""


def _epoch(value: Any, *, field_name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field_name} is missing or not a number: {value!r}")
    try:
        return datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{field_name} is not a usable epoch: {value!r}") from None


def _edited_at(value: Any) -> datetime | None:
    # `false`, or the epoch of the last edit (very old things say `true`, with no time).
    if isinstance(value, bool) or value is None:
        return None
    try:
        return _epoch(value, field_name="edited")
    except ValueError:
        return None


def _author(data: dict) -> NormalisedAuthor | None:
    name = data.get("author")
    if not isinstance(name, str) or not name or name in DELETED:
        return None
    # Usernames are unique and cannot be changed, so the profile URL is a stable identity (old
    # responses have no author_fullname).
    profile = f"{WEB_ROOT}/user/{quote(name, safe='')}/"
    return NormalisedAuthor(external_id=profile, handle=f"u/{name}", display_name=name, url=profile)


def _web_url(data: dict, fallback_path: str) -> str:
    permalink = data.get("permalink")
    if isinstance(permalink, str) and permalink.startswith("/"):
        return WEB_ROOT + permalink.split("?", 1)[0]  # search results add ?ref=search_posts
    return WEB_ROOT + fallback_path


def _markdown_html(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    # Without raw_json=1 Reddit escapes its HTML fields ("&lt;div ..."); accept both.
    return html_lib.unescape(value) if value.lstrip().startswith("&lt;") else value


def _strip_replies(thing_kind: str, data: dict) -> dict:
    # Each reply is stored as its own item, so the subtree is not kept again in every ancestor's raw.
    if isinstance(data.get("replies"), dict):
        data = {**data, "replies": ""}
    return {"kind": thing_kind, "data": data}


def normalise_submission(thing: Any, *, tag_keys: tuple[str, ...], word: bool,
                         require_tag: bool = True) -> NormalisedItem | RejectedRaw | None:
    """A submission (t3) as a post; None when its title and selftext do not carry a tag (unless not
    `require_tag`: a stored submission looked at again, whose edit may have taken the tag out)."""
    _kind, data = _unwrap(thing)
    if not isinstance(data, dict):
        return RejectedRaw(reason="submission is not a JSON object", raw=thing)
    fullname = _fullname(data, "t3")
    if not fullname:
        return RejectedRaw(reason="submission has no id or name", raw=thing)
    title = data.get("title")
    if not isinstance(title, str):
        return RejectedRaw(reason="submission title is missing or not a string", raw=thing, external_id=fullname)
    selftext = data.get("selftext") if isinstance(data.get("selftext"), str) else ""
    if selftext.strip() in DELETED:
        selftext = ""
    matched = matched_tags(f"{title}\n{selftext}", tag_keys, word=word)
    if not matched and require_tag:
        return None
    try:
        created_at = _epoch(data.get("created_utc"), field_name="created_utc")
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=thing, external_id=fullname)
    body_html = _markdown_html(data.get("selftext_html")) if selftext else ""
    if len(body_html) + len(title) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"selftext of {len(body_html)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=thing, external_id=fullname)
    parts = [f"<p>{html_lib.escape(title)}</p>", body_html]
    link = data.get("url")
    if not data.get("is_self") and isinstance(link, str) and link.startswith(("http://", "https://")):
        parts.append(f'<p><a href="{html_lib.escape(link)}">{html_lib.escape(link)}</a></p>')
    html = sanitise_html("".join(parts))
    url = _web_url(data, f"/comments/{fullname[3:]}/")
    return NormalisedItem(
        platform=PLATFORM,
        external_id=fullname,
        uri=url,
        url=url,
        kind="post",
        author=_author(data),
        created_at=created_at,
        edited_at=_edited_at(data.get("edited")),
        html=html,
        text=html_to_text(html),
        hashtags=tuple(sorted(set(matched) | hashtags_in(f"{title}\n{selftext}"))),
        reply_count=count_value(data.get("num_comments")),
        repost_count=count_value(data.get("num_crossposts")),
        like_count=count_value(data.get("score")),
        raw=_strip_replies("t3", data),
    )


def normalise_comment(thing: Any, *, thread_tags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """A comment (t1) of a matching conversation, stored with `thread_tags` and its own #tags.

    None for a `[deleted]` / `[removed]` body: there is no text left to store.
    """
    _kind, data = _unwrap(thing)
    if not isinstance(data, dict):
        return RejectedRaw(reason="comment is not a JSON object", raw=thing)
    fullname = _fullname(data, "t1")
    if not fullname:
        return RejectedRaw(reason="comment has no id or name", raw=thing)
    body = data.get("body")
    if not isinstance(body, str):
        return RejectedRaw(reason="comment body is missing or not a string", raw=_strip_replies("t1", data),
                           external_id=fullname)
    if body.strip() in DELETED:
        return None
    raw = _strip_replies("t1", data)
    try:
        created_at = _epoch(data.get("created_utc"), field_name="created_utc")
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=raw, external_id=fullname)
    body_html = _markdown_html(data.get("body_html")) or f"<p>{html_lib.escape(body)}</p>"
    if len(body_html) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"body of {len(body_html)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=raw, external_id=fullname)
    html = sanitise_html(body_html)
    parent = data.get("parent_id")
    parent = parent if isinstance(parent, str) and parent.startswith(("t1_", "t3_")) else ""
    link = data.get("link_id")
    link36 = link[3:] if isinstance(link, str) and link.startswith("t3_") else "_"
    url = _web_url(data, f"/comments/{link36}/_/{fullname[3:]}/")
    return NormalisedItem(
        platform=PLATFORM,
        external_id=fullname,
        uri=url,
        url=url,
        kind="comment",
        author=_author(data),
        created_at=created_at,
        edited_at=_edited_at(data.get("edited")),
        html=html,
        text=html_to_text(html),
        hashtags=tuple(sorted(set(thread_tags) | hashtags_in(body))),
        reply_to_external_id=parent,
        like_count=count_value(data.get("score")),
        raw=raw,
    )


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """One Reddit thing (`{"kind", "data"}` as stored in `raw`, or its bare data) as an item, for importers
    and for re-parsing stored posts.

    A submission (t3) is kept when its title or selftext carries one of `hashtags`, as `#tag` or as the
    bare word (the looser rule, so every submission this connector stored parses again). A comment (t1)
    is taken as part of a conversation about `hashtags` and gets them, as the connector stores it: a
    comment alone cannot show which submission made it relevant. None for other kinds (`more`, t2, t5).
    """
    keys = tuple(normalise_tag(tag) for tag in hashtags)
    kind, data = _unwrap(obj)
    if not isinstance(data, dict):
        return RejectedRaw(reason="not a JSON object", raw=obj)
    if kind == "t3":
        return normalise_submission(obj, tag_keys=keys, word=True)
    if kind == "t1":
        return normalise_comment(obj, thread_tags=keys) if keys else None
    return None


def _listing_children(body: Any, *, url: str) -> list:
    if (not isinstance(body, dict) or body.get("kind") != "Listing" or not isinstance(body.get("data"), dict)
            or not isinstance(body["data"].get("children"), list)):
        raise MalformedResponse(f"expected a Listing with data.children from {url}", raw=body)
    return body["data"]["children"]


def parse_comment_tree(children: list, *, thread_tags: tuple[str, ...]) -> tuple[list, list, list[str], int]:
    """Walk a comment Listing's children: (items, rejected, ids behind `more` stubs, comments seen).

    Leaf comments have `replies: ""`. "Continue this thread" stubs (`id: "_"`, no children) are
    skipped: they need a request per stub, and their replies are found by later runs only if they
    surface elsewhere.
    """
    items: list[NormalisedItem] = []
    rejected: list[RejectedRaw] = []
    more_ids: list[str] = []
    seen = 0
    stack = list(reversed(children))
    while stack:
        thing = stack.pop()
        kind, data = _unwrap(thing)
        if kind == "more" and isinstance(data, dict):
            ids = data.get("children")
            if data.get("id") != "_" and isinstance(ids, list):
                more_ids.extend(i for i in ids if isinstance(i, str) and i.isalnum())
            continue
        if kind != "t1":
            rejected.append(RejectedRaw(reason=f"expected a comment (t1) in the tree, got {kind or type(thing).__name__}",
                                        raw=thing))
            continue
        seen += 1
        result = normalise_comment(thing, thread_tags=thread_tags)
        if isinstance(result, NormalisedItem):
            items.append(result)
        elif isinstance(result, RejectedRaw):
            rejected.append(result)
        replies = data.get("replies") if isinstance(data, dict) else None
        if isinstance(replies, dict):
            reply_children = replies.get("data", {}).get("children") if isinstance(replies.get("data"), dict) else None
            if isinstance(reply_children, list):
                stack.extend(reversed(reply_children))
    return items, rejected, more_ids, seen


# --- fetching --------------------------------------------------------------------------------------


def _header_number(response: requests.Response, name: str) -> float | None:
    try:
        value = float(response.headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class RedditConnector:
    platform = PLATFORM

    def __init__(self, *, api_root: str, token_url: str, subreddit: str, word_match: bool, hashtags: list[str],
                 credentials: dict, client: HttpClient, now: Callable[[], datetime], store: TokenStore):
        self.api_root = api_root.rstrip("/")
        self.token_url = token_url
        self.subreddit = subreddit
        self.word_match = word_match
        self.tags = [(tag.strip().lstrip("#"), normalise_tag(tag)) for tag in hashtags]
        self.tag_keys = tuple(key for _tag, key in self.tags)
        self.client_id = credentials.get("client_id", "")
        self.client_secret = credentials.get("client_secret", "")
        self.client = client
        self.now = now
        self.store = store
        digest = hashlib.sha256(f"{token_url}\n{self.client_id}".encode()).hexdigest()[:24]
        self.token_key = f"reddit:token:{digest}"
        self.token: str | None = None
        self.spent_until: datetime | None = None
        self.health_detail: dict = {}

    # -- the run

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Search pages for each tag, then up to MAX_THREADS_PER_RUN comment trees (new threads first,
        then young ones again). Every page's cursor is the whole cursor once it is stored."""
        if not self.client_id or not self.client_secret:
            raise NeedsCredentials("Reddit needs an app's credentials: set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET")
        searches = {k: dict(v) for k, v in (cursor.get("search") or {}).items() if isinstance(v, dict)}
        threads = {k: dict(v) for k, v in (cursor.get("threads") or {}).items()
                   if isinstance(v, dict) and isinstance(k, str) and k.startswith("t3_")}

        self._forget_old_threads(threads)

        walk = cursor.get("backfill")

        def whole_cursor() -> dict:
            whole = {"search": {k: dict(v) for k, v in searches.items()},
                     "threads": {k: dict(v) for k, v in threads.items()}}
            if isinstance(walk, dict):
                whole["backfill"] = copy.deepcopy(walk)  # the backfill's position, kept as it is
            return whole

        for tag, key in self.tags:
            for page in self._search(tag, key, searches, threads):
                page.cursor = whole_cursor()
                yield page
                if page.rate_limited_until:
                    return
        for fullname in self._threads_due(threads):
            error: SourceError | None = None
            try:
                page = self._read_thread(fullname, threads)
            except _PartialThread as partial:
                page, error = partial.page, partial.error
            page.cursor = whole_cursor()
            yield page
            if error is not None:
                raise error
            if page.rate_limited_until:
                return

    def _page(self) -> Page:
        return Page(rate_limited_until=self.spent_until, health_detail=dict(self.health_detail))

    # -- search

    def _search(self, tag: str, key: str, searches: dict, threads: dict) -> Iterator[Page]:
        state = searches.get(key, {})
        newest = state.get("newest") if isinstance(state.get("newest"), (int, float)) else None
        path = f"/r/{self.subreddit}/search" if self.subreddit else "/search"
        params = {"q": tag, "sort": "new", "type": "link", "limit": SEARCH_LIMIT}
        if self.subreddit and self.subreddit.lower() != "all":
            params["restrict_sr"] = "on"
        after = None
        run_newest = newest
        for _ in range(MAX_SEARCH_PAGES):
            page, submissions, after = self._search_page(path, params, after)
            reached_known = False
            for thing, data in submissions:
                result = normalise_submission(thing, tag_keys=self.tag_keys, word=self.word_match)
                created = data.get("created_utc") if isinstance(data, dict) else None
                if isinstance(created, (int, float)) and not isinstance(created, bool):
                    if newest is not None and created <= newest:
                        reached_known = True
                    run_newest = created if run_newest is None else max(run_newest, created)
                if isinstance(result, RejectedRaw):
                    page.rejected.append(result)
                elif isinstance(result, NormalisedItem):
                    page.items.append(result)
                    if newest is None or result.created_at.timestamp() > newest:
                        # Older ones were found by an earlier run; they are followed until THREAD_WATCH.
                        self._watch(threads, result)
            if run_newest is not None:
                searches[key] = {"newest": run_newest}
            yield page
            if reached_known or not after or page.rate_limited_until:
                return

    def _search_page(self, path: str, params: dict, after: str | None) -> tuple[Page, list, str | None]:
        """One page of search results: the page to fill, its submissions as (thing, data) (anything else is
        rejected on the page), and the `after` of the next page (None at the end)."""
        body, response = self._get(path, {**params, **({"after": after} if after else {})})
        if response.status_code == 404:
            raise PermanentError(f"Reddit has no subreddit {self.subreddit!r} to search (404 from {response.url})")
        children = _listing_children(body, url=response.url)
        page = self._page()
        page.fetched = len(children)
        submissions = []
        for thing in children:
            kind, data = _unwrap(thing)
            if kind == "t3":
                submissions.append((thing, data))
            else:
                page.rejected.append(RejectedRaw(reason=f"expected a submission (t3) in the search results, "
                                                        f"got {kind or type(thing).__name__}", raw=thing))
        following = body["data"].get("after")
        return page, submissions, following if isinstance(following, str) and following else None

    def _watch(self, threads: dict, item: NormalisedItem) -> None:
        entry = threads.setdefault(item.external_id, {"created": item.created_at.timestamp(), "read": None,
                                                      "tags": []})
        tracked = {key for _tag, key in self.tags}
        entry["tags"] = sorted(set(entry.get("tags") or []) | (set(item.hashtags) & tracked))
        if len(threads) > MAX_WATCHED_THREADS:
            newest_first = sorted(threads, key=lambda name: threads[name].get("created") or 0, reverse=True)
            for name in newest_first[MAX_WATCHED_THREADS:]:
                del threads[name]

    def _forget_old_threads(self, threads: dict) -> None:
        """Threads older than THREAD_WATCH that were read at least once are not followed any more."""
        oldest = self.now().timestamp() - THREAD_WATCH.total_seconds()
        for name in [n for n, t in threads.items() if t.get("read") is not None and (t.get("created") or 0) < oldest]:
            del threads[name]

    def _threads_due(self, threads: dict) -> list[str]:
        """Never-read threads (newest first), then the others least recently read first."""
        unread = sorted((n for n, t in threads.items() if t.get("read") is None),
                        key=lambda n: threads[n].get("created") or 0, reverse=True)
        reread = sorted((n for n, t in threads.items() if t.get("read") is not None),
                        key=lambda n: threads[n].get("read") or 0)
        return (unread + reread)[:MAX_THREADS_PER_RUN]

    # -- comment trees

    def _read_thread(self, fullname: str, threads: dict) -> Page:
        entry = threads[fullname]
        tags = tuple(entry.get("tags") or ())
        body, response = self._get(f"/comments/{fullname[3:]}", {"sort": "new", "limit": COMMENT_LIMIT})
        if response.status_code == 404:
            del threads[fullname]  # the submission is gone: nothing more to follow
            return self._page()
        if not isinstance(body, list) or len(body) < 2:
            raise MalformedResponse(f"expected [submission Listing, comments Listing] from {response.url}", raw=body)
        links = _listing_children(body[0], url=response.url)
        comments = _listing_children(body[1], url=response.url)
        page = self._page()
        for link in links[:1]:
            # The submission again, with fresh counts and edits (when it still carries the tag).
            result = normalise_submission(link, tag_keys=self.tag_keys, word=self.word_match)
            if isinstance(result, (NormalisedItem, RejectedRaw)):
                (page.items if isinstance(result, NormalisedItem) else page.rejected).append(result)
        items, rejected, more_ids, seen = parse_comment_tree(comments, thread_tags=tags)
        page.items.extend(items)
        page.rejected.extend(rejected)
        page.fetched = len(links[:1]) + seen
        try:
            complete = self._resolve_more(fullname, more_ids, tags, page)
        except RateLimited as exc:
            page.rate_limited_until, complete = exc.until, False
        except SourceError as exc:
            raise _PartialThread(page, exc) from exc
        page.health_detail = dict(self.health_detail)
        page.rate_limited_until = page.rate_limited_until or self.spent_until
        if complete:
            entry["read"] = self.now().timestamp()  # else it stays first in line for the next run
        return page

    def _resolve_more(self, link_fullname: str, more_ids: list[str], tags: tuple[str, ...], page: Page) -> bool:
        """Fetch the comments behind `more` stubs into `page`, at most MAX_MORE_CALLS_PER_THREAD calls.

        Returns False when the spent budget stopped it with ids left (the thread is read again next run);
        ids left after the last allowed call are given up, so a huge thread cannot starve the others.
        """
        queue = list(dict.fromkeys(more_ids))
        for _ in range(MAX_MORE_CALLS_PER_THREAD):
            if not queue:
                return True
            if self.spent_until:
                return False
            batch, queue = queue[:MORE_CHILDREN_BATCH], queue[MORE_CHILDREN_BATCH:]
            body, response = self._get("/api/morechildren", {
                "api_type": "json", "link_id": link_fullname, "children": ",".join(batch), "sort": "new",
                "limit_children": "false"})
            data = body.get("json") if isinstance(body, dict) else None
            things = data.get("data", {}).get("things") if isinstance(data, dict) and isinstance(data.get("data"), dict) else None
            if not isinstance(things, list):
                raise MalformedResponse(f"expected json.data.things from {response.url}", raw=body)
            if data.get("errors"):
                raise MalformedResponse(f"Reddit answered errors from {response.url}: {data['errors']!r}"[:500], raw=body)
            # The things come flat, each with its parent_id; deeper `more` stubs join the queue.
            items, rejected, deeper, seen = parse_comment_tree(things, thread_tags=tags)
            page.items.extend(items)
            page.rejected.extend(rejected)
            page.fetched += seen
            queue.extend(i for i in deeper if i not in batch)
        return True

    # -- backfill

    # The walk's position, under the cursor's "backfill" key: {"since", "search": {tag key: {"after"?,
    # "done"?, "stopped"?}}, "pending": {t3 fullname: {"created", "read", "tags"}}, "read_since"?,
    # "backfilled_since"?}.

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Search results back to `since` (sort=new, `after` paging), then the matching submissions' trees.

        Bounded per call by MAX_BACKFILL_SEARCH_PAGES per tag and MAX_BACKFILL_THREADS trees; every page's
        cursor is the whole cursor (polling keys as given) with the walk's position, so a later call goes on
        and a finished walk (`backfilled_since` <= since) makes no request. Items older than `since` are not
        yielded. Stops at a spent rate limit like fetch; raises like fetch.
        """
        if not self.client_id or not self.client_secret:
            raise NeedsCredentials("Reddit needs an app's credentials: set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET")
        base = {key: copy.deepcopy(value) for key, value in cursor.items() if key != "backfill"}
        walk = copy.deepcopy(cursor.get("backfill")) if isinstance(cursor.get("backfill"), dict) else {}
        finished = _cursor_time(walk.get("backfilled_since"))
        if finished is not None and finished <= since:
            return
        if walk.get("since") != since.isoformat():
            # A new date: search again from the newest; trees a finished walk read are not read again.
            pending = walk.get("pending") if isinstance(walk.get("pending"), dict) else {}
            read_since = finished.timestamp() if finished is not None else None
            walk = {"since": since.isoformat(), "search": {}, "pending": pending,
                    **({"read_since": read_since} if read_since is not None else {})}
        walk.setdefault("search", {})
        walk.setdefault("pending", {})

        def whole_cursor() -> dict:
            return {**copy.deepcopy(base), "backfill": copy.deepcopy(walk)}

        for tag, key in self.tags:
            state = walk["search"].setdefault(key, {})
            if state.get("done"):
                continue
            for page in self._backfill_search(tag, state, walk, since, base):
                page.cursor = whole_cursor()
                yield page
                if page.rate_limited_until:
                    return
        pending = walk["pending"]
        newest_first = sorted(pending, key=lambda name: pending[name].get("created") or 0, reverse=True)
        for fullname in newest_first[:MAX_BACKFILL_THREADS]:
            error: SourceError | None = None
            try:
                page = self._read_thread(fullname, pending)
            except _PartialThread as partial:
                page, error = partial.page, partial.error
            if fullname in pending and pending[fullname].get("read") is not None:
                del pending[fullname]
            page.items = [item for item in page.items if item.created_at >= since]
            page.cursor = whole_cursor()
            yield page
            if error is not None:
                raise error
            if page.rate_limited_until:
                return
        if not pending and all(walk["search"].get(key, {}).get("done") for _tag, key in self.tags):
            walk = {"since": since.isoformat(), "backfilled_since": since.isoformat()}
            page = self._page()
            page.cursor = whole_cursor()
            yield page

    def _backfill_search(self, tag: str, state: dict, walk: dict, since: datetime, base: dict) -> Iterator[Page]:
        path = f"/r/{self.subreddit}/search" if self.subreddit else "/search"
        params = {"q": tag, "sort": "new", "type": "link", "limit": SEARCH_LIMIT}
        if self.subreddit and self.subreddit.lower() != "all":
            params["restrict_sr"] = "on"
        watched = base.get("threads") if isinstance(base.get("threads"), dict) else {}
        read_since = walk.get("read_since")
        tracked = {key for _tag, key in self.tags}
        for _ in range(MAX_BACKFILL_SEARCH_PAGES):
            page, submissions, after = self._search_page(path, params, state.get("after"))
            reached = False
            for thing, data in submissions:
                created = data.get("created_utc") if isinstance(data, dict) else None
                if isinstance(created, (int, float)) and not isinstance(created, bool) and created < since.timestamp():
                    reached = True  # newest first: the rest is older than the date
                    continue
                result = normalise_submission(thing, tag_keys=self.tag_keys, word=self.word_match)
                if isinstance(result, RejectedRaw):
                    page.rejected.append(result)
                elif isinstance(result, NormalisedItem):
                    page.items.append(result)
                    stamp = result.created_at.timestamp()
                    if result.external_id not in watched and (read_since is None or stamp < read_since):
                        walk["pending"].setdefault(result.external_id, {
                            "created": stamp, "read": None, "tags": sorted(set(result.hashtags) & tracked)})
            if reached or not after:
                # Reached the date, or the end of what Reddit serves of a search (about 1,000 results).
                state.clear()
                state.update(done=True, stopped="since" if reached else "end of search results")
            else:
                state["after"] = after
            yield page
            if state.get("done") or page.rate_limited_until:
                return

    # -- re-check

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Look at stored submissions and comments again with `/api/info`, INFO_BATCH fullnames a request.

        `[deleted]` text is a deletion by the author, `[removed]` (or a submission's
        `removed_by_category`) a removal; any other thing returned is the current version (an `edited`
        epoch becomes `edited_at`, a changed text a revision). A fullname Reddit does not return is an
        error: /api/info leaves out what it will not show (a private or banned subreddit) as well as what
        it does not know, so the absence proves no deletion. Raises RateLimited, NeedsCredentials.
        """
        if not self.client_id or not self.client_secret:
            raise NeedsCredentials("Reddit needs an app's credentials: set REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET")
        names = []
        for external_id, _raw in posts:
            if _FULLNAME.match(external_id):
                names.append(external_id)
            else:
                yield Recheck(external_id=external_id, error="not a comment (t1_) or submission (t3_) fullname")
        for start in range(0, len(names), INFO_BATCH):
            batch = names[start:start + INFO_BATCH]
            body, response = self._get("/api/info", {"id": ",".join(batch)})
            if response.status_code == 404:
                for name in batch:
                    yield Recheck(external_id=name, error=f"Reddit answered 404 to {response.url}")
                continue
            found = {}
            for thing in _listing_children(body, url=response.url):
                kind, data = _unwrap(thing)
                if kind in ("t1", "t3") and isinstance(data, dict):
                    fullname = _fullname(data, kind)
                    if fullname:
                        found[fullname] = thing
            for name in batch:
                yield self._recheck_one(name, found.get(name))

    def _recheck_one(self, fullname: str, thing: Any) -> Recheck:
        if thing is None:
            return Recheck(external_id=fullname, error="not returned by /api/info (a private or banned subreddit, "
                                                       "or a thing Reddit does not show): cannot tell")
        kind, data = _unwrap(thing)
        reason = deletion_reason(kind, data)
        if reason:
            return Recheck(external_id=fullname, deleted_reason=reason)
        if kind == "t3":
            result = normalise_submission(thing, tag_keys=self.tag_keys, word=self.word_match, require_tag=False)
        else:
            # Stored as part of a conversation about the source's tags (the cursor names each thread's).
            result = normalise_comment(thing, thread_tags=self.tag_keys)
        if isinstance(result, NormalisedItem):
            return Recheck(external_id=fullname, item=result)
        return Recheck(external_id=fullname, error=result.reason if isinstance(result, RejectedRaw)
                       else "Reddit returned a thing that cannot be stored")

    # -- HTTP

    def _get(self, path: str, params: dict) -> tuple[Any, requests.Response]:
        """One API GET with the kept token; a 401 drops the token and logs in once more."""
        if self.spent_until is not None:
            # Never reached by fetch (it stops on a spent page); kept so no path can ask before the reset.
            raise RateLimited(f"rate limit spent until {self.spent_until.isoformat()}", until=self.spent_until)
        url = self.api_root + path
        for attempt in range(2):
            token = self._access_token()
            response = self.client.get(url, params={**params, "raw_json": 1},
                                       headers={"Authorization": f"bearer {token}", "Accept": "application/json"})
            if response.status_code == 401 and attempt == 0:
                self.store.delete(self.token_key)
                self.token = None
                continue
            break
        self._note_budget(response)
        if response.status_code in (401, 403):
            raise NeedsCredentials(
                f"Reddit refused access ({response.status_code}) to {response.url}: check REDDIT_CLIENT_ID and "
                "REDDIT_CLIENT_SECRET, or whether the subreddit is private or banned")
        check_status(response, now=self.now(), reset=self._reset_at)
        if response.status_code == 404:
            return None, response
        return json_body(response), response

    def _access_token(self) -> str:
        if self.token:
            return self.token
        kept = self.store.get(self.token_key)
        if isinstance(kept, str) and kept:
            self.token = kept
            return kept
        response = self.client.post(self.token_url, data={"grant_type": "client_credentials"},
                                    auth=(self.client_id, self.client_secret), headers={"Accept": "application/json"})
        if response.status_code in (400, 401, 403):
            raise NeedsCredentials(
                f"Reddit refused the app's credentials ({response.status_code} from {self.token_url}): "
                "check REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET")
        check_status(response, now=self.now(), reset=self._reset_at)
        body = json_body(response)
        if isinstance(body, dict) and body.get("error"):
            raise NeedsCredentials(f"Reddit refused the token request ({body.get('error')!r}): check "
                                   "REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET")
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise MalformedResponse(f"expected access_token from {self.token_url}", raw=body)
        expires_in = body.get("expires_in")
        lifetime = int(expires_in) if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) else 3600
        self.store.set(self.token_key, token, ttl=max(1, lifetime - TOKEN_EXPIRY_MARGIN))
        self.token = token
        return token

    def _reset_at(self, response: requests.Response) -> datetime | None:
        seconds = _header_number(response, "x-ratelimit-reset")
        return self.now() + timedelta(seconds=seconds) if seconds is not None and seconds >= 0 else None

    def _note_budget(self, response: requests.Response) -> None:
        remaining = _header_number(response, "x-ratelimit-remaining")
        if remaining is None:
            return
        self.health_detail["ratelimit_remaining"] = max(0, int(remaining))
        if remaining < 1:
            # Spent: no request before the reset (10 minutes, Reddit's window, when it is not given).
            self.spent_until = self._reset_at(response) or self.now() + timedelta(minutes=10)


_FULLNAME = re.compile(r"^t[13]_[0-9a-z]+$")


def deletion_reason(kind: str, data: Any) -> str:
    """Why Reddit no longer shows a thing's text, as Reddit says it; "" when it still does.

    A comment's `body` (a submission's `selftext`) becomes `[deleted]` when its author deletes it (the
    author becomes `[deleted]` too) and `[removed]` when moderators or Reddit remove it. Submissions also
    carry `removed_by_category` ("deleted", "moderator", "automod_filtered", "reddit", ...), which covers
    link posts that have no text to replace.
    """
    if not isinstance(data, dict):
        return ""
    field = "body" if kind == "t1" else "selftext"
    text = data.get(field).strip() if isinstance(data.get(field), str) else ""
    author = data.get("author")
    if text == "[removed]":
        return f"removed by moderators or Reddit ([removed] {field})"
    if text == "[deleted]":
        by = "by its author " if author == "[deleted]" else ""
        return f"deleted {by}([deleted] {field}, author {author!r})"
    category = data.get("removed_by_category") if kind == "t3" else None
    if isinstance(category, str) and category:
        who = {"deleted": "deleted by its author", "author": "deleted by its author", "moderator": "removed by moderators",
               "automod_filtered": "removed by moderators"}.get(category, "removed by Reddit")
        return f"{who} (removed_by_category: {category})"
    return ""


def _cursor_time(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value, field_name="cursor time")
    except ValueError:
        return None


class _PartialThread(Exception):
    """A comment tree read in part before a follow-up call failed: store the part, then fail."""

    def __init__(self, page: Page, error: SourceError):
        super().__init__(str(error))
        self.page, self.error = page, error


def _endpoints(base_url: str, options: dict) -> tuple[str, str, str]:
    """(API root, token URL, subreddit from the URL) for a registered URL.

    Any reddit.com URL means the real API (`https://oauth.reddit.com`, token from www.reddit.com); any
    other URL is taken as the API root itself (a proxy or a test double), with the token endpoint at
    `<root>/api/v1/access_token`. A path `/r/<name>` names the subreddit. Option `token_url` overrides.
    """
    parts = urlsplit(base_url)
    segments = [s for s in parts.path.split("/") if s]
    subreddit = ""
    if len(segments) >= 2 and segments[-2].lower() == "r":
        subreddit = segments[-1]
        segments = segments[:-2]
    if (parts.hostname or "").lower() in REDDIT_HOSTS:
        api_root, token_url = API_ROOT, TOKEN_URL
    else:
        api_root = f"{parts.scheme}://{parts.netloc}" + "".join(f"/{s}" for s in segments)
        token_url = f"{api_root}/api/v1/access_token"
    return api_root, str(options.get("token_url") or token_url), subreddit


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime], store: TokenStore) -> RedditConnector:
    options = config.options or {}
    api_root, token_url, url_subreddit = _endpoints(config.base_url, options)
    subreddit = str(options.get("subreddit") or url_subreddit).strip()
    if subreddit.lower().startswith("r/"):
        subreddit = subreddit[2:]
    if subreddit and not SUBREDDIT_NAME.match(subreddit):
        raise PermanentError(f"option subreddit={subreddit!r} is not a subreddit name")
    site_wide = not subreddit or subreddit.lower() == "all"
    match = str(options.get("match") or ("hashtag" if site_wide else "word")).strip().lower()
    if match not in ("hashtag", "word"):
        raise PermanentError(f"option match must be 'hashtag' or 'word', not {match!r}")
    return RedditConnector(api_root=api_root, token_url=token_url, subreddit=subreddit, word_match=match == "word",
                           hashtags=list(config.hashtags), credentials=dict(config.credentials or {}),
                           client=client, now=now, store=store)
