"""A bulk reject of 50,000 posts by filter in the real worker, with visible progress, then its undo:
every post's exact previous state comes back, and both jobs are in the audit trail."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from engagement import moderation
from engagement.models import BulkJob, ModerationEvent, Post

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
POSTS = 50_000


def fill(count: int) -> None:
    """Posts in every state, decided by the default, a rule or a person, with differing reason codes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO engagement_post (platform, external_id, uri, url, kind, created_at, collected_at, updated_at, "
            "language, html, text, hashtags, reply_to_external_id, reply_count, repost_count, like_count, raw, status, "
            "deletion_reason, fingerprint, reasons, reason_codes, decided_by, decided_at) "
            "SELECT CASE WHEN i %% 2 = 0 THEN 'bluesky' ELSE 'mastodon' END, 'https://bulk.example/' || i, '', '', "
            "'post', now() - (i || ' seconds')::interval, now(), now(), 'en', '', 'text ' || i, "
            "ARRAY['ukrainepeacetalks'], '', 0, 0, 0, '{}'::jsonb, "
            "(ARRAY['pending', 'approved', 'flagged', 'rejected'])[i %% 4 + 1], '', '', '[]'::jsonb, "
            "CASE i %% 3 WHEN 0 THEN ARRAY['pre-moderation'] WHEN 1 THEN ARRAY['suspect-word', 'burst'] "
            "ELSE ARRAY[]::varchar[] END, "
            "(ARRAY['system', 'rule', 'person'])[i %% 3 + 1], now() - (i || ' minutes')::interval "
            "FROM generate_series(1, %s) AS i",
            [count],
        )


def snapshot() -> dict[int, tuple]:
    return {pk: rest for pk, *rest in Post.objects.values_list("pk", "status", "decided_by", "decided_at",
                                                                "reason_codes")}


def watch(job_id: int, timeout: float) -> tuple[BulkJob, list[int]]:
    """Poll the job as the admin's progress view does; return it when done and the progress values seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = BulkJob.objects.get(pk=job_id)
        if not seen or seen[-1] != job.done:
            seen.append(job.done)
        if job.state in (BulkJob.State.DONE, BulkJob.State.FAILED):
            return job, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} not done after {timeout} s (progress seen: {seen})")


def test_a_bulk_reject_of_50000_posts_runs_in_the_worker_with_progress_and_undo_restores_every_state(
    flushed_redis, start_worker, django_user_model
):
    fill(POSTS)
    user = django_user_model.objects.create_user(username="mod", is_staff=True)
    user.groups.add(Group.objects.get(name="Moderators"))
    user = django_user_model.objects.get(pk=user.pk)
    before = snapshot()
    start_worker()

    # Every Bluesky post, whatever page the moderator was looking at ("select all N matching").
    job = moderation.create_job(Post.objects.filter(platform="bluesky"), to_state=Post.Status.REJECTED,
                                reason_code="spam", user=user, kind=BulkJob.Kind.FILTER, note="bot wave",
                                description="reject platform=bluesky")
    assert job.total == POSTS // 2
    job, progress = watch(job.pk, timeout=240)
    assert job.state == BulkJob.State.DONE, job.error
    # Progress was committed chunk by chunk, visible while the job ran.
    assert any(0 < done < job.total for done in progress), progress
    bluesky = set(Post.objects.filter(platform="bluesky").values_list("pk", flat=True))
    already = sum(1 for pk in bluesky if before[pk][0] == "rejected")
    assert job.changed == len(bluesky) - already
    after = snapshot()
    assert {after[pk][0] for pk in bluesky} == {"rejected"}
    assert {pk: after[pk] for pk in before if pk not in bluesky} == {pk: v for pk, v in before.items() if pk not in bluesky}
    assert ModerationEvent.objects.filter(job=job, user=user, to_state="rejected", note="bot wave").count() == job.changed

    undo = moderation.create_undo(job, user=user)
    undo, _progress = watch(undo.pk, timeout=240)
    assert undo.state == BulkJob.State.DONE, undo.error
    assert undo.changed == job.changed
    assert snapshot() == before
    assert ModerationEvent.objects.filter(job=undo, reason_code="undo").count() == job.changed
