"""pytest plugin (loaded with -p in pyproject.toml): the real servers the suite runs on.

Before Django reads its settings, start a throw-away PostgreSQL and Redis from the PyPI packages in a
temporary folder, unless DATABASE_URL / REDIS_URL name servers to use. They listen on a Unix socket
and on a free 127.0.0.1 port, and are stopped (and their folder deleted) when the session ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_started = {}


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    need_db, need_redis = not os.environ.get("DATABASE_URL"), not os.environ.get("REDIS_URL")
    if need_db or need_redis:
        from engagement.embedded import EmbeddedServices

        folder = Path(tempfile.mkdtemp(prefix="engagement-test-"))
        services = EmbeddedServices(folder)
        urls = services.acquire(postgres=need_db, redis=need_redis)
        _started.update(services=services, folder=folder)
        if urls.database_url:
            os.environ["DATABASE_URL"] = urls.database_url
        if urls.redis_url:
            os.environ["REDIS_URL"] = urls.redis_url
    if not os.environ.get("ENGAGEMENT_DATA_DIR"):
        # The suite's own data folder (secret key, beat schedule), never the developer's .data/.
        _started["data_dir"] = os.environ["ENGAGEMENT_DATA_DIR"] = tempfile.mkdtemp(prefix="engagement-test-data-")
    return (yield)


def pytest_unconfigure(config):
    if "data_dir" in _started:
        shutil.rmtree(_started.pop("data_dir"), ignore_errors=True)
    services = _started.pop("services", None)
    if services is not None:
        from django.db import connections

        connections.close_all()
        services.release()
        shutil.rmtree(_started.pop("folder"), ignore_errors=True)
