"""WordPress: the comments under a news site's articles that carry the tracked tag, through the REST API
(`/wp-json/wp/v2/`), with the site's RSS feeds as a fallback when the REST API is refused.

- The source URL is the site's root (its canonical address, e.g. https://news.example).
- Tag mode (default): `GET tags?slug=<hashtag lowercased>` gives the tag's id, `GET posts?tags=<id>`
  (newest first, `per_page=100`, up to ARTICLE_PAGES pages by `X-WP-TotalPages`) the articles carrying it,
  and `GET comments?post=<ids>&orderby=date_gmt&order=asc` their comments, page after page by
  `X-WP-TotalPages`. The option `article=<URL>` follows one article instead (found by its slug, or by
  `?p=<id>`), whatever its tags.
- Incremental: the cursor keeps the followed article ids and the newest comment `date_gmt` read; the next
  run asks for comments `after` it, minus REREAD (comments held for moderation appear with the time they
  were written, and WordPress compares `after` to the second). An article seen for the first time is
  read from its first comment, as a separate "backfill" stream in the cursor, before it joins the rest.
- Ids: a comment's external_id is WordPress's own comment GUID, `<post guid>#comment-<id>` (the post guid
  is normally `<site>/?p=<post id>`), the same in the REST API and in the comment feeds, and stable when
  permalinks or comment paging change. `reply_to_external_id` is the parent's, built the same way.
- Hashtags: comments carry none; a comment gets the tracked tags its article carries (in article mode,
  every tracked tag of the source).
- `raw` is the comment as received with its article, as received from `posts`, under `_embedded.up`
  (WordPress's own embedding key), so `normalise_native` rebuilds the same item from `raw` alone.
- REST refused (401/403): the run goes on through the feeds, `<site>/?tag=<slug>&feed=rss2` for the
  tagged articles and each article's comment feed (conditional GETs), parsed by `sources/feed.py`.
- `date_gmt` has no zone: it is UTC. WordPress core sends no rate-limit headers; a 429 (or a 503 with
  Retry-After) from the host is waited for.
- Backfill (`backfill`): the tag's articles published since the date (`posts?tags=&after=`) and their
  comments since then (`comments?post=&after=`), MAX_BACKFILL_REQUESTS a call, the walk under `history`.
- Re-check (`recheck`): `comments?include=<ids>&per_page=100`; an id asked for and not returned is no
  longer public (a deletion); comments read from a feed are errors while REST is still refused.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import requests

from . import feed
from .base import (
    MAX_ITEM_HTML_CHARS,
    HttpClient,
    MalformedResponse,
    NeedsCredentials,
    NormalisedArticle,
    NormalisedAuthor,
    NormalisedItem,
    Page,
    PermanentError,
    Recheck,
    RejectedRaw,
    html_to_text,
    json_body,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

PLATFORM = "wordpress"
# The REST API's largest per_page.
PER_PAGE = 100
# Tagged articles followed: the newest 300. Their ids go into one comments URL (about 2.5 KB), well
# under the 8 KB request line that Apache and nginx accept by default.
ARTICLE_PAGES = 3
# One run reads at most this many pages of comments (2,000) so a busy site cannot hold a worker; the
# cursor makes the next run continue where this one stopped.
MAX_COMMENT_PAGES_PER_RUN = 20
# Comments are asked for from this long before the newest one read: moderated comments appear late
# with their original time, `after` is exclusive to the second, and clocks differ. Re-reading is cheap
# (storing an unchanged comment changes nothing).
REREAD = timedelta(hours=1)
# Comment feeds read per run when the REST API is refused: one request each (a tag feed lists the
# newest 10 articles by default).
MAX_FEED_ARTICLES_PER_RUN = 20
POST_FIELDS = "id,date_gmt,guid,link,title,tags"
# `collect --backfill` makes at most this many requests per call (100 articles or comments each: up to
# about 5,000 comments); the cursor lets the next call resume.
MAX_BACKFILL_REQUESTS = 50
# The cursor key of the backfill walk (the polling keys are `rest` and `feeds`).
HISTORY_KEY = "history"

_POST_ID = re.compile(r"(?:^|&)p=(\d+)(?:&|$)")
_COMMENT_GUID = re.compile(r"^(?P<post>.+)#comment-(?P<id>\d+)$")


# --- parsing -------------------------------------------------------------------------------------


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _rendered(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("rendered"), str):
        return value["rendered"]
    return value if isinstance(value, str) else ""


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""


def _home(comment: dict) -> str:
    """The site's root, from the comment's own REST link (`<home>/wp-json/...` or `<home>/?rest_route=`),
    else the origin of its link."""
    links = comment.get("_links")
    self_links = links.get("self") if isinstance(links, dict) else None
    href = self_links[0].get("href") if isinstance(self_links, list) and self_links and \
        isinstance(self_links[0], dict) else None
    if isinstance(href, str):
        for marker in ("/wp-json/", "/?rest_route=", "/index.php?rest_route="):
            if marker in href:
                return href.split(marker, 1)[0]
    return _origin(comment["link"]) if isinstance(comment.get("link"), str) else ""


def _embedded_post(obj: dict) -> dict | None:
    embedded = obj.get("_embedded")
    up = embedded.get("up") if isinstance(embedded, dict) else None
    return up[0] if isinstance(up, list) and up and isinstance(up[0], dict) else None


def plain_title(html: str) -> str:
    return html_to_text(sanitise_html(html))[:1000]


def article_of(post: dict) -> NormalisedArticle | None:
    """An article from a post object of the REST API."""
    link = post.get("link")
    post_id = _int(post.get("id"))
    if not isinstance(link, str) or not link.startswith(("http://", "https://")) or post_id is None:
        return None
    try:
        published_at = parse_timestamp(post.get("date_gmt"), field_name="date_gmt")
    except ValueError:
        published_at = None
    return NormalisedArticle(url=link[:2048], title=plain_title(_rendered(post.get("title"))),
                             published_at=published_at, external_id=str(post_id))


def _article_of_link(link: str, post_id: int) -> NormalisedArticle | None:
    """Without the post (a comment imported alone): the comment link without `#comment-N` is the article's
    address. Title and date stay unknown (storing does not blank ones already stored)."""
    if not link.startswith(("http://", "https://")):
        return None
    return NormalisedArticle(url=feed.article_url_of(link)[:2048], external_id=str(post_id))


def guest_author_id(home: str, name: str) -> str:
    """Guests have no account: the site and the name they gave are the best identity there is."""
    return f"{home}/#commenter={quote(name)}"


def _comment_author(comment: dict, home: str) -> NormalisedAuthor | None:
    name = str(comment.get("author_name") or "").strip()
    user_id = _int(comment.get("author")) or 0
    if user_id > 0:
        external_id = f"{home}/?author={user_id}"
    elif name:
        external_id = guest_author_id(home, name)
    else:
        return None
    url = comment.get("author_url") if isinstance(comment.get("author_url"), str) else ""
    return NormalisedAuthor(external_id=external_id[:2048], handle=name[:300], display_name=name[:300],
                            url=url[:2048] if url.startswith(("http://", "https://")) else "")


def _tags(hashtags: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({normalise_tag(tag) for tag in hashtags if normalise_tag(tag)}))


def _normalise_rest_comment(comment: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw:
    comment_id, post_id = _int(comment.get("id")), _int(comment.get("post"))
    if comment_id is None or post_id is None:
        return RejectedRaw(reason="comment has no integer id or post", raw=comment,
                           external_id=str(comment.get("link") or ""))
    post = _embedded_post(comment) or {}
    home = _home(comment)
    post_guid = _rendered(post.get("guid")).strip() or (f"{home}/?p={post_id}" if home else "")
    if not post_guid:
        return RejectedRaw(reason="comment has neither _links nor a link to tell its site", raw=comment)
    external_id = f"{post_guid}#comment-{comment_id}"
    try:
        created_at = parse_timestamp(comment.get("date_gmt"), field_name="date_gmt")
    except ValueError as exc:
        return RejectedRaw(reason=str(exc), raw=comment, external_id=external_id)
    content = comment.get("content")
    rendered = content.get("rendered") if isinstance(content, dict) else None
    if not isinstance(rendered, str):
        return RejectedRaw(reason="content.rendered is missing or not a string", raw=comment,
                           external_id=external_id)
    if len(rendered) > MAX_ITEM_HTML_CHARS:
        return RejectedRaw(reason=f"content of {len(rendered)} characters is over the {MAX_ITEM_HTML_CHARS} cap",
                           raw=comment, external_id=external_id)
    parent = _int(comment.get("parent")) or 0
    html = sanitise_html(rendered)
    link = comment.get("link") if isinstance(comment.get("link"), str) else ""
    return NormalisedItem(
        platform=PLATFORM,
        external_id=external_id,
        uri=external_id,
        url=link[:2048],
        kind="comment",
        author=_comment_author(comment, home or _origin(post_guid)),
        created_at=created_at,
        html=html,
        text=html_to_text(html),
        hashtags=_tags(hashtags),
        reply_to_external_id=f"{post_guid}#comment-{parent}" if parent > 0 else "",
        article=(article_of(post) if post else None) or _article_of_link(link, post_id),
        raw=comment,
    )


def _article_of_feed_entry(entry: dict) -> NormalisedArticle | None:
    """An article from an entry of a tag feed (the fallback's stand-in for a REST post)."""
    link = entry.get("link")
    if not isinstance(link, str) or not link.startswith(("http://", "https://")):
        return None
    post_id = _POST_ID.search(urlsplit(str(entry.get("id") or "")).query)
    return NormalisedArticle(url=link[:2048], title=" ".join(str(entry.get("title") or "").split())[:1000],
                             published_at=feed.entry_time(entry, "published"),
                             external_id=post_id.group(1) if post_id else "")


def _normalise_feed_comment(entry: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw:
    item = feed.normalise_entry(entry, hashtags=hashtags, platform=PLATFORM)
    if not isinstance(item, NormalisedItem):
        return item
    guid = _COMMENT_GUID.match(item.external_id)
    post_guid = guid.group("post") if guid else ""
    home = post_guid.split("/?p=", 1)[0] if "/?p=" in post_guid else _origin(item.url)
    author = item.author
    if author is not None and not author.url and home:
        # The same identity a guest gets through the REST API (feeds name no accounts).
        author = replace(author, external_id=guest_author_id(home, author.handle)[:2048])
    post = _embedded_post(entry)
    article = (_article_of_feed_entry(post) if post else None) or item.article
    return replace(item, author=author, article=article)


def normalise_native(obj: dict, *, hashtags: tuple[str, ...]) -> NormalisedItem | RejectedRaw | None:
    """One comment as this connector stores it in `raw`: a REST comment (its article under
    `_embedded.up`), or a comment-feed entry read during a REST fallback. Comments get `hashtags`."""
    if not isinstance(obj, dict):
        return RejectedRaw(reason="comment is not a JSON object", raw=obj)
    # Only REST comments have `post`, `date_gmt`, `author_name`; only feed entries have feedparser's keys.
    if feed.FEED_KEY not in obj and any(key in obj for key in ("post", "date_gmt", "author_name")):
        return _normalise_rest_comment(obj, hashtags=hashtags)
    if "link" in obj or "guidislink" in obj or feed.FEED_KEY in obj:
        return _normalise_feed_comment(obj, hashtags=hashtags)
    return RejectedRaw(reason="neither a REST API comment nor a comment-feed entry", raw=obj,
                       external_id=str(obj.get("id") or ""))


def article_feed_url(link: str) -> str:
    """The comment feed of one article: `<link>/feed/`, or `&feed=rss2` for `?p=<id>` addresses."""
    parts = urlsplit(link)
    if parts.query:
        return urlunsplit(parts._replace(query=f"{parts.query}&feed=rss2", fragment=""))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/feed/", fragment=""))


# --- the connector -------------------------------------------------------------------------------


@dataclass
class _Article:
    post: dict  # as received from `posts` (or from a tag feed in the fallback)
    hashtags: tuple[str, ...]
    comment_feed: str = ""


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cursor_time(value: Any) -> datetime | None:
    try:
        return parse_timestamp(value, field_name="cursor")
    except ValueError:
        return None  # a cursor this version cannot read: start that stream again


def _later(a: str | None, b: str | None) -> str | None:
    known = [(_cursor_time(v), v) for v in (a, b) if _cursor_time(v)]
    return max(known)[1] if known else None


def _stored_comment_id(external_id: str, raw: Any) -> tuple[int | None, bool]:
    """(WordPress comment id, whether the comment was read from a comment feed) of a stored comment."""
    from_feed = not isinstance(raw, dict) or feed.FEED_KEY in raw or not any(
        key in raw for key in ("post", "date_gmt", "author_name"))
    if not from_feed and _int(raw.get("id")) is not None:
        return _int(raw["id"]), False
    guid = _COMMENT_GUID.match(external_id)
    return (int(guid.group("id")) if guid else None), from_feed


def _same_whitespace(item: NormalisedItem, stored: Any) -> NormalisedItem:
    """`item` with the stored HTML when the two differ only in surrounding whitespace: a comment feed's
    HTML lacks the trailing newline of `content.rendered`, and that is not an edit."""
    if isinstance(stored, NormalisedItem) and stored.html != item.html and stored.html.strip() == item.html.strip():
        return replace(item, html=stored.html)
    return item


def _wp_error(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if isinstance(body, dict):
        return str(body.get("code") or ""), str(body.get("message") or "")
    return "", ""


def _total_pages(response: requests.Response) -> int | None:
    value = response.headers.get("X-WP-TotalPages", "").strip()
    return int(value) if value.isdigit() else None


class WordPressConnector:
    platform = PLATFORM

    def __init__(self, *, site: str, hashtags: list[str], options: dict, client: HttpClient,
                 now: Callable[[], datetime]):
        self.site = site.rstrip("/")
        self.tag_keys = _tags(tuple(hashtags))
        self.article_url = str(options.get("article") or "").strip()
        slugs = [s.strip().casefold() for s in str(options.get("tag") or "").split(",") if s.strip()]
        # slug -> the tracked tags a comment under an article carrying it gets
        self.slugs: dict[str, tuple[str, ...]] = (
            {slug: self.tag_keys for slug in slugs} if slugs else {key: (key,) for key in self.tag_keys}
        )
        self.client = client
        self.now = now
        self._rejected_posts: list[RejectedRaw] = []

    # -- the run --

    def fetch(self, *, cursor: dict) -> Iterator[Page]:
        """Comments through the REST API; through the feeds when the REST API refuses (401/403).

        Each page's cursor is the whole cursor once that page is stored.
        """
        state = copy.deepcopy(cursor) if isinstance(cursor, dict) else {}
        try:
            yield from self._fetch_rest(state)
        except NeedsCredentials as refused:
            yield from self._fetch_feeds(state, refused=str(refused))

    # -- REST --

    def _rest(self, route: str, params: dict) -> tuple[Any, requests.Response]:
        url = f"{self.site}/wp-json/wp/v2/{route}"
        now = self.now()
        response = self.client.get(url, params=params, headers={"Accept": "application/json"})
        if response.status_code in (400, 404):
            code, message = _wp_error(response)
            if response.status_code == 400 and code.endswith("invalid_page_number"):
                return [], response  # the list shrank while we paged: nothing more to read
            if response.status_code == 404:
                raise PermanentError(
                    f"no WordPress REST API at {url} (404{' ' + code if code else ''}): the source URL must be "
                    "the root of a WordPress site with its REST API on"
                )
            raise PermanentError(f"WordPress refused {response.url} (400 {code}: {message})")
        feed.check_status_waiting(response, now=now)
        return json_body(response), response

    def _rest_list(self, route: str, params: dict, what: str) -> tuple[list, requests.Response]:
        body, response = self._rest(route, params)
        if not isinstance(body, list):
            raise MalformedResponse(f"expected a list of {what} from {response.url}", raw=body)
        return body, response

    def _tag_ids(self, detail: dict) -> dict[int, tuple[str, ...]]:
        """{tag id: the tracked tags a comment under an article carrying it gets}, from `tags?slug=`."""
        tags, response = self._rest_list("tags", {"slug": ",".join(self.slugs), "per_page": PER_PAGE,
                                                  "_fields": "id,slug,name"}, "tags")
        wanted = {slug: slug for slug in self.slugs}
        wanted.update({quote(slug, safe="").lower(): slug for slug in self.slugs})  # non-ASCII slugs
        tag_ids: dict[int, tuple[str, ...]] = {}
        for tag in tags:
            if not isinstance(tag, dict) or _int(tag.get("id")) is None or not isinstance(tag.get("slug"), str):
                raise MalformedResponse(f"expected tags with an integer id and a slug from {response.url}", raw=tags)
            slug = wanted.get(tag["slug"].casefold()) or wanted.get(unquote(tag["slug"]).casefold())
            if slug:
                tag_ids[_int(tag["id"])] = self.slugs[slug]
        found = {wanted.get(t["slug"].casefold()) or wanted.get(unquote(t["slug"]).casefold()) for t in tags}
        detail["tags_missing"] = sorted(slug for slug in self.slugs if slug not in found)
        return tag_ids

    def _tagged_articles(self, detail: dict) -> dict[int, _Article]:
        tag_ids = self._tag_ids(detail)
        if not tag_ids:
            return {}
        articles: dict[int, _Article] = {}
        for page_number in range(1, ARTICLE_PAGES + 1):
            posts, last = self._tagged_posts_page(tag_ids, page_number)
            for post in posts:
                self._add_article(articles, post, lambda p: self._post_tags(p, tag_ids))
            if last:
                break
        return articles

    def _tagged_posts_page(self, tag_ids: dict[int, tuple[str, ...]], page_number: int,
                           after: datetime | None = None) -> tuple[list, bool]:
        """One page of the articles carrying the tags, newest first; and whether it is the last page."""
        params = {"tags": ",".join(str(i) for i in sorted(tag_ids)), "per_page": PER_PAGE, "page": page_number,
                  "orderby": "date", "order": "desc", "_fields": POST_FIELDS}
        if after is not None:
            params["after"] = _iso(after)
        posts, response = self._rest_list("posts", params, "posts")
        total = _total_pages(response)
        return posts, not posts or (total is not None and page_number >= total) or (total is None and len(posts) < PER_PAGE)

    def _post_tags(self, post: dict, tag_ids: dict[int, tuple[str, ...]]) -> tuple[str, ...]:
        ids = post.get("tags")
        if isinstance(ids, list):
            keys = {key for tag_id in ids if _int(tag_id) in tag_ids for key in tag_ids[_int(tag_id)]}
            if keys:
                return tuple(sorted(keys))
        # The site answered this post for our tags; without its tags list it carries all of them.
        return tuple(sorted({key for keys in tag_ids.values() for key in keys}))

    def _add_article(self, articles: dict[int, _Article], post: Any, hashtags: Callable[[dict], tuple]) -> None:
        if not isinstance(post, dict) or article_of(post) is None:
            self._rejected_posts.append(RejectedRaw(reason="post has no integer id or no http(s) link", raw=post))
            return
        articles[_int(post["id"])] = _Article(post=post, hashtags=hashtags(post))

    def _single_article(self) -> dict[int, _Article]:
        parts = urlsplit(self.article_url)
        post_id = _POST_ID.search(parts.query)
        slug = next((segment for segment in reversed(parts.path.split("/")) if segment), "")
        if post_id:
            params = {"include": post_id.group(1)}
        elif slug:
            params = {"slug": slug}
        else:
            raise PermanentError(f"the article option must be an article's URL, not {self.article_url!r}")
        posts, _response = self._rest_list("posts", {**params, "_fields": POST_FIELDS}, "posts")
        matching = [p for p in posts if isinstance(p, dict) and isinstance(p.get("link"), str)
                    and feed._same_page(p["link"], self.article_url)]
        if not matching and len(posts) == 1 and post_id:
            matching = posts
        articles: dict[int, _Article] = {}
        for post in matching[:1]:
            self._add_article(articles, post, lambda _p: self.tag_keys)
        if not articles:
            raise PermanentError(f"no post at {self.site} has the address {self.article_url}")
        return articles

    def _fetch_rest(self, state: dict) -> Iterator[Page]:
        detail: dict = {"via": "rest", "rest_refused": ""}
        self._rejected_posts = []
        articles = self._single_article() if self.article_url else self._tagged_articles(detail)
        detail["articles_followed"] = len(articles)
        rejected = list(self._rejected_posts)
        if not isinstance(state.get("rest"), dict):
            state["rest"] = {}  # a cursor this version cannot read: start again (storing is idempotent)
        rest = state["rest"]
        followed = [i for i in rest.get("articles") or [] if isinstance(i, int) and i in articles]
        backfill = rest.get("backfill") if isinstance(rest.get("backfill"), dict) else None
        if backfill:
            backfill["articles"] = [i for i in backfill.get("articles") or [] if isinstance(i, int) and i in articles]
            backfill = backfill if backfill["articles"] else None
        known = set(followed) | set(backfill["articles"] if backfill else [])
        new = [i for i in articles if i not in known]
        if new and backfill is None:
            backfill = {"articles": new, "after": None}
        rest["articles"] = followed
        if backfill:
            rest["backfill"] = backfill
        else:
            rest.pop("backfill", None)

        def page_out(page: Page) -> Page:
            nonlocal rejected
            page.rejected[:0], rejected = rejected, []
            page.cursor = copy.deepcopy(state)
            page.health_detail = dict(detail)
            return page

        if not articles:
            yield page_out(Page())
            return
        started = _iso(self.now())
        budget = MAX_COMMENT_PAGES_PER_RUN
        complete = True
        if followed:
            complete = False
            for page, newest, last in self._comment_pages(followed, rest.get("after"), articles, budget):
                budget -= 1
                rest["after"] = _later(rest.get("after"), newest)
                if last:
                    complete = True
                    rest["after"] = rest["after"] or started
                yield page_out(page)
        if backfill and complete and budget > 0:
            for page, newest, last in self._comment_pages(backfill["articles"], backfill["after"], articles, budget):
                backfill["after"] = _later(backfill["after"], newest)
                if last:
                    # Read up to now: these articles join the followed ones.
                    rest["articles"] = [i for i in articles if i in set(followed) | set(backfill["articles"])]
                    rest["after"] = _later(rest.get("after"), backfill["after"] or started)
                    rest.pop("backfill", None)
                yield page_out(page)
        elif rejected:
            yield page_out(Page())

    def _comment_pages(self, ids: list[int], after: str | None, articles: dict[int, _Article],
                       budget: int) -> Iterator[tuple[Page, str | None, bool]]:
        """(page, newest date_gmt on it, whether it is the stream's last page), oldest comments first."""
        params: dict = {"post": ",".join(str(i) for i in sorted(ids)), "per_page": PER_PAGE,
                        "orderby": "date_gmt", "order": "asc"}
        since = _cursor_time(after)
        if since:
            params["after"] = _iso(since - REREAD)
        for page_number in range(1, budget + 1):
            page, newest, last = self._comments_page(params, page_number, articles)
            yield page, _iso(newest) if newest else None, last
            if last:
                return

    def _comments_page(self, params: dict, page_number: int,
                       articles: dict[int, _Article]) -> tuple[Page, datetime | None, bool]:
        """One page of `comments` with `params`: (page, newest created_at on it, whether it is the last)."""
        comments, response = self._rest_list("comments", {**params, "page": page_number}, "comments")
        page = Page(fetched=len(comments))
        newest: datetime | None = None
        for comment in comments:
            article = articles.get(_int(comment.get("post"))) if isinstance(comment, dict) else None
            raw = comment
            if article is not None:
                raw = {**comment, "_embedded": {**(comment.get("_embedded") or {}), "up": [article.post]}}
            result = normalise_native(raw, hashtags=article.hashtags if article else self.tag_keys)
            if isinstance(result, NormalisedItem):
                page.items.append(result)
                newest = max(newest or result.created_at, result.created_at)
            elif isinstance(result, RejectedRaw):
                page.rejected.append(result)
        total = _total_pages(response)
        last = not comments or (total is not None and page_number >= total) or \
            (total is None and len(comments) < PER_PAGE)
        return page, newest, last

    # -- backfill: walking back to a date --

    def backfill(self, *, since: datetime, cursor: dict) -> Iterator[Page]:
        """The comments written since `since` under the tag's articles published since then (in article
        mode: under the article), at most MAX_BACKFILL_REQUESTS requests per call.

        The walk's position is kept in the cursor under `history` (`since`, `posts_page`, `comments_page`),
        the polling keys untouched; a finished walk leaves `history.backfilled_since`, and a later call for
        the same date or a later one makes no request. Needs the REST API: comment feeds list only the
        newest comments, so a refused REST API raises NeedsCredentials.
        """
        state = copy.deepcopy(cursor) if isinstance(cursor, dict) else {}
        history = state.get(HISTORY_KEY) if isinstance(state.get(HISTORY_KEY), dict) else {}
        done = _cursor_time(history.get("backfilled_since"))
        if done is not None and done <= since:
            return
        wanted = _iso(since)
        if history.get("since") != wanted or not all(
                isinstance(history.get(key), int) and history[key] >= 1 for key in ("posts_page", "comments_page")):
            history = {"since": wanted, "posts_page": 1, "comments_page": 1,
                       **({"backfilled_since": history["backfilled_since"]} if done else {})}
        state[HISTORY_KEY] = history
        detail: dict = {}
        self._rejected_posts = []
        budget = MAX_BACKFILL_REQUESTS
        try:
            tag_ids = None if self.article_url else self._tag_ids(detail)
            while budget > 0:
                if self.article_url:
                    articles, last_articles = self._single_article(), True
                else:
                    # `after` is exclusive to the second: an article published at `since` is included.
                    posts, last_articles = self._tagged_posts_page(
                        tag_ids, history["posts_page"], since - timedelta(seconds=1)) if tag_ids else ([], True)
                    articles = {}
                    for post in posts:
                        self._add_article(articles, post, lambda p: self._post_tags(p, tag_ids))
                budget -= 1
                params = {"post": ",".join(str(i) for i in sorted(articles)), "per_page": PER_PAGE,
                          "orderby": "date_gmt", "order": "asc",
                          "after": _iso(since - timedelta(seconds=1))}
                last_comments = not articles
                while not last_comments and budget > 0:
                    page, _newest, last_comments = self._comments_page(params, history["comments_page"], articles)
                    budget -= 1
                    page.items = [item for item in page.items if item.created_at >= since]
                    history["comments_page"] = 1 if last_comments else history["comments_page"] + 1
                    if last_comments:
                        self._next_articles(history, last_articles)
                    yield self._history_page(page, state, detail)
                if not last_comments:
                    return  # the budget ran out within this page of articles: the cursor says where
                if not articles:
                    self._next_articles(history, last_articles)
                    yield self._history_page(Page(), state, detail)
                if last_articles:
                    return
        except NeedsCredentials as exc:
            raise NeedsCredentials(f"backfill reads the REST API, which {self.site} refuses ({exc}); its comment "
                                   "feeds list only the newest comments") from None

    @staticmethod
    def _next_articles(history: dict, last_articles: bool) -> None:
        """Move the walk past a page of articles whose comments are all read; finished after the last."""
        if last_articles:
            finished = history["since"]
            history.clear()
            history["backfilled_since"] = finished
        else:
            history["posts_page"] += 1
            history["comments_page"] = 1

    def _history_page(self, page: Page, state: dict, detail: dict) -> Page:
        page.rejected[:0], self._rejected_posts = self._rejected_posts, []
        page.cursor = copy.deepcopy(state)
        page.health_detail = dict(detail)
        return page

    # -- re-checking stored comments --

    def recheck(self, posts: list[tuple[str, dict]]) -> Iterator[Recheck]:
        """Ask the REST API for the stored comments by id, `comments?include=<ids>&per_page=100` (100 a
        request). A returned comment is its current version (an edit becomes a revision when stored); an
        id asked for and not returned is no longer public (deleted, trashed, spam or unapproved, or its
        article unpublished): a deletion. Comments read from a comment feed are asked for the same way;
        while the REST API still refuses, they are errors (a feed lists only the newest comments, so it
        cannot show a deletion). Raises NeedsCredentials (REST refused for comments read through it),
        RateLimited, TemporaryError, PermanentError, MalformedResponse.
        """
        wanted: dict[int, tuple[str, dict, bool]] = {}
        for external_id, raw in posts:
            comment_id, from_feed = _stored_comment_id(external_id, raw)
            if comment_id is None:
                yield Recheck(external_id=external_id, error="no WordPress comment id in the stored comment")
            elif comment_id in wanted:
                yield Recheck(external_id=external_id, error=f"another stored comment has the id {comment_id}")
            else:
                wanted[comment_id] = (external_id, raw if isinstance(raw, dict) else {}, from_feed)
        ids = list(wanted)
        tag_ids: dict[int, tuple[str, ...]] | None = None
        for start in range(0, len(ids), PER_PAGE):
            chunk = ids[start:start + PER_PAGE]
            try:
                comments, response = self._rest_list("comments", {
                    "include": ",".join(str(i) for i in chunk), "per_page": PER_PAGE}, "comments")
            except NeedsCredentials as refused:
                if not all(wanted[i][2] for i in chunk):
                    raise
                for comment_id in chunk:
                    yield Recheck(external_id=wanted[comment_id][0], error=(
                        f"collected from the comment feed; REST is blocked ({refused}), and a comment feed "
                        "lists only the newest comments, so it cannot show a deletion"))
                continue
            returned = {_int(c.get("id")): c for c in comments if isinstance(c, dict) and _int(c.get("id")) in wanted}
            complete = (_total_pages(response) or 1) <= 1 and len(comments) < PER_PAGE or len(chunk) == len(returned)
            # Articles of comments read from a feed, as the REST API gives them (one request).
            feed_posts = {_int(returned[i].get("post")) for i in chunk if i in returned and wanted[i][2]}
            articles: dict[int, dict] = {}
            if feed_posts - {None}:
                found, _response = self._rest_list("posts", {
                    "include": ",".join(str(i) for i in sorted(feed_posts - {None})), "per_page": PER_PAGE,
                    "_fields": POST_FIELDS}, "posts")
                articles = {_int(p.get("id")): p for p in found if isinstance(p, dict)}
            if tag_ids is None and returned and self._needs_tag_ids():
                tag_ids = self._tag_ids({})
            for comment_id in chunk:
                external_id, raw, from_feed = wanted[comment_id]
                comment = returned.get(comment_id)
                if comment is None:
                    if complete:
                        yield Recheck(external_id=external_id, deleted_reason=(
                            f"no longer public on {self.site}: comments?include={comment_id} did not return it "
                            "(deleted, trashed, marked as spam or unapproved, or its article unpublished)"))
                    else:
                        yield Recheck(external_id=external_id,
                                      error="the REST API answered only part of the comments asked for")
                    continue
                post = articles.get(_int(comment.get("post"))) if from_feed else _embedded_post(raw)
                if post is None:
                    yield Recheck(external_id=external_id, error=f"the article of comment {comment_id} was not returned")
                    continue
                result = normalise_native({**comment, "_embedded": {**(comment.get("_embedded") or {}), "up": [post]}},
                                          hashtags=self._recheck_hashtags(post, tag_ids or {}))
                if isinstance(result, RejectedRaw):
                    yield Recheck(external_id=external_id, error=result.reason)
                elif isinstance(result, NormalisedItem) and result.external_id == external_id:
                    if from_feed:
                        result = _same_whitespace(result, normalise_native(raw, hashtags=result.hashtags))
                    yield Recheck(external_id=external_id, item=result)
                else:
                    yield Recheck(external_id=external_id, error=(
                        f"WordPress returned comment {comment_id} under another id "
                        f"({result.external_id if isinstance(result, NormalisedItem) else 'none'})"))

    def _needs_tag_ids(self) -> bool:
        """Whether comments get different tags by their article's tags (several slugs, one tag each)."""
        return not self.article_url and len(set(self.slugs.values())) > 1

    def _recheck_hashtags(self, post: dict, tag_ids: dict[int, tuple[str, ...]]) -> tuple[str, ...]:
        if self._needs_tag_ids():
            return self._post_tags(post, tag_ids)
        return self.tag_keys if self.article_url else next(iter(self.slugs.values()), self.tag_keys)

    # -- the feeds, when the REST API is refused --

    def _feed(self, url: str, validators: dict) -> feed.FeedDocument:
        return feed.fetch_feed(self.client, url, validators=validators, now=self.now())

    def _feed_targets(self) -> list[_Article]:
        if self.article_url:
            return [_Article(post={}, hashtags=self.tag_keys, comment_feed=article_feed_url(self.article_url))]
        targets: dict[str, _Article] = {}
        for slug, keys in self.slugs.items():
            url = f"{self.site}/?{urlencode({'tag': slug, 'feed': 'rss2'})}"
            try:
                document = self._feed(url, {})
            except feed.FeedNotFound:
                continue  # no such tag on this site
            for entry in document.parsed.entries:
                link = entry.get("link")
                if not isinstance(link, str) or not link.startswith(("http://", "https://")):
                    continue
                known = targets.get(link)
                if known:
                    known.hashtags = tuple(sorted(set(known.hashtags) | set(keys)))
                    continue
                post = {key: feed.plain(entry.get(key)) for key in
                        ("id", "link", "title", "published", "published_parsed") if key in entry}
                comment_feed = entry.get("wfw_commentrss")
                targets[link] = _Article(
                    post=post, hashtags=tuple(sorted(keys)),
                    comment_feed=comment_feed if isinstance(comment_feed, str) and comment_feed.startswith(
                        ("http://", "https://")) else article_feed_url(link),
                )
        return list(targets.values())[:MAX_FEED_ARTICLES_PER_RUN]

    def _fetch_feeds(self, state: dict, *, refused: str) -> Iterator[Page]:
        detail = {"via": "feeds", "rest_refused": refused}
        try:
            targets = self._feed_targets()
            feeds = state.get("feeds") if isinstance(state.get("feeds"), dict) else {}
            # Only the feeds still followed keep their validators: the cursor stays small.
            state["feeds"] = {t.comment_feed: feeds[t.comment_feed] for t in targets if t.comment_feed in feeds}
            detail["articles_followed"] = len(targets)
            if not targets:
                yield Page(cursor=copy.deepcopy(state), health_detail=detail)
                return
            for target in targets:
                try:
                    document = self._feed(target.comment_feed, state["feeds"].get(target.comment_feed, {}))
                except feed.FeedNotFound:
                    continue  # comments closed and feed removed by a plugin: nothing to read there
                page = Page()
                if document.parsed is not None:
                    meta = feed.feed_meta(document.parsed)
                    page.fetched = len(document.parsed.entries)
                    for entry in document.parsed.entries:
                        raw = feed.raw_entry(entry, meta)
                        if target.post and isinstance(raw, dict):
                            raw["_embedded"] = {"up": [target.post]}
                        result = normalise_native(raw, hashtags=target.hashtags)
                        if isinstance(result, NormalisedItem):
                            page.items.append(result)
                        elif isinstance(result, RejectedRaw):
                            page.rejected.append(result)
                    page.items = feed.same_article_everywhere(page.items)
                state["feeds"][target.comment_feed] = document.validators
                page.cursor = copy.deepcopy(state)
                page.health_detail = dict(detail)
                yield page
        except NeedsCredentials as exc:
            raise NeedsCredentials(
                f"{self.site} refuses anonymous readers: the REST API said {refused}, and the feeds: {exc}"
            ) from None


def build(config, *, client: HttpClient, now: Callable[[], datetime], store=None) -> WordPressConnector:
    return WordPressConnector(site=config.base_url, hashtags=list(config.hashtags), options=dict(config.options),
                              client=client, now=now)
