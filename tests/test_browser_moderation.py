"""The moderation queue in a real browser (Debian's Chromium through Playwright, against live_server): a
moderator works the queue with the keyboard, rejects with a reason and finds the audit entry; an editor reads
but cannot act. Screenshots of the queue and of the one-at-a-time view are saved to docs/ for the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect

from engagement import sentiment
from engagement.models import ModerationEvent, ModerationRule, Post
from tests.test_browser_admin import browser_events, browser_page  # noqa: F401 - fixtures
from tests.test_moderation import item, store

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
DOCS = Path(__file__).resolve().parent.parent / "docs"
QUEUE = "/admin/engagement/post/?status__exact=pending"


def person(django_user_model, name: str, group: str):
    user = django_user_model.objects.create_user(username=name, password="password", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    return user


def log_in(page: Page, live_server, username: str, then: str) -> None:
    page.goto(f"{live_server.url}/admin/login/?next={then}")
    page.fill("#id_username", username)
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    expect(page.locator("#result_list, .review")).to_be_visible()


def keys_ready(page: Page) -> None:
    """Wait until moderation.js has set up the keys on this page."""
    page.wait_for_selector("html[data-moderation-ready='1']", state="attached")


def conversation() -> list[Post]:
    ModerationRule.objects.create(name="insults", kind="suspect", terms="traitors\nзрадники")
    spam = "Peace is a lie, follow my channel for the truth about the talks"
    posts = store(
        item(1, "Delegations arrive in Geneva for the second round", minutes=1),
        item(2, "All negotiators are traitors, every single one", minutes=2),
        item(3, "Кожен день без обстрілів важливий", minutes=3),
        item(4, spam, minutes=4, author="bot1"), item(5, spam + "!", minutes=5, author="bot2", platform="bluesky"),
        item(6, "Ці переговорники — зрадники", minutes=6),
    )
    sentiment.score_pending()  # as the worker would, so the queue shows each post's sentiment
    return posts


def test_a_moderator_works_the_queue_with_the_keyboard_and_finds_the_audit_entry(
    browser_page, browser_events, live_server, django_user_model
):
    conversation()
    person(django_user_model, "maria", "Moderators")
    page = browser_page
    log_in(page, live_server, "maria", QUEUE)
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(4)  # two of the six are flagged by the rule, not pending
    expect(rows.nth(0)).to_have_class(re.compile("kb-current"))
    DOCS.mkdir(exist_ok=True)
    page.goto(f"{live_server.url}/admin/engagement/post/")
    expect(page.locator("#result_list tbody tr")).to_have_count(6)
    page.screenshot(path=str(DOCS / "moderation-queue.png"), full_page=True)
    page.goto(f"{live_server.url}{QUEUE}")
    keys_ready(page)

    # j moves down; r asks why; 2 picks the second reason; a note; Enter confirms.
    page.keyboard.press("j")
    expect(rows.nth(1)).to_have_class(re.compile("kb-current"))
    target_text = rows.nth(1).locator("th").inner_text()
    page.keyboard.press("r")
    dialog = page.locator("#reason-dialog")
    expect(dialog).to_be_visible()
    page.keyboard.press("2")
    expect(dialog.locator("input[value=abuse]")).to_be_checked()
    dialog.locator("#reason-note").fill("insults the delegations")
    dialog.locator("#reason-note").press("Enter")
    expect(dialog).to_be_hidden()
    expect(rows.nth(1).locator("td.field-state_badge")).to_have_text("rejected")
    expect(rows.nth(2)).to_have_class(re.compile("kb-current"))  # on to the next one
    # a approves the row the keyboard is on, without a question.
    page.keyboard.press("a")
    expect(rows.nth(2).locator("td.field-state_badge")).to_have_text("approved")

    rejected = Post.objects.get(status="rejected")
    assert rejected.text.startswith(target_text[:30])
    entry = ModerationEvent.objects.filter(post=rejected).first()
    assert (entry.user.username, entry.reason_code, entry.note, entry.from_state) == (
        "maria", "abuse", "insults the delegations", "pending")

    # The audit trail page shows it, filtered by moderator.
    page.goto(f"{live_server.url}/admin/engagement/moderationevent/?actor__exact=person")
    audit = page.locator("#result_list tbody tr")
    expect(audit).to_have_count(2)
    expect(audit.filter(has_text="insults the delegations")).to_contain_text("maria")
    expect(audit.filter(has_text="insults the delegations")).to_contain_text("abuse or harassment")

    # And on the post's own page, with the screening that put the other ones in the queue.
    page.goto(f"{live_server.url}/admin/engagement/post/{rejected.pk}/change/")
    expect(page.locator(".audit-entries")).to_contain_text("pending → rejected")
    assert browser_events.console_errors == []


def test_the_one_at_a_time_view_takes_decisions_by_key_and_moves_on(
    browser_page, browser_events, live_server, django_user_model
):
    posts = conversation()
    person(django_user_model, "maria", "Moderators")
    page = browser_page
    log_in(page, live_server, "maria", "/admin/engagement/post/review/?status=flagged")
    expect(page.locator(".review-text")).to_contain_text("All negotiators are traitors")
    expect(page.locator("table.screening")).to_contain_text("“traitors”")
    page.screenshot(path=str(DOCS / "moderation-review.png"), full_page=True)
    keys_ready(page)
    page.keyboard.press("f")
    dialog = page.locator("#reason-dialog")
    expect(dialog).to_be_visible()
    page.keyboard.press("Escape")  # cancelled: nothing changes
    expect(dialog).to_be_hidden()
    assert Post.objects.get(pk=posts[1].pk).status == "flagged"
    page.keyboard.press("r")
    page.keyboard.press("1")
    dialog.locator("button[value=ok]").click()
    expect(page.locator(".review-text")).to_contain_text("зрадники")
    assert Post.objects.get(pk=posts[1].pk).status == "rejected"
    keys_ready(page)
    page.keyboard.press("a")
    expect(page.locator(".review-empty")).to_be_visible()
    assert Post.objects.get(pk=posts[5].pk).status == "approved"
    assert browser_events.console_errors == []


def test_an_editor_reads_the_queue_but_the_keys_and_actions_do_nothing(
    browser_page, browser_events, live_server, django_user_model
):
    posts = conversation()
    person(django_user_model, "erik", "Editors")
    page = browser_page
    log_in(page, live_server, "erik", QUEUE)
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(4)
    expect(page.locator("select[name=action]")).to_have_count(0)
    expect(page.locator(".keys-help")).to_contain_text("you can read, not act")
    keys_ready(page)
    page.keyboard.press("r")
    expect(page.locator("#reason-dialog")).to_be_hidden()
    page.keyboard.press("a")
    page.wait_for_timeout(300)
    expect(rows.nth(0).locator("td.field-state_badge")).to_have_text("pending")

    page.goto(f"{live_server.url}/admin/engagement/post/{posts[0].pk}/change/")
    expect(page.locator("[data-decide]")).to_have_count(0)
    # Even a hand-made request from the page is refused.
    status = page.evaluate(
        """async (id) => {
            const body = new FormData();
            body.append('state', 'approved'); body.append('reason', 'ok');
            const token = document.querySelector('input[name=csrfmiddlewaretoken]').value;
            const r = await fetch(`/admin/engagement/post/${id}/moderate/`, {method: 'POST', body,
                headers: {'X-CSRFToken': token, 'Accept': 'application/json'}});
            return r.status;
        }""", posts[0].pk)
    assert status == 403
    assert set(Post.objects.values_list("status", flat=True)) == {"pending", "flagged"}
    assert not ModerationEvent.objects.filter(actor="person").exists()
