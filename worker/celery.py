"""The Celery app: settings, the beat schedule and the health signals, in code.

Start it with `celery -A worker worker` and `celery -A worker beat` (`make run` does both).
"""

from __future__ import annotations

import os

from celery import Celery, bootsteps
from celery.beat import PersistentScheduler
from celery.signals import worker_shutdown

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "engagement.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from engagement import health  # noqa: E402

# Hard limit of one task; the broker's visibility timeout must stay well above it, or Redis hands a
# still-running task to a second worker.
TASK_TIME_LIMIT = 300
TASK_SOFT_TIME_LIMIT = 270
VISIBILITY_TIMEOUT = 3600

app = Celery("engagement", include=["worker.tasks"])
app.conf.update(
    broker_url=settings.REDIS_URL,
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        # Restore unacked messages of a dead worker within seconds, not minutes (see SERVICES.md).
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    },
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # A task is acknowledged only when done, and given back if its process dies: tasks are idempotent.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_time_limit=TASK_TIME_LIMIT,
    task_soft_time_limit=TASK_SOFT_TIME_LIMIT,
    worker_concurrency=settings.CELERY_WORKER_CONCURRENCY,
    timezone="UTC",
    enable_utc=True,
    beat_schedule={
        "dispatch-due-sources": {
            "task": "worker.tasks.dispatch_due_sources",
            "schedule": float(settings.ENGAGEMENT_DISPATCH_INTERVAL),
            # A tick that could not run in time is dropped: the next one does the same work.
            "options": {"expires": float(settings.ENGAGEMENT_DISPATCH_INTERVAL)},
        },
        # Scoring is queued when a page is stored; this sweep catches posts whose task was lost.
        "score-pending-posts": {
            "task": "worker.tasks.score_pending",
            "schedule": 30.0,
            "options": {"expires": 30.0},
        },
        "detect-spikes": {
            "task": "worker.tasks.detect_spikes",
            "schedule": 300.0,
            "options": {"expires": 300.0},
        },
        "recheck-recent-posts": {
            "task": "worker.tasks.recheck_due_sources",
            "schedule": float(settings.ENGAGEMENT_RECHECK_INTERVAL),
            "options": {"expires": float(settings.ENGAGEMENT_RECHECK_INTERVAL)},
        },
    },
    beat_scheduler="worker.celery:HealthRecordingScheduler",
    beat_schedule_filename=str(settings.CELERY_BEAT_SCHEDULE_FILE),
    beat_max_loop_interval=min(10, settings.ENGAGEMENT_DISPATCH_INTERVAL),
)


class HealthRecordingScheduler(PersistentScheduler):
    """The default scheduler, recording each tick so /healthz can tell that beat is alive."""

    def tick(self, *args, **kwargs):
        try:
            health.record_beat_tick()
        except Exception:  # Redis down: beat keeps its schedule; /healthz reports Redis itself
            pass
        return super().tick(*args, **kwargs)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes the worker's heartbeat to Redis every few seconds from the worker's own timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker):
        self.hostname = worker.hostname
        self._beat()
        self.tref = worker.timer.call_repeatedly(health.WORKER_HEARTBEAT_SECONDS, self._beat)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def _beat(self):
        try:
            health.record_worker_heartbeat(self.hostname)
        except Exception:  # Redis down: the heartbeat resumes when it is back
            pass


app.steps["worker"].add(WorkerHeartbeat)


@worker_shutdown.connect
def _clear_heartbeat(sender=None, **kwargs):
    try:
        health.clear_worker_heartbeat(sender.hostname)
    except Exception:
        pass
