"""The admin changelists: they render, and their query count does not grow with the rows shown."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engagement.models import Author, CollectionRun, Post, RejectedItem, Source

pytestmark = pytest.mark.django_db


@pytest.fixture
def rows():
    def make(count: int) -> None:
        start = Post.objects.count()
        authors = Author.objects.bulk_create(
            Author(platform="mastodon", external_id=f"https://x.example/users/{start + n}", handle=f"@u{start + n}@x.example")
            for n in range(count)
        )
        source = Source.objects.create(platform="mastodon", name=f"s{start}", base_url="https://x.example")
        Post.objects.bulk_create(
            Post(platform="mastodon", external_id=f"https://x.example/s/{start + n}", author=authors[n], source=source,
                 created_at=datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(minutes=start + n),
                 text=f"text {start + n}", hashtags=["ukrainepeacetalks"], language="en")
            for n in range(count)
        )
        runs = CollectionRun.objects.bulk_create(CollectionRun(source=source) for _ in range(count))
        RejectedItem.objects.bulk_create(
            RejectedItem(source=source, run=run, platform="mastodon", reason="bad date", raw={"n": 1}) for run in runs
        )

    return make


@pytest.mark.parametrize("url", [
    "/admin/engagement/post/", "/admin/engagement/post/?status__exact=pending&hashtag=ukrainepeacetalks",
    "/admin/engagement/source/", "/admin/engagement/collectionrun/", "/admin/engagement/rejecteditem/",
    "/admin/engagement/author/", "/admin/engagement/post/?deleted=yes", "/admin/engagement/article/",
])
def test_changelist_queries_do_not_grow_with_the_rows(admin_client, rows, url, django_assert_max_num_queries):
    rows(3)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as few:
        assert admin_client.get(url).status_code == 200
    rows(40)
    with django_assert_max_num_queries(len(few.captured_queries)):
        response = admin_client.get(url)
    assert response.status_code == 200


def test_a_post_page_shows_the_raw_payload_and_the_status_to_change(admin_client, rows):
    rows(1)
    post = Post.objects.get()
    page = admin_client.get(f"/admin/engagement/post/{post.pk}/change/").content.decode()
    assert 'name="status"' in page and "text 0" in page
    assert "deletelink" not in page  # no delete button: moderation rejects, it does not delete
