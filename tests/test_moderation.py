"""Moderation: screening phases at ingest, the one state-changing function, bulk jobs with undo, bans,
rule dry-runs (engagement/moderation.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import connection

from engagement import collect, moderation
from engagement.models import (
    Actor, Author, BulkJob, Hashtag, ModerationEvent, ModerationRule, Post, ReasonCode, Standing,
)
from engagement.sources.base import NormalisedAuthor, NormalisedItem

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
TAG = "ukrainepeacetalks"
Status = Post.Status


def item(n: int, text: str, *, author: str | None = None, platform: str = "mastodon", minutes: int = 0,
         html: str = "", tags=(TAG,)) -> NormalisedItem:
    return NormalisedItem(
        platform=platform, external_id=f"https://social.example/statuses/{platform}-{n}",
        created_at=T0 + timedelta(minutes=minutes), raw={"n": n}, text=text, html=html or f"<p>{text}</p>",
        hashtags=tuple(tags), author=NormalisedAuthor(external_id=author or f"https://social.example/@user{n}",
                                                      handle=author or f"user{n}"),
    )


def store(*items: NormalisedItem) -> list[Post]:
    collect.upsert_posts(list(items), source_id=None)
    return [Post.objects.get(platform=i.platform, external_id=i.external_id) for i in items]


def rule(kind, terms="", **fields) -> ModerationRule:
    return ModerationRule.objects.create(name=f"{kind} list", kind=kind, terms=terms, **fields)


@pytest.fixture
def moderator(django_user_model):
    user = django_user_model.objects.create_user(username="mod", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Moderators"))
    return django_user_model.objects.get(pk=user.pk)  # fresh permission cache


@pytest.fixture
def editor(django_user_model):
    user = django_user_model.objects.create_user(username="ed", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    return django_user_model.objects.get(pk=user.pk)


# --- text analysis -----------------------------------------------------------------------------------


def test_the_fingerprint_ignores_links_mentions_hashtags_case_and_punctuation():
    a = moderation.fingerprint("Stop the war now, please! https://a.example/x @anna #UkrainePeaceTalks")
    b = moderation.fingerprint("stop THE war now please 🙏 @bob@other.example #peace https://b.example/y")
    assert a and a == b
    assert moderation.fingerprint("Stop the war tomorrow please") != a
    assert moderation.fingerprint("Зупиніть війну зараз, будь ласка") == moderation.fingerprint(
        "зупиніть ВІЙНУ зараз будь ласка!!!")


def test_a_text_too_short_to_compare_gets_no_fingerprint():
    assert moderation.fingerprint("Agreed! #UkrainePeaceTalks https://x.example") == ""


@pytest.mark.parametrize("text, expected", [
    ("Мир за будь-яку ціну? Ні, мир!", ["Мир", "мир"]),
    ("Мирний план", []),  # a word boundary: 'мир' is not in 'мирний'
    ("TRAITORS everywhere", ["TRAITORS"]),
    ("The traitorship of it", []),
    ("they are   total idiots", ["total idiots"]),  # a phrase matches across any whitespace
])
def test_terms_match_whole_words_case_insensitively_in_cyrillic_and_latin(text, expected):
    matcher = moderation.TermMatcher(["мир", "traitors", "total idiots"])
    assert [hit["term"] for hit in matcher.find(text)] == expected


def test_a_match_records_its_position_in_the_stored_text():
    [hit] = moderation.TermMatcher(["зрада"]).find("Це ЗРАДА!")
    assert (hit["start"], hit["end"]) == (3, 8)


# --- screening at ingest ---------------------------------------------------------------------------------


def test_a_banned_word_rejects_the_post_and_says_which_word_fired_where():
    banned = rule(ModerationRule.Kind.BANNED, "зрада\nsell-out")
    [post] = store(item(1, "Переговори — це зрада, кажуть"))
    assert post.status == Status.REJECTED and post.decided_by == Actor.RULE
    [hit] = post.reasons
    assert hit["rule_id"] == banned.pk and hit["rule"] == "banned list" and hit["code"] == ReasonCode.BANNED_WORD
    assert hit["terms"] == [{"term": "зрада", "start": 16, "end": 21}] and hit["score"] == 1
    event = ModerationEvent.objects.get(post=post)
    assert (event.from_state, event.to_state, event.actor, event.reason_code, event.rule_id) == (
        "", Status.REJECTED, Actor.RULE, ReasonCode.BANNED_WORD, banned.pk)
    assert event.details[0]["terms"][0]["term"] == "зрада"


def test_a_suspect_word_flags_the_post_for_review():
    rule(ModerationRule.Kind.SUSPECT, "ceasefire violation")
    [post] = store(item(1, "Another Ceasefire  Violation reported today"))
    assert post.status == Status.FLAGGED
    assert post.reason_codes == [ReasonCode.SUSPECT_WORD]


def test_without_hits_pre_moderation_waits_and_post_moderation_approves():
    Hashtag.objects.create(name="UkrainePeaceTalks", moderation=Hashtag.Moderation.PRE)
    Hashtag.objects.create(name="Peace", moderation=Hashtag.Moderation.POST)
    waiting, approved = store(item(1, "Talks resume in Geneva"), item(2, "Talks resume in Istanbul", tags=("peace",)))
    assert (waiting.status, waiting.decided_by) == (Status.PENDING, Actor.SYSTEM)
    assert (approved.status, approved.decided_by) == (Status.APPROVED, Actor.SYSTEM)
    assert ModerationEvent.objects.get(post=approved).reason_code == ReasonCode.POST_MODERATION


def test_a_banned_author_is_rejected_and_an_allow_listed_one_approved_over_a_suspect_word():
    rule(ModerationRule.Kind.SUSPECT, "drones")
    store(item(1, "first", author="troll"), item(2, "first", author="reporter"))
    Author.objects.filter(handle="troll").update(standing=Standing.BANNED)
    Author.objects.filter(handle="reporter").update(standing=Standing.ALLOWED)
    troll, reporter = store(item(3, "hello there", author="troll"), item(4, "drones over Kyiv", author="reporter"))
    assert (troll.status, troll.reason_codes) == (Status.REJECTED, [ReasonCode.AUTHOR_BANNED])
    assert reporter.status == Status.APPROVED
    assert reporter.reason_codes == [ReasonCode.SUSPECT_WORD, ReasonCode.AUTHOR_ALLOWED]  # both recorded


def test_a_banned_word_still_rejects_an_allow_listed_author():
    rule(ModerationRule.Kind.BANNED, "kill")
    store(item(1, "first", author="reporter"))
    Author.objects.filter(handle="reporter").update(standing=Standing.ALLOWED)
    [post] = store(item(2, "they will kill the deal", author="reporter"))
    assert post.status == Status.REJECTED


def test_too_many_links_flags_the_post():
    rule(ModerationRule.Kind.LINKS, threshold=2)
    links = " ".join(f"https://spam{n}.example/x" for n in range(3))
    few, many = store(item(1, "see https://a.example and https://b.example"), item(2, f"buy now {links}"))
    assert few.status == Status.PENDING
    assert many.status == Status.FLAGGED and many.reasons[0]["score"] == 3


def test_a_near_duplicate_of_a_rejected_post_is_rejected_on_any_platform():
    [original] = store(item(1, "Peace talks are a scam, share this everywhere! https://x.example"))
    moderation.moderate([original.pk], Status.REJECTED, actor=Actor.SYSTEM, reason_code=ReasonCode.SPAM)
    [copy] = store(item(2, "PEACE TALKS ARE A SCAM — share this everywhere #peace", platform="bluesky"))
    assert copy.fingerprint == original.fingerprint
    assert copy.status == Status.REJECTED
    assert copy.reasons[0]["code"] == ReasonCode.DUPLICATE_OF_REJECTED
    assert copy.reasons[0]["example_post_id"] == original.pk


def test_many_authors_posting_the_same_text_within_the_window_are_flagged_as_a_burst(settings):
    settings.ENGAGEMENT_BURST_AUTHORS, settings.ENGAGEMENT_BURST_WINDOW = 3, 600
    text = "The negotiators betrayed us all, sign the petition"
    early = store(item(1, text, minutes=0), item(2, text, minutes=1))
    assert {p.status for p in early} == {Status.PENDING}
    [third] = store(item(3, text + "!!", minutes=2))
    assert third.status == Status.FLAGGED
    assert third.reasons[0]["code"] == ReasonCode.BURST and third.reasons[0]["score"] == 3
    # The same text an hour later from a fourth author is not part of that burst.
    [late] = store(item(4, text, minutes=70))
    assert late.status == Status.PENDING


def test_the_same_author_repeating_a_text_is_not_a_burst(settings):
    settings.ENGAGEMENT_BURST_AUTHORS = 3
    posts = store(*[item(n, "I keep saying the same thing again", author="same", minutes=n) for n in range(5)])
    assert {p.status for p in posts} == {Status.PENDING}


def test_a_phase_that_raises_records_check_failed_and_flags_but_never_rejects(monkeypatch):
    def broken(self, candidates):
        raise RuntimeError("regex engine exploded")

    monkeypatch.setattr(moderation.Screening, "too_many_links", broken)
    rule(ModerationRule.Kind.SUSPECT, "unrelated")
    [post] = store(item(1, "Все буде добре"))
    assert post.status == Status.FLAGGED
    [hit] = post.reasons
    assert hit["code"] == ReasonCode.CHECK_FAILED and "regex engine exploded" in hit["error"]
    assert hit["phase"] == "too many links"


def test_a_phase_that_times_out_records_check_failed_and_the_page_is_still_stored(monkeypatch, settings):
    settings.ENGAGEMENT_SCREENING_TIMEOUT_MS = 50

    def slow(self, candidates):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(2)")
        return {}

    monkeypatch.setattr(moderation.Screening, "burst", slow)
    posts = store(item(1, "one two three four five"), item(2, "six seven eight nine ten"))
    assert [p.status for p in posts] == [Status.FLAGGED, Status.FLAGGED]
    assert all("canceling statement due to statement timeout" in p.reasons[0]["error"] for p in posts)
    # The timeout was local to screening: later statements are not limited.
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"


def test_a_rule_for_one_hashtag_does_not_touch_posts_of_another():
    tag = Hashtag.objects.create(name="Peace")
    rule(ModerationRule.Kind.BANNED, "spamword", hashtag=tag)
    ours, theirs = store(item(1, "spamword here", tags=("peace",)), item(2, "spamword here too"))
    assert (ours.status, theirs.status) == (Status.REJECTED, Status.PENDING)


def test_a_later_copy_of_a_post_never_changes_its_state():
    [post] = store(item(1, "a calm comment about the talks"))
    rule(ModerationRule.Kind.BANNED, "calm")
    [again] = store(item(1, "a calm comment about the talks, edited"))
    assert again.status == Status.PENDING
    assert ModerationEvent.objects.filter(post=post).count() == 1


# --- the one function --------------------------------------------------------------------------------


def test_moderate_changes_state_and_writes_one_audit_entry_per_changed_post(moderator):
    a, b = store(item(1, "one"), item(2, "two"))
    moderation.moderate([b.pk], Status.REJECTED, actor=Actor.PERSON, user=moderator, reason_code=ReasonCode.SPAM)
    changed = moderation.moderate([a.pk, b.pk], Status.REJECTED, actor=Actor.PERSON, user=moderator,
                                  reason_code=ReasonCode.ABUSE, note="insults")
    assert changed == 1  # b was already rejected
    entry = ModerationEvent.objects.filter(post=a).first()
    assert (entry.from_state, entry.to_state, entry.user, entry.actor, entry.reason_code, entry.note) == (
        Status.PENDING, Status.REJECTED, moderator, Actor.PERSON, ReasonCode.ABUSE, "insults")
    a.refresh_from_db()
    assert (a.status, a.decided_by, a.reason_codes) == (Status.REJECTED, Actor.PERSON, [ReasonCode.ABUSE])


def test_an_editor_cannot_change_a_state(editor):
    [post] = store(item(1, "one"))
    with pytest.raises(PermissionDenied):
        moderation.moderate([post.pk], Status.APPROVED, actor=Actor.PERSON, user=editor, reason_code=ReasonCode.OK)
    post.refresh_from_db()
    assert post.status == Status.PENDING
    assert ModerationEvent.objects.filter(post=post).count() == 1  # only its arrival


# --- bulk jobs and undo ------------------------------------------------------------------------------


def test_a_bulk_job_by_filter_then_undo_restores_every_exact_previous_state(moderator):
    rule(ModerationRule.Kind.SUSPECT, "flagme")
    posts = store(item(1, "plain"), item(2, "flagme now"), item(3, "already approved"), item(4, "spam spam"))
    moderation.moderate([posts[2].pk], Status.APPROVED, actor=Actor.PERSON, user=moderator,
                        reason_code=ReasonCode.OK)
    moderation.moderate([posts[3].pk], Status.REJECTED, actor=Actor.PERSON, user=moderator,
                        reason_code=ReasonCode.SPAM)
    before = {p.pk: p for p in Post.objects.all()}
    job = moderation.create_job(Post.objects.all(), to_state=Status.REJECTED, reason_code=ReasonCode.OFF_TOPIC,
                                user=moderator, kind=BulkJob.Kind.FILTER, description="all", enqueue=False)
    assert job.total == 4
    job = moderation.run_job(job.pk)
    assert (job.state, job.done, job.changed) == (BulkJob.State.DONE, 4, 3)
    assert set(Post.objects.values_list("status", flat=True)) == {Status.REJECTED}
    undo = moderation.run_job(moderation.create_undo(job, user=moderator, enqueue=False).pk)
    assert undo.changed == 3
    for post in Post.objects.all():
        old = before[post.pk]
        assert (post.status, post.decided_by, post.decided_at, post.reason_codes) == (
            old.status, old.decided_by, old.decided_at, old.reason_codes)
    assert ModerationEvent.objects.filter(job=job).count() == 3
    assert ModerationEvent.objects.filter(job=undo, reason_code=ReasonCode.UNDO).count() == 3
    with pytest.raises(ValueError, match="already been undone"):
        moderation.create_undo(job, user=moderator, enqueue=False)


def test_undo_leaves_a_post_someone_changed_since_as_it_is(moderator):
    a, b = store(item(1, "one"), item(2, "two"))
    job = moderation.run_job(moderation.create_job(
        Post.objects.all(), to_state=Status.REJECTED, reason_code=ReasonCode.SPAM, user=moderator,
        kind=BulkJob.Kind.FILTER, description="all", enqueue=False).pk)
    moderation.moderate([b.pk], Status.APPROVED, actor=Actor.PERSON, user=moderator, reason_code=ReasonCode.OK)
    undo = moderation.run_job(moderation.create_undo(job, user=moderator, enqueue=False).pk)
    assert undo.changed == 1
    assert dict(Post.objects.values_list("pk", "status")) == {a.pk: Status.PENDING, b.pk: Status.APPROVED}


def test_a_job_resumes_after_its_last_committed_chunk(moderator, monkeypatch):
    monkeypatch.setattr(moderation, "JOB_CHUNK", 2)
    store(*[item(n, f"post number {n}") for n in range(5)])
    job = moderation.create_job(Post.objects.all(), to_state=Status.FLAGGED, reason_code=ReasonCode.OTHER,
                                user=moderator, kind=BulkJob.Kind.FILTER, description="all", enqueue=False)
    calls = []

    def die_after_first_chunk(job_row):
        calls.append(job_row.done)
        if len(calls) == 1:
            raise KeyboardInterrupt  # the worker dies between chunks

    with pytest.raises(KeyboardInterrupt):
        moderation.run_job(job.pk, on_chunk=die_after_first_chunk)
    assert Post.objects.filter(status=Status.FLAGGED).count() == 2
    job = moderation.run_job(job.pk)
    assert (job.done, job.changed, job.state) == (5, 5, BulkJob.State.DONE)
    assert ModerationEvent.objects.filter(job=job).count() == 5


def test_an_editor_cannot_start_a_bulk_job(editor):
    with pytest.raises(PermissionDenied):
        moderation.create_job(Post.objects.all(), to_state=Status.REJECTED, reason_code=ReasonCode.SPAM,
                              user=editor, kind=BulkJob.Kind.FILTER, description="all", enqueue=False)


def test_banning_an_author_rejects_their_stored_posts_and_future_ones(moderator):
    store(item(1, "first", author="troll"), item(2, "second", author="troll"), item(3, "other", author="ok"))
    troll = Author.objects.get(handle="troll")
    job = moderation.set_standing(troll, Standing.BANNED, user=moderator, note="three warnings")
    moderation.run_job(job.pk)
    assert set(Post.objects.filter(author=troll).values_list("status", flat=True)) == {Status.REJECTED}
    assert Post.objects.get(author__handle="ok").status == Status.PENDING
    [later] = store(item(4, "third", author="troll"))
    assert later.status == Status.REJECTED
    troll.refresh_from_db()
    assert "three warnings" in troll.notes and troll.standing_changed_by == moderator


# --- rules: dry-run and apply ----------------------------------------------------------------------


def test_a_dry_run_counts_what_a_changed_rule_would_newly_reject_flag_and_release(moderator):
    banned = rule(ModerationRule.Kind.BANNED, "oldword")
    posts = store(item(1, "oldword here"), item(2, "newword here"), item(3, "newword too"),
                  item(4, "nothing"), item(5, "newword again"))
    moderation.moderate([posts[4].pk], Status.APPROVED, actor=Actor.PERSON, user=moderator,
                        reason_code=ReasonCode.OK)
    assert posts[0].status == Status.REJECTED
    banned.terms = "newword"  # changed, not saved
    result = moderation.dry_run(banned)
    assert result.counts() == {"scanned": 5, "reject": 2, "flag": 0, "release": 1, "kept_by_person": 1}
    assert sorted(result.reject) == [posts[1].pk, posts[2].pk] and result.release == [posts[0].pk]
    assert result.samples["reject"][0]["matches"][0]["term"] == "newword"
    # Nothing changed: applying is a separate step.
    assert Post.objects.get(pk=posts[1].pk).status == Status.PENDING
    banned.save()
    jobs = moderation.apply_rule(banned, user=moderator)
    for job in jobs:
        moderation.run_job(job.pk)
    assert dict(Post.objects.values_list("pk", "status")) == {
        posts[0].pk: Status.PENDING, posts[1].pk: Status.REJECTED, posts[2].pk: Status.REJECTED,
        posts[3].pk: Status.PENDING, posts[4].pk: Status.APPROVED,
    }
    assert ModerationEvent.objects.filter(rule=banned, actor=Actor.RULE, job__in=jobs).count() == 3


def test_a_new_suspect_rule_dry_run_counts_flags_with_a_sample():
    store(item(1, "Переговори в Стамбулі"), item(2, "нічого"))
    new = ModerationRule(name="cities", kind=ModerationRule.Kind.SUSPECT, terms="стамбулі")
    result = moderation.dry_run(new)
    assert result.counts()["flag"] == 1
    assert result.samples["flag"][0]["matches"] == [{"term": "Стамбулі", "start": 13, "end": 21}]


def test_the_roles_exist_with_moderators_acting_and_editors_reading(moderator, editor):
    assert moderator.has_perm("engagement.moderate_post") and moderator.has_perm("engagement.change_author")
    assert editor.has_perm("engagement.view_post") and not editor.has_perm("engagement.moderate_post")
    assert not editor.has_perm("engagement.change_post") and not editor.has_perm("engagement.add_bulkjob")
