"""Liveness of the moving parts, for /healthz: database, Redis, worker heartbeat, beat tick.

The worker writes a heartbeat key every few seconds (worker/celery.py) and deletes it when it stops
cleanly; beat writes its key on every scheduler tick. A key older than the allowed age means the
process is gone or stuck.
"""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from django.conf import settings
from django.db import connection

WORKER_KEY_PREFIX = "engagement:health:worker:"
BEAT_KEY = "engagement:health:beat"
# How often the worker writes its heartbeat; the allowed age (ENGAGEMENT_HEALTH_WORKER_MAX_AGE) is larger.
WORKER_HEARTBEAT_SECONDS = 5


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def redis_client() -> redis.Redis:
    return _client(settings.REDIS_URL)


def record_worker_heartbeat(hostname: str) -> None:
    redis_client().set(WORKER_KEY_PREFIX + hostname, time.time(), ex=settings.ENGAGEMENT_HEALTH_WORKER_MAX_AGE * 10)


def clear_worker_heartbeat(hostname: str) -> None:
    redis_client().delete(WORKER_KEY_PREFIX + hostname)


def record_beat_tick() -> None:
    redis_client().set(BEAT_KEY, time.time(), ex=settings.ENGAGEMENT_HEALTH_BEAT_MAX_AGE * 10)


def _age(value: bytes | None, now: float) -> float | None:
    return None if value is None else round(max(0.0, now - float(value)), 1)


def check() -> tuple[bool, dict]:
    """(all healthy, a report per part). Never raises: a part that cannot be asked is unhealthy."""
    report: dict = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        report["database"] = {"ok": True}
    except Exception as exc:  # any driver error means "down" to a load balancer
        report["database"] = {"ok": False, "error": f"{exc.__class__.__name__}: {exc}"[:300]}
    now = time.time()
    try:
        client = redis_client()
        client.ping()
        report["redis"] = {"ok": True}
        keys = list(client.scan_iter(match=WORKER_KEY_PREFIX + "*", count=100))
        beats = client.mget(keys) if keys else []
        ages = [age for age in (_age(v, now) for v in beats) if age is not None]
        worker_age = min(ages) if ages else None
        report["worker"] = {
            "ok": worker_age is not None and worker_age <= settings.ENGAGEMENT_HEALTH_WORKER_MAX_AGE,
            "heartbeat_age_seconds": worker_age,
            "workers": len(ages),
        }
        beat_age = _age(client.get(BEAT_KEY), now)
        report["beat"] = {
            "ok": beat_age is not None and beat_age <= settings.ENGAGEMENT_HEALTH_BEAT_MAX_AGE,
            "last_tick_age_seconds": beat_age,
        }
    except redis.RedisError as exc:
        error = f"{exc.__class__.__name__}: {exc}"[:300]
        report["redis"] = {"ok": False, "error": error}
        report["worker"] = {"ok": False, "error": "unknown: Redis is unreachable"}
        report["beat"] = {"ok": False, "error": "unknown: Redis is unreachable"}
    return all(part["ok"] for part in report.values()), report
