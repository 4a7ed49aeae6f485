"""Spike alerts: an hour whose volume or negative share jumps past the factor over its trailing 24-hour
baseline is recorded once and sent to the webhook with an HMAC signature (a fake receiver on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest

from engagement import sentiment, summaries
from engagement.models import SpikeAlert
from tests.test_moderation import item, store
from tests.upstream import Reply, current_request

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 21, 12, 10, tzinfo=timezone.utc)  # the hour checked: 11:00-12:00
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)  # item() times are minutes after 2026-11-20 12:00


def minutes(moment: datetime) -> int:
    return int((moment - T0).total_seconds() // 60)


def fill(baseline_per_hour: int, last_hour: int, text: str = "Delegations meet at noon", last_text: str = ""):
    items, n = [], 0
    for hour in range(24):
        for k in range(baseline_per_hour):
            items.append(item(n, f"{text} {n}", minutes=minutes(NOW.replace(minute=0) - timedelta(hours=25 - hour)) + k))
            n += 1
    for k in range(last_hour):
        items.append(item(n, f"{last_text or text} {n}", minutes=minutes(NOW.replace(minute=0) - timedelta(hours=1)) + k % 60))
        n += 1
    store(*items)
    sentiment.score_pending(limit=10_000)


def test_a_volume_jump_is_recorded_once(settings):
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    fill(baseline_per_hour=2, last_hour=30)
    [alert] = summaries.detect_spikes(NOW)
    assert (alert.hashtag, alert.kind, alert.value, alert.baseline) == ("ukrainepeacetalks", "volume", 30.0, 2.0)
    assert alert.bucket == datetime(2026, 11, 21, 11, tzinfo=timezone.utc)
    assert summaries.detect_spikes(NOW) == []  # once per hour and kind
    assert SpikeAlert.objects.count() == 1


def test_an_ordinary_hour_or_too_few_posts_is_no_spike(settings):
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    fill(baseline_per_hour=10, last_hour=12)
    assert summaries.detect_spikes(NOW) == []


def test_a_jump_in_the_negative_share_is_its_own_alert(settings):
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    fill(baseline_per_hour=20, last_hour=20, text="What a wonderful hopeful day",
         last_text="What a terrible shameful betrayal")
    [alert] = summaries.detect_spikes(NOW)
    assert (alert.kind, alert.value, alert.baseline) == ("negative", 1.0, 0.0)


def test_an_alert_is_sent_to_the_webhook_signed(settings, upstream):
    received = []

    def receive(path, body):
        received.append(current_request())
        return Reply(204, "")

    upstream.post_routes["/hook"] = receive
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    settings.ENGAGEMENT_SPIKE_WEBHOOK_URL = f"{upstream.url}/hook"
    settings.ENGAGEMENT_SPIKE_WEBHOOK_SECRET = "s3cret"
    fill(baseline_per_hour=1, last_hour=25)
    [alert] = summaries.detect_and_send_spikes(NOW)
    [request] = received
    payload = json.loads(request.body)
    assert payload["kind"] == "volume" and payload["hashtag"] == "ukrainepeacetalks" and payload["value"] == 25
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-engagement-signature"] == expected
    alert.refresh_from_db()
    assert alert.delivered_at is not None and alert.delivery_error == ""


def test_a_failed_delivery_is_recorded_on_the_alert(settings, upstream):
    upstream.post_routes["/hook"] = lambda path, body: Reply(500, "down")
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    settings.ENGAGEMENT_SPIKE_WEBHOOK_URL = f"{upstream.url}/hook"
    fill(baseline_per_hour=1, last_hour=25)
    [alert] = summaries.detect_and_send_spikes(NOW)
    alert.refresh_from_db()
    assert alert.delivered_at is None and "500" in alert.delivery_error


def test_an_alert_is_mailed_when_addresses_are_set(settings, mailoutbox):
    settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS = 3, 20
    settings.ENGAGEMENT_SPIKE_EMAIL = ["desk@news.example"]
    fill(baseline_per_hour=1, last_hour=25)
    [alert] = summaries.detect_and_send_spikes(NOW)
    [mail] = mailoutbox
    assert mail.to == ["desk@news.example"] and "volume spike" in mail.subject
    assert json.loads(mail.body)["value"] == 25
