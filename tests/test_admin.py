"""The admin changelists: they render, and their query count does not grow with the rows shown."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from engagement.models import (
    Author, BulkJob, CollectionRun, ModerationEvent, ModerationRule, Post, RejectedItem, Source,
)

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
        posts = Post.objects.bulk_create(
            Post(platform="mastodon", external_id=f"https://x.example/s/{start + n}", author=authors[n], source=source,
                 created_at=datetime(2026, 11, 20, tzinfo=timezone.utc) + timedelta(minutes=start + n),
                 text=f"text {start + n}", hashtags=["ukrainepeacetalks"], language="en",
                 fingerprint=f"{n % 3:032x}", reason_codes=["banned-word"], decided_by="rule",
                 reasons=[{"code": "banned-word", "rule": "r", "terms": [{"term": "x", "start": 0, "end": 1}]}])
            for n in range(count)
        )
        rules = ModerationRule.objects.bulk_create(
            ModerationRule(name=f"rule {start + n}", kind="banned", terms="x") for n in range(count))
        jobs = BulkJob.objects.bulk_create(
            BulkJob(kind="filter", description=f"job {n}", to_state="rejected", reason_code="spam", rule=rules[n])
            for n in range(count))
        ModerationEvent.objects.bulk_create(
            ModerationEvent(post=post, actor="rule", to_state="rejected", reason_code="banned-word", rule=rule, job=job)
            for post, rule, job in zip(posts, rules, jobs))
        runs = CollectionRun.objects.bulk_create(CollectionRun(source=source) for _ in range(count))
        RejectedItem.objects.bulk_create(
            RejectedItem(source=source, run=run, platform="mastodon", reason="bad date", raw={"n": 1}) for run in runs
        )

    return make


@pytest.mark.parametrize("url", [
    "/admin/engagement/post/", "/admin/engagement/post/?status__exact=pending&hashtag=ukrainepeacetalks",
    "/admin/engagement/source/", "/admin/engagement/collectionrun/", "/admin/engagement/rejecteditem/",
    "/admin/engagement/author/", "/admin/engagement/post/?deleted=yes", "/admin/engagement/article/",
    "/admin/engagement/post/?reason=banned-word&decided_by=rule", "/admin/engagement/moderationevent/",
    "/admin/engagement/bulkjob/", "/admin/engagement/moderationrule/",
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


def test_a_post_page_shows_the_raw_payload_and_the_moderation_buttons_not_an_editable_state(admin_client, rows):
    rows(1)
    post = Post.objects.get()
    page = admin_client.get(f"/admin/engagement/post/{post.pk}/change/").content.decode()
    assert 'data-decide="rejected"' in page and "text 0" in page
    # The state changes only through engagement.moderation (with an audit entry), never as a form field.
    assert 'name="status"' not in page
    assert "deletelink" not in page  # no delete button: moderation rejects, it does not delete
