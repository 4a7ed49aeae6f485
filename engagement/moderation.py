"""Moderation: automatic screening at ingest, the one function that changes a post's state, bulk jobs
with undo, and rule dry-runs.

Every state change goes through `moderate()`, which writes the audit entry (`ModerationEvent`) in the
same statement as the change, so nothing changes state without an entry.

Screening runs in ordered phases over a page of new items (`screen()`); each phase records why it
acted (rule, matched terms with their positions, score). The outcome: any reject wins; otherwise an
allow-listed author is approved; otherwise any flag (a failed check included) flags the post;
otherwise the hashtag's mode decides (pre-moderation: pending, post-moderation: approved). A phase
that raises or times out records "check failed" and flags the post: a failure never rejects.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from engagement.models import (
    Actor, Author, BulkJob, BulkJobItem, Hashtag, ModerationEvent, ModerationRule, Post, ReasonCode, Standing,
    PERSON_REASONS,
)
from engagement import rollups

Status = Post.Status

# --- text analysis -------------------------------------------------------------------------------

URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
MENTION = re.compile(r"(?<!\w)@[\w.\-]+(?:@[\w.\-]+)?")
TAG = re.compile(r"(?<!\w)#\w+")
WORD = re.compile(r"\w+")
HREF = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
# Texts shorter than this (in words, after stripping links, mentions and hashtags) get no cluster:
# "thank you" or "agreed" from many people is not coordinated posting.
FINGERPRINT_MIN_WORDS = 4
# Screening reads at most this much of a post's text (the store caps texts; this bounds the matcher).
MAX_SCREENED_CHARS = 100_000


def fingerprint(text: str) -> str:
    """The near-duplicate key of a text: the same for texts that differ only in links, mentions,
    hashtags, case, accents' composition, punctuation, emoji, digits and spacing; '' when too short."""
    text = unicodedata.normalize("NFKC", text or "")
    text = TAG.sub(" ", MENTION.sub(" ", URL.sub(" ", text)))
    words = [word for word in WORD.findall(text.casefold()) if not word.isdigit()]
    if len(words) < FINGERPRINT_MIN_WORDS:
        return ""
    return hashlib.blake2b(" ".join(words).encode(), digest_size=16).hexdigest()


def count_links(text: str, html: str = "") -> int:
    """Distinct links in a post: hrefs in its HTML and bare URLs in its text."""
    links = {url.rstrip(".,;:!?)") for url in URL.findall(text or "")}
    links.update(HREF.findall(html or ""))
    return len({link for link in links if link.lower().startswith(("http://", "https://"))})


class TermMatcher:
    """Whole-word, case-insensitive matching of words and phrases in any script.

    Terms are literal (escaped), so matching is linear in the text's length. A phrase's spaces match
    any run of whitespace. Word boundaries are Unicode-aware: 'мир' matches in 'за мир!' but not in
    'мирный'. Positions are offsets in the text as stored.
    """

    def __init__(self, terms: Iterable[str]):
        cleaned = sorted({unicodedata.normalize("NFKC", t).strip() for t in terms if t and t.strip()},
                         key=len, reverse=True)
        self.terms = cleaned
        if cleaned:
            alternatives = "|".join(r"\s+".join(map(re.escape, term.split())) for term in cleaned)
            self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        else:
            self.pattern = None

    def find(self, text: str) -> list[dict]:
        if self.pattern is None or not text:
            return []
        text = text[:MAX_SCREENED_CHARS]  # not normalised: positions are offsets in the stored text
        return [{"term": m.group(0), "start": m.start(), "end": m.end()} for m in self.pattern.finditer(text)]


# --- screening -----------------------------------------------------------------------------------

REJECT, FLAG, APPROVE = "reject", "flag", "approve"


@dataclasses.dataclass
class Candidate:
    """What screening needs to know of an item about to be stored."""

    key: Any  # the caller's key, returned with the verdict
    text: str
    html: str
    hashtags: Sequence[str]
    created_at: datetime
    author_id: int | None
    fingerprint: str


@dataclasses.dataclass
class Verdict:
    status: str
    actor: str
    reason_code: str
    rule_id: int | None
    reasons: list[dict]

    @property
    def reason_codes(self) -> list[str]:
        return list(dict.fromkeys(hit["code"] for hit in self.reasons))


def _hit(phase: str, code: str, action: str, **details) -> dict:
    return {"phase": phase, "code": code, "action": action, "by": Actor.RULE, **details}


class Screening:
    """The rules, settings and lookups for one batch of candidates: a handful of queries per batch."""

    def __init__(self, rules: list[ModerationRule] | None = None, *, modes: dict[str, str] | None = None):
        self.rules = list(ModerationRule.objects.filter(enabled=True).select_related("hashtag")) \
            if rules is None else rules
        self.modes = dict(Hashtag.objects.values_list("key", "moderation")) if modes is None else modes
        self.matchers = {rule.pk: TermMatcher(rule.term_list()) for rule in self.rules
                         if rule.kind in (ModerationRule.Kind.BANNED, ModerationRule.Kind.SUSPECT)}
        # Phases in order; each takes the candidates and returns {key: [hits]}. Tests may replace one.
        self.phases: list[tuple[str, Callable[[list[Candidate]], dict]]] = [
            ("banned words", self.banned_words),
            ("suspect words", self.suspect_words),
            ("blocked authors", self.blocked_authors),
            ("allow-listed authors", self.allowed_authors),
            ("too many links", self.too_many_links),
            ("duplicates of rejected posts", self.duplicates_of_rejected),
            ("near-duplicate burst", self.burst),
        ]
        self._standing: dict[int, str] | Exception | None = None

    # -- phases --

    def _applies(self, rule: ModerationRule, candidate: Candidate) -> bool:
        return rule.hashtag is None or rule.hashtag.key in candidate.hashtags

    def _word_phase(self, candidates, kind: str, code: str, action: str) -> dict:
        hits: dict = defaultdict(list)
        for rule in self.rules:
            if rule.kind != kind:
                continue
            for candidate in candidates:
                if not self._applies(rule, candidate):
                    continue
                found = self.matchers[rule.pk].find(candidate.text)
                if found:
                    hits[candidate.key].append(_hit(kind, code, action, rule_id=rule.pk, rule=rule.name,
                                                    terms=found, score=len(found)))
        return hits

    def banned_words(self, candidates):
        return self._word_phase(candidates, ModerationRule.Kind.BANNED, ReasonCode.BANNED_WORD, REJECT)

    def suspect_words(self, candidates):
        return self._word_phase(candidates, ModerationRule.Kind.SUSPECT, ReasonCode.SUSPECT_WORD, FLAG)

    def _standings(self, candidates) -> dict[int, str]:
        """Banned and allow-listed authors among the candidates' (read once, by the blocked-authors phase;
        when that read failed, the allow-list phase fails too instead of reading again)."""
        if isinstance(self._standing, Exception):
            raise RuntimeError(f"author lookup failed: {self._standing}")
        if self._standing is None:
            ids = {c.author_id for c in candidates if c.author_id}
            try:
                self._standing = dict(
                    Author.objects.filter(pk__in=ids).exclude(standing=Standing.NORMAL).values_list("pk", "standing")
                ) if ids else {}
            except Exception as exc:
                self._standing = exc
                raise
        return self._standing

    def blocked_authors(self, candidates):
        standing = self._standings(candidates)
        return {c.key: [_hit("author", ReasonCode.AUTHOR_BANNED, REJECT, author_id=c.author_id, score=1)]
                for c in candidates if standing.get(c.author_id) == Standing.BANNED}

    def allowed_authors(self, candidates):
        standing = self._standings(candidates)
        return {c.key: [_hit("author", ReasonCode.AUTHOR_ALLOWED, APPROVE, author_id=c.author_id, score=1)]
                for c in candidates if standing.get(c.author_id) == Standing.ALLOWED}

    def too_many_links(self, candidates):
        hits: dict = defaultdict(list)
        for rule in self.rules:
            if rule.kind != ModerationRule.Kind.LINKS or rule.threshold is None:
                continue
            for candidate in candidates:
                links = count_links(candidate.text, candidate.html)
                if self._applies(rule, candidate) and links > rule.threshold:
                    hits[candidate.key].append(_hit("links", ReasonCode.TOO_MANY_LINKS, FLAG, rule_id=rule.pk,
                                                    rule=rule.name, score=links, limit=rule.threshold))
        return hits

    def duplicates_of_rejected(self, candidates):
        prints = {c.fingerprint for c in candidates if c.fingerprint}
        if not prints:
            return {}
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT fingerprint, min(id), count(*) FROM {Post._meta.db_table} "
                "WHERE fingerprint = ANY(%s) AND status = %s GROUP BY fingerprint",
                [sorted(prints), Status.REJECTED],
            )
            rejected = {fp: (example, n) for fp, example, n in cursor.fetchall()}
        return {c.key: [_hit("duplicates", ReasonCode.DUPLICATE_OF_REJECTED, REJECT,
                             example_post_id=rejected[c.fingerprint][0], score=rejected[c.fingerprint][1])]
                for c in candidates if c.fingerprint in rejected}

    def burst(self, candidates):
        """Flag a text posted by ENGAGEMENT_BURST_AUTHORS or more different authors within
        ENGAGEMENT_BURST_WINDOW seconds of each other (stored posts and this batch together)."""
        threshold, window = settings.ENGAGEMENT_BURST_AUTHORS, timedelta(seconds=settings.ENGAGEMENT_BURST_WINDOW)
        by_print: dict[str, list[tuple[datetime, Any]]] = defaultdict(list)
        for c in candidates:
            if c.fingerprint:
                by_print[c.fingerprint].append((c.created_at, c.author_id or ("item", c.key)))
        if not by_print:
            return {}
        times = [t for seen in by_print.values() for t, _ in seen]
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT fingerprint, created_at, COALESCE(author_id::text, 'post' || id::text) "
                f"FROM {Post._meta.db_table} WHERE fingerprint = ANY(%s) AND created_at BETWEEN %s AND %s",
                [sorted(by_print), min(times) - window, max(times) + window],
            )
            stored = defaultdict(list)
            for fp, created_at, author in cursor.fetchall():
                stored[fp].append((created_at, ("stored", author)))
        hits = {}
        for c in candidates:
            if not c.fingerprint:
                continue
            seen = by_print[c.fingerprint] + stored[c.fingerprint]
            authors = {author for t, author in seen if abs(t - c.created_at) <= window}
            # A stored copy of this very post is the same author seen twice: sets take care of it.
            if len(authors) >= threshold:
                hits[c.key] = [_hit("burst", ReasonCode.BURST, FLAG, score=len(authors),
                                    window_seconds=window.seconds + window.days * 86400, threshold=threshold)]
        return hits

    # -- running --

    # Phases that read the database: run in a savepoint each (a failed or cancelled statement must not
    # break the caller's transaction) under ENGAGEMENT_SCREENING_TIMEOUT_MS.
    DB_PHASES = frozenset({"blocked authors", "duplicates of rejected posts", "near-duplicate burst"})

    def run(self, candidates: list[Candidate]) -> dict[Any, Verdict]:
        found: dict[Any, list[dict]] = defaultdict(list)
        with _time_limit():
            for name, phase in self.phases:
                try:
                    if name in self.DB_PHASES:
                        with transaction.atomic():
                            result = phase(candidates)
                    else:
                        result = phase(candidates)
                except Exception as exc:  # noqa: BLE001 - any failure of a check is recorded, never a hit
                    note = f"{name}: {type(exc).__name__}: {str(exc)[:200]}".strip()
                    for c in candidates:
                        found[c.key].append(_hit(name, ReasonCode.CHECK_FAILED, FLAG, error=note, score=0))
                    continue
                for key, hits in result.items():
                    found[key].extend(hits)
        return {c.key: self.decide(c, found.get(c.key, [])) for c in candidates}

    def decide(self, candidate: Candidate, hits: list[dict]) -> Verdict:
        for action, status in ((REJECT, Status.REJECTED), (APPROVE, Status.APPROVED), (FLAG, Status.FLAGGED)):
            deciding = next((hit for hit in hits if hit["action"] == action), None)
            if deciding:
                return Verdict(status, Actor.RULE, deciding["code"], deciding.get("rule_id"), hits)
        tracked = [self.modes[tag] for tag in candidate.hashtags if tag in self.modes]
        if tracked and all(mode == Hashtag.Moderation.POST for mode in tracked):
            return Verdict(Status.APPROVED, Actor.SYSTEM, ReasonCode.POST_MODERATION, None, hits)
        return Verdict(Status.PENDING, Actor.SYSTEM, ReasonCode.PRE_MODERATION, None, hits)


class _time_limit:
    """Cancel the statements inside after ENGAGEMENT_SCREENING_TIMEOUT_MS (PostgreSQL's
    statement_timeout, local to the transaction and restored after). Needs a transaction: the store's."""

    def __enter__(self):
        self.previous = None
        if connection.get_autocommit():
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('statement_timeout'), "
                           "set_config('statement_timeout', %s, true)",
                           [str(settings.ENGAGEMENT_SCREENING_TIMEOUT_MS)])
            self.previous = cursor.fetchone()[0]

    def __exit__(self, *exc):
        if self.previous is not None and not connection.needs_rollback:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [self.previous])
        return False


def screen(candidates: list[Candidate]) -> dict[Any, Verdict]:
    """Verdicts for items about to be stored (called by collect.upsert_posts for each page)."""
    if not candidates:
        return {}
    with transaction.atomic():
        return Screening().run(candidates)


# --- the one function that changes states --------------------------------------------------------


def can_moderate(user) -> bool:
    return bool(user and user.is_active and user.has_perm("engagement.moderate_post"))


def moderate(
    post_ids: Sequence[int], to_state: str, *, actor: str, reason_code: str, user=None, note: str = "",
    rule: ModerationRule | None = None, job: BulkJob | None = None, details: list | None = None,
    only_from: Sequence[str] | None = None, keep_person_decisions: bool = False,
) -> int:
    """Move these posts to `to_state` and write one audit entry per post that changed; returns how
    many changed. Posts already in the state, deleted upstream, or (with `only_from`) in another state
    are left alone; with `keep_person_decisions`, posts last decided by a person too.

    A person must hold the `moderate_post` permission (Moderators); editors cannot change a state.
    """
    if to_state not in Status.values:
        raise ValueError(f"unknown state {to_state!r}")
    if reason_code not in ReasonCode.values:
        raise ValueError(f"unknown reason {reason_code!r}")
    if actor == Actor.PERSON and not can_moderate(user):
        raise PermissionDenied("only moderators can change a post's state")
    if not post_ids:
        return 0
    post, event = Post._meta.db_table, ModerationEvent._meta.db_table
    conditions, params = ["id = ANY(%s)", "status <> %s", "deleted_at IS NULL"], [list(post_ids), to_state]
    if only_from is not None:
        conditions.append("status = ANY(%s)")
        params.append(list(only_from))
    if keep_person_decisions:
        conditions.append("decided_by <> %s")
        params.append(Actor.PERSON)
    person_codes = [str(code) for code in PERSON_REASONS]
    now = timezone.now()
    sql = f"""
        WITH target AS (
            SELECT id, status, decided_by, decided_at, reason_codes FROM {post}
            WHERE {' AND '.join(conditions)} ORDER BY id FOR UPDATE
        ), changed AS (
            UPDATE {post} p SET status = %s, decided_by = %s, decided_at = %s,
                reason_codes = array_append(
                    ARRAY(SELECT c FROM unnest(p.reason_codes) c WHERE c <> ALL(%s) AND c <> %s), %s)
            FROM target t WHERE p.id = t.id
            RETURNING p.id, t.status AS old_status, t.decided_by AS old_by, t.decided_at AS old_at,
                      t.reason_codes AS old_codes
        )
        INSERT INTO {event} (post_id, at, actor, user_id, from_state, to_state, reason_code, note, rule_id,
                             job_id, details, previous)
        SELECT id, %s::timestamptz, %s, %s::bigint, old_status, %s, %s, %s, %s::bigint, %s::bigint, %s::jsonb,
               jsonb_build_object('decided_by', old_by, 'decided_at', old_at, 'reason_codes', to_jsonb(old_codes))
        FROM changed
        RETURNING post_id
    """
    params += [to_state, actor, now, person_codes, reason_code, reason_code,
               now, actor, getattr(user, "pk", None), to_state, reason_code, note,
               getattr(rule, "pk", None), getattr(job, "pk", None), json.dumps(details or [])]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        changed = [pk for (pk,) in cursor.fetchall()]
        rollups.refresh_for_posts(changed)
    return len(changed)


def restore(job: BulkJob, undo: BulkJob, post_ids: Sequence[int]) -> int:
    """Put these posts back in the exact state they had before `job` changed them (state, who decided,
    when, reason codes), with an audit entry each, when they are still in the state `job` left them in.
    Used by undo jobs; the other half of `moderate()`."""
    if not post_ids:
        return 0
    post, event = Post._meta.db_table, ModerationEvent._meta.db_table
    now = timezone.now()
    sql = f"""
        WITH entries AS MATERIALIZED (
            SELECT post_id, from_state, to_state, previous FROM {event}
            WHERE job_id = %s AND post_id = ANY(%s) AND from_state <> ''
        ), target AS (
            SELECT p.id, p.status, e.from_state, e.previous FROM {post} p JOIN entries e ON e.post_id = p.id
            WHERE p.id = ANY(%s) AND p.status = e.to_state ORDER BY p.id FOR UPDATE OF p
        ), changed AS (
            UPDATE {post} p SET status = t.from_state,
                decided_by = COALESCE(t.previous->>'decided_by', ''),
                decided_at = (t.previous->>'decided_at')::timestamptz,
                reason_codes = ARRAY(SELECT jsonb_array_elements_text(COALESCE(t.previous->'reason_codes', '[]')))
            FROM target t WHERE p.id = t.id
            RETURNING p.id, t.status AS old_status, t.from_state AS new_status
        )
        INSERT INTO {event} (post_id, at, actor, user_id, from_state, to_state, reason_code, note, rule_id,
                             job_id, details, previous)
        SELECT id, %s::timestamptz, %s, %s::bigint, old_status, new_status, %s, %s, NULL, %s::bigint,
               '[]'::jsonb, '{{}}'::jsonb FROM changed
        RETURNING post_id
    """
    params = [job.pk, list(post_ids), list(post_ids), now, undo.actor, undo.created_by_id, ReasonCode.UNDO,
              undo.note or f"undo of job {job.pk}", undo.pk]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        changed = [pk for (pk,) in cursor.fetchall()]
        rollups.refresh_for_posts(changed)
    return len(changed)


# --- bulk jobs -----------------------------------------------------------------------------------

# Posts changed per statement in a bulk job: each chunk commits with the job's progress, so the admin
# shows progress and a restarted worker resumes after the last chunk.
JOB_CHUNK = 2000


def create_job(queryset: QuerySet, *, to_state: str, reason_code: str, user, kind: str, description: str,
               note: str = "", actor: str = Actor.PERSON, rule: ModerationRule | None = None,
               enqueue: bool = True) -> BulkJob:
    """A bulk job over the posts of `queryset` as they are now (the set is fixed here, as previewed):
    selected on the server with one INSERT ... SELECT, run by the worker."""
    if actor == Actor.PERSON and not can_moderate(user):
        raise PermissionDenied("only moderators can change a post's state")
    with transaction.atomic():
        job = BulkJob.objects.create(kind=kind, description=description[:500], to_state=to_state,
                                     reason_code=reason_code, note=note, actor=actor, rule=rule,
                                     created_by=user if getattr(user, "pk", None) else None)
        select_sql, select_params = queryset.order_by().values("pk").query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {BulkJobItem._meta.db_table} (job_id, post_id) "
                f"SELECT DISTINCT %s, selected.id FROM ({select_sql}) AS selected(id)",
                [job.pk, *select_params],
            )
            job.total = cursor.rowcount
        job.save(update_fields=["total"])
        if enqueue:
            transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def create_undo(job: BulkJob, *, user, enqueue: bool = True) -> BulkJob:
    """A job that restores the previous state of every post `job` changed (once per job)."""
    if not can_moderate(user):
        raise PermissionDenied("only moderators can undo a bulk job")
    if job.kind == BulkJob.Kind.UNDO:
        raise ValueError("an undo cannot itself be undone; run a new bulk action instead")
    if job.state != BulkJob.State.DONE:
        raise ValueError(f"job {job.pk} is {job.state}; only a finished job can be undone")
    with transaction.atomic():
        if BulkJob.objects.filter(undo_of=job).exists():
            raise ValueError(f"job {job.pk} has already been undone")
        undo = BulkJob.objects.create(kind=BulkJob.Kind.UNDO, undo_of=job, description=f"undo of job {job.pk}: "
                                      f"{job.description}"[:500], to_state=job.to_state, reason_code=ReasonCode.UNDO,
                                      created_by=user)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {BulkJobItem._meta.db_table} (job_id, post_id) "
                f"SELECT DISTINCT %s, post_id FROM {ModerationEvent._meta.db_table} "
                "WHERE job_id = %s AND post_id IS NOT NULL",
                [undo.pk, job.pk],
            )
            undo.total = cursor.rowcount
        undo.save(update_fields=["total"])
        if enqueue:
            transaction.on_commit(lambda: _enqueue(undo.pk))
    return undo


def _enqueue(job_id: int) -> None:
    from worker.tasks import run_bulk_job

    run_bulk_job.delay(job_id)


def run_job(job_id: int, *, on_chunk: Callable[[BulkJob], None] | None = None) -> BulkJob:
    """Process a job's items in chunks; each chunk's changes, audit entries and the job's progress
    commit together, so progress is visible and a restart resumes after the last committed chunk."""
    job = BulkJob.objects.get(pk=job_id)
    if job.state == BulkJob.State.DONE:
        return job
    BulkJob.objects.filter(pk=job_id).update(state=BulkJob.State.RUNNING,
                                             started_at=job.started_at or timezone.now())
    try:
        while True:
            with transaction.atomic():
                job = BulkJob.objects.select_for_update().get(pk=job_id)
                chunk = list(BulkJobItem.objects.filter(job=job, id__gt=job.position).order_by("id")
                             .values_list("id", "post_id")[:JOB_CHUNK])
                if not chunk:
                    break
                post_ids = [post_id for _, post_id in chunk]
                if job.kind == BulkJob.Kind.UNDO:
                    changed = restore(job.undo_of, job, post_ids)
                else:
                    changed = moderate(post_ids, job.to_state, actor=job.actor, reason_code=job.reason_code,
                                       user=job.created_by, note=job.note, rule=job.rule, job=job,
                                       keep_person_decisions=job.actor != Actor.PERSON)
                job.position = chunk[-1][0]
                job.done += len(chunk)
                job.changed += changed
                job.save(update_fields=["position", "done", "changed", "state"])
            if on_chunk:
                on_chunk(job)
        BulkJob.objects.filter(pk=job_id).update(state=BulkJob.State.DONE, finished_at=timezone.now())
    except Exception as exc:
        BulkJob.objects.filter(pk=job_id).update(state=BulkJob.State.FAILED, error=f"{type(exc).__name__}: {exc}",
                                                 finished_at=timezone.now())
        raise
    job.refresh_from_db()
    return job


# --- authors ---------------------------------------------------------------------------------------


def set_standing(author: Author, standing: str, *, user, note: str = "") -> BulkJob | None:
    """Ban, unban or allow-list an author. A ban also rejects the author's stored posts in a background
    job (undoable); new posts are screened at ingest. Unbanning does not restore posts: undo the ban's job."""
    if not can_moderate(user):
        raise PermissionDenied("only moderators can ban or allow-list authors")
    with transaction.atomic():
        Author.objects.filter(pk=author.pk).update(standing=standing, standing_changed_at=timezone.now(),
                                                   standing_changed_by=user)
        if note:
            Author.objects.filter(pk=author.pk).update(
                notes=(f"{author.notes}\n" if author.notes else "") + f"{timezone.now():%Y-%m-%d} {user}: {note}")
        if standing != Standing.BANNED:
            return None
        return create_job(Post.objects.filter(author=author).exclude(status=Status.REJECTED),
                          to_state=Status.REJECTED, reason_code=ReasonCode.AUTHOR_BANNED, user=user,
                          kind=BulkJob.Kind.AUTHOR, description=f"ban of {author} ({author.platform})", note=note)


# --- rules: dry-run and applying to stored posts --------------------------------------------------

SAMPLE_SIZE = 10
# Posts read per round trip by a dry-run (a server-side cursor keeps memory flat).
DRY_RUN_CHUNK = 5000


@dataclasses.dataclass
class DryRun:
    scanned: int = 0
    reject: list[int] = dataclasses.field(default_factory=list)
    flag: list[int] = dataclasses.field(default_factory=list)
    release: list[int] = dataclasses.field(default_factory=list)
    kept_by_person: int = 0  # matched, but a person decided those posts: a rule never overrides them
    samples: dict[str, list[dict]] = dataclasses.field(default_factory=lambda: defaultdict(list))

    def counts(self) -> dict[str, int]:
        return {"scanned": self.scanned, "reject": len(self.reject), "flag": len(self.flag),
                "release": len(self.release), "kept_by_person": self.kept_by_person}


def dry_run(rule: ModerationRule) -> DryRun:
    """What saving `rule` (new or changed, not saved yet) would do to the stored posts: how many it
    would newly reject or flag, and how many posts the rule's saved version rejected or flagged that
    it would release (back to the queue), with a sample of each. Reads every live post in scope once."""
    result = DryRun()
    action = REJECT if rule.kind == ModerationRule.Kind.BANNED else FLAG
    matcher = TermMatcher(rule.term_list()) if rule.kind != ModerationRule.Kind.LINKS else None
    conditions, params = ["deleted_at IS NULL"], []
    if rule.hashtag_id:
        conditions.append("hashtags @> ARRAY[%s]::varchar[]")
        params.append(Hashtag.objects.get(pk=rule.hashtag_id).key)
    previous_hit = "FALSE"
    if rule.pk:
        previous_hit = "reasons @> %s::jsonb"
        params.insert(0, json.dumps([{"rule_id": rule.pk}]))
    html = "html" if rule.kind == ModerationRule.Kind.LINKS else "''"
    sql = (f"SELECT id, text, {html}, status, decided_by, {previous_hit} FROM {Post._meta.db_table} "
           f"WHERE {' AND '.join(conditions)}")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DECLARE dry_run NO SCROLL CURSOR FOR {sql}", params)
        while True:
            cursor.execute(f"FETCH {DRY_RUN_CHUNK} FROM dry_run")
            rows = cursor.fetchall()
            if not rows:
                break
            for pk, text, post_html, status, decided_by, had_hit in rows:
                result.scanned += 1
                if matcher is not None:
                    found = matcher.find(text)
                    hit = bool(found)
                else:
                    links = count_links(text, post_html)
                    hit, found = rule.threshold is not None and links > rule.threshold, [{"links": links}]
                bucket = None
                if hit and action == REJECT and status != Status.REJECTED:
                    bucket = "reject"
                elif hit and action == FLAG and status in (Status.PENDING, Status.APPROVED):
                    bucket = "flag"
                elif not hit and had_hit and status == (Status.REJECTED if action == REJECT else Status.FLAGGED):
                    bucket = "release"
                if bucket is None:
                    continue
                if decided_by == Actor.PERSON:
                    result.kept_by_person += 1
                    continue
                getattr(result, bucket).append(pk)
                if len(result.samples[bucket]) < SAMPLE_SIZE:
                    result.samples[bucket].append({"id": pk, "text": text[:300], "status": status,
                                                   "matches": found[:5] if hit else []})
        cursor.execute("CLOSE dry_run")
    return result


def apply_rule(rule: ModerationRule, *, user) -> list[BulkJob]:
    """The explicit step after saving a rule: apply it to stored posts as up to three undoable jobs
    (newly reject, newly flag, release back to the queue). Posts decided by a person are left alone."""
    if not can_moderate(user):
        raise PermissionDenied("only moderators can apply rules")
    result = dry_run(rule)
    code = {ModerationRule.Kind.BANNED: ReasonCode.BANNED_WORD, ModerationRule.Kind.SUSPECT: ReasonCode.SUSPECT_WORD,
            ModerationRule.Kind.LINKS: ReasonCode.TOO_MANY_LINKS}[rule.kind]
    jobs = []
    for ids, to_state, reason, words in (
        (result.reject, Status.REJECTED, code, "reject"),
        (result.flag, Status.FLAGGED, code, "flag"),
        (result.release, Status.PENDING, ReasonCode.RULE_CHANGED, "release"),
    ):
        if ids:
            jobs.append(create_job(Post.objects.filter(pk__in=ids), to_state=to_state, reason_code=reason, user=user,
                                   kind=BulkJob.Kind.RULE, actor=Actor.RULE, rule=rule,
                                   description=f"rule {rule.name!r}: {words} {len(ids)} stored posts",
                                   note=f"applied by {user}"))
    return jobs
