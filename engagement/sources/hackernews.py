"""Hacker News: stories and comments that contain the tag's word, through the Algolia HN Search API.

- `GET <base>/search_by_date?query=<tag>&tags=(story,comment)&numericFilters=created_at_i><since>
  &hitsPerPage=100&page=<n>`: newest first, paged by `page` up to `nbPages`, at most MAX_PAGES_PER_RUN.
  No credentials.
- HN has no hashtags, so the tag is searched as a word. Algolia matches prefixes and typos ("apple"
  finds "applauded"), so every hit is checked locally: its title or text (a comment's text, or the
  title of the story it is under) must contain the tag as a whole word, casefolded.
- Incremental by `created_at_i`: the cursor keeps `since` (everything up to it is collected). A run
  that stops before the end of its results (the page bound, or Algolia's 1,000-hit pagination limit)
  keeps `upper`, the oldest time it stored, and the next query continues below it. Each query reaches
  INDEX_LAG back before `since`, for items Algolia indexed late.
- Ids are the item's page, `https://news.ycombinator.com/item?id=<id>`; `reply_to_external_id` is the
  parent's (a story or a comment); a comment's article is its story's page.
- Algolia sends no rate-limit headers; a 429 waits for Retry-After, else RATE_LIMIT_WAIT.
- Backfill (`collect --backfill --since`): the same search with `created_at_i>=<since>,created_at_i<<before>`,
  walking down from the oldest time already walked (else the polling cursor's `since`), MAX_BACKFILL_PAGES
  per tag per call; the position (`backfill_before`, `backfill_page`) and the finished walk
  (`backfilled_since`, epoch seconds) sit beside the polling keys in the tag's cursor entry.
- Re-check: `GET <base>/items/<id>` per stored item (the HN search API has no documented lookup of several
  ids at once). A 404 with a JSON body is a deletion (hn-search answers 404 for deleted items); a 200 body
  without author, text and title is a deleted or dead item (hn-search serialises those as their id and
  children only). Anything else that is not an item is an error, never a deletion.
"""

from __future__ import annotations

import html as html_lib
import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit


from .base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NormalisedArticle,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    Recheck,
    RejectedRaw,
    SourceConfig,
    TemporaryError,
    TokenStore,
    check_status,
    html_to_text,
    json_body,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "hackernews"
API_ROOT = "https://hn.algolia.com/api/v1"
ITEM_URL = "https://news.ycombinator.com/item?id={}"
USER_URL = "https://news.ycombinator.com/user?id={}"
# Hosts a user may register for the real service; all of them mean API_ROOT.
HN_HOSTS = {"hn.algolia.com", "news.ycombinator.com"}
SEARCH_TAGS = "(story,comment)"
# Hits per page: Algolia allows up to 1,000, but 100 keeps one page near 200 KB.
HITS_PER_PAGE = 100
# One run reads at most this many pages (1,000 hits); the cursor makes the next run continue.
MAX_PAGES_PER_RUN = 10
# How far back the first run of a new source reaches.
BACKFILL = timedelta(days=30)
# Each query reaches this far before `since`: items are indexed a little after they are written, so
# one created just before the newest stored item can appear in the index after it.
INDEX_LAG = timedelta(minutes=10)
# Algolia's limit is 10,000 requests per hour per IP and its 429 carries no reset; wait this long.
RATE_LIMIT_WAIT = timedelta(minutes=10)
# `collect --backfill` reads at most this many pages (10,000 hits) per tag per call: at one request per
# page that is 1% of Algolia's hourly budget; a later call resumes from the cursor.
MAX_BACKFILL_PAGES = 100
# A re-check looks up at most this many items (one request each), the size of collect's batch.
MAX_RECHECK_ITEMS = 100
# hn-search answers 500 for a few items whose data is broken (algolia/hn-search#242); that many in a row
# means the service itself is down, and the re-check stops.
MAX_SERVER_ERRORS_IN_A_ROW = 3
LINK = re.compile(r"https?://[^\s)\]>\"']+")


def matched_words(text: str, tag_keys: tuple[str, ...]) -> tuple[str, ...]:
    """The tag keys that occur in `text` as whole words (casefolded, with or without '#'); words
    inside a URL do not count."""
    folded = LINK.sub(" ", text).casefold()
    return tuple(key for key in tag_keys if re.search(r"(?<!\w)" + re.escape(key) + r"(?!\w)", folded))


def _item_id(value: Any) -> str:
    if isinstance(value, bool):
        return ""
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.isdigit():
        return value
    return ""


def _created_at(hit: dict) -> datetime:
    epoch = hit.get("created_at_i")
    if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and math.isfinite(epoch):
        try:
            return datetime.fromtimestamp(epoch, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
    try:
        return parse_timestamp(hit.get("created_at"), field_name="created_at")
    except ValueError:
        raise ValueError(f"created_at_i and created_at are missing or unusable: {epoch!r}, "
                         f"{hit.get('created_at')!r}") from None


def _is_comment(hit: dict) -> bool:
    tags = hit.get("_tags")
    if isinstance(tags, list):  # a search hit
        return "comment" in tags
    if "type" in hit:  # an item of /api/v1/items/<id>
        return hit.get("type") == "comment"
    return isinstance(hit.get("comment_text"), str)


def _text(value: Any) -> str:
    # Fields come as strings, "" or null in the same response.
    return value if isinstance(value, str) else ""


def normalise_hit(hit: Any, *, tag_keys: tuple[str, ...], require_word: bool = True
                  ) -> NormalisedItem | RejectedRaw | None:
    """One search hit (or an item of the items API) as an item; None when it lacks the word.

    `require_word=False` keeps it all the same (re-checking a stored item whose edit may have removed it).
    """
    if not isinstance(hit, dict):
        return RejectedRaw(reason="hit is not a JSON object", raw=hit)
    ident = _item_id(hit.get("objectID")) or _item_id(hit.get("id"))
    if not ident:
        return RejectedRaw(reason="hit has no objectID", raw=hit)
    external_id = ITEM_URL.format(ident)
    raw = hit
    if isinstance(hit.get("children"), list):
        # The items API nests whole subtrees; each reply is an item of its own, so keep only their ids.
        raw = {**hit, "children": [c.get("id") if isinstance(c, dict) else c for c in hit["children"]]}
    comment = _is_comment(hit)
    if comment:
        body = hit.get("comment_text", hit.get("text"))
        if not isinstance(body, str):
            return RejectedRaw(reason="comment_text is missing or not a string", raw=raw, external_id=external_id)
        source_html = body
        context = _text(hit.get("story_title"))
    else:
        title = hit.get("title")
        if not isinstance(title, str) or not title:
            return RejectedRaw(reason="story title is missing or not a string", raw=raw, external_id=external_id)
        link = _text(hit.get("url"))
        source_html = f"<p>{html_lib.escape(title)}</p>" + _text(hit.get("story_text", hit.get("text")))
        if link.startswith(("http://", "https://")):
            source_html += f'<p><a href="{html_lib.escape(link)}">{html_lib.escape(link)}</a></p>'
        context = ""
    if len(source_html) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"text of {len(source_html)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=raw, external_id=external_id)
    html = sanitise_html(source_html)
    text = html_to_text(html)
    matched = matched_words(f"{text}\n{context}", tag_keys)
    if not matched and require_word:
        return None
    try:
        created_at = _created_at(hit)
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=raw, external_id=external_id)
    author_name = _text(hit.get("author"))
    author = NormalisedAuthor(external_id=USER_URL.format(author_name), handle=author_name,
                              url=USER_URL.format(author_name)) if author_name else None
    parent = _item_id(hit.get("parent_id"))
    story = _item_id(hit.get("story_id"))
    article = None
    if comment and story:
        article = NormalisedArticle(url=ITEM_URL.format(story), title=_text(hit.get("story_title"))[:1000],
                                    external_id=story)
    points = hit.get("points")
    replies = hit.get("num_comments")
    return NormalisedItem(
        platform=PLATFORM,
        external_id=external_id,
        uri=external_id,
        url=external_id,
        kind="comment" if comment else "post",
        author=author,
        created_at=created_at,
        html=html,
        text=text,
        hashtags=matched,
        reply_to_external_id=ITEM_URL.format(parent) if comment and parent else "",
        article=article,
        reply_count=replies if isinstance(replies, int) and not isinstance(replies, bool) and replies > 0 else 0,
        like_count=points if isinstance(points, int) and not isinstance(points, bool) and points > 0 else 0,
        raw=raw,
    )


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """A hit of the Algolia search API (or an item of its items API), kept when its title or text (or a
    comment's story title) contains one of `hashtags` as a word."""
    return normalise_hit(obj, tag_keys=tuple(normalise_tag(tag) for tag in hashtags))


def _hit_time(hit: Any) -> int | None:
    value = hit.get("created_at_i") if isinstance(hit, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value)
    return None


def _int_field(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class HackerNewsConnector:
    platform = PLATFORM

    def __init__(self, *, base_url: str, hashtags: list[str], client: HttpClient, now: Callable[[], datetime]):
        self.search_url = base_url.rstrip("/") + "/search_by_date"
        self.items_url = base_url.rstrip("/") + "/items/{}"
        self.tags = [(tag.strip().lstrip("#"), normalise_tag(tag)) for tag in hashtags]
        self.tag_keys = tuple(key for _tag, key in self.tags)
        self.client = client
        self.now = now

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Pages for each tag's word; each page's `cursor` is the whole source cursor once it is stored."""
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        for tag, key in self.tags:
            for page in self._fetch_word(tag, cursor.get(key, {})):
                # Polling replaces its own keys; a backfill's position and finished walk stay.
                cursor[key] = {**_backfill_keys(cursor.get(key, {})), **page.cursor}
                page.cursor = {k: dict(v) for k, v in cursor.items()}
                yield page

    def _fetch_word(self, word: str, state: dict) -> Iterator[Page]:
        since = _int_field(state.get("since"))
        if since is None:
            since = int((self.now() - BACKFILL).timestamp())
        upper = _int_field(state.get("upper"))  # set while a run's results are read in part
        newest = _int_field(state.get("newest"))  # the newest time seen since `since`
        lower = since - int(INDEX_LAG.total_seconds())
        query_upper, page_number = upper, 0
        for _ in range(MAX_PAGES_PER_RUN):
            filters = f"created_at_i>{lower}" + (f",created_at_i<={query_upper}" if query_upper is not None else "")
            body = self._get({"query": word, "tags": SEARCH_TAGS, "numericFilters": filters,
                              "hitsPerPage": HITS_PER_PAGE, "page": page_number})
            hits, pages, total = body["hits"], body["nbPages"], body.get("nbHits")
            page = self._page(hits)
            times = [t for t in map(_hit_time, hits) if t is not None]
            if times:
                newest = max(times + ([newest] if newest is not None else []))
                upper = min(times)  # a run that stops after this page resumes below it
            if hits and page_number + 1 < pages:
                page_number += 1
            elif (hits and isinstance(total, int) and total > (page_number + 1) * HITS_PER_PAGE
                  and times and upper != query_upper):
                # Algolia serves only the first 1,000 hits of a query: go on below the oldest one read.
                query_upper, page_number = upper, 0
            else:
                page.cursor = {"since": max(since, newest if newest is not None else since)}
                yield page
                return
            page.cursor = {"since": since, "upper": upper, "newest": newest}
            yield page

    def _page(self, hits: list) -> Page:
        page = Page(fetched=len(hits))
        for hit in hits:
            result = normalise_hit(hit, tag_keys=self.tag_keys)
            if isinstance(result, NormalisedItem):
                page.items.append(result)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        return page

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """Walk each tag's word back to `since`, newest first, at most MAX_BACKFILL_PAGES per tag per call.

        The query is `created_at_i>=<since>,created_at_i<<before>` paged by `page`; past Algolia's 1,000-hit
        limit it goes on below the oldest hit read. The polling keys of the cursor are kept; the walk's
        position is saved as `backfill_before`/`backfill_page`, and a finished walk as `backfilled_since`
        (epoch seconds), so a later call resumes and a finished walk is not repeated. May raise RateLimited
        and the other SourceErrors of `fetch`.
        """
        cursor = {key: dict(value) for key, value in cursor.items() if isinstance(value, dict)}
        since_i = math.ceil(since.timestamp())  # created_at_i is whole seconds; none before `since`
        for tag, key in self.tags:
            state = cursor.setdefault(key, {})
            done = _int_field(state.get("backfilled_since"))
            if done is not None and done <= since_i:
                continue
            before = _int_field(state.get("backfill_before"))
            page_number = _int_field(state.get("backfill_page")) or 0
            if before is None:
                # Below what an earlier walk reached, else below what polling has covered, else from now.
                polled = _int_field(state.get("since"))
                before = done if done is not None else (
                    polled + 1 if polled is not None else int(self.now().timestamp()) + 1)
                page_number = 0
            for _ in range(MAX_BACKFILL_PAGES):
                body = self._get({"query": tag, "tags": SEARCH_TAGS, "hitsPerPage": HITS_PER_PAGE, "page": page_number,
                                  "numericFilters": f"created_at_i>={since_i},created_at_i<{before}"})
                hits, pages, total = body["hits"], body["nbPages"], body.get("nbHits")
                page = self._page(hits)
                page.items = [item for item in page.items if item.created_at >= since]
                times = [t for t in map(_hit_time, hits) if t is not None]
                finished = False
                if hits and page_number + 1 < pages:
                    page_number += 1
                elif (hits and isinstance(total, int) and total > (page_number + 1) * HITS_PER_PAGE
                      and times and min(times) + 1 < before):
                    # Past Algolia's pagination limit: go on at and below the oldest second read.
                    before, page_number = min(times) + 1, 0
                else:
                    finished = True
                if finished:
                    state.pop("backfill_before", None)
                    state.pop("backfill_page", None)
                    state["backfilled_since"] = since_i
                else:
                    state.update(backfill_before=before, backfill_page=page_number)
                page.cursor = {k: dict(v) for k, v in cursor.items()}
                yield page
                if finished:
                    break

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Look each stored item up again, `GET <base>/items/<id>`, at most MAX_RECHECK_ITEMS per call.

        An item still there comes back as an item (its text is taken only when its visible text changed,
        so the items API's different markup is not an edit); a 404 with a JSON body, or an item served
        without author, text and title (hn-search's form of a deleted or dead item), is a deletion. Raises
        RateLimited on 429, NeedsCredentials on 401/403, TemporaryError when the service keeps failing.
        """
        server_errors = 0
        for number, (external_id, raw) in enumerate(posts):
            ident = _stored_id(external_id, raw)
            if number >= MAX_RECHECK_ITEMS:
                yield Recheck(external_id=external_id, error=f"over the {MAX_RECHECK_ITEMS} items of one re-check")
                continue
            if not ident:
                yield Recheck(external_id=external_id, error="no Hacker News item id in the stored post")
                continue
            now = self.now()
            response = self.client.get(self.items_url.format(ident), headers={"Accept": "application/json"})
            if response.status_code >= 500:
                server_errors += 1
                if server_errors >= MAX_SERVER_ERRORS_IN_A_ROW:
                    raise TemporaryError(f"upstream error {response.status_code} from {response.url} "
                                         f"({server_errors} items in a row)")
                yield Recheck(external_id=external_id,
                              error=f"upstream error {response.status_code} for this item: cannot tell")
                continue
            server_errors = 0
            if response.status_code == 404:
                yield self._not_found(external_id, response)
                continue
            check_status(response, now=now, reset=lambda _response: now + RATE_LIMIT_WAIT)
            try:
                body = json_body(response)
            except MalformedResponse as exc:
                yield Recheck(external_id=external_id, error=str(exc))
                continue
            if not isinstance(body, dict) or _item_id(body.get("id")) != ident:
                yield Recheck(external_id=external_id, error=f"the items API did not return item {ident}")
                continue
            if all(body.get(name) is None for name in ("author", "text", "title")):
                yield Recheck(external_id=external_id, deleted_reason=(
                    "deleted or dead on Hacker News (the items API returned it without author, text or title)"))
                continue
            result = normalise_hit(_updated_hit(raw, body), tag_keys=self.tag_keys, require_word=False)
            if isinstance(result, NormalisedItem) and result.external_id == external_id:
                yield Recheck(external_id=external_id, item=result)
            else:
                reason = result.reason if isinstance(result, RejectedRaw) else "the items API returned another item"
                yield Recheck(external_id=external_id, error=reason)

    @staticmethod
    def _not_found(external_id: str, response) -> Recheck:
        try:
            json_body(response)
        except MalformedResponse:
            # Not the API's own answer (a proxy's page): it says nothing about the item.
            return Recheck(external_id=external_id, error=f"404 without the API's JSON body from {response.url}")
        return Recheck(external_id=external_id, deleted_reason="deleted upstream (404 from the HN items API)")

    def _get(self, params: dict) -> dict:
        now = self.now()
        response = self.client.get(self.search_url, params=params, headers={"Accept": "application/json"})
        check_status(response, now=now, reset=lambda _response: now + RATE_LIMIT_WAIT)
        if response.status_code == 404:
            raise PermanentError(f"no Algolia HN search at {response.url} (404): register {API_ROOT}")
        body = json_body(response)
        if not isinstance(body, dict) or not isinstance(body.get("hits"), list):
            raise MalformedResponse(f"expected an object with a hits list from {response.url}", raw=body)
        if _int_field(body.get("nbPages")) is None:
            raise MalformedResponse(f"expected nbPages (a number) from {response.url}", raw=body)
        return body


def _backfill_keys(state: dict) -> dict:
    return {key: value for key, value in state.items() if key.startswith("backfill")}


def _stored_id(external_id: str, raw: Any) -> str:
    """The item id of a stored post: its payload's objectID (or id), else the one in its URL."""
    if isinstance(raw, dict):
        ident = _item_id(raw.get("objectID")) or _item_id(raw.get("id"))
        if ident:
            return ident
    match = re.search(r"[?&]id=(\d+)$", external_id)
    return match.group(1) if match else ""


def _visible(html: Any) -> str:
    return html_to_text(sanitise_html(html)).strip() if isinstance(html, str) else ""


def _unwrapped(text: str) -> str:
    """The items API's text back in the search API's form: hn-search wraps it as
    `"<p>" + text.gsub("<p>", "</p><p>") + "</p>"`, where the search hits keep HN's own `a<p>b`."""
    if text.startswith("<p>") and text.endswith("</p>"):
        return text[3:-4].replace("</p><p>", "<p>")
    return text


def _updated_hit(stored: Any, item: dict) -> dict:
    """The stored hit with what the items API says now: points, a title, and the text when what it shows
    has changed. Unchanged fields stay as stored, so an item that was not edited normalises exactly as
    before (and the store records no revision)."""
    if not isinstance(stored, dict):
        return item
    hit = dict(stored)
    if "_tags" in stored or "comment_text" in stored or "story_text" in stored:
        text_key = "comment_text" if _is_comment(stored) else "story_text"
    else:
        text_key = "text"  # a stored item of the items API (an import)
    if "text" in item and _visible(item.get("text")) != _visible(stored.get(text_key)):
        hit[text_key] = _unwrapped(item["text"]) if isinstance(item.get("text"), str) else item.get("text")
    if isinstance(item.get("title"), str) and item["title"] and item["title"] != stored.get("title"):
        hit["title"] = item["title"]
    if _int_field(item.get("points")) is not None:
        hit["points"] = item["points"]
    return hit


def _api_root(base_url: str) -> str:
    """The registered URL as the API root: hn.algolia.com / news.ycombinator.com mean the real one; any
    other host (a test double) is used as given, with /api/v1 added when it has no path."""
    parts = urlsplit(base_url)
    if (parts.hostname or "").lower() in HN_HOSTS:
        return API_ROOT
    if parts.path.strip("/"):
        return base_url.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/api/v1"


def build(config: SourceConfig, *, client: HttpClient, now: Callable[[], datetime],
          store: TokenStore | None = None) -> HackerNewsConnector:
    return HackerNewsConnector(base_url=_api_root(config.base_url), hashtags=list(config.hashtags), client=client,
                               now=now)
