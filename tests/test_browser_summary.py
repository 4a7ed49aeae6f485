"""The editors' summary page in a real browser (Debian's Chromium through Playwright, against live_server): an
editor logs in, reads every chart and its table, sees the outage shaded with its reason, switches between
approved posts and everything collected, and nothing leaves 127.0.0.1. A full-page screenshot is saved to
docs/summary.png for the README; a phone-sized one to test-artifacts/."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect

from engagement import moderation, sentiment
from engagement.models import Actor, CollectionRun, Hashtag, Post, ReasonCode, Source, SpikeAlert
from tests.test_browser_admin import browser_events, browser_page  # noqa: F401 - fixtures
from tests.test_moderation import T0, TAG, item, store

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent
DOCS, ARTIFACTS = ROOT / "docs", ROOT / "test-artifacts"
DAY = {"hashtag": TAG, "period": "", "since": "2026-11-20", "until": "2026-11-21"}
OUTAGE = "HTTP 503 from the instance (maintenance)"

ENGLISH = [
    ("Wonderful progress in Geneva, great hopeful news for everyone", 41),
    ("Terrible news, the talks collapsed again, awful and sad", 17),
    ("The delegations meet on Tuesday in Geneva", 3),
    ("I love that both sides agreed to a ceasefire, brilliant", 25),
    ("This is a disaster, they lie and nothing will change", 9),
    ("Live updates from the second round of talks in Geneva", 12),
    ("Hopeful: prisoners exchange agreed, good step towards peace", 30),
    ("Angry that civilians are still being shelled during talks", 14),
]
UKRAINIAN = "Переговори у Женеві тривають уже третій день, делегації працюють над обміном полоненими"
RUSSIAN = "Переговоры в Женеве продолжаются уже третий день, делегации работают над обменом пленными"


def editor(django_user_model):
    user = django_user_model.objects.create_user(username="olena", password="password", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    return user


def conversation() -> tuple[int, int]:
    """About seventy posts over 20 November on three platforms, two in three approved, English ones scored, some
    Ukrainian and Russian; an outage of social.example from 16:00 to 18:00 Kyiv time; a volume spike at 14:00.
    Returns (approved, all)."""
    hashtag = Hashtag.objects.get_or_create(key=TAG, defaults={"name": "UkrainePeaceTalks"})[0]
    platforms = ["mastodon", "bluesky", "reddit"]
    items = []
    for n in range(72):
        # Through the day, with a burst around T0 (14:00 in Kyiv) and no Mastodon posts during the outage.
        minutes = -600 + n * 17 if n < 60 else (n - 60) * 5
        platform = platforms[n % 3]
        if platform == "mastodon" and 120 <= minutes < 240:
            continue
        if n % 10 == 4:
            text = UKRAINIAN
        elif n % 10 == 7:
            text = RUSSIAN
        else:
            text, likes = ENGLISH[n % len(ENGLISH)]
        tags = (TAG, "peace", "geneva") if n % 4 == 0 else (TAG, "ceasefire") if n % 4 == 1 else (TAG,)
        items.append(replace(item(n, f"{text} ({n})", platform=platform, minutes=minutes, author=f"voice{n % 9}",
                                  tags=tags), like_count=(n * 7) % 50, repost_count=n % 6, reply_count=n % 4,
                             url=f"https://social.example/@voice{n % 9}/{n}"))
    posts = store(*items)
    sentiment.score_pending()
    approved = [p.pk for n, p in enumerate(posts) if n % 5 in (0, 2, 4)]
    moderation.moderate(approved, Post.Status.APPROVED, actor=Actor.SYSTEM, reason_code=ReasonCode.POST_MODERATION)
    source = Source.objects.create(platform="mastodon", name="social.example", base_url="https://social.example")
    source.hashtags.add(hashtag)
    for hours, outcome in [(-6, "ok"), (2, "failed"), (3, "failed"), (4, "ok")]:
        CollectionRun.objects.create(source=source, started_at=T0 + timedelta(hours=hours),
                                     finished_at=T0 + timedelta(hours=hours, minutes=1), outcome=outcome,
                                     message=OUTAGE if outcome == "failed" else "")
    SpikeAlert.objects.create(hashtag=TAG, bucket=T0, kind=SpikeAlert.Kind.VOLUME, value=9, baseline=2.5, factor=3)
    return len(approved), len(posts)


def log_in(page: Page, live_server, then: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next={quote(then)}")
    page.fill("#id_username", "olena")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    expect(page.locator("#total-posts")).to_be_visible()


def test_an_editor_reads_every_chart_its_table_the_outage_and_switches_scope(
    browser_page, browser_events, live_server, django_user_model, settings
):
    settings.ENGAGEMENT_SUMMARY_TIMEZONE = "Europe/Kyiv"
    approved, everything = conversation()
    editor(django_user_model)
    page = browser_page
    log_in(page, live_server, f"/summary/?{urlencode(DAY)}")
    expect(page.locator(".period")).to_contain_text("times in Europe/Kyiv")
    expect(page.locator("#total-posts")).to_have_text(str(approved))

    for key in ["volume", "sentiment", "net"]:
        svg = page.locator(f"svg[data-chart={key}]")
        expect(svg).to_be_visible()
        assert svg.bounding_box()["width"] > 600  # scaled to the laptop-wide column, not a thumbnail
        marks = svg.locator("g.bars rect, circle.dot")
        assert marks.count() > 10, key
        # The outage: shaded, and the shading carries the reason on hover.
        gap = svg.locator("g.gap")
        expect(gap).to_have_count(1)
        expect(gap.locator("rect.gap-area")).to_be_visible()
        expect(gap.locator("title")).to_contain_text(OUTAGE)
        expect(gap.locator("title")).to_contain_text("social.example")
    expect(page.locator("svg[data-chart=net] line.zero")).to_have_count(1)
    expect(page.locator("svg[data-chart=volume] g.spike title")).to_contain_text("Volume spike")
    expect(page.locator(".alerts li")).to_have_count(1)
    for key in ["languages", "terms", "hashtags"]:
        expect(page.locator(f"svg[data-chart={key}] rect.bar").first).to_be_visible()

    # Each chart's table view opens and shows rows; the top authors and posts are tables already.
    for key in ["volume", "sentiment", "net", "languages", "terms", "hashtags"]:
        section = page.locator(f"#chart-{key}")
        table = section.locator(f"table[data-table={key}]")
        expect(table).to_be_hidden()
        section.locator("details > summary").click()
        expect(table).to_be_visible()
        assert table.locator("tbody tr").count() >= 2, key
    languages = page.locator("table[data-table=languages]")
    expect(languages).to_contain_text("English (en)")
    expect(languages).to_contain_text("Ukrainian (uk)")
    expect(languages).to_contain_text("Russian (ru)")
    assert page.locator("table[data-table=authors] tbody tr").count() >= 5
    expect(page.locator("table[data-table=posts] tbody tr")).to_have_count(10)
    same_query = urlencode({"hashtag": TAG, "scope": "approved", "since": "2026-11-20T00:00:00+02:00",
                            "until": "2026-11-21T00:00:00+02:00"})
    for key in ["volume", "sentiment", "net", "languages", "terms", "hashtags", "authors", "posts"]:
        expect(page.locator(f"#chart-{key} a.csv")).to_have_attribute("href", f"/summary/csv/{key}/?{same_query}")
    for key in ["volume", "sentiment", "net", "languages", "terms", "hashtags"]:  # close them for the screenshot
        page.locator(f"#chart-{key} details > summary").click()

    # Approved only -> all collected: the total follows.
    page.check("input[name=scope][value=all]")
    page.click(".pickers button[type=submit]")
    expect(page.locator("#total-posts")).to_have_text(str(everything))
    assert "scope=all" in page.url
    page.check("input[name=scope][value=approved]")
    page.click(".pickers button[type=submit]")
    expect(page.locator("#total-posts")).to_have_text(str(approved))

    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "summary.png"), full_page=True)

    # On a phone the page fits the screen; the charts and tables scroll inside their boxes.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "summary-phone.png"), full_page=True)

    assert browser_events.problems() == []
    assert browser_events.console_errors == []
