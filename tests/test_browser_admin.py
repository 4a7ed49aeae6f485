"""The moderators' console in a real browser: Debian's Chromium through Playwright, against live_server.

Data comes in through the real collection path (a fake Mastodon on 127.0.0.1 -> collect.run_source), so
the pages show what a moderator would see after a poll.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Page, expect

from engagement import collect
from engagement.models import Post, Source
from tests.browser import PageEvents, open_page
from tests.mastodon_fake import MastodonTimeline, make_status
from tests.upstream import Reply

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TAG = "UkrainePeaceTalks"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE_TEXT = '<img src=x onerror=alert(1)> <script>alert(1)</script> <svg onload=alert(1)>'
HOSTILE_NAME = "<script>alert(2)</script>"


@pytest.fixture
def browser_events() -> PageEvents:
    return PageEvents()


@pytest.fixture
def browser_page(browser_events, monkeypatch):
    """A Chromium page that may only reach this machine; fails the test if a dialog opened or a request left."""
    # Playwright's sync API keeps an asyncio loop on this thread, so Django would refuse the test's own
    # ORM calls as "async". They run one at a time between Playwright calls, which is what the check
    # guards; the recommended way out (microsoft/playwright-pytest#29) is this variable, for this test only.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with open_page(browser_events) as (page, _events):
        yield page
        # With that loop present, Django keeps this thread's connections per asyncio context, so the test
        # opened a second one that transactional_db never sees; left open, it stops the test database
        # from being dropped ("being accessed by other users").
        connections.close_all()
    if browser_events.problems():
        pytest.fail("the page misbehaved: " + "; ".join(browser_events.problems()), pytrace=False)


def collect_statuses(upstream, statuses: list[dict]) -> Source:
    """Serve `statuses` on a fake Mastodon and run a source on it once, as a poll would."""
    MastodonTimeline(upstream, TAG, statuses)
    source = collect.register_source(platform="mastodon", url=upstream.url, hashtags=[TAG])
    report = collect.run_source(source.pk, owner="test")
    assert report is not None and report.run.outcome == "ok", report and report.run.message
    return source


def log_in(page: Page, live_server, admin_user) -> None:
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/admin/")


def test_a_moderator_logs_in_with_the_form_and_lands_on_the_admin_index(browser_page, live_server, admin_user):
    page = browser_page
    page.goto(f"{live_server.url}/admin/")
    expect(page).to_have_url(re.compile(r"/admin/login/"))
    expect(page.locator("#login-form")).to_be_visible()
    # The stylesheet loaded (WhiteNoise serves it under live_server): the page is not bare HTML.
    assert page.evaluate("getComputedStyle(document.body).fontFamily") != "Times New Roman"

    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")

    expect(page).to_have_url(f"{live_server.url}/admin/")
    expect(page.get_by_role("link", name="Posts", exact=True)).to_be_visible()


def test_a_wrong_password_keeps_the_moderator_on_the_login_page(browser_page, live_server, admin_user):
    page = browser_page
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "not the password")
    page.click("input[type=submit]")
    expect(page.locator(".errornote")).to_be_visible()
    expect(page.get_by_role("link", name="Posts", exact=True)).to_have_count(0)


def test_the_posts_changelist_shows_a_collected_post_filters_by_status_and_opens_it(
    browser_page, browser_events, live_server, admin_user, upstream
):
    collect_statuses(upstream, [make_status(n, text=f"Talks update {n}: delegations meet") for n in (1, 2, 3)])
    Post.objects.filter(text__startswith="Talks update 2:").update(status=Post.Status.APPROVED)
    page = browser_page
    log_in(page, live_server, admin_user)

    page.get_by_role("link", name="Posts", exact=True).click()
    expect(page).to_have_url(f"{live_server.url}/admin/engagement/post/")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(3)
    first = rows.filter(has_text="Talks update 1: delegations meet")
    expect(first.locator("td.field-author_link")).to_have_text("@reader1@social.example")
    expect(first.locator("td.field-state_badge")).to_have_text("pending")

    status_filter = page.locator("#changelist-filter details[data-filter-title='status']")
    status_filter.get_by_role("link", name="approved", exact=True).click()
    expect(page).to_have_url(re.compile(r"status__exact=approved"))
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Talks update 2: delegations meet")
    status_filter.get_by_role("link", name="pending", exact=True).click()
    expect(rows).to_have_count(2)

    rows.filter(has_text="Talks update 1: delegations meet").locator("th a").click()
    expect(page).to_have_url(re.compile(r"/admin/engagement/post/\d+/change/"))
    expect(page.locator("h1")).to_have_text("Change post")
    expect(page.locator(".field-text .readonly")).to_contain_text("Talks update 1: delegations meet")
    expect(page.locator("#moderation-panel [data-post-state]")).to_have_text("pending")
    assert browser_events.console_errors == []


def test_hostile_content_is_inert_and_shown_escaped(browser_page, browser_events, live_server, admin_user, upstream):
    # What a user typed, as Mastodon sends it (escaped inside the HTML), and what a hostile instance
    # could send instead (live tags in `content`); the author's display name carries a script too.
    typed = make_status(1, text=html.escape(HOSTILE_TEXT, quote=False))
    typed["account"]["display_name"] = HOSTILE_NAME
    raw_tags = make_status(2, text=HOSTILE_TEXT)
    raw_tags["account"]["display_name"] = HOSTILE_NAME
    raw_tags["url"] = "javascript:alert(3)"
    collect_statuses(upstream, [typed, raw_tags])
    page = browser_page
    log_in(page, live_server, admin_user)

    page.goto(f"{live_server.url}/admin/engagement/post/")
    expect(page.locator("#result_list tbody tr")).to_have_count(2)
    # The payload is text on the page, not markup: visible as typed, and no element came from it.
    expect(page.locator("#result_list")).to_contain_text("<script>alert(1)</script>")
    expect(page.locator("#result_list")).to_contain_text("<img src=x onerror=alert(1)>")
    assert_no_injected_markup(page)

    page.locator("#result_list tbody tr", has_text="<script>alert(1)</script>").locator("th a").click()
    expect(page).to_have_url(re.compile(r"/admin/engagement/post/\d+/change/"))
    expect(page.locator(".field-text .readonly")).to_contain_text("<svg onload=alert(1)>")
    # The raw JSON is shown too, display name included, as text.
    expect(page.locator(".field-raw .readonly")).to_contain_text(HOSTILE_NAME)
    assert_no_injected_markup(page)

    # The live tags of the hostile instance were removed before storing; the raw copy shows them as text,
    # and its javascript: URL is not a link anywhere.
    page.go_back()
    hostile_row = page.locator("#result_list tbody tr").filter(has_not_text="<script>alert(1)</script>")
    expect(hostile_row.locator("td.field-open_link")).to_have_text("—")
    hostile_row.locator("th a").click()
    expect(page.locator(".field-raw .readonly")).to_contain_text("<script>alert(1)</script>")
    expect(page.locator(".field-url .readonly")).to_have_text("javascript:alert(3)")
    expect(page.locator("a[href^='javascript:']")).to_have_count(0)
    assert_no_injected_markup(page)

    page.goto(f"{live_server.url}/admin/engagement/author/")
    expect(page.locator("#result_list td.field-display_name").first).to_have_text(HOSTILE_NAME)
    assert_no_injected_markup(page)

    page.wait_for_timeout(300)  # an onerror handler runs after the image fails to load: give it the chance
    assert browser_events.dialogs == []
    assert browser_events.external_requests == []
    assert browser_events.console_errors == []


def assert_no_injected_markup(page: Page) -> None:
    injected = page.evaluate(
        """() => [
            ...document.querySelectorAll('img[onerror], svg[onload], [onload], [onerror]'),
            ...[...document.scripts].filter(s => s.textContent.includes('alert(')),
        ].map(e => e.outerHTML)"""
    )
    assert injected == []


def test_the_sources_changelist_shows_health_lag_and_failures_after_a_failing_run(
    browser_page, live_server, admin_user, upstream
):
    timeline = MastodonTimeline(upstream, TAG, [make_status(1)])
    source = collect.register_source(platform="mastodon", url=upstream.url, hashtags=[TAG])
    assert collect.run_source(source.pk, owner="test").run.outcome == "ok"
    timeline.override = Reply(500, "x", {})
    assert collect.run_source(source.pk, owner="test").run.outcome == "failed"
    page = browser_page
    log_in(page, live_server, admin_user)

    page.goto(f"{live_server.url}/admin/engagement/source/")
    headers = page.locator("#result_list thead th")
    for column in ("health", "lag", "consecutive failures", "last error"):
        expect(headers.filter(has_text=re.compile(rf"^\s*{column}\s*$", re.IGNORECASE))).to_have_count(1)
    row = page.locator("#result_list tbody tr", has_text=source.name)
    expect(row.locator("td.field-health_badge")).to_have_text("failing")
    expect(row.locator("td.field-lag")).to_have_text(re.compile(r"^\d+ s$"))
    expect(row.locator("td.field-consecutive_failures")).to_have_text("1")
    expect(row.locator("td.field-short_error")).to_contain_text("500")


def test_the_posts_changelist_is_saved_as_a_screenshot_for_a_person_to_look_at(
    browser_page, live_server, admin_user, upstream
):
    texts = [
        "Delegations arrive in Geneva for the second round",
        "Ceasefire lines are the hardest part of the talks, says one negotiator, and the maps on the table "
        "still differ by several kilometres along the river",
        "Кожен день без обстрілів важливий",
        "Prisoner exchange agreed in principle",
        "Live thread: press conference at 14:00",
        "Grain corridor back on the agenda",
    ]
    collect_statuses(upstream, [make_status(n, text=text) for n, text in enumerate(texts, start=1)])
    page = browser_page
    log_in(page, live_server, admin_user)

    page.goto(f"{live_server.url}/admin/engagement/post/")
    expect(page.locator("#result_list tbody tr")).to_have_count(len(texts))
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "admin-posts.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000

