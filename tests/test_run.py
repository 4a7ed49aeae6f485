"""Smoke test of `make run` on its embedded defaults: the whole system up, used, and stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import requests

from engagement.embedded import EmbeddedServices, _free_port, _pid_alive
from tests.conftest import ROOT, Process, wait_for
from tests.mastodon_fake import MastodonTimeline, make_status

pytestmark = pytest.mark.slow


def get(url: str, **kwargs):
    try:
        return requests.get(url, timeout=5, **kwargs)
    except requests.RequestException:
        return None


def test_make_run_serves_collects_and_stops_cleanly(upstream, tmp_path, request):
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(n) for n in range(1, 4)])
    data = tmp_path / "data"
    # After the assertions, whatever happened: never leave servers behind (a no-op when all stopped).
    request.addfinalizer(lambda: EmbeddedServices(data).stop_all())
    bind = f"127.0.0.1:{_free_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "MAKEFLAGS", "MAKELEVEL")}
    env.update({
        "ENGAGEMENT_DATA_DIR": str(data),
        "ENGAGEMENT_WEB_BIND": bind,
        "ENGAGEMENT_DEFAULT_MASTODON_INSTANCES": upstream.url,
        "ENGAGEMENT_ALLOW_PRIVATE_HOSTS": "true",
        "ENGAGEMENT_DISPATCH_INTERVAL": "1",
        "ENGAGEMENT_ADMIN_PASSWORD": "smoke-test-password-1234",
    })
    env.pop("ENGAGEMENT_HASHTAGS", None)
    system = Process("make-run", ["make", "--no-print-directory", "run", f"PYTHON={sys.executable}"], env, tmp_path)
    system.start()
    base = f"http://{bind}"
    try:
        health = wait_for(lambda: (r := get(f"{base}/healthz")) is not None and r.status_code == 200 and r,
                          timeout=120, interval=0.5, message=f"/healthz 200\n{system.output()[-3000:]}")
        assert health.json()["worker"]["ok"] and health.json()["beat"]["ok"]
        login = get(f"{base}/admin/login/")
        assert login.status_code == 200 and 'name="username"' in login.text
        assert get(f"{base}/static/admin/css/base.css").status_code == 200
        # A manage.py command in another terminal uses the same embedded servers.
        token = subprocess.run([sys.executable, "manage.py", "tokens", "create", "--user", "admin"], env=env,
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert token.returncode == 0, token.stderr
        headers = {"Authorization": f"Token {token.stdout.strip()}"}
        posts = wait_for(lambda: (r := get(f"{base}/api/v1/posts/?hashtag=UkrainePeaceTalks", headers=headers))
                         and len(r.json()["results"]) == 3 and r.json()["results"], timeout=60,
                         message="the collected posts in the API")
        assert {p["external_id"] for p in posts} == {make_status(n)["uri"] for n in range(1, 4)}
    finally:
        os.killpg(system.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            system.proc.wait(60)
        finally:
            system.kill_group()
    output = system.output()
    assert "stopped web, worker and beat" in output, output[-3000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(system.proc.pid, 0)  # nothing of the group is left
    services = EmbeddedServices(data)
    assert not (data / "postgres" / "postmaster.pid").exists()
    redis_pid = services._redis_pid()
    assert redis_pid is None or not _pid_alive(redis_pid)
    assert get(f"{base}/healthz") is None
