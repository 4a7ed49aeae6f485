"""The moderators' admin pages through Django's test client: the queue's endpoints and actions, rules with a
dry-run, bans, bulk jobs with undo, and the audit trail (the keyboard is in tests/test_browser_moderation.py)."""

from __future__ import annotations

import csv
import io

import pytest
from django.contrib.auth.models import Group

from engagement import moderation
from engagement.models import (
    Actor, Author, BulkJob, ModerationEvent, ModerationRule, Post, ReasonCode, Standing,
)
from tests.test_moderation import item, store

pytestmark = pytest.mark.django_db
Status = Post.Status


def login(client, django_user_model, username: str, group: str):
    user = django_user_model.objects.create_user(username=username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=group))
    client.force_login(user)
    return user


@pytest.fixture
def moderator_client(client, django_user_model):
    client.user = login(client, django_user_model, "mod", "Moderators")
    return client


@pytest.fixture
def editor_client(client, django_user_model):
    client.user = login(client, django_user_model, "ed", "Editors")
    return client


def test_the_queue_shows_reason_badges_with_the_word_that_fired_and_the_copies(moderator_client):
    ModerationRule.objects.create(name="insults", kind="suspect", terms="traitor")
    text = "Every negotiator is a traitor, share it"
    store(item(1, text), item(2, text + "!", platform="bluesky"))
    page = moderator_client.get("/admin/engagement/post/").content.decode()
    assert 'data-code="suspect-word"' in page
    assert "insults · “traitor” at 22" in page
    assert ">2 copies</a>" in page
    assert 'value="reject_posts"' in page and "moderation-keys" in page


def test_a_moderator_decides_one_post_through_the_endpoint_with_an_audit_entry(moderator_client):
    [post] = store(item(1, "something"))
    response = moderator_client.post(f"/admin/engagement/post/{post.pk}/moderate/",
                                     {"state": "rejected", "reason": "abuse", "note": "slur"},
                                     HTTP_ACCEPT="application/json")
    assert response.json() == {"id": post.pk, "status": "rejected", "changed": 1}
    event = ModerationEvent.objects.filter(post=post).first()
    assert (event.user, event.reason_code, event.note, event.actor) == (moderator_client.user, "abuse", "slur",
                                                                        Actor.PERSON)
    bad = moderator_client.post(f"/admin/engagement/post/{post.pk}/moderate/", {"state": "gone", "reason": "x"},
                                HTTP_ACCEPT="application/json")
    assert bad.status_code == 400 and "state" in bad.json()["error"]


def test_an_editor_reads_the_queue_but_cannot_act_anywhere(editor_client):
    [post] = store(item(1, "something"))
    page = editor_client.get("/admin/engagement/post/").content.decode()
    assert "something" in page and 'value="reject_posts"' not in page
    response = editor_client.post(f"/admin/engagement/post/{post.pk}/moderate/",
                                  {"state": "rejected", "reason": "abuse"}, HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    review = editor_client.get("/admin/engagement/post/review/").content.decode()
    assert "something" in review and 'data-decide="rejected"' not in review
    detail = editor_client.get(f"/admin/engagement/post/{post.pk}/change/").content.decode()
    assert 'data-decide="rejected"' not in detail
    assert editor_client.post("/admin/engagement/moderationrule/add/", {"name": "x", "kind": "banned",
                                                                         "terms": "x"}).status_code == 403
    assert editor_client.post("/admin/engagement/post/", {"action": "reject_posts", "select_across": "1",
                                                          "_selected_action": [post.pk]}).status_code in (200, 302)
    assert Post.objects.get().status == Status.PENDING
    assert not BulkJob.objects.exists()


def test_the_one_at_a_time_view_shows_the_oldest_waiting_post_and_skips(moderator_client):
    first, second = store(item(1, "first in line", minutes=0), item(2, "second in line", minutes=5))
    page = moderator_client.get("/admin/engagement/post/review/").content.decode()
    assert "first in line" in page and "2 posts in this queue" in page
    page = moderator_client.get(f"/admin/engagement/post/review/?skip={first.pk}").content.decode()
    assert "second in line" in page


def test_reject_all_matching_the_filter_previews_the_count_then_queues_a_job(moderator_client):
    store(*[item(n, f"post {n} about talks", platform="bluesky") for n in range(5)], item(9, "other"))
    selected = list(Post.objects.filter(platform="bluesky").values_list("pk", flat=True)[:1])
    form = {"action": "reject_posts", "select_across": "1", "_selected_action": selected, "index": "0"}
    preview = moderator_client.post("/admin/engagement/post/?platform__exact=bluesky", form)
    page = preview.content.decode()
    assert "This will set <strong>5</strong> posts to <strong>rejected</strong>" in page
    assert not BulkJob.objects.exists()
    done = moderator_client.post("/admin/engagement/post/?platform__exact=bluesky",
                                 {**form, "confirm": "1", "state": "rejected", "reason": "spam", "scope": "selection",
                                  "note": "bot wave"})
    job = BulkJob.objects.get()
    assert done.status_code == 302 and done["Location"].endswith(f"/admin/engagement/bulkjob/{job.pk}/change/")
    assert (job.total, job.state, job.note) == (5, BulkJob.State.QUEUED, "bot wave")
    moderation.run_job(job.pk)  # what the worker does (tests/test_bulk_worker.py runs it in a real worker)
    assert Post.objects.filter(status=Status.REJECTED).count() == 5
    assert Post.objects.get(platform="mastodon").status == Status.PENDING


def test_a_few_ticked_rows_change_at_once_and_can_be_expanded_to_their_authors(moderator_client):
    store(item(1, "one", author="a"), item(2, "two", author="a"), item(3, "three", author="b"))
    one = Post.objects.get(text="one")
    form = {"action": "flag_posts", "_selected_action": [one.pk], "index": "0"}
    page = moderator_client.post("/admin/engagement/post/", {**form, "scope": "author"}).content.decode()
    assert "This will set <strong>2</strong> posts" in page
    moderator_client.post("/admin/engagement/post/", {**form, "scope": "author", "confirm": "1", "state": "flagged",
                                                      "reason": "other"})
    assert set(Post.objects.filter(author__handle="a").values_list("status", flat=True)) == {Status.FLAGGED}
    assert Post.objects.get(text="three").status == Status.PENDING
    assert BulkJob.objects.get().kind == BulkJob.Kind.AUTHOR


def test_saving_a_rule_shows_its_dry_run_and_applying_is_a_separate_choice(moderator_client):
    store(item(1, "Це зрада!"), item(2, "Все добре"))
    data = {"name": "betrayal", "kind": "banned", "terms": "зрада", "threshold": "", "hashtag": "", "enabled": "on"}
    page = moderator_client.post("/admin/engagement/moderationrule/add/", data).content.decode()
    assert '<span data-count="reject">1</span>' in page and "<mark>зрада</mark> at 3" in page
    assert not ModerationRule.objects.exists()  # nothing saved yet
    moderator_client.post("/admin/engagement/moderationrule/add/", {**data, "_confirmed": "1", "_save": "1"})
    rule = ModerationRule.objects.get()
    assert rule.updated_by == moderator_client.user
    assert not Post.objects.filter(status=Status.REJECTED).exists()  # saved, not applied
    data["terms"] = "зрада\nдобре"
    moderator_client.post(f"/admin/engagement/moderationrule/{rule.pk}/change/", {**data, "_confirmed": "1",
                                                                                   "_apply": "1"})
    job = BulkJob.objects.get()
    assert (job.kind, job.actor, job.total, job.rule) == (BulkJob.Kind.RULE, Actor.RULE, 2, rule)


def test_banning_an_author_from_the_admin_starts_a_job_and_records_the_note(moderator_client):
    store(item(1, "a", author="troll"), item(2, "b", author="troll"))
    troll = Author.objects.get()
    page = moderator_client.post("/admin/engagement/author/", {"action": "ban", "_selected_action": [troll.pk],
                                                               "index": "0"}).content.decode()
    assert "2 of their stored posts" in page
    moderator_client.post("/admin/engagement/author/", {"action": "ban", "_selected_action": [troll.pk], "index": "0",
                                                        "confirm": "1", "note": "doxxing"})
    troll.refresh_from_db()
    assert troll.standing == Standing.BANNED and "doxxing" in troll.notes
    assert BulkJob.objects.get().total == 2


def test_a_finished_job_page_offers_undo_once(moderator_client):
    store(item(1, "a"), item(2, "b"))
    job = moderation.run_job(moderation.create_job(
        Post.objects.all(), to_state=Status.REJECTED, reason_code=ReasonCode.SPAM, user=moderator_client.user,
        kind=BulkJob.Kind.FILTER, description="all", enqueue=False).pk)
    page = moderator_client.get(f"/admin/engagement/bulkjob/{job.pk}/change/").content.decode()
    assert 'id="undo-job"' in page and "done: 2 of 2 processed, 2 changed" in page
    response = moderator_client.post(f"/admin/engagement/bulkjob/{job.pk}/undo/")
    undo = BulkJob.objects.get(undo_of=job)
    assert response["Location"].endswith(f"/bulkjob/{undo.pk}/change/")
    moderation.run_job(undo.pk)
    assert set(Post.objects.values_list("status", flat=True)) == {Status.PENDING}
    assert 'id="undo-job"' not in moderator_client.get(f"/admin/engagement/bulkjob/{job.pk}/change/").content.decode()
    assert moderator_client.get(f"/admin/engagement/bulkjob/{job.pk}/progress/").json()["progress"] == 100


def test_the_audit_trail_filters_exports_csv_and_counts_per_moderator_per_day(moderator_client):
    a, b = store(item(1, "a"), item(2, "b"))
    user = moderator_client.user
    moderation.moderate([a.pk], Status.REJECTED, actor=Actor.PERSON, user=user, reason_code=ReasonCode.SPAM,
                        note="first, \"quoted\"")
    moderation.moderate([b.pk], Status.APPROVED, actor=Actor.PERSON, user=user, reason_code=ReasonCode.OK)
    page = moderator_client.get("/admin/engagement/moderationevent/?actor__exact=person").content.decode()
    assert "Export CSV" in page
    response = moderator_client.get("/admin/engagement/moderationevent/export.csv?actor__exact=person")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["post_id"], r["from_state"], r["to_state"], r["reason_code"], r["user"]) for r in rows] == [
        (str(a.pk), "pending", "rejected", "spam", "mod"), (str(b.pk), "pending", "approved", "ok", "mod")]
    assert rows[0]["note"] == 'first, "quoted"'
    everything = moderator_client.get("/admin/engagement/moderationevent/export.csv")
    assert len(list(csv.DictReader(io.StringIO(b"".join(everything.streaming_content).decode())))) == 4
    per_day = moderator_client.get("/admin/engagement/moderationevent/per-day/").content.decode()
    assert "<td>mod</td><td>person</td><td>2</td>" in per_day
    assert "<td>system</td><td>2</td>" in per_day


def test_a_post_page_explains_its_screening_and_shows_its_audit_trail(moderator_client):
    ModerationRule.objects.create(name="war words", kind="suspect", terms="мобілізація")
    [post] = store(item(1, "Нова мобілізація?"))
    page = moderator_client.get(f"/admin/engagement/post/{post.pk}/change/").content.decode()
    assert "war words" in page and "“мобілізація” (5–16)" in page
    assert "new → flagged" in page


def test_matched_words_are_marked_in_the_text_which_stays_escaped(moderator_client):
    ModerationRule.objects.create(name="war words", kind="suspect", terms="мобілізація")
    [post] = store(item(1, "<script>alert(1)</script> мобілізація & <b>мир</b>"))
    page = moderator_client.get("/admin/engagement/post/review/?status=flagged").content.decode()
    assert ("&lt;script&gt;alert(1)&lt;/script&gt; <mark>мобілізація</mark> &amp; &lt;b&gt;мир&lt;/b&gt;"
            in page)
    assert "<script>alert(1)" not in page
    detail = moderator_client.get(f"/admin/engagement/post/{post.pk}/change/").content.decode()
    assert "<mark>мобілізація</mark>" in detail
