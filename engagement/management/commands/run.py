"""`make run`: the whole system in the foreground: web (gunicorn), Celery worker and beat."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

# How long children get to finish their work after Ctrl-C before they are killed.
STOP_GRACE_SECONDS = 20


class Command(BaseCommand):
    help = "Migrate, bootstrap, then run web, worker and beat until Ctrl-C (which stops all of them)."

    def add_arguments(self, parser):
        parser.add_argument("--bind", default=os.environ.get("ENGAGEMENT_WEB_BIND", "127.0.0.1:8000"),
                            help="address of the web server (default ENGAGEMENT_WEB_BIND or 127.0.0.1:8000)")

    def handle(self, *args, bind, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("bootstrap")
        # Children use the servers this process started (or found); they must not start their own.
        env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "REDIS_URL": settings.REDIS_URL,
               "PYTHONUNBUFFERED": "1"}
        python = sys.executable
        commands = {
            "web": [python, "-m", "gunicorn", "engagement.wsgi", "--bind", bind, "--workers", "2",
                    "--access-logfile", "-", "--graceful-timeout", "10"],
            "worker": [python, "-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO"],
            "beat": [python, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO"],
        }
        children: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            for name, command in commands.items():
                children[name] = subprocess.Popen(command, env=env, cwd=settings.BASE_DIR)
            self.stdout.write(self.style.SUCCESS(
                f"engagement is running: http://{bind}/admin/ (API at /api/v1/posts/, health at /healthz). "
                "Ctrl-C stops everything."
            ))
            while not stopping:
                exited = [name for name, child in children.items() if child.poll() is not None]
                if exited:
                    self.stderr.write(f"{', '.join(exited)} exited; stopping the rest")
                    break
                time.sleep(0.5)
        finally:
            self._stop(children)
        self.stdout.write("stopped web, worker and beat")
        if not stopping:
            sys.exit(1)

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
