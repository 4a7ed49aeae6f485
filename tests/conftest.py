from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = Path(os.environ.get("ENGAGEMENT_SHARED_FIXTURES", ROOT.parent / "shared" / "fixtures"))


# --- recorded platform responses (../shared/fixtures, read in place, never copied) -----------------


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        message = (f"the recorded platform responses are not at {SHARED_FIXTURES}: check out ../shared beside "
                   "this repository (or set ENGAGEMENT_SHARED_FIXTURES)")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_FIXTURES


@pytest.fixture
def recorded(shared_fixtures):
    def load(relative: str):
        return json.loads((shared_fixtures / relative).read_text(encoding="utf-8"))

    return load


# --- fake upstreams ----------------------------------------------------------------------------------


@pytest.fixture
def upstream():
    from tests.upstream import FakeUpstream

    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _private_hosts_allowed(settings):
    # Fake upstreams live on 127.0.0.1, which sources may only use with this setting on. The tests
    # of the guard itself switch it off again.
    settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS = True


# --- real processes ----------------------------------------------------------------------------------


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for subprocesses that points at the database the test runs on."""
    user = quote(settings_dict["USER"] or "postgres")
    password = f":{quote(settings_dict['PASSWORD'])}" if settings_dict["PASSWORD"] else ""
    host = settings_dict["HOST"] or ""
    if host.startswith("/"):
        return f"postgresql://{user}{password}@/{settings_dict['NAME']}?host={host}"
    port = f":{settings_dict['PORT']}" if settings_dict["PORT"] else ""
    return f"postgresql://{user}{password}@{host}{port}/{settings_dict['NAME']}"


@pytest.fixture
def process_env(transactional_db, tmp_path):
    """Environment for worker / beat / web subprocesses: this test's database and Redis."""
    from django.conf import settings
    from django.db import connection

    return {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "ENGAGEMENT_ALLOW_PRIVATE_HOSTS": "true",
        "ENGAGEMENT_DISPATCH_INTERVAL": "1",
        "ENGAGEMENT_DATA_DIR": str(tmp_path / "data"),
        "CELERY_BEAT_SCHEDULE_FILE": str(tmp_path / "celerybeat-schedule"),
        "PYTHONUNBUFFERED": "1",
    }


class Process:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, name: str, command: list[str], env: dict, log_dir: Path):
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def kill_group(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def wait_for(predicate, *, timeout: float, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


@pytest.fixture
def start_worker(process_env, tmp_path):
    """Start a real Celery worker (prefork) on this test's database and Redis; stopped after the test."""
    from engagement import health

    started: list[Process] = []

    def start(env: dict | None = None, concurrency: int = 1) -> Process:
        hostname = f"test-{uuid.uuid4().hex[:8]}@localhost"
        worker = Process(f"worker-{len(started)}", [sys.executable, "-m", "celery", "-A", "worker", "worker",
                                                     "--loglevel", "INFO", "--concurrency", str(concurrency),
                                                     "--hostname", hostname], env or process_env, tmp_path)
        started.append(worker.start())
        client = redis.Redis.from_url((env or process_env)["REDIS_URL"])
        wait_for(lambda: client.exists(health.WORKER_KEY_PREFIX + hostname) or worker.proc.poll() is not None,
                 timeout=60, message="the worker's first heartbeat")
        assert worker.proc.poll() is None, worker.output()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(process_env, tmp_path):
    started: list[Process] = []

    def start(env: dict | None = None) -> Process:
        beat = Process(f"beat-{len(started)}", [sys.executable, "-m", "celery", "-A", "worker", "beat",
                                                "--loglevel", "INFO"], env or process_env, tmp_path)
        started.append(beat.start())
        return beat

    yield start
    for beat in started:
        beat.stop()


@pytest.fixture
def flushed_redis(settings):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    return client


# --- API ---------------------------------------------------------------------------------------------


@pytest.fixture
def api_user(django_user_model):
    return django_user_model.objects.create_user(username="dashboard", password="not-used-here")


@pytest.fixture
def api_client(api_user):
    from rest_framework.test import APIClient

    from engagement.models import ApiToken

    _token, key = ApiToken.issue(user=api_user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client
