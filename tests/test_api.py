"""GET /api/v1/posts/: token authentication, cursor paging (newest first), filters, bounded queries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engagement.models import ApiToken, Author, Post

pytestmark = pytest.mark.django_db
START = datetime(2026, 11, 20, tzinfo=timezone.utc)


def make_posts(count: int, **fields) -> list[Post]:
    author = Author.objects.get_or_create(platform="mastodon", external_id="https://social.example/users/a",
                                          defaults={"handle": "@a@social.example"})[0]
    offset = Post.objects.count()
    return Post.objects.bulk_create(
        Post(platform=fields.get("platform", "mastodon"), external_id=f"https://social.example/s/{offset + n}",
             author=author, created_at=fields.get("created_at", START + timedelta(minutes=offset + n)),
             text=f"post {offset + n}", hashtags=fields.get("hashtags", ["ukrainepeacetalks"]),
             status=fields.get("status", Post.Status.PENDING))
        for n in range(count)
    )


def test_anonymous_requests_are_refused(client):
    assert client.get("/api/v1/posts/").status_code in (401, 403)


def test_an_unknown_or_revoked_token_is_refused(api_client, api_user):
    from rest_framework.test import APIClient

    stranger = APIClient()
    stranger.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert stranger.get("/api/v1/posts/").status_code == 401
    token, key = ApiToken.issue(user=api_user)
    holder = APIClient()
    holder.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert holder.get("/api/v1/posts/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=datetime.now(timezone.utc))
    assert holder.get("/api/v1/posts/").status_code == 401


def test_tokens_are_stored_hashed_and_record_their_last_use(api_user):
    from rest_framework.test import APIClient

    token, key = ApiToken.issue(user=api_user)
    assert key not in (token.key_hash, token.key_prefix) and token.key_prefix == key[:8]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    client.get("/api/v1/posts/")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_a_logged_in_browser_session_can_read_the_api(client, admin_user):
    client.force_login(admin_user)
    assert client.get("/api/v1/posts/").status_code == 200


def test_posts_come_newest_first_and_the_cursor_walks_all_of_them_once(api_client):
    make_posts(120)
    seen, url = [], "/api/v1/posts/?page_size=50"
    while url:
        body = api_client.get(url).json()
        assert "count" not in body  # no COUNT(*) over a big table
        seen += [post["created_at"] for post in body["results"]]
        url = body["next"]
    assert len(seen) == 120 == len(set(seen))
    assert seen == sorted(seen, reverse=True)


def test_the_cursor_stays_stable_while_new_posts_arrive(api_client):
    make_posts(60)
    first = api_client.get("/api/v1/posts/?page_size=50").json()
    make_posts(10, created_at=START + timedelta(days=1))
    second = api_client.get(first["next"]).json()
    assert len(second["results"]) == 10
    assert {p["id"] for p in first["results"]}.isdisjoint(p["id"] for p in second["results"])


def test_page_size_defaults_to_50_and_is_capped_at_100(api_client):
    make_posts(130)
    assert len(api_client.get("/api/v1/posts/").json()["results"]) == 50
    assert len(api_client.get("/api/v1/posts/?page_size=500").json()["results"]) == 100


@pytest.mark.parametrize("page_size", [5, 100])
def test_the_list_makes_the_same_few_queries_whatever_the_page_size(api_client, django_assert_max_num_queries, page_size):
    make_posts(100)
    with django_assert_max_num_queries(3):  # the token, the page (authors joined), nothing per row
        response = api_client.get(f"/api/v1/posts/?page_size={page_size}")
    assert len(response.json()["results"]) == page_size


def test_filters_by_hashtag_platform_status_and_time(api_client):
    make_posts(3, hashtags=["ukrainepeacetalks"], status=Post.Status.APPROVED)
    make_posts(2, hashtags=["othertag"])
    make_posts(1, hashtags=["ukrainepeacetalks"], created_at=START - timedelta(days=3))

    def ids(query: str) -> int:
        response = api_client.get(f"/api/v1/posts/?{query}")
        assert response.status_code == 200, response.content
        return len(response.json()["results"])

    assert ids("hashtag=UkrainePeaceTalks") == 4
    assert ids("hashtag=%23ukrainepeacetalks") == 4
    assert ids("hashtag=othertag") == 2
    assert ids("status=approved") == 3
    assert ids("platform=mastodon") == 6
    assert ids(f"since={START.isoformat().replace('+00:00', 'Z')}") == 5
    assert ids(f"until={START.isoformat().replace('+00:00', 'Z')}") == 1
    assert ids("hashtag=ukrainepeacetalks&status=pending") == 1


@pytest.mark.parametrize("query", ["since=yesterday", "status=deleted", "platform=myspace"])
def test_a_bad_filter_value_is_a_clear_400(api_client, query):
    response = api_client.get(f"/api/v1/posts/?{query}")
    assert response.status_code == 400
    assert query.split("=")[0] in response.json()


def test_a_post_shows_its_author_and_fields(api_client):
    post = make_posts(1)[0]
    body = api_client.get(f"/api/v1/posts/{post.pk}/").json()
    assert body["author"]["handle"] == "@a@social.example"
    assert body["hashtags"] == ["ukrainepeacetalks"]
    assert "raw" not in body


def test_the_openapi_schema_is_served(api_client):
    response = api_client.get("/api/v1/schema/")
    assert response.status_code == 200
    assert b"/api/v1/posts/" in response.content


def test_sources_show_their_health_and_latest_run(api_client, upstream, django_assert_max_num_queries):
    from engagement import collect
    from tests.mastodon_fake import MastodonTimeline, make_status
    from tests.upstream import Reply

    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(1), make_status(2)])
    MastodonTimeline(upstream, "Broken").override = Reply(502, "", {})
    good = collect.register_source(platform="mastodon", url=upstream.url, hashtags=["UkrainePeaceTalks"])
    bad = collect.register_source(platform="mastodon", url=upstream.url, hashtags=["Broken"])
    collect.run_source(good.pk, owner="t")
    collect.run_source(bad.pk, owner="t")
    with django_assert_max_num_queries(4):  # token, sources (latest run as subqueries), hashtags
        body = api_client.get("/api/v1/sources/").json()
    by_id = {s["id"]: s for s in body}
    assert by_id[good.pk]["health"] == "ok" and by_id[good.pk]["last_run"] == {"outcome": "ok", "fetched": 2, "new": 2}
    assert by_id[good.pk]["hashtags"] == ["UkrainePeaceTalks"] and by_id[good.pk]["lag_seconds"] >= 0
    assert by_id[bad.pk]["health"] == "failing" and "502" in by_id[bad.pk]["last_error"]
    assert by_id[bad.pk]["last_error_kind"] == "temporary"
    assert len(api_client.get("/api/v1/sources/?enabled=false").json()) == 0
