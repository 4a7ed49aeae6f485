"""A YouTube Data API v3 subset served on 127.0.0.1: search, videos, commentThreads and comments.

`comments.list?id=` answers with the comments the fake still has (top-level comments of `threads`,
their inline replies and `replies`), at most COMMENTS_BY_ID ids a call; an id it does not know is left
out of `items`, as the API does for a deleted or held comment. `search.list` honours `publishedAfter`
and `publishedBefore` (inclusive).

Serves the recorded bodies of ../shared/fixtures/youtube/ (read in place by the tests and handed in)
or resources built here from the documented format: `youtube#video`, `youtube#commentThread` (snippet
and replies parts) and `youtube#comment`. Pages follow `pageToken` / `nextPageToken`; errors use
Google's body {"error": {"code", "message", "errors": [{"domain", "reason", "message"}]}}.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from tests.upstream import FakeUpstream, Reply

START = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)
COMMENTS_BY_ID = 50


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def make_video(video_id: str, *, title: str = "Talks resume in Istanbul", description: str = "#UkrainePeaceTalks",
               published: datetime = START, tags: list[str] | None = None) -> dict:
    snippet = {"publishedAt": stamp(published), "channelId": "UCnewsroom00000000000000", "title": title,
               "description": description, "channelTitle": "Newsroom", "liveBroadcastContent": "none"}
    if tags is not None:
        snippet["tags"] = tags
    return {"kind": "youtube#video", "etag": f"etag-{video_id}", "id": video_id, "snippet": snippet}


def search_result(video: dict) -> dict:
    return {"kind": "youtube#searchResult", "etag": f"search-{video['id']}",
            "id": {"kind": "youtube#video", "videoId": video["id"]}, "snippet": copy.deepcopy(video["snippet"])}


def make_comment(comment_id: str, *, video_id: str, text: str, published: datetime, parent_id: str = "",
                 author: int = 1) -> dict:
    snippet = {
        "authorDisplayName": f"@viewer{author}",
        "authorProfileImageUrl": f"https://yt3.ggpht.com/viewer{author}",
        "authorChannelUrl": f"http://www.youtube.com/channel/UCviewer{author:016d}",
        "authorChannelId": {"value": f"UCviewer{author:016d}"},
        "videoId": video_id,
        "textDisplay": text.replace("\n", "<br />"),
        "textOriginal": text,
        "canRate": True,
        "viewerRating": "none",
        "likeCount": author % 3,
        "publishedAt": stamp(published),
        "updatedAt": stamp(published),
    }
    if parent_id:
        snippet["parentId"] = parent_id
    return {"kind": "youtube#comment", "etag": f"etag-{comment_id}", "id": comment_id, "snippet": snippet}


def thread_id(video_id: str, n: int) -> str:
    return f"Ug{video_id}{n:06d}AaABAg"


def make_thread(video_id: str, n: int, *, text: str | None = None, published: datetime | None = None,
                replies: int = 0, inline: int | None = None) -> dict:
    """Thread n of a video (later n = newer), with `replies` replies of which `inline` come inline."""
    tid = thread_id(video_id, n)
    when = published or START + timedelta(minutes=n)
    top = make_comment(tid, video_id=video_id, text=text if text is not None else f"Comment {n} on the talks",
                       published=when, author=n % 5)
    thread = {"kind": "youtube#commentThread", "etag": f"etag-thread-{tid}", "id": tid,
              "snippet": {"channelId": "UCnewsroom00000000000000", "videoId": video_id, "topLevelComment": top,
                          "canReply": True, "totalReplyCount": replies, "isPublic": True}}
    shown = min(replies, 5) if inline is None else inline
    if shown:
        thread["replies"] = {"comments": [make_reply(tid, r, video_id=video_id, published=when) for r in range(1, shown + 1)]}
    return thread


def make_reply(parent_id: str, r: int, *, video_id: str, published: datetime, text: str | None = None) -> dict:
    return make_comment(f"{parent_id}.reply{r:04d}", video_id=video_id, parent_id=parent_id,
                        text=text if text is not None else f"Reply {r}", published=published + timedelta(seconds=r),
                        author=r % 7 + 5)


def google_error(status: int, reason: str, message: str = "", domain: str = "youtube.commentThread") -> Reply:
    message = message or f"{reason} (test)"
    return Reply(status, {"error": {"code": status, "message": message,
                                    "errors": [{"message": message, "domain": domain, "reason": reason}]}})


def _published(thread: dict) -> str:
    # A thread broken on purpose by a test keeps its place at the end.
    return thread.get("snippet", {}).get("topLevelComment", {}).get("snippet", {}).get("publishedAt", "")


class YouTubeApi:
    """Serves `<upstream>/youtube/v3/...`; `url` is the API root to register.

    - `search_pages`: search.list bodies in order (recorded pages keep their own tokens); else built
      from `searchable` (videos, newest first).
    - `videos`: id -> youtube#video for videos.list.
    - `threads`: video id -> threads (any order; served newest first), or `thread_pages`: video id ->
      recorded commentThreads bodies in order.
    - `replies`: parent id -> replies, or `reply_pages`: parent id -> recorded comments bodies.
    - `errors`: video id -> the Reply commentThreads gives for it; `override`: every request gets it.
    """

    def __init__(self, upstream: FakeUpstream, *, prefix: str = "/youtube/v3"):
        self.upstream, self.prefix = upstream, prefix
        self.search_pages: list[dict] = []
        self.searchable: list[dict] = []
        self.videos: dict[str, dict] = {}
        self.threads: dict[str, list[dict]] = {}
        self.thread_pages: dict[str, list[dict]] = {}
        self.replies: dict[str, list[dict]] = {}
        self.reply_pages: dict[str, list[dict]] = {}
        self.errors: dict[str, Reply] = {}
        self.override: Reply | None = None
        for name, handler in (("search", self.search), ("videos", self.videos_list),
                              ("commentThreads", self.comment_threads), ("comments", self.comments)):
            upstream.routes[f"{prefix}/{name}"] = self._guard(handler)

    @property
    def url(self) -> str:
        return self.upstream.url + self.prefix

    def add_video(self, video: dict, threads: list[dict] | None = None, *, searchable: bool = True) -> dict:
        self.videos[video["id"]] = video
        self.threads[video["id"]] = list(threads or [])
        if searchable:
            self.searchable.append(video)
        for thread in threads or []:
            count = thread["snippet"]["totalReplyCount"]
            inline = len(thread.get("replies", {}).get("comments", []))
            if count > inline:
                published = datetime.fromisoformat(thread["snippet"]["topLevelComment"]["snippet"]["publishedAt"])
                self.replies[thread["id"]] = [make_reply(thread["id"], r, video_id=video["id"], published=published)
                                              for r in range(1, count + 1)]
        return video

    def requests(self, endpoint: str) -> list:
        return [seen for seen in self.upstream.requests if seen.path == f"{self.prefix}/{endpoint}"]

    def _guard(self, handler):
        def handle(path: str, query: dict) -> Reply:
            if self.override is not None:
                return self.override
            return handler(query)
        return handle

    @staticmethod
    def _recorded(pages: list[dict], token: str | None) -> Reply:
        if not token:
            return Reply(200, pages[0])
        for index, page in enumerate(pages[:-1]):
            if page.get("nextPageToken") == token:
                return Reply(200, pages[index + 1])
        return Reply(200, {"kind": "youtube#listResponse", "items": [], "pageInfo": {"totalResults": 0}})

    @staticmethod
    def _paged(kind: str, items: list[dict], query: dict, limit: int) -> Reply:
        size = min(int(query.get("maxResults", 20)), limit)
        offset = int(query["pageToken"].removeprefix("page-")) if query.get("pageToken") else 0
        body = {"kind": kind, "etag": f"etag-{kind}-{offset}", "pageInfo": {"resultsPerPage": size},
                "items": items[offset:offset + size]}
        if offset + size < len(items):
            body["nextPageToken"] = f"page-{offset + size}"
        return Reply(200, body)

    def search(self, query: dict) -> Reply:
        if self.search_pages:
            return self._recorded(self.search_pages, query.get("pageToken"))
        after = datetime.fromisoformat(query["publishedAfter"]) if query.get("publishedAfter") else None
        before = datetime.fromisoformat(query["publishedBefore"]) if query.get("publishedBefore") else None
        found = [v for v in self.searchable
                 if (after is None or datetime.fromisoformat(v["snippet"]["publishedAt"]) >= after)
                 and (before is None or datetime.fromisoformat(v["snippet"]["publishedAt"]) <= before)]
        found.sort(key=lambda v: v["snippet"]["publishedAt"], reverse=True)
        return self._paged("youtube#searchListResponse", [search_result(v) for v in found], query, 50)

    def videos_list(self, query: dict) -> Reply:
        ids = [vid for vid in query.get("id", "").split(",") if vid]
        items = [self.videos[vid] for vid in ids if vid in self.videos]
        return Reply(200, {"kind": "youtube#videoListResponse", "items": items,
                           "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)}})

    def comment_threads(self, query: dict) -> Reply:
        vid = query.get("videoId", "")
        if vid in self.errors:
            return self.errors[vid]
        if vid in self.thread_pages:
            return self._recorded(self.thread_pages[vid], query.get("pageToken"))
        if vid not in self.threads:
            return google_error(404, "videoNotFound", "The video identified by the videoId parameter could not be found.")
        threads = sorted(self.threads[vid], key=_published, reverse=True)
        return self._paged("youtube#commentThreadListResponse", threads, query, 100)

    def comments(self, query: dict) -> Reply:
        if "id" in query:
            return self.comments_by_id([cid for cid in query["id"].split(",") if cid])
        parent = query.get("parentId", "")
        if parent in self.reply_pages:
            return self._recorded(self.reply_pages[parent], query.get("pageToken"))
        return self._paged("youtube#commentListResponse", self.replies.get(parent, []), query, 100)

    def comments_by_id(self, ids: list[str]) -> Reply:
        if len(ids) > COMMENTS_BY_ID:
            return google_error(400, "invalidParameter", f"at most {COMMENTS_BY_ID} ids", domain="youtube.parameter")
        known: dict[str, dict] = {}
        for threads in self.threads.values():
            for thread in threads:
                known[thread["snippet"]["topLevelComment"]["id"]] = thread["snippet"]["topLevelComment"]
                for reply in thread.get("replies", {}).get("comments", []):
                    known[reply["id"]] = reply
        for replies in self.replies.values():
            for reply in replies:
                known[reply["id"]] = reply
        items = [known[cid] for cid in ids if cid in known]
        return Reply(200, {"kind": "youtube#commentListResponse", "etag": "etag-comments-by-id",
                           "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)}, "items": items})
