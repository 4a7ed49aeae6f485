"""Documentation unit tests: every environment variable and API filter the code reads is in README.md."""

from __future__ import annotations

import re

import pytest

from engagement.api.filters import PostFilter
from engagement.api.views import SourceViewSet
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_READ = re.compile(
    r"""(?:env_(?:str|bool|int|list)\(\s*|os\.environ\.get\(\s*|os\.environ\[\s*|environ\.setdefault\(\s*|getenv\(\s*)["']([A-Z][A-Z0-9_]+)["']"""
)
# Set by tools for their own use, not settings of this project.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED"}


def variables_read() -> set[str]:
    names = set()
    for folder in ("engagement", "worker", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(ENV_READ.findall(path.read_text(encoding="utf-8")))
    return names - NOT_SETTINGS


def test_the_scan_finds_the_variables_it_should():
    # Guards the guard: if the pattern stops matching, the test below would pass vacuously.
    assert {"DATABASE_URL", "REDIS_URL", "ENGAGEMENT_HASHTAGS", "ENGAGEMENT_ALLOW_PRIVATE_HOSTS"} <= variables_read()


@pytest.mark.parametrize("name", sorted(variables_read()))
def test_every_environment_variable_is_documented(name):
    assert f"`{name}`" in README, f"{name} is read by the code but not documented in README.md"


@pytest.mark.parametrize("name", sorted(PostFilter.base_filters))
def test_every_posts_filter_is_documented(name):
    assert f"`{name}`" in README, f"the posts filter {name!r} is not documented in README.md"


@pytest.mark.parametrize("name", sorted(SourceViewSet.filterset_fields))
def test_every_sources_filter_is_documented(name):
    assert f"`{name}`" in README, f"the sources filter {name!r} is not documented in README.md"


@pytest.mark.parametrize("command", ["make run", "make test", "manage.py sources add", "manage.py sources list",
                                     "manage.py sources disable", "manage.py collect --once", "manage.py tokens create",
                                     "/healthz", "/api/v1/posts/", "/api/v1/sources/",
                                     "manage.py collect --backfill", "manage.py collect --recheck",
                                     "manage.py renormalise", "manage.py import", "manage.py export"])
def test_the_readme_gives_the_commands_and_endpoints(command):
    assert command in README


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs" / "sources").glob("*.md")))
def test_every_platform_page_is_linked_from_the_readme(page):
    assert f"docs/sources/{page}" in README
