"""/healthz against real processes: it must turn 503 when a part stops and 200 when it is back."""

from __future__ import annotations

import pytest

from engagement.embedded import EmbeddedServices
from tests.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def status(client) -> tuple[int, dict]:
    response = client.get("/healthz")
    return response.status_code, response.json()


def test_healthz_follows_the_worker_beat_and_redis(client, settings, process_env, start_worker, start_beat, tmp_path):
    # A Redis of this test's own, so stopping it does not disturb the rest of the suite.
    redis_server = EmbeddedServices(tmp_path / "own-redis")
    redis_url = redis_server.acquire(postgres=False, redis=True).redis_url
    settings.REDIS_URL = redis_url
    env = {**process_env, "REDIS_URL": redis_url}
    try:
        code, report = status(client)
        assert code == 503 and report["database"]["ok"] and report["redis"]["ok"]
        assert not report["worker"]["ok"] and not report["beat"]["ok"]

        worker = start_worker(env)
        start_beat(env)
        wait_for(lambda: status(client)[0] == 200, timeout=30, message="healthz 200 with worker and beat up")

        worker.stop()
        code, report = status(client)
        assert code == 503 and not report["worker"]["ok"] and report["beat"]["ok"]
        start_worker(env)
        wait_for(lambda: status(client)[0] == 200, timeout=30, message="healthz 200 with the worker back")

        redis_server.release()  # the last holder: Redis stops
        code, report = status(client)
        assert code == 503 and not report["redis"]["ok"] and report["database"]["ok"]
        assert redis_server.acquire(postgres=False, redis=True).redis_url == redis_url  # same port again
        wait_for(lambda: status(client)[0] == 200, timeout=60, message="healthz 200 with Redis back")
    finally:
        redis_server.release()


def test_healthz_is_503_when_the_database_is_unreachable(client, settings):
    from django.db import connection

    original = connection.settings_dict["HOST"]
    connection.close()
    connection.settings_dict["HOST"] = "/nonexistent-socket-dir"
    try:
        code, report = status(client)
    finally:
        connection.close()
        connection.settings_dict["HOST"] = original
    assert code == 503 and not report["database"]["ok"]
