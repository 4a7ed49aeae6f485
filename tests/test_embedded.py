"""Embedded PostgreSQL and Redis: shared by every process of one data folder, stopped by the last one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engagement.embedded import EmbeddedServices, _pid_alive, _redis_answers
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.slow


def embedded_env(data_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "ENGAGEMENT_DATA_DIR": str(data_dir)}


PRINT_URLS = "from django.conf import settings; print(settings.DATABASE_URL, settings.REDIS_URL, flush=True)"


def test_processes_share_the_embedded_servers_and_the_last_one_out_stops_them(tmp_path):
    data, release = tmp_path / "data", tmp_path / "release"
    env = embedded_env(data)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import os, time, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'engagement.settings'; "
         f"django.setup(); {PRINT_URLS}\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        urls = holder.stdout.readline().strip()
        assert urls.startswith("postgresql://") and "redis://127.0.0.1:" in urls
        # A manage.py command in "another terminal" joins the same servers and leaves them running.
        other = subprocess.run([sys.executable, "manage.py", "shell", "-c", PRINT_URLS], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip().splitlines()[-1] == urls
        services = EmbeddedServices(data)
        assert (data / "postgres" / "postmaster.pid").exists()
        assert _redis_answers(services._redis_port())
        release.touch()
        assert holder.wait(60) == 0
    finally:
        holder.kill()
        if holder.wait() != 0:  # the test failed midway: do not leave its servers running
            EmbeddedServices(data).stop_all()
    assert not (data / "postgres" / "postmaster.pid").exists()
    wait_for(lambda: not _redis_answers(services._redis_port()), timeout=10, message="Redis stopped")
    assert services._redis_pid() is None


def test_embedded_stop_stops_servers_left_by_a_killed_process(tmp_path):
    data = tmp_path / "data"
    env = embedded_env(data)
    killed = subprocess.Popen([sys.executable, "manage.py", "shell", "-c", f"{PRINT_URLS}\nimport os; os.kill(os.getpid(), 9)"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    killed.wait(120)
    services = EmbeddedServices(data)
    pid = services._redis_pid()
    try:
        assert pid and (data / "postgres" / "postmaster.pid").exists()
        result = subprocess.run([sys.executable, "-m", "engagement.embedded", "stop"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    finally:
        services.stop_all()
    assert result.returncode == 0, result.stderr
    assert not (data / "postgres" / "postmaster.pid").exists()
    wait_for(lambda: not _pid_alive(pid), timeout=10, message="Redis stopped")
