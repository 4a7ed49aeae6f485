"""A WordPress site served on 127.0.0.1, built from the REST API handbook's documented objects
(tests/fixtures/wordpress_{tag,post,comment}.json) and WordPress's RSS2 feed templates.

There is no public recording of WordPress to replay (see ../shared/fixtures/wordpress/NOTE.md), so this
implements what the connector relies on, as WordPress documents and does it:

- `GET /wp-json/wp/v2/tags?slug=a,b`, `posts?tags=|slug=|include=|after=`, `comments?post=1,2|include=1,2
  &after=&orderby=date_gmt&order=asc`, with `per_page` (at most 100, else 400), `page`, `_fields`, `X-WP-Total` and
  `X-WP-TotalPages`; a posts page past the end is 400 `rest_post_invalid_page_number`, a comments page
  past the end is an empty list; only approved comments are public. `after` is exclusive.
- `/?tag=<slug>&feed=rss2` (the tag's posts feed) and `<post link>feed/` (one article's comment feed,
  "In reply to" for replies, guid `<post guid>#comment-<id>`), each with ETag and Last-Modified, and 304
  for a matching If-None-Match / If-Modified-Since. Feeds list the newest 10 (WordPress's posts_per_rss).
- `rest_refused = 401|403` makes every /wp-json request answer like a site that blocks anonymous REST;
  `feeds_refused` does the same for feeds; `override` answers every request with one reply.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import escape
from pathlib import Path
from urllib.parse import quote, urlsplit

from tests.upstream import FakeUpstream, Reply, current_request_headers

FIXTURES = Path(__file__).parent / "fixtures"
PLACEHOLDER = "https://news.example"
PER_PAGE_MAX = 100
FEED_ITEMS = 10


def _template(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def _fill(text: str, site: str) -> dict:
    return json.loads(text.replace(PLACEHOLDER, site))


def _wp_time(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def make_tag(tag_id: int, slug: str, *, site: str, name: str | None = None) -> dict:
    tag = _fill(_template("wordpress_tag.json").replace("/tags/7", f"/tags/{tag_id}").replace("tags=7", f"tags={tag_id}"),
                site)
    tag.update(id=tag_id, slug=slug, name=name or slug, link=f"{site}/tag/{slug}/")
    return tag


def make_post(post_id: int, *, site: str, tags: list[int], published: datetime, title: str | None = None,
              slug: str | None = None) -> dict:
    post = _fill(_template("wordpress_post.json").replace("123", str(post_id)), site)
    slug = slug or f"article-{post_id}"
    post.update(
        id=post_id, slug=slug, tags=list(tags),
        date=_wp_time(published + timedelta(hours=2)), date_gmt=_wp_time(published),
        modified=_wp_time(published + timedelta(hours=2, minutes=30)), modified_gmt=_wp_time(published + timedelta(minutes=30)),
        link=f"{site}/{published:%Y/%m/%d}/{slug}/",
        guid={"rendered": f"{site}/?p={post_id}"},
        title={"rendered": title if title is not None else f"Article {post_id} &#8211; the talks"},
    )
    return post


def make_comment(comment_id: int, *, post: dict, site: str, written: datetime, parent: int = 0, author: int = 0,
                 author_name: str | None = None, text: str | None = None, status: str = "approved") -> dict:
    comment = _fill(_template("wordpress_comment.json").replace("/comments/45", f"/comments/{comment_id}")
                    .replace("/posts/123", f"/posts/{post['id']}"), site)
    comment.update(
        id=comment_id, post=post["id"], parent=parent, author=author,
        author_name=author_name if author_name is not None else f"Reader {comment_id % 5}",
        date=_wp_time(written + timedelta(hours=2)), date_gmt=_wp_time(written),
        content={"rendered": f"<p>{text if text is not None else f'Comment {comment_id} on the talks'}</p>\n"},
        link=f"{post['link']}#comment-{comment_id}", status=status,
    )
    return comment


@dataclass
class HeaderLog:
    """The request headers a FakeUpstream saw from the moment the log was made (names lowercased)."""

    upstream: FakeUpstream
    start: int = 0

    @property
    def seen(self) -> list[dict]:
        return [{"path": r.path, **r.headers} for r in self.upstream.requests[self.start:]]

    def current(self) -> dict:
        return current_request_headers()

    def clear(self) -> None:
        """Forget what was seen so far."""
        self.start = len(self.upstream.requests)


def capture_request_headers(upstream: FakeUpstream) -> HeaderLog:
    return HeaderLog(upstream, start=len(upstream.requests))


def _ent2ncr(html: str) -> str:
    """Titles are HTML; WordPress's feeds turn named entities into numeric ones, which XML accepts."""
    return html.replace("&nbsp;", "&#160;")


def _http_date(value: datetime) -> str:
    return email.utils.format_datetime(value.astimezone(timezone.utc), usegmt=True)


def _parse_after(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _gmt(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


def _readable(value) -> bool:
    try:
        _gmt(value)
    except (TypeError, ValueError):
        return False
    return True


def _ids(value: str) -> set[int]:
    return {int(part) for part in value.split(",") if part.strip().isdigit()}


class WordPressSite:
    """Serves a site's REST API and feeds from `tags`, `posts` and `comments` (lists of REST objects)."""

    def __init__(self, upstream: FakeUpstream, *, tags: list[dict] | None = None, posts: list[dict] | None = None,
                 comments: list[dict] | None = None):
        self.upstream = upstream
        self.site = upstream.url
        self.tags = list(tags or [])
        self.posts = list(posts or [])
        self.comments = list(comments or [])
        self.rest_refused: int | None = None
        self.feeds_refused: int | None = None
        self.override: Reply | None = None
        self.headers = capture_request_headers(upstream)
        upstream.routes["/wp-json/wp/v2/tags"] = self._rest(self.handle_tags)
        upstream.routes["/wp-json/wp/v2/posts"] = self._rest(self.handle_posts)
        upstream.routes["/wp-json/wp/v2/comments"] = self._rest(self.handle_comments)
        upstream.routes["/"] = self.handle_home
        upstream.prefix_routes.append(("/20", self.handle_article_feed))

    # -- building --

    def add_tag(self, tag_id: int, slug: str) -> dict:
        tag = make_tag(tag_id, slug, site=self.site)
        self.tags.append(tag)
        return tag

    def add_post(self, post_id: int, *, tags: list[int], published: datetime, **kwargs) -> dict:
        post = make_post(post_id, site=self.site, tags=tags, published=published, **kwargs)
        self.posts.append(post)
        return post

    def add_comment(self, comment_id: int, *, post: dict, written: datetime, **kwargs) -> dict:
        comment = make_comment(comment_id, post=post, site=self.site, written=written, **kwargs)
        self.comments.append(comment)
        return comment

    # -- REST --

    def _rest(self, handler):
        def handle(path: str, query: dict) -> Reply:
            if self.override is not None:
                return self.override
            if self.rest_refused:
                return Reply(self.rest_refused, {"code": "rest_login_required",
                                                 "message": "REST API restricted to authenticated users.",
                                                 "data": {"status": self.rest_refused}})
            per_page = int(query.get("per_page", 10))
            if not 1 <= per_page <= PER_PAGE_MAX:
                return Reply(400, {"code": "rest_invalid_param", "message": "Invalid parameter(s): per_page",
                                   "data": {"status": 400, "params": {"per_page": "per_page must be between 1 (inclusive) and 100 (inclusive)"}}})
            return handler(query, per_page)
        return handle

    def _paged(self, items: list[dict], query: dict, per_page: int, *, error_past_end: str | None) -> Reply:
        page = int(query.get("page", 1))
        total_pages = -(-len(items) // per_page)
        if error_past_end and page > max(total_pages, 1):
            return Reply(400, {"code": error_past_end,
                               "message": "The page number requested is larger than the number of pages available.",
                               "data": {"status": 400}})
        chosen = items[(page - 1) * per_page: page * per_page]
        if "_fields" in query:
            keep = query["_fields"].split(",")
            chosen = [{key: value for key, value in item.items() if key in keep} for item in chosen]
        return Reply(200, chosen, {"X-WP-Total": str(len(items)), "X-WP-TotalPages": str(total_pages)})

    def handle_tags(self, query: dict, per_page: int) -> Reply:
        # WordPress sanitises slugs: lowercase, non-ASCII percent-encoded (sanitize_title).
        slugs = {quote(s.lower(), safe="").lower() for s in query["slug"].split(",")} if "slug" in query else None
        found = [t for t in self.tags if slugs is None or t["slug"] in slugs]
        return self._paged(found, query, per_page, error_past_end="rest_term_invalid_page_number")

    def handle_posts(self, query: dict, per_page: int) -> Reply:
        found = self.posts
        if "tags" in query:
            wanted = _ids(query["tags"])
            found = [p for p in found if wanted & set(p["tags"])]
        if "slug" in query:
            found = [p for p in found if p["slug"] in query["slug"].split(",")]
        if "include" in query:
            found = [p for p in found if p["id"] in _ids(query["include"])]
        if "after" in query:
            after = _parse_after(query["after"])
            found = [p for p in found if _gmt(p["date_gmt"]) > after]
        found = sorted(found, key=lambda p: (p["date_gmt"], p["id"]), reverse=query.get("order", "desc") == "desc")
        return self._paged(found, query, per_page, error_past_end="rest_post_invalid_page_number")

    def handle_comments(self, query: dict, per_page: int) -> Reply:
        found = [c for c in self.comments if c["status"] == "approved"]
        if "post" in query:
            wanted = _ids(query["post"])
            found = [c for c in found if c["post"] in wanted]
        if "include" in query:
            wanted = _ids(query["include"])
            found = [c for c in found if c["id"] in wanted]
        if "after" in query:
            after = _parse_after(query["after"])
            found = [c for c in found if _readable(c.get("date_gmt")) and _gmt(c["date_gmt"]) > after]
        # A broken comment (the tests' "changed field") sorts first instead of breaking the fake.
        found = sorted(found, key=lambda c: (str(c.get("date_gmt") or ""), c["id"]), reverse=query.get("order", "desc") == "desc")
        return self._paged(found, query, per_page, error_past_end=None)

    # -- feeds --

    def _feed_reply(self, xml: str, newest: datetime | None) -> Reply:
        if self.override is not None:
            return self.override
        if self.feeds_refused:
            return Reply(self.feeds_refused, "<html><body>Forbidden</body></html>", {"Content-Type": "text/html"})
        body = xml.encode()
        etag = '"' + hashlib.md5(body).hexdigest() + '"'
        last_modified = _http_date(newest or datetime(2026, 1, 1, tzinfo=timezone.utc))
        asked = self.headers.current()
        if asked.get("if-none-match") == etag or (
                "if-none-match" not in asked and asked.get("if-modified-since") == last_modified):
            return Reply(304, b"", {"ETag": etag, "Last-Modified": last_modified, "Content-Type": "text/plain"})
        return Reply(200, body, {"Content-Type": "application/rss+xml; charset=UTF-8", "ETag": etag,
                                 "Last-Modified": last_modified})

    def handle_home(self, path: str, query: dict) -> Reply:
        if query.get("feed") == "rss2" and "tag" in query:
            return self.tag_feed(query["tag"])
        return Reply(200, "<html><body>News</body></html>", {"Content-Type": "text/html"})

    def tag_feed(self, slug: str) -> Reply:
        tag = next((t for t in self.tags if t["slug"] == slug), None)
        if tag is None:
            return Reply(404, "<html><body>Not found</body></html>", {"Content-Type": "text/html"})
        posts = sorted((p for p in self.posts if tag["id"] in p["tags"]), key=lambda p: p["date_gmt"], reverse=True)
        items = "".join(
            f"""<item><title>{_ent2ncr(p['title']['rendered'])}</title><link>{escape(p['link'])}</link>
<comments>{escape(p['link'])}#respond</comments><dc:creator><![CDATA[Newsroom]]></dc:creator>
<pubDate>{_http_date(_gmt(p['date_gmt']))}</pubDate><category><![CDATA[{tag['name']}]]></category>
<guid isPermaLink="false">{escape(p['guid']['rendered'])}</guid>
<description><![CDATA[Delegations met again.]]></description>
<content:encoded><![CDATA[{p['content']['rendered']}]]></content:encoded>
<wfw:commentRss>{escape(p['link'])}feed/</wfw:commentRss><slash:comments>{sum(1 for c in self.comments if c['post'] == p['id'])}</slash:comments>
</item>""" for p in posts[:FEED_ITEMS])
        xml = f"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"
 xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:wfw="http://wellformedweb.org/CommentAPI/"
 xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:atom="http://www.w3.org/2005/Atom"
 xmlns:sy="http://purl.org/rss/1.0/modules/syndication/" xmlns:slash="http://purl.org/rss/1.0/modules/slash/">
<channel><title>{escape(tag['name'])} &#8211; News</title>
<atom:link href="{self.site}/tag/{slug}/feed/" rel="self" type="application/rss+xml" />
<link>{self.site}</link><description>News</description><language>en-GB</language>
{items}</channel></rss>"""
        return self._feed_reply(xml, max((_gmt(p["date_gmt"]) for p in posts), default=None))

    def handle_article_feed(self, path: str, query: dict) -> Reply:
        post = next((p for p in self.posts if path.endswith("/feed/") and
                     urlsplit(p["link"]).path == path[: -len("feed/")]), None)
        if post is None:
            return Reply(404, "<html><body>Not found</body></html>", {"Content-Type": "text/html"})
        comments = sorted((c for c in self.comments if c["post"] == post["id"] and c["status"] == "approved"),
                          key=lambda c: str(c.get("date_gmt") or ""), reverse=True)[:FEED_ITEMS]
        by_id = {c["id"]: c for c in self.comments}
        items = []
        for c in comments:
            text = c["content"]["rendered"]
            parent = by_id.get(c["parent"])
            if parent:
                text = f'<p>In reply to <a href="{escape(parent["link"])}">{escape(parent["author_name"])}</a>.</p>\n{text}'
            items.append(f"""<item><title>By: {escape(c['author_name'])}</title><link>{escape(c['link'])}</link>
<dc:creator><![CDATA[{c['author_name']}]]></dc:creator><pubDate>{_http_date(_gmt(c['date_gmt'])) if _readable(c.get('date_gmt')) else 'not a date'}</pubDate>
<guid isPermaLink="false">{escape(post['guid']['rendered'])}#comment-{c['id']}</guid>
<description><![CDATA[{c['content']['rendered']}]]></description>
<content:encoded><![CDATA[{text}]]></content:encoded></item>""")
        xml = f"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"
 xmlns:content="http://purl.org/rss/1.0/modules/content/" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:atom="http://www.w3.org/2005/Atom" xmlns:sy="http://purl.org/rss/1.0/modules/syndication/">
<channel><title>Comments on: {_ent2ncr(post['title']['rendered'])}</title>
<atom:link href="{escape(post['link'])}feed/" rel="self" type="application/rss+xml" />
<link>{escape(post['link'])}</link><description>News</description>
<lastBuildDate>Tue, 24 Nov 2026 10:00:00 +0000</lastBuildDate>
{''.join(items)}</channel></rss>"""
        return self._feed_reply(xml, max((_gmt(c["date_gmt"]) for c in comments if _readable(c.get("date_gmt"))),
                                         default=None))
