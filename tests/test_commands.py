"""The management commands people script against: sources, collect, tokens, bootstrap."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from engagement.models import ApiToken, Hashtag, Post, Source
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import Reply

pytestmark = pytest.mark.django_db


def run(*args) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_sources_add_prints_the_new_id_and_list_shows_its_health(upstream):
    source_id = int(run("sources", "add", "--platform", "mastodon", "--url", upstream.url,
                        "--hashtag", "#UkrainePeaceTalks", "--interval", "60"))
    source = Source.objects.get(pk=source_id)
    assert source.poll_interval == 60
    assert [t.key for t in source.hashtags.all()] == ["ukrainepeacetalks"]
    listing = run("sources", "list")
    assert f"{source_id}\tmastodon\t{upstream.url}" in listing
    assert "health=new" in listing and "last_success=never" in listing


def test_sources_add_refuses_a_private_address_by_default(settings):
    settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS = False
    with pytest.raises(CommandError, match="ENGAGEMENT_ALLOW_PRIVATE_HOSTS"):
        run("sources", "add", "--platform", "mastodon", "--url", "http://127.0.0.1:9", "--hashtag", "x")
    with pytest.raises(CommandError, match="http and https"):
        run("sources", "add", "--platform", "mastodon", "--url", "file:///etc/passwd", "--hashtag", "x")
    assert not Source.objects.exists()


def test_sources_disable_stops_a_source(upstream):
    source_id = run("sources", "add", "--platform", "mastodon", "--url", upstream.url, "--hashtag", "t").strip()
    assert "disabled" in run("sources", "disable", source_id)
    assert not Source.objects.get(pk=source_id).enabled
    assert "health=disabled" in run("sources", "list")
    with pytest.raises(CommandError, match="no source with id 999"):
        run("sources", "disable", "999")


def test_collect_once_runs_each_source_and_prints_one_line_each(upstream):
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(n) for n in range(1, 4)])
    MastodonTimeline(upstream, "Broken").override = Reply(503, "", {})
    good = run("sources", "add", "--platform", "mastodon", "--url", upstream.url, "--hashtag", "UkrainePeaceTalks").strip()
    bad = run("sources", "add", "--platform", "mastodon", "--url", upstream.url, "--hashtag", "Broken").strip()
    lines = run("collect", "--once").splitlines()
    assert lines[0].startswith(f"source {good} ") and "ok fetched=3 new=3 updated=0 errors=0" in lines[0]
    assert lines[1].startswith(f"source {bad} ") and "failed fetched=0 new=0 updated=0 errors=0" in lines[1]
    assert "503" in lines[1]
    again = run("collect", "--once", "--source", good)
    assert "fetched=0 new=0 updated=0 errors=0" in again
    assert Post.objects.count() == 3


def test_tokens_create_prints_a_key_that_opens_the_api(django_user_model):
    from rest_framework.test import APIClient

    django_user_model.objects.create_user(username="dash")
    key = run("tokens", "create", "--user", "dash").strip()
    assert ApiToken.objects.filter(user__username="dash").count() == 1
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/posts/").status_code == 200
    with pytest.raises(CommandError, match="no user 'nobody'"):
        run("tokens", "create", "--user", "nobody")


def test_bootstrap_creates_hashtags_default_sources_and_the_admin_once(settings, django_user_model):
    settings.ENGAGEMENT_HASHTAGS = ["UkrainePeaceTalks", "PeaceTalks"]
    settings.ENGAGEMENT_DEFAULT_MASTODON_INSTANCES = ["https://mastodon.example", "https://social.example"]
    settings.ENGAGEMENT_ADMIN_PASSWORD = "a-long-local-password"
    run("bootstrap")
    run("bootstrap")
    assert sorted(Hashtag.objects.values_list("key", flat=True)) == ["peacetalks", "ukrainepeacetalks"]
    assert sorted(Source.objects.values_list("base_url", flat=True)) == ["https://mastodon.example", "https://social.example"]
    admin = django_user_model.objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("a-long-local-password")


def test_bootstrap_does_not_bring_back_sources_someone_removed(settings):
    settings.ENGAGEMENT_DEFAULT_MASTODON_INSTANCES = ["https://mastodon.example"]
    run("bootstrap")
    Source.objects.all().delete()
    Source.objects.create(platform="mastodon", name="mine", base_url="https://mine.example")
    run("bootstrap")
    assert list(Source.objects.values_list("name", flat=True)) == ["mine"]


def test_health_command_exits_non_zero_naming_the_part(settings):
    # No worker runs in this test: the worker part is unhealthy, the database part is fine.
    assert '"ok": true' in run("health", "--part", "database")
    with pytest.raises(CommandError, match="unhealthy"):
        run("health", "--part", "worker")


def test_sources_add_stores_platform_options(upstream):
    source_id = run("sources", "add", "--platform", "mastodon", "--url", upstream.url, "--hashtag", "t",
                    "--option", "note=first", "--option", "limit=2").strip()
    assert Source.objects.get(pk=source_id).settings == {"note": "first", "limit": "2"}
    with pytest.raises(CommandError, match="KEY=VALUE"):
        run("sources", "add", "--platform", "mastodon", "--url", upstream.url, "--hashtag", "t", "--option", "oops")
