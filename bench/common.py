"""A throw-away database for a bench script, on the server engagement uses (the embedded PostgreSQL in
.data/ when DATABASE_URL is unset): created, migrated, and dropped at the end, so no other database is read
or written."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "engagement.settings")


def admin_connection(db: dict):
    import psycopg

    return psycopg.connect(dbname=db["NAME"], user=db["USER"], password=db["PASSWORD"] or None,
                           host=db["HOST"] or None, port=db["PORT"] or None, autocommit=True)


@contextmanager
def bench_database() -> Iterator[str]:
    """Create `engagement_bench_<pid>`, point every connection of this process at it, set Django up and
    migrate; drop it on the way out. Yields its name."""
    from django.conf import settings

    db = settings.DATABASES["default"]
    name = f"engagement_bench_{os.getpid()}"
    with admin_connection(db) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    configured = db["NAME"]
    db["NAME"] = name  # before django.setup(): every connection of this process uses the bench database
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        yield name
    finally:
        from django.db import connections

        connections.close_all()
        db["NAME"] = configured
        with admin_connection(db) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"\ndropped {name}")
