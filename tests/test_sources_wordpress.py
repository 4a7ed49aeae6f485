"""The WordPress connector against a WordPress site served on 127.0.0.1 (tests/wordpress_fake.py).

There is no public recording of WordPress (../shared/fixtures/wordpress/NOTE.md): the site is built from
the REST API handbook's documented objects in tests/fixtures/wordpress_{tag,post,comment}.json and
WordPress's RSS2 feed templates. No file of ../shared/fixtures is read here.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engagement import collect
from engagement.models import Article, CollectionRun, Post, PostRevision, RejectedItem, Source
from engagement.sources import wordpress
from engagement.sources.base import (
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NeedsCredentials,
    NormalisedItem,
    PermanentError,
    RateLimited,
    RejectedRaw,
    TemporaryError,
)
from engagement.sources.wordpress import WordPressConnector, normalise_native
from tests.conftest import wait_for
from tests.upstream import Reply
from tests.wordpress_fake import WordPressSite

FIXTURES = Path(__file__).parent / "fixtures"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)
T0 = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
TAG = "UkrainePeaceTalks"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def connector(upstream, *tags: str, now=NOW, **options) -> WordPressConnector:
    client = HttpClient(HttpSettings(connect_timeout=2, read_timeout=5, allow_private=True))
    return WordPressConnector(site=upstream.url, hashtags=list(tags or [TAG]), options=options, client=client,
                              now=lambda: now)


def items_of(pages) -> list[NormalisedItem]:
    return [item for page in pages for item in page.items]


def news_site(upstream, *, comments_per_article: int = 3) -> tuple[WordPressSite, list[dict]]:
    """Two tagged articles with comments an hour apart (11:00 on) and one reply (16:30), and an untagged
    article with a comment."""
    site = WordPressSite(upstream)
    site.add_tag(7, "ukrainepeacetalks")
    site.add_tag(9, "geneva")
    tagged = [site.add_post(101, tags=[7], published=T0), site.add_post(102, tags=[7, 9], published=T0 + timedelta(hours=1))]
    untagged = site.add_post(103, tags=[9], published=T0 + timedelta(hours=2))
    n = 0
    for article in tagged:
        for _ in range(comments_per_article):
            n += 1
            site.add_comment(n, post=article, written=T0 + timedelta(hours=n))
    site.add_comment(500, post=tagged[0], written=T0 + timedelta(hours=6, minutes=30), parent=1, text="I disagree")
    site.add_comment(900, post=untagged, written=T0 + timedelta(hours=7), text="Geneva only")
    return site, tagged


# --- parsing ---------------------------------------------------------------------------------------


def documented_comment() -> dict:
    return {**fixture("wordpress_comment.json"), "_embedded": {"up": [fixture("wordpress_post.json")]}}


def test_a_documented_rest_comment_becomes_a_comment_under_its_article():
    item = normalise_native(documented_comment(), hashtags=(TAG,))
    assert isinstance(item, NormalisedItem)
    assert item.platform == "wordpress" and item.kind == "comment"
    assert item.external_id == "https://news.example/?p=123#comment-45"
    assert item.url == "https://news.example/2026/11/20/peace-talks-resume-in-geneva/#comment-45"
    # date_gmt has no zone: it is UTC (the local `date` is two hours ahead on this site).
    assert item.created_at == datetime(2026, 11, 24, 10, 1, 2, tzinfo=timezone.utc)
    assert item.text == "Any ceasefire has to be verifiable & monitored."
    assert item.hashtags == ("ukrainepeacetalks",)
    assert item.reply_to_external_id == ""
    assert item.article.url == "https://news.example/2026/11/20/peace-talks-resume-in-geneva/"
    assert item.article.title == "Peace talks resume in Geneva – day 2"
    assert item.article.published_at == datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)
    assert item.article.external_id == "123"
    assert item.author.handle == "Olena K."
    assert item.author.external_id == "https://news.example/#commenter=Olena%20K."


def test_a_reply_names_its_parent_by_the_same_kind_of_id():
    comment = {**documented_comment(), "id": 46, "parent": 45}
    item = normalise_native(comment, hashtags=(TAG,))
    assert item.reply_to_external_id == "https://news.example/?p=123#comment-45"


def test_a_registered_commenter_is_identified_by_the_author_archive_of_the_site():
    comment = {**documented_comment(), "author": 3, "author_url": "https://olena.example"}
    item = normalise_native(comment, hashtags=(TAG,))
    assert item.author.external_id == "https://news.example/?author=3"
    assert item.author.url == "https://olena.example"


def test_a_comment_without_its_article_is_identified_from_its_own_rest_link():
    comment = fixture("wordpress_comment.json")
    item = normalise_native(comment, hashtags=(TAG,))
    assert item.external_id == "https://news.example/?p=123#comment-45"
    # Without the article as received, its address comes from the comment's link; its title stays unknown.
    assert item.article.url == "https://news.example/2026/11/20/peace-talks-resume-in-geneva/"
    assert (item.article.title, item.article.external_id) == ("", "123")


@pytest.mark.parametrize("bad", ["yesterday", None, "", "2026-13-40T00:00:00"])
def test_a_bad_date_rejects_the_comment_with_its_raw_payload(bad):
    comment = {**documented_comment(), "date_gmt": bad}
    result = normalise_native(comment, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw)
    assert "date_gmt" in result.reason
    assert result.raw == comment
    assert result.external_id == "https://news.example/?p=123#comment-45"


def test_a_renamed_content_field_rejects_the_comment_naming_the_field():
    comment = documented_comment()
    comment["body"] = comment.pop("content")
    result = normalise_native(comment, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "content.rendered" in result.reason


def test_a_huge_comment_is_rejected_with_its_raw_payload():
    comment = {**documented_comment(), "content": {"rendered": "<p>" + "x" * 200_000 + "</p>"}}
    result = normalise_native(comment, hashtags=(TAG,))
    assert isinstance(result, RejectedRaw) and "cap" in result.reason


@pytest.mark.parametrize("payload", [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    '<a href="javascript:alert(1)">x</a>',
    '<iframe src="https://evil.example"></iframe>',
    '<p onclick="alert(1)">click</p>',
    '<a href="data:text/html;base64,PHNjcmlwdD4=">x</a>',
])
def test_no_script_survives_in_a_stored_comment(payload):
    comment = {**documented_comment(), "content": {"rendered": f"<p>{payload} fine words</p>"}}
    lowered = normalise_native(comment, hashtags=(TAG,)).html.lower()
    for needle in ("<script", "javascript:", "data:", "onerror", "onclick", "<iframe", "<img"):
        assert needle not in lowered


# --- fetching through the REST API -----------------------------------------------------------------


def test_the_first_run_reads_every_comment_under_the_tagged_articles(upstream):
    site, tagged = news_site(upstream)
    pages = list(connector(upstream).fetch(cursor={}))
    items = items_of(pages)
    assert sorted(item.raw["id"] for item in items) == [1, 2, 3, 4, 5, 6, 500]  # not 900: untagged article
    assert {item.article.url for item in items} == {post["link"] for post in tagged}
    reply = next(item for item in items if item.raw["id"] == 500)
    assert reply.reply_to_external_id == f"{upstream.url}/?p=101#comment-1"
    tags_request, posts_request, comments_request = upstream.requests
    assert tags_request.path == "/wp-json/wp/v2/tags" and tags_request.query["slug"] == "ukrainepeacetalks"
    assert posts_request.query["tags"] == "7" and posts_request.query["per_page"] == "100"
    assert comments_request.query["post"] == "101,102"
    assert (comments_request.query["orderby"], comments_request.query["order"]) == ("date_gmt", "asc")
    assert "after" not in comments_request.query
    assert pages[-1].cursor == {"rest": {"articles": [102, 101], "after": "2026-11-20T16:30:00Z"}}
    assert pages[-1].health_detail["via"] == "rest"


def test_a_comment_gets_the_tracked_tags_its_article_carries(upstream):
    news_site(upstream)
    items = items_of(connector(upstream, TAG, "Geneva").fetch(cursor={}))
    tags_by_article = {item.raw["post"]: item.hashtags for item in items}
    assert tags_by_article == {101: ("ukrainepeacetalks",), 102: ("geneva", "ukrainepeacetalks"), 103: ("geneva",)}


def test_a_later_run_asks_for_comments_after_the_newest_one_less_the_reread_window(upstream):
    site, tagged = news_site(upstream)
    cursor = list(connector(upstream).fetch(cursor={}))[-1].cursor
    site.add_comment(600, post=tagged[1], written=T0 + timedelta(hours=8))
    upstream.requests.clear()
    pages = list(connector(upstream).fetch(cursor=cursor))
    comments_request = upstream.requests_to("/wp-json/wp/v2/comments")[0]
    assert comments_request.query["after"] == "2026-11-20T15:30:00Z"  # newest (16:30) less one hour
    # The new comment, and the last hour's again (16:00 and 16:30): storing them again changes nothing.
    assert [item.raw["id"] for item in items_of(pages)] == [6, 500, 600]
    assert pages[-1].cursor["rest"]["after"] == "2026-11-20T18:00:00Z"


def test_a_comment_approved_late_within_the_reread_window_is_still_collected(upstream):
    site, tagged = news_site(upstream)
    held = site.add_comment(700, post=tagged[0], written=T0 + timedelta(hours=6, minutes=10), status="hold")
    cursor = list(connector(upstream).fetch(cursor={}))[-1].cursor
    held["status"] = "approved"  # a moderator approves it after the run; its date is when it was written
    assert 700 in [item.raw["id"] for item in items_of(connector(upstream).fetch(cursor=cursor))]


def test_an_article_tagged_later_is_read_from_its_first_comment(upstream):
    site, _tagged = news_site(upstream)
    cursor = list(connector(upstream).fetch(cursor={}))[-1].cursor
    older = site.add_post(104, tags=[7], published=T0 - timedelta(days=3))
    site.add_comment(800, post=older, written=T0 - timedelta(days=2))  # long before the cursor
    upstream.requests.clear()
    pages = list(connector(upstream).fetch(cursor=cursor))
    assert [item.raw["id"] for item in items_of(pages)] == [6, 500, 800]  # the last hour, and the new article
    followed, backfill = upstream.requests_to("/wp-json/wp/v2/comments")
    assert followed.query["post"] == "101,102" and "after" in followed.query
    assert backfill.query["post"] == "104" and "after" not in backfill.query
    assert pages[-1].cursor == {"rest": {"articles": [102, 101, 104], "after": "2026-11-20T16:30:00Z"}}


def test_comments_are_paged_by_x_wp_totalpages(upstream):
    news_site(upstream, comments_per_article=120)
    pages = list(connector(upstream).fetch(cursor={}))
    assert [len(page.items) for page in pages] == [100, 100, 41]
    assert [seen.query["page"] for seen in upstream.requests_to("/wp-json/wp/v2/comments")] == ["1", "2", "3"]
    assert len({item.external_id for item in items_of(pages)}) == 241


def test_a_run_stops_after_its_page_budget_and_the_next_run_carries_on(upstream, monkeypatch):
    monkeypatch.setattr(wordpress, "MAX_COMMENT_PAGES_PER_RUN", 2)
    news_site(upstream, comments_per_article=120)
    first = list(connector(upstream).fetch(cursor={}))
    assert sum(len(page.items) for page in first) == 200
    assert "backfill" in first[-1].cursor["rest"]  # not finished: the articles are not followed yet
    second = list(connector(upstream).fetch(cursor=first[-1].cursor))
    seen = {item.external_id for item in items_of(first + second)}
    assert len(seen) == 241
    assert second[-1].cursor["rest"]["articles"] == [102, 101]


def test_a_tag_the_site_does_not_have_is_an_empty_run_that_says_so(upstream):
    news_site(upstream)
    pages = list(connector(upstream, "NoSuchTag").fetch(cursor={}))
    assert items_of(pages) == [] and pages[-1].health_detail["tags_missing"] == ["nosuchtag"]
    assert upstream.requests_to("/wp-json/wp/v2/posts") == []


def test_the_tag_option_names_the_sites_own_slug(upstream):
    site, _ = news_site(upstream)
    site.tags[0]["slug"] = "ukraine-peace-talks"
    items = items_of(connector(upstream, tag="ukraine-peace-talks").fetch(cursor={}))
    assert len(items) == 7 and all(item.hashtags == ("ukrainepeacetalks",) for item in items)


def test_a_non_latin_hashtag_finds_the_sites_percent_encoded_tag_slug(upstream):
    site, tagged = news_site(upstream)
    site.add_tag(11, "%d0%bc%d0%b8%d1%80")  # how WordPress stores the slug of the tag "Мир"
    tagged[0]["tags"].append(11)
    items = items_of(connector(upstream, "Мир").fetch(cursor={}))
    assert sorted(item.raw["id"] for item in items) == [1, 2, 3, 500]
    assert {item.hashtags for item in items} == {("мир",)}


def test_a_cursor_it_cannot_read_starts_the_source_again(upstream):
    news_site(upstream)
    pages = list(connector(upstream).fetch(cursor={"rest": {"articles": "x", "after": 5, "backfill": []}}))
    assert len(items_of(pages)) == 7 and pages[-1].cursor["rest"]["articles"] == [102, 101]


def test_the_article_option_follows_one_article_found_by_its_slug(upstream):
    site, tagged = news_site(upstream)
    items = items_of(connector(upstream, article=site.posts[2]["link"]).fetch(cursor={}))
    assert [item.raw["id"] for item in items] == [900]  # the untagged article's comment
    assert items[0].hashtags == ("ukrainepeacetalks",)
    assert upstream.requests_to("/wp-json/wp/v2/posts")[0].query["slug"] == "article-103"


def test_the_article_option_accepts_a_post_id_address(upstream):
    news_site(upstream)
    items = items_of(connector(upstream, article=f"{upstream.url}/?p=101").fetch(cursor={}))
    assert sorted(item.raw["id"] for item in items) == [1, 2, 3, 500]


def test_an_article_option_that_matches_no_post_is_a_permanent_error(upstream):
    news_site(upstream)
    with pytest.raises(PermanentError, match="no post at"):
        list(connector(upstream, article=f"{upstream.url}/2026/01/01/gone/").fetch(cursor={}))


def test_a_post_with_a_renamed_link_field_is_rejected_and_the_others_are_read(upstream):
    site, tagged = news_site(upstream)
    tagged[0]["url"] = tagged[0].pop("link")
    pages = list(connector(upstream).fetch(cursor={}))
    assert sorted(item.raw["id"] for item in items_of(pages)) == [4, 5, 6]
    rejected = [r for page in pages for r in page.rejected]
    assert [r.reason for r in rejected] == ["post has no integer id or no http(s) link"]


def test_a_malformed_comment_is_rejected_and_the_rest_of_the_page_kept(upstream):
    site, _ = news_site(upstream)
    del site.comments[1]["date_gmt"]
    pages = list(connector(upstream).fetch(cursor={}))
    assert len(items_of(pages)) == 6
    assert [r.reason for page in pages for r in page.rejected] == ["date_gmt is missing or not a string: None"]


def test_the_stored_raw_payload_rebuilds_the_same_item(upstream):
    news_site(upstream)
    for item in items_of(connector(upstream).fetch(cursor={})):
        assert normalise_native(item.raw, hashtags=item.hashtags) == item


@pytest.mark.parametrize("reply, error, message", [
    (Reply(429, {"code": "too_many"}, {"Retry-After": "120"}), RateLimited, "429"),
    (Reply(503, "<h1>busy</h1>", {"Retry-After": "300", "Content-Type": "text/html"}), RateLimited, "503"),
    (Reply(500, "<html>Internal Server Error</html>", {"Content-Type": "text/html"}), TemporaryError, "500"),
    (Reply(502, "", {}), TemporaryError, "502"),
    (Reply(200, "<html><body>Checking your browser</body></html>", {"Content-Type": "text/html"}), MalformedResponse,
     "expected JSON"),
    (Reply(200, '[{"id": 7, "slug": "ukr', {}), MalformedResponse, "expected JSON"),
    (Reply(200, {"code": "not_a_list"}, {}), MalformedResponse, "expected a list of tags"),
    (Reply(200, [{"term_id": 7, "slug": "ukrainepeacetalks"}], {}), MalformedResponse, "integer id"),
    (Reply(404, "<html>Not found</html>", {"Content-Type": "text/html"}), PermanentError, "no WordPress REST API"),
    (Reply(400, {"code": "rest_invalid_param", "message": "Invalid parameter(s): slug"}, {}), PermanentError,
     "rest_invalid_param"),
])
def test_upstream_failures_raise_the_matching_error(upstream, reply, error, message):
    news_site(upstream)[0].override = reply
    with pytest.raises(error, match=message) as caught:
        list(connector(upstream).fetch(cursor={}))
    if error is RateLimited:
        assert caught.value.until == NOW + timedelta(seconds=int(reply.headers["Retry-After"]))


def test_a_slow_site_times_out_as_a_temporary_error(upstream):
    site, _ = news_site(upstream)

    def slow(path, query):
        time.sleep(2)
        return Reply(200, [])

    upstream.routes["/wp-json/wp/v2/tags"] = slow
    client = HttpClient(HttpSettings(allow_private=True, connect_timeout=1, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="timed out"):
        list(WordPressConnector(site=upstream.url, hashtags=[TAG], options={}, client=client,
                                now=lambda: NOW).fetch(cursor={}))
    assert time.monotonic() - started < 1.5


def test_every_request_names_itself(upstream):
    site, _ = news_site(upstream)
    client = HttpClient(HttpSettings(user_agent="engagement-test/1 (ops@example.org)", allow_private=True))
    list(WordPressConnector(site=upstream.url, hashtags=[TAG], options={}, client=client,
                            now=lambda: NOW).fetch(cursor={}))
    assert {seen["user-agent"] for seen in site.headers.seen} == {"engagement-test/1 (ops@example.org)"}


# --- the feeds, when the REST API is refused -------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_rest_api_falls_back_to_the_feeds_with_the_same_ids(upstream, status):
    site, tagged = news_site(upstream)
    by_rest = {item.external_id: item for item in items_of(connector(upstream).fetch(cursor={}))}
    site.rest_refused = status
    upstream.requests.clear()
    pages = list(connector(upstream).fetch(cursor={}))
    by_feed = {item.external_id: item for item in items_of(pages)}
    assert set(by_feed) == set(by_rest)
    for external_id, item in by_feed.items():
        same = by_rest[external_id]
        assert (item.created_at, item.text, item.reply_to_external_id, item.article, item.hashtags, item.author) == \
            (same.created_at, same.text, same.reply_to_external_id, same.article, same.hashtags, same.author)
    assert [seen.path for seen in upstream.requests] == [
        "/wp-json/wp/v2/tags", "/", urlpath(tagged[1]) + "feed/", urlpath(tagged[0]) + "feed/"]
    assert upstream.requests[1].query == {"tag": "ukrainepeacetalks", "feed": "rss2"}
    assert pages[-1].health_detail["via"] == "feeds" and str(status) in pages[-1].health_detail["rest_refused"]


def urlpath(post: dict) -> str:
    return urlsplit(post["link"]).path


def test_the_fallback_asks_for_each_comment_feed_only_if_it_changed(upstream):
    site, tagged = news_site(upstream)
    site.rest_refused = 401
    cursor = list(connector(upstream).fetch(cursor={}))[-1].cursor
    site.headers.clear()
    pages = list(connector(upstream).fetch(cursor=cursor))
    assert items_of(pages) == []
    feed_requests = [seen for seen in site.headers.seen if seen["path"].endswith("/feed/")]
    assert len(feed_requests) == 2 and all("if-none-match" in seen for seen in feed_requests)
    site.add_comment(601, post=tagged[0], written=T0 + timedelta(hours=9))
    # Only the changed feed is read again, whole (a feed has no "since").
    items = items_of(connector(upstream).fetch(cursor=pages[-1].cursor))
    assert sorted(item.external_id for item in items) == sorted(
        f"{upstream.url}/?p=101#comment-{n}" for n in (1, 2, 3, 500, 601))


def test_the_fallback_follows_one_articles_comment_feed_in_article_mode(upstream):
    site, tagged = news_site(upstream)
    site.rest_refused = 403
    items = items_of(connector(upstream, article=tagged[0]["link"]).fetch(cursor={}))
    assert sorted(item.external_id for item in items) == sorted(
        f"{upstream.url}/?p=101#comment-{n}" for n in (1, 2, 3, 500))
    assert {item.article.title for item in items} == {"Article 101 – the talks"}


def test_a_site_that_refuses_both_rest_and_feeds_needs_credentials(upstream):
    site, _ = news_site(upstream)
    site.rest_refused, site.feeds_refused = 401, 403
    with pytest.raises(NeedsCredentials, match="REST API said .*401.* and the feeds: .*403"):
        list(connector(upstream).fetch(cursor={}))


# --- through collection, on the real database ------------------------------------------------------


def add_source(upstream, **options) -> Source:
    return collect.register_source(platform="wordpress", url=upstream.url, hashtags=[TAG], options=options)


def run(source: Source) -> CollectionRun:
    return collect.run_source(source.pk, owner="test").run


@pytest.mark.django_db
def test_collection_stores_comments_with_their_articles_and_replies_and_a_second_run_adds_nothing(upstream):
    news_site(upstream)
    source = add_source(upstream)
    first = run(source)
    assert (first.outcome, first.new) == (CollectionRun.Outcome.OK, 7)
    assert Post.objects.filter(platform="wordpress", kind="comment").count() == 7
    reply = Post.objects.get(external_id=f"{upstream.url}/?p=101#comment-500")
    assert reply.reply_to.external_id == f"{upstream.url}/?p=101#comment-1"
    assert reply.article.title == "Article 101 – the talks" and reply.article.external_id == "101"
    assert Article.objects.count() == 2
    assert list(Post.objects.for_hashtag(TAG).values_list("platform", flat=True).distinct()) == ["wordpress"]
    second = run(source)
    assert (second.outcome, second.new, second.updated) == (CollectionRun.Outcome.OK, 0, 0)
    assert Post.objects.count() == 7
    source.refresh_from_db()
    assert source.health == Source.Health.OK and source.health_detail["via"] == "rest"


@pytest.mark.django_db
def test_a_malformed_comment_is_kept_raw_and_the_run_is_partial(upstream):
    site, _ = news_site(upstream)
    site.comments[0]["date_gmt"] = "not a date"
    result = run(add_source(upstream))
    assert (result.outcome, result.new, result.errors) == (CollectionRun.Outcome.PARTIAL, 6, 1)
    rejected = RejectedItem.objects.get()
    assert "date_gmt" in rejected.reason and rejected.raw["date_gmt"] == "not a date"


@pytest.mark.django_db
def test_a_site_refusing_everything_is_recorded_as_needing_credentials(upstream):
    site, _ = news_site(upstream)
    site.rest_refused = site.feeds_refused = 403
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and "refuses anonymous readers" in result.message
    assert source.health == Source.Health.NEEDS_CREDENTIALS and source.last_error == result.message


@pytest.mark.django_db
def test_a_rate_limited_site_is_not_asked_again_before_its_reset(upstream):
    site, _ = news_site(upstream)
    site.override = Reply(429, {"code": "rate_limited"}, {"Retry-After": "3600"})
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.RATE_LIMITED and "429" in result.message
    assert source.health == Source.Health.RATE_LIMITED
    assert source.rate_limited_until > datetime.now(timezone.utc) + timedelta(minutes=59)
    asked = len(upstream.requests)
    assert collect.run_source(source.pk, owner="test") is None
    assert len(upstream.requests) == asked


@pytest.mark.django_db
@pytest.mark.parametrize("reply, kind, message", [
    (Reply(500, "<h1>down</h1>", {"Content-Type": "text/html"}), Source.ErrorKind.TEMPORARY, "500"),
    (Reply(200, "<html>maintenance</html>", {"Content-Type": "text/html"}), Source.ErrorKind.MALFORMED,
     "expected JSON"),
    (Reply(200, [{"name": "UkrainePeaceTalks"}], {}), Source.ErrorKind.MALFORMED, "integer id"),
])
def test_a_failing_site_is_recorded_with_a_clear_message(upstream, reply, kind, message):
    news_site(upstream)[0].override = reply
    source = add_source(upstream)
    result = run(source)
    source.refresh_from_db()
    assert result.outcome == CollectionRun.Outcome.FAILED and message in result.message
    assert source.health == Source.Health.FAILING and source.last_error_kind == kind
    if kind == Source.ErrorKind.MALFORMED:
        assert RejectedItem.objects.get().raw  # what the site sent, kept for a look


@pytest.mark.django_db
def test_a_timeout_is_recorded_as_a_temporary_failure(upstream, settings):
    news_site(upstream)
    settings.ENGAGEMENT_HTTP_READ_TIMEOUT = 1

    def slow(path, query):
        time.sleep(2)
        return Reply(200, [])

    upstream.routes["/wp-json/wp/v2/tags"] = slow
    source = add_source(upstream)
    report = collect.run_source(source.pk, owner="test")
    source.refresh_from_db()
    assert report.retry and "timed out" in report.run.message
    assert source.last_error_kind == Source.ErrorKind.TEMPORARY


# --- the real worker -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_beat_and_a_worker_collect_wordpress_comments_into_the_api(
    flushed_redis, upstream, start_worker, start_beat, api_client
):
    news_site(upstream)
    source = collect.register_source(platform="wordpress", url=upstream.url, hashtags=[TAG], interval=2)
    worker = start_worker()
    start_beat()

    def listed():
        response = api_client.get("/api/v1/posts/", {"platform": "wordpress"})
        assert response.status_code == 200, response.content
        return response.json()["results"]

    posts = wait_for(lambda: len(listed()) == 7 and listed(), timeout=60, message="7 comments in the API")
    assert {post["platform"] for post in posts} == {"wordpress"}
    # Beat polls again every 2 s: a later run finds the same comments and adds none.
    runs = wait_for(lambda: list(CollectionRun.objects.filter(source=source, outcome="ok").order_by("id"))[:2]
                    if CollectionRun.objects.filter(source=source, outcome="ok").count() >= 2 else None,
                    timeout=60, message="a second run")
    assert [r.new for r in runs] == [7, 0]
    assert Post.objects.filter(platform="wordpress").count() == 7
    assert worker.proc.poll() is None


# --- re-checking stored comments, and backfill to a date -------------------------------------------

RECHECK_NOW = T0 + timedelta(days=1)  # the comments of news_site() are within the re-check window


def comment_id_of(post: Post) -> int:
    return int(post.external_id.rsplit("#comment-", 1)[1])


@pytest.mark.django_db
def test_a_recheck_stores_an_edit_as_a_revision_and_a_comment_no_longer_public_as_a_tombstone(upstream, api_client):
    site, _tagged = news_site(upstream)
    source = add_source(upstream)
    assert run(source).new == 7
    by_id = {c["id"]: c for c in site.comments}
    by_id[2]["content"] = {"rendered": "<p>Comment 2, with the figure corrected</p>\n"}
    by_id[3]["status"] = "spam"
    site.comments.remove(by_id[4])  # deleted for good
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.edited, report.deleted, report.errors, report.message) == (7, 1, 2, 0, "")
    [asked] = upstream.requests
    assert asked.path == "/wp-json/wp/v2/comments" and asked.query["per_page"] == "100"
    assert sorted(int(i) for i in asked.query["include"].split(",")) == [1, 2, 3, 4, 5, 6, 500]
    edited = Post.objects.get(external_id=f"{upstream.url}/?p=101#comment-2")
    assert edited.text == "Comment 2, with the figure corrected" and edited.article.title == "Article 101 – the talks"
    assert [r.text for r in PostRevision.objects.filter(post=edited)] == ["Comment 2 on the talks"]
    gone = Post.objects.filter(deleted_at__isnull=False)
    assert sorted(comment_id_of(post) for post in gone) == [3, 4]
    assert all("no longer public" in post.deletion_reason and "spam" in post.deletion_reason for post in gone)
    listed = api_client.get("/api/v1/posts/", {"platform": "wordpress"}).json()["results"]
    assert len(listed) == 5 and {p["external_id"] for p in listed}.isdisjoint({post.external_id for post in gone})
    # A second re-check finds nothing more to record.
    again = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (again.checked, again.edited, again.deleted, again.errors) == (5, 0, 0, 0)
    assert PostRevision.objects.count() == 1


@pytest.mark.django_db
def test_a_recheck_of_comments_read_from_the_feeds_cannot_tell_while_rest_is_blocked(upstream):
    site, _tagged = news_site(upstream)
    site.rest_refused = 401
    source = add_source(upstream)
    assert run(source).new == 7
    site.comments = [c for c in site.comments if c["id"] != 5]
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.edited, report.deleted, report.errors) == (7, 0, 0, 7)
    assert Post.objects.filter(deleted_at__isnull=False).count() == 0
    assert [seen.path for seen in upstream.requests] == ["/wp-json/wp/v2/comments"]  # no feed is read for this


@pytest.mark.django_db
def test_a_recheck_of_comments_read_from_the_feeds_uses_the_rest_api_once_it_answers_again(upstream):
    site, _tagged = news_site(upstream)
    site.rest_refused = 403
    source = add_source(upstream)
    run(source)
    site.rest_refused = None
    site.comments = [c for c in site.comments if c["id"] != 5]
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert (report.checked, report.deleted, report.errors) == (7, 1, 0)
    assert comment_id_of(Post.objects.get(deleted_at__isnull=False)) == 5
    # The comments come back under the same ids, with their article as the REST API gives it.
    assert Post.objects.count() == 7 and Article.objects.count() == 2
    assert [seen.path for seen in upstream.requests] == ["/wp-json/wp/v2/comments", "/wp-json/wp/v2/posts"]
    assert upstream.requests[1].query["include"] == "101,102"
    assert all(post.raw.get("post") in (101, 102) for post in Post.objects.filter(deleted_at__isnull=True))
    assert PostRevision.objects.count() == 0  # the same text and HTML as the feed gave


@pytest.mark.django_db
def test_a_recheck_refused_by_the_rest_api_needs_credentials_and_deletes_nothing(upstream):
    site, _tagged = news_site(upstream)
    source = add_source(upstream)
    run(source)
    site.rest_refused = 403
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert report.checked == 0 and "403" in report.message
    assert Post.objects.filter(deleted_at__isnull=False).count() == 0
    assert Post.objects.filter(last_checked_at__isnull=False).count() == 0


@pytest.mark.django_db
def test_a_rate_limit_during_a_recheck_stops_it_and_rests_the_source(upstream):
    site, _tagged = news_site(upstream)
    source = add_source(upstream)
    run(source)
    site.override = Reply(429, {"code": "too_many_requests"}, {"Retry-After": "600"})
    upstream.requests.clear()
    report = collect.recheck_source(source.pk, owner="test", now=RECHECK_NOW)
    assert report.checked == 0 and "429" in report.message
    source.refresh_from_db()
    assert source.rate_limited_until > datetime.now(timezone.utc) + timedelta(seconds=500)
    assert len(upstream.requests) == 1 and Post.objects.filter(deleted_at__isnull=False).count() == 0


def history_site(upstream) -> tuple[WordPressSite, list[dict]]:
    """Ten tagged articles, one a day from T0, each with three comments (at +1 h, +2 h, +30 h); and an
    untagged article."""
    site = WordPressSite(upstream)
    site.add_tag(7, "ukrainepeacetalks")
    articles = [site.add_post(200 + day, tags=[7], published=T0 + timedelta(days=day)) for day in range(10)]
    untagged = site.add_post(300, tags=[], published=T0 + timedelta(days=5))
    for article in articles + [untagged]:
        published = _gmt(article["date_gmt"])
        for n, hours in enumerate((1, 2, 30)):
            site.add_comment(article["id"] * 10 + n, post=article, written=published + timedelta(hours=hours))
    return site, articles


def _gmt(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)


POLLING = {"rest": {"articles": [209], "after": "2026-11-30T16:00:00Z"}}


@pytest.mark.django_db
def test_backfill_walks_back_to_the_date_and_a_second_call_makes_no_request(upstream):
    site, articles = history_site(upstream)
    source = add_source(upstream)
    Source.objects.filter(pk=source.pk).update(cursor=POLLING)
    since = T0 + timedelta(days=6, hours=2)
    site.add_comment(2089, post=articles[8], written=since - timedelta(hours=1))  # dated before `since`
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert (backfill.outcome, backfill.pages, backfill.new) == (CollectionRun.Outcome.OK, 1, 9)
    # The articles published since then (207-209), every comment since then. Article 206 was published
    # before `since`: its later comments are polling's (the newest 300 articles), not the backfill's.
    assert min(Post.objects.values_list("created_at", flat=True)) >= since
    assert {post.article.external_id for post in Post.objects.all()} == {"207", "208", "209"}
    tags, posts, comments = upstream.requests
    assert tags.path == "/wp-json/wp/v2/tags"
    assert (posts.query["tags"], posts.query["after"], posts.query["page"]) == ("7", "2026-11-26T11:59:59Z", "1")
    assert comments.query["post"] == "207,208,209" and comments.query["after"] == "2026-11-26T11:59:59Z"
    source.refresh_from_db()
    assert source.cursor == {**POLLING, "history": {"backfilled_since": "2026-11-26T12:00:00Z"}}  # polling kept
    asked = len(upstream.requests)
    again = collect.backfill_source(source.pk, since=since + timedelta(days=1), owner="test")
    assert (again.pages, again.new) == (0, 0) and len(upstream.requests) == asked
    # A poll keeps the finished walk in the cursor.
    run(source)
    source.refresh_from_db()
    assert source.cursor["history"] == {"backfilled_since": "2026-11-26T12:00:00Z"}


@pytest.mark.django_db
def test_a_backfill_stopped_by_its_bound_resumes_where_it_stopped(upstream, monkeypatch):
    monkeypatch.setattr(wordpress, "MAX_BACKFILL_REQUESTS", 3)
    site = WordPressSite(upstream)
    site.add_tag(7, "ukrainepeacetalks")
    article = site.add_post(101, tags=[7], published=T0)
    for n in range(1, 251):
        site.add_comment(n, post=article, written=T0 + timedelta(minutes=n))
    source = add_source(upstream)
    first = collect.backfill_source(source.pk, since=T0, owner="test")
    assert (first.pages, first.new) == (2, 200)
    source.refresh_from_db()
    assert source.cursor["history"] == {"since": "2026-11-20T10:00:00Z", "posts_page": 1, "comments_page": 3}
    upstream.requests.clear()
    second = collect.backfill_source(source.pk, since=T0, owner="test")
    assert (second.pages, second.new) == (1, 50)
    assert [seen.query.get("page") for seen in upstream.requests_to("/wp-json/wp/v2/comments")] == ["3"]
    source.refresh_from_db()
    assert source.cursor["history"] == {"backfilled_since": "2026-11-20T10:00:00Z"}
    assert Post.objects.count() == 250


@pytest.mark.django_db
def test_a_single_article_source_backfills_that_articles_comments_back_to_the_date(upstream):
    site, articles = history_site(upstream)
    source = add_source(upstream, article=articles[2]["link"])
    since = T0 + timedelta(days=2, hours=2)
    backfill = collect.backfill_source(source.pk, since=since, owner="test")
    assert (backfill.outcome, backfill.new) == (CollectionRun.Outcome.OK, 2)
    assert sorted(comment_id_of(post) for post in Post.objects.all()) == [2021, 2022]
    assert upstream.requests_to("/wp-json/wp/v2/comments")[0].query["post"] == "202"


@pytest.mark.django_db
def test_a_backfill_refused_by_the_rest_api_fails_saying_the_feeds_cannot_go_back(upstream):
    site, _ = history_site(upstream)
    site.rest_refused = 401
    source = add_source(upstream)
    backfill = collect.backfill_source(source.pk, since=T0, owner="test")
    assert backfill.outcome == CollectionRun.Outcome.FAILED and "backfill reads the REST API" in backfill.message
    assert Post.objects.count() == 0
