"""docker-compose.yml cannot run here (no Docker engine): check its shape so it stays in step with the code."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_it_has_the_whole_system_with_health_checks():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "redis", "web", "worker", "beat"}
    for name, service in services.items():
        assert "healthcheck" in service, name


def test_app_services_share_the_settings_and_wait_for_healthy_servers():
    for name in ("web", "worker", "beat"):
        service = COMPOSE["services"][name]
        assert service["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert service["environment"]["REDIS_URL"].startswith("redis://redis:")
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "gunicorn engagement.wsgi" in COMPOSE["services"]["web"]["command"]
    assert COMPOSE["services"]["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert COMPOSE["services"]["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]


def test_the_image_runs_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER app\n" in dockerfile
