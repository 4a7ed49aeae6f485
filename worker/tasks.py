"""Thin tasks: they take ids, call one function in engagement/, and retry only temporary failures."""

from __future__ import annotations

import random

from celery import shared_task
from celery.utils.log import get_task_logger
from django.conf import settings

from engagement import collect

logger = get_task_logger(__name__)

# Temporary failures (timeouts, 5xx) are retried this many times with back-off; then the source
# waits for its next regular poll.
MAX_RETRIES = 3


@shared_task
def dispatch_due_sources() -> int:
    """Queue one poll per due source. Claiming moves each source's next poll time, so overlapping
    dispatches (two beats, a slow tick) never queue the same source twice."""
    claimed = collect.claim_due_sources()  # committed: the claim is visible before any poll starts
    for source_id, interval in claimed:
        # A poll still queued after its interval is dropped; the next dispatch queues a fresh one.
        poll_source.apply_async((source_id,), expires=interval)
    return len(claimed)


@shared_task(bind=True, max_retries=MAX_RETRIES)
def poll_source(self, source_id: int) -> None:
    """Run one source once. Idempotent: a redelivered message stores nothing twice, and a second
    copy running at the same time returns at once (the source's lease is held)."""
    report = collect.run_source(source_id, owner=self.request.id or "poll_source")
    if report is None:
        logger.info("source %s skipped: gone, disabled, or already being polled", source_id)
        return
    if report.retry and self.request.retries < MAX_RETRIES:
        countdown = collect.retry_delay(self.request.retries)
        raise self.retry(countdown=countdown + random.uniform(0, countdown / 4))


@shared_task
def recheck_due_sources() -> int:
    """Queue a re-check (edits, deletions) of each source with recent posts."""
    source_ids = collect.sources_to_recheck()
    for source_id in source_ids:
        recheck_source.apply_async((source_id,), expires=settings.ENGAGEMENT_RECHECK_INTERVAL)
    return len(source_ids)


@shared_task(bind=True)
def recheck_source(self, source_id: int) -> None:
    """Idempotent: a post re-checked twice is stored once, and a running poll holds the source's lease."""
    collect.recheck_source(source_id, owner=self.request.id or "recheck_source")


# A bulk job commits chunk by chunk and resumes after the last committed one, so a long job may run for
# an hour; a killed or timed-out worker's redelivered message carries on from where it stopped.
@shared_task(soft_time_limit=3600, time_limit=3700)
def run_bulk_job(job_id: int) -> int:
    """Run a bulk moderation job (or an undo); returns how many posts changed state."""
    from engagement import moderation

    return moderation.run_job(job_id).changed


@shared_task
def score_pending() -> int:
    """Score one batch of posts waiting for it (ENGAGEMENT_SCORE_BATCH); queue another while any are left,
    so a backlog drains batch by batch and never as one task per post."""
    from engagement import sentiment

    scored = sentiment.score_pending()
    if scored >= settings.ENGAGEMENT_SCORE_BATCH:
        score_pending.delay()
    return scored


@shared_task
def detect_spikes() -> int:
    """Record and send spike alerts for the hours just finished (engagement/summaries.py)."""
    from engagement import summaries

    return len(summaries.detect_and_send_spikes())
