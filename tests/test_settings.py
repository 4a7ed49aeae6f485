"""Settings come from the environment; a bad value stops the process with the variable's name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engagement.settings import parse_database_url
from tests.conftest import ROOT


def django_setup(env_changes: dict, code: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, **env_changes}
    env = {k: v for k, v in env.items() if v is not None}
    script = "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'engagement.settings'); django.setup()\n" + code
    return subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name, value", [
    ("DEBUG", "yes please"),
    ("ENGAGEMENT_ALLOW_PRIVATE_HOSTS", "maybe"),
    ("ENGAGEMENT_DISPATCH_INTERVAL", "often"),
    ("ENGAGEMENT_DISPATCH_INTERVAL", "0"),
    ("DATABASE_URL", "mysql://user@localhost/engagement"),
    ("DATABASE_URL", "postgresql://user@localhost"),
    ("REDIS_URL", "http://localhost:6379"),
    ("ENGAGEMENT_HASHTAGS", " , "),
])
def test_a_bad_value_fails_at_start_naming_the_variable(name, value):
    result = django_setup({name: value})
    assert result.returncode != 0
    assert name in result.stderr.splitlines()[-1], result.stderr[-2000:]


def test_private_hosts_are_off_unless_switched_on():
    result = django_setup({"ENGAGEMENT_ALLOW_PRIVATE_HOSTS": None},
                          "from django.conf import settings; print(settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS)")
    assert result.stdout.strip() == "False", result.stderr
    result = django_setup({"ENGAGEMENT_ALLOW_PRIVATE_HOSTS": "true"},
                          "from django.conf import settings; print(settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS)")
    assert result.stdout.strip() == "True"


def test_the_default_hashtag_is_ukrainepeacetalks():
    result = django_setup({"ENGAGEMENT_HASHTAGS": None},
                          "from django.conf import settings; print(settings.ENGAGEMENT_HASHTAGS)")
    assert result.stdout.strip() == "['UkrainePeaceTalks']", result.stderr


def test_database_urls_for_tcp_and_unix_sockets():
    tcp = parse_database_url("postgresql://eng:s%40cret@db.internal:5433/engagement")
    assert (tcp["USER"], tcp["PASSWORD"], tcp["HOST"], tcp["PORT"], tcp["NAME"]) == (
        "eng", "s@cret", "db.internal", "5433", "engagement")
    socket = parse_database_url("postgresql://postgres:@/engagement?host=/tmp/pg")
    assert (socket["HOST"], socket["NAME"], socket["ENGINE"]) == ("/tmp/pg", "engagement", "django.db.backends.postgresql")
