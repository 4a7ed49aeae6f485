"""A comment feed served on 127.0.0.1 for the backfill and re-check tests of the feed connector.

RSS documents follow WordPress's comment-feed template (wp-includes/feed-rss2-comments.php): "Comment on X
by Y", `<post guid>#comment-N` guids, newest first, only the newest `posts_per_rss` comments and no paging
(WP_Query builds comment-feed queries with `LIMIT <posts_per_rss>` and no offset, so `?paged=N` answers the
same document). Paging, where a test wants it, is RFC 5005's: a paged feed's `rel="next"` (section 3) as an
`atom:link` inside the RSS channel, or an archived Atom feed (section 4) whose subscription document links
`rel="prev-archive"` to archive documents marked `<fh:archive/>`.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

from tests.upstream import FakeUpstream, Reply

SITE = "https://news.example"
ARTICLE = f"{SITE}/2026/11/20/peace-talks-resume-in-geneva/"
RSS_TYPE = "application/rss+xml; charset=UTF-8"
ATOM_TYPE = "application/atom+xml; charset=UTF-8"


@dataclass
class Comment:
    id: int
    published: datetime
    text: str
    author: str = "Olena K."

    @property
    def guid(self) -> str:
        return f"{SITE}/?p=123#comment-{self.id}"


class CommentFeed:
    """One feed at `path`. `comments` are listed newest first, `per_page` to a document. `paging`: None (only
    the newest `per_page`, like WordPress), "next" (RFC 5005 paged feed: `?page=N`), "archive" (RFC 5005
    archived feed: the newest `per_page` in the subscription document, older ones in `/archive/<N>.atom`,
    each linking `prev-archive` to the one before it). The subscription document sends an ETag and answers
    304 to a matching If-None-Match."""

    def __init__(self, upstream: FakeUpstream, comments: list[Comment], *, per_page: int = 10,
                 paging: str | None = None, path: str = "/comments/feed/"):
        self.upstream = upstream
        self.comments = list(comments)
        self.per_page = per_page
        self.paging = paging
        self.path = path
        self.override: Reply | None = None
        self.unordered = False  # list the entries oldest first (a feed that is not newest first)
        upstream.routes[path] = upstream.routes[path.rstrip("/")] = self.handle
        upstream.prefix_routes.append(("/archive/", self.handle_archive))

    @property
    def url(self) -> str:
        return f"{self.upstream.url}{self.path.rstrip('/')}"

    def newest_first(self) -> list[Comment]:
        return sorted(self.comments, key=lambda c: c.published, reverse=True)

    def etag(self) -> str:
        return f'"{abs(hash(tuple((c.id, c.text) for c in self.comments)))}"'

    def handle(self, path: str, query: dict) -> Reply:
        from tests.upstream import current_request_headers

        if self.override is not None:
            return self.override
        number = int(query.get("page", "1")) if self.paging == "next" else 1
        chunk = self.newest_first()[(number - 1) * self.per_page:number * self.per_page]
        if self.paging == "archive":
            archives = self._archive_count()
            older = f"{self.upstream.url}/archive/{archives}.atom" if archives else ""
            return Reply(200, atom(chunk, self_url=self.url, prev_archive=older), {"Content-Type": ATOM_TYPE})
        etag = self.etag()
        if current_request_headers().get("if-none-match") == etag:
            return Reply(304, b"", {"ETag": etag})
        more = self.paging == "next" and len(self.comments) > number * self.per_page
        return Reply(200, rss(chunk, next_url=f"{self.url}/?page={number + 1}" if more else "",
                              unordered=self.unordered), {"Content-Type": RSS_TYPE, "ETag": etag})

    def _archive_count(self) -> int:
        rest = len(self.comments) - self.per_page
        return max(0, -(-rest // self.per_page))

    def handle_archive(self, path: str, query: dict) -> Reply:
        # Archive N holds the N-th oldest `per_page` comments of those not in the subscription document.
        number = int(path.rsplit("/", 1)[1].split(".")[0])
        older = self.newest_first()[self.per_page:][::-1]
        chunk = older[(number - 1) * self.per_page:number * self.per_page][::-1]
        previous = f"{self.upstream.url}/archive/{number - 1}.atom" if number > 1 else ""
        return Reply(200, atom(chunk, self_url=f"{self.upstream.url}{path}", prev_archive=previous, archive=True),
                     {"Content-Type": ATOM_TYPE})


def rss(comments: list[Comment], *, next_url: str = "", unordered: bool = False) -> str:
    items = "".join(
        f"""
	<item>
		<title>Comment on Peace talks resume in Geneva by {escape(c.author)}</title>
		<link>{ARTICLE}#comment-{c.id}</link>
		<dc:creator><![CDATA[{c.author}]]></dc:creator>
		<pubDate>{email.utils.format_datetime(c.published.astimezone(timezone.utc))}</pubDate>
		<guid isPermaLink="false">{c.guid}</guid>
		<description><![CDATA[{c.text}]]></description>
		<content:encoded><![CDATA[<p>{c.text}</p>
]]></content:encoded>
	</item>"""
        for c in (comments[::-1] if unordered else comments))
    paging = f'\n\t<atom:link href="{next_url}" rel="next" type="application/rss+xml" />' if next_url else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"
	xmlns:content="http://purl.org/rss/1.0/modules/content/"
	xmlns:dc="http://purl.org/dc/elements/1.1/"
	xmlns:atom="http://www.w3.org/2005/Atom">
<channel>
	<title>Comments for The Daily Example</title>
	<atom:link href="{SITE}/comments/feed/" rel="self" type="application/rss+xml" />{paging}
	<link>{SITE}</link>
	<description>News from everywhere</description>{items}
</channel>
</rss>
"""


def atom(comments: list[Comment], *, self_url: str, prev_archive: str = "", archive: bool = False) -> str:
    entries = "".join(
        f"""
  <entry>
    <title>Comment on Peace talks resume in Geneva by {escape(c.author)}</title>
    <id>{c.guid}</id>
    <link rel="alternate" href="{ARTICLE}#comment-{c.id}"/>
    <author><name>{escape(c.author)}</name></author>
    <published>{c.published.isoformat()}</published>
    <updated>{c.published.isoformat()}</updated>
    <content type="html">{escape(f"<p>{c.text}</p>")}</content>
  </entry>"""
        for c in comments)
    links = f'\n  <link rel="prev-archive" href="{prev_archive}"/>' if prev_archive else ""
    marker = "\n  <fh:archive/>" if archive else ""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:fh="http://purl.org/syndication/history/1.0">
  <title>Comments for The Daily Example</title>
  <id>{SITE}/comments/</id>
  <updated>2026-11-25T00:00:00Z</updated>
  <link rel="self" href="{self_url}"/>{links}{marker}{entries}
</feed>
"""
