"""Running sources: fetch pages -> normalise (in sources/) -> store each page in bulk -> cursor and health.

Every step is idempotent: storing the same page twice changes no row, and a run that dies midway leaves
the cursor at the last page it stored, so the next run fetches from there.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import CharField, DateTimeField, DurationField, ExpressionWrapper, F, TextField, Value
from django.utils import timezone
from psycopg.types.json import Jsonb

from engagement import moderation, rollups
from engagement.models import (
    Article,
    Author,
    CollectionRun,
    Hashtag,
    ModerationEvent,
    Platform,
    Post,
    PostRevision,
    RejectedItem,
    Source,
)
from engagement.sources import MODULES, build_connector
from engagement.sources.base import (
    Connector,
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NeedsCredentials,
    NormalisedItem,
    Page,
    RateLimited,
    RejectedRaw,
    SourceConfig,
    SourceError,
    TemporaryError,
    check_url_allowed,
    normalise_tag,
)

logger = logging.getLogger(__name__)

# A run may hold its source this long; it must exceed the poll task's hard time limit so a lease is
# never taken from a run that is still working, and it expires by itself when a worker dies.
LEASE_SECONDS = 360
# Sources queued per dispatch: bounds one beat tick; the rest are due at the next tick.
DISPATCH_BATCH = 200
# Back-off for temporary failures (timeouts, 5xx): 30 s, 60 s, 120 s ... capped at 10 minutes.
RETRY_BASE_SECONDS = 30
RETRY_MAX_SECONDS = 600


@dataclass(frozen=True)
class RunReport:
    run: CollectionRun
    # True when the failure is temporary (timeout, 5xx): the task retries with back-off.
    retry: bool = False


def http_settings() -> HttpSettings:
    return HttpSettings(
        connect_timeout=settings.ENGAGEMENT_HTTP_CONNECT_TIMEOUT,
        read_timeout=settings.ENGAGEMENT_HTTP_READ_TIMEOUT,
        user_agent=settings.ENGAGEMENT_USER_AGENT,
        allow_private=settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS,
        trusted_hosts=frozenset(settings.ENGAGEMENT_TRUSTED_HOSTS),
    )


class CacheTokenStore:
    """TokenStore on Django's cache (Redis): sessions shared by every worker process."""

    prefix = "engagement:tokens:"

    def get(self, key: str):
        return cache.get(self.prefix + key)

    def set(self, key: str, value, *, ttl: int) -> None:
        cache.set(self.prefix + key, value, timeout=ttl)

    def delete(self, key: str) -> None:
        cache.delete(self.prefix + key)


def source_config(source: Source) -> SourceConfig:
    return SourceConfig(
        platform=source.platform,
        base_url=source.base_url,
        hashtags=tuple(tag.name for tag in source.hashtags.all()),
        options=dict(source.settings or {}),
        credentials=dict(settings.ENGAGEMENT_CREDENTIALS.get(source.platform, {})),
    )


def connector_for(source: Source) -> Connector:
    return build_connector(source_config(source), client=HttpClient(http_settings()), now=timezone.now,
                           store=CacheTokenStore())


def retry_delay(retries: int) -> int:
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**retries)


# --- storing -------------------------------------------------------------------------------------

_POST_UPDATED_COLUMNS = (
    "uri", "url", "kind", "edited_at", "language", "html", "text", "hashtags",
    "reply_to_external_id", "reply_count", "repost_count", "like_count", "raw",
)
# Kept when a later copy does not know them (a post seen without its article or author).
_POST_KEPT_COLUMNS = ("author_id", "article_id")
# Set by screening when a post is first stored, never overwritten by a later copy.
_POST_SCREENING_COLUMNS = ("status", "reasons", "reason_codes", "decided_by", "decided_at")
_POST_COLUMNS = (
    "platform", "external_id", "source_id", "created_at", "collected_at", "updated_at",
) + _POST_SCREENING_COLUMNS + _POST_KEPT_COLUMNS + _POST_UPDATED_COLUMNS + ("fingerprint",)


def _values(rows: list[tuple]) -> tuple[str, list]:
    """A multi-row VALUES list with placeholders, and its flat parameters."""
    row = "(" + ", ".join(["%s"] * len(rows[0])) + ")"
    return ", ".join([row] * len(rows)), [value for values in rows for value in values]


def _upsert_ids(model, *, keys: tuple[str, ...], refreshed: tuple[str, ...], first_only: tuple[str, ...] = (),
                rows: list[tuple]) -> dict[tuple, int]:
    """INSERT ... ON CONFLICT (keys) for rows of keys + refreshed + first_only + first_seen_at values;
    returns {key values: id}. `first_only` columns keep the first value ever stored; a refreshed column
    keeps its stored value when the new one is empty (a later, thinner copy does not erase a title).

    A row whose refreshed columns are unchanged is not rewritten; its id is read in a second statement.
    """
    if not rows:
        return {}
    table = model._meta.db_table
    columns = keys + refreshed + first_only + ("first_seen_at",)
    text_columns = {f.column for f in model._meta.fields if isinstance(f, (CharField, TextField))}
    newer = {
        col: f"COALESCE(NULLIF(EXCLUDED.{col}, ''), t.{col})" if col in text_columns
        else f"COALESCE(EXCLUDED.{col}, t.{col})"
        for col in refreshed
    }
    values, params = _values(rows)
    sql = (
        f"INSERT INTO {table} AS t ({', '.join(columns)}) VALUES {values} "
        f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
        + ", ".join(f"{col} = {newer[col]}" for col in refreshed)
        + f" WHERE ({', '.join('t.' + c for c in refreshed)}) IS DISTINCT FROM "
        + f"({', '.join(newer[c] for c in refreshed)}) RETURNING id, {', '.join(keys)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        ids = {tuple(found[1:]): found[0] for found in cursor.fetchall()}
    missing = [row[: len(keys)] for row in rows if tuple(row[: len(keys)]) not in ids]
    if missing:
        where = " OR ".join(["(" + " AND ".join(f"{k} = %s" for k in keys) + ")"] * len(missing))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT id, {', '.join(keys)} FROM {table} WHERE {where}",
                           [value for key in missing for value in key])
            ids.update({tuple(found[1:]): found[0] for found in cursor.fetchall()})
    return ids


def upsert_posts(items: list[NormalisedItem], *, source_id: int | None,
                 record_revisions: bool = True) -> tuple[int, int]:
    """Store normalised items in one INSERT ... ON CONFLICT; return (new, updated).

    Authors and articles go first, one statement each. A post already stored with the same content is
    left untouched (not counted as updated); its moderation status, first source and collection time are
    never overwritten. When an edit changes a stored post's text, the previous version is kept as a
    PostRevision (unless `record_revisions` is off: re-parsing stored payloads is not an edit). Replies
    are linked to their parents in one more statement.
    """
    unique: dict[tuple[str, str], NormalisedItem] = {}
    for item in map(_clean_item, items):  # one statement cannot touch a row twice: keep the last copy
        unique[(item.platform, item.external_id)] = item
    if not unique:
        return 0, 0
    now = timezone.now()
    authors = {(i.platform, i.author.external_id): i.author for i in unique.values() if i.author}
    author_ids = _upsert_ids(
        Author, keys=("platform", "external_id"), refreshed=("handle", "display_name", "url"),
        rows=[(platform, external_id, a.handle, a.display_name, a.url, now)
              for (platform, external_id), a in authors.items()],
    )
    articles = {(i.article.url,): i.article for i in unique.values() if i.article}
    article_ids = _upsert_ids(
        Article, keys=("url",), refreshed=("title", "published_at", "external_id"), first_only=("source_id",),
        rows=[(url, a.title, a.published_at, a.external_id, source_id, now) for (url,), a in articles.items()],
    )
    prints = {key: moderation.fingerprint(item.text) for key, item in unique.items()}
    verdicts = moderation.screen([
        moderation.Candidate(
            key=key, text=item.text, html=item.html, hashtags=item.hashtags, created_at=item.created_at,
            author_id=author_ids.get((item.platform, item.author.external_id)) if item.author else None,
            fingerprint=prints[key],
        ) for key, item in unique.items()
    ])
    rows = []
    for key, item in unique.items():
        verdict = verdicts[key]
        rows.append((
            item.platform, item.external_id, source_id, item.created_at, now, now,
            verdict.status, Jsonb(verdict.reasons), verdict.reason_codes, verdict.actor, now,
            author_ids.get((item.platform, item.author.external_id)) if item.author else None,
            article_ids.get((item.article.url,)) if item.article else None,
            item.uri, item.url, item.kind, item.edited_at, item.language, item.html, item.text,
            list(item.hashtags), item.reply_to_external_id, item.reply_count, item.repost_count,
            item.like_count, Jsonb(item.raw), prints[key],
        ))
    replaced = _replaced_versions(unique) if record_revisions else []
    values, params = _values(rows)
    kept = {col: f"COALESCE(EXCLUDED.{col}, p.{col})" for col in _POST_KEPT_COLUMNS}
    new_values = {**{col: f"EXCLUDED.{col}" for col in _POST_UPDATED_COLUMNS + ("fingerprint",)}, **kept}
    sql = (
        f"INSERT INTO {Post._meta.db_table} AS p ({', '.join(_POST_COLUMNS)}) VALUES {values} "
        "ON CONFLICT (platform, external_id) DO UPDATE SET "
        + ", ".join(f"{col} = {expr}" for col, expr in new_values.items())
        + ", updated_at = EXCLUDED.updated_at"
        # An edited text is scored again (a person's correction of the label stays).
        + ", scored_at = CASE WHEN p.text IS DISTINCT FROM EXCLUDED.text THEN NULL ELSE p.scored_at END "
        + f"WHERE ({', '.join('p.' + col for col in new_values)}) IS DISTINCT FROM ({', '.join(new_values.values())}) "
        + "RETURNING id, platform, external_id, (xmax = 0) AS inserted, created_at"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        returned = cursor.fetchall()
    results = [inserted for _pk, _platform, _external_id, inserted, _created_at in returned]
    # The audit trail starts when a post is stored: its first state and why (screening's hits).
    ModerationEvent.objects.bulk_create([
        ModerationEvent(post_id=pk, at=now, actor=verdicts[key].actor, to_state=verdicts[key].status,
                        reason_code=verdicts[key].reason_code, rule_id=verdicts[key].rule_id,
                        details=verdicts[key].reasons)
        for pk, platform, external_id, inserted, _created_at in returned if inserted
        for key in [(platform, external_id)]
    ])
    if replaced:
        PostRevision.objects.bulk_create(replaced)
    if any(platform in REPLY_PLATFORMS for platform, _ in unique):
        _link_replies(list(unique))
    # The stored publication time, not the item's: a later copy never moves a post to another hour.
    rollups.refresh_hours(created_at for *_row, created_at in returned)
    new = sum(1 for inserted in results if inserted)
    return new, len(results) - new


def _replaced_versions(unique: dict[tuple[str, str], NormalisedItem]) -> list[PostRevision]:
    """The stored versions that these items are about to replace with different text (one SELECT)."""
    keys = list(unique)
    where = " OR ".join(["(platform = %s AND external_id = %s)"] * len(keys))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, platform, external_id, text, html, edited_at, raw FROM {Post._meta.db_table} WHERE {where}",
            [value for key in keys for value in key],
        )
        stored = cursor.fetchall()
    # Django's psycopg set-up hands jsonb over as text from a raw cursor.
    return [
        PostRevision(post_id=pk, text=text, html=html, edited_at=edited_at,
                     raw=json.loads(raw) if isinstance(raw, str) else raw)
        for pk, platform, external_id, text, html, edited_at, raw in stored
        # Whitespace around the HTML is not an edit (feeds and APIs wrap the same comment differently).
        if (text, html.strip()) != (unique[(platform, external_id)].text, unique[(platform, external_id)].html.strip())
    ]


# Platforms whose items carry a global parent id in reply_to_external_id (Mastodon gives only
# instance-local parent ids, so its pages skip the link step).
REPLY_PLATFORMS = set(MODULES) - {"mastodon"}


def _link_replies(keys: list[tuple[str, str]]) -> None:
    """Point replies at their parents: this page's replies at stored parents, and stored replies at
    parents in this page. One UPDATE; unmatched parents stay as reply_to_external_id only."""
    table = Post._meta.db_table
    platforms = sorted({platform for platform, _ in keys})
    external_ids = [external_id for _, external_id in keys]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS c SET reply_to_id = p.id FROM {table} AS p "
            "WHERE c.reply_to_id IS NULL AND c.reply_to_external_id <> '' AND c.platform = ANY(%s) "
            "AND p.platform = c.platform AND p.external_id = c.reply_to_external_id "
            "AND (c.external_id = ANY(%s) OR p.external_id = ANY(%s))",
            [platforms, external_ids, external_ids],
        )


def without_nul(value):
    """`value` with NUL characters removed from every string: PostgreSQL cannot store them in text or
    jsonb, and one such character would otherwise fail a whole page."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(without_nul(v) for v in value)
    return value


def _clean_item(item: NormalisedItem) -> NormalisedItem:
    if "\\u0000" not in json.dumps(item.raw, default=str) and not any(
        "\x00" in getattr(item, name) for name in ("text", "html", "external_id", "url", "uri")
    ):
        return item
    return dataclasses.replace(
        item, text=without_nul(item.text), html=without_nul(item.html), raw=without_nul(item.raw),
        external_id=without_nul(item.external_id), url=without_nul(item.url), uri=without_nul(item.uri),
    )


def record_rejected(source: Source | None, run: CollectionRun | None, rejected: list[RejectedRaw], *,
                    platform: str | None = None) -> None:
    RejectedItem.objects.bulk_create(
        RejectedItem(source=source, run=run, platform=platform or source.platform,
                     external_id=without_nul(r.external_id)[:2048], reason=without_nul(r.reason),
                     raw=without_nul(r.raw))
        for r in rejected
    )


def store_page(source: Source, run: CollectionRun, page: Page) -> tuple[int, int]:
    """Store one page and move the source's cursor past it, in one transaction."""
    with transaction.atomic():
        if page.rejected:
            record_rejected(source, run, page.rejected)
        new, updated = upsert_posts(page.items, source_id=source.pk)
        if page.cursor:
            Source.objects.filter(pk=source.pk).update(cursor=page.cursor)
            source.cursor = page.cursor
        if new or updated:
            # Score what this page brought in as soon as it is committed (beat's sweep catches any miss).
            transaction.on_commit(_queue_scoring)
    return new, updated


def _queue_scoring() -> None:
    from worker.tasks import score_pending

    try:
        score_pending.delay()
    except Exception:  # noqa: BLE001 - a broker hiccup must not fail a stored page; the sweep scores it
        logger.warning("could not queue scoring; beat's sweep will score these posts", exc_info=True)


# --- running a source ----------------------------------------------------------------------------


def run_source(source_id: int, *, owner: str) -> RunReport | None:
    """Run one source once. Returns None when it is gone, disabled, or another run holds it.

    Never raises for upstream trouble: every failure is recorded on the run and the source's health.
    Unexpected errors (bugs, a lost database) are recorded too, then re-raised.
    """
    if not Source.objects.take_lease(source_id, owner=owner, seconds=LEASE_SECONDS):
        return None
    try:
        return _run_leased(Source.objects.get(pk=source_id))
    finally:
        Source.objects.release_lease(source_id, owner=owner)


_ERROR_KINDS: tuple[tuple[type[Exception], str], ...] = (
    (NeedsCredentials, Source.ErrorKind.CREDENTIALS),
    (MalformedResponse, Source.ErrorKind.MALFORMED),
    (TemporaryError, Source.ErrorKind.TEMPORARY),
    (SourceError, Source.ErrorKind.PERMANENT),
)


def _run_leased(source: Source) -> RunReport:
    started = timezone.now()
    run = CollectionRun.objects.create(source=source, started_at=started)
    rate_limited_until: datetime | None = None
    error_kind = ""
    health_detail: dict = {}
    try:
        for page in connector_for(source).fetch(cursor=source.cursor):
            new, updated = store_page(source, run, page)
            run.pages += 1
            run.fetched += page.fetched
            run.new += new
            run.updated += updated
            run.errors += len(page.rejected)
            health_detail.update(page.health_detail)
            if page.rate_limited_until:
                rate_limited_until = page.rate_limited_until
                break
        if rate_limited_until:
            run.outcome = CollectionRun.Outcome.RATE_LIMITED
            run.message = f"rate limit spent; next request after {rate_limited_until.isoformat()}"
        else:
            run.outcome = CollectionRun.Outcome.PARTIAL if run.errors else CollectionRun.Outcome.OK
    except RateLimited as exc:
        rate_limited_until = exc.until
        run.outcome, run.message = CollectionRun.Outcome.RATE_LIMITED, str(exc)
    except SourceError as exc:
        if isinstance(exc, MalformedResponse):
            record_rejected(source, run, [RejectedRaw(reason=str(exc), raw=exc.raw)])
            run.errors += 1
        error_kind = next(kind for cls, kind in _ERROR_KINDS if isinstance(exc, cls))
        run.outcome, run.message = CollectionRun.Outcome.FAILED, str(exc)
    except Exception as exc:
        run.outcome, run.message = CollectionRun.Outcome.FAILED, f"internal error: {exc.__class__.__name__}: {exc}"
        _finish(source, run, started, rate_limited_until, Source.ErrorKind.INTERNAL, health_detail)
        raise
    paused = _finish(source, run, started, rate_limited_until, error_kind, health_detail)
    return RunReport(run=run, retry=error_kind == Source.ErrorKind.TEMPORARY and not paused)


def _finish(source: Source, run: CollectionRun, started: datetime, rate_limited_until: datetime | None,
            error_kind: str, health_detail: dict) -> bool:
    """Record the run and the source's health; return True when the circuit opened (source paused)."""
    now = timezone.now()
    run.finished_at = now
    changes: dict = {"last_poll_at": started, "next_poll_at": now + timedelta(seconds=source.poll_interval)}
    paused = False
    if run.outcome == CollectionRun.Outcome.FAILED:
        failures = source.consecutive_failures + 1
        changes.update(last_error=run.message, last_error_at=now, last_error_kind=error_kind,
                       consecutive_failures=failures)
        if failures >= settings.ENGAGEMENT_CIRCUIT_FAILURES:
            # The circuit opens: the source rests, so a broken upstream is not hammered every interval.
            paused = True
            changes["paused_until"] = now + timedelta(seconds=settings.ENGAGEMENT_CIRCUIT_COOLDOWN)
            changes["next_poll_at"] = changes["paused_until"]
            run.message += f" (paused after {failures} failures in a row, until {changes['paused_until']:%H:%M} UTC)"
    else:
        changes.update(consecutive_failures=0, paused_until=None)
        if run.outcome != CollectionRun.Outcome.RATE_LIMITED or run.pages:
            changes["last_success_at"] = now
    if health_detail:
        changes["health_detail"] = {**source.health_detail, **health_detail}
    if rate_limited_until:
        changes["rate_limited_until"] = rate_limited_until
        changes["next_poll_at"] = max(changes["next_poll_at"], rate_limited_until)
    with transaction.atomic():  # the run and the source's health become visible together
        run.save()
        Source.objects.filter(pk=source.pk).update(**changes)
    log = logger.warning if run.outcome == CollectionRun.Outcome.FAILED else logger.info
    log("source %s (%s): %s fetched=%s new=%s updated=%s errors=%s %s", source.pk, source.name, run.outcome,
        run.fetched, run.new, run.updated, run.errors, run.message)
    return paused


def claim_due_sources(*, now: datetime | None = None, limit: int = DISPATCH_BATCH) -> list[tuple[int, int]]:
    """(id, poll interval) of sources due for a poll, each pushed one interval ahead so no other
    dispatch claims it.

    Safe with overlapping dispatchers: rows being claimed elsewhere are skipped (SKIP LOCKED).
    """
    now = now or timezone.now()
    with transaction.atomic():
        claimed = list(
            Source.objects.due(now).select_for_update(skip_locked=True).order_by("next_poll_at", "id")
            .values_list("id", "poll_interval")[:limit]
        )
        Source.objects.filter(id__in=[source_id for source_id, _ in claimed]).update(
            next_poll_at=ExpressionWrapper(
                Value(now, output_field=DateTimeField())
                + F("poll_interval") * Value(timedelta(seconds=1), output_field=DurationField()),
                output_field=DateTimeField(),
            )
        )
    return claimed


# --- registering sources -------------------------------------------------------------------------


def ensure_hashtags(names: list[str]) -> list[Hashtag]:
    """The Hashtag rows for these names, created when missing (matched casefolded, without '#')."""
    tags = []
    for name in names:
        key = normalise_tag(name)
        if not key:
            raise SourceError(f"{name!r} is not a hashtag")
        tag = Hashtag.objects.filter(key=key).first() or Hashtag.objects.create(name=name)
        tags.append(tag)
    return tags


def register_source(
    *, platform: str, url: str, hashtags: list[str], interval: int | None = None, name: str = "",
    options: dict | None = None,
) -> Source:
    """Create an enabled source. Raises SourceError for an unknown platform or a refused URL."""
    if platform not in Platform.values:
        raise SourceError(f"unknown platform {platform!r}; one of: {', '.join(Platform.values)}")
    if not hashtags:
        raise SourceError("a source needs at least one hashtag")
    check_url_allowed(url, allow_private=settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS, unresolvable_ok=True,
                      trusted_hosts=frozenset(settings.ENGAGEMENT_TRUSTED_HOSTS))
    tags = ensure_hashtags(hashtags)
    with transaction.atomic():
        source = Source.objects.create(
            platform=platform,
            # A feed URL is used as given (`/comments/feed/` without its slash costs a redirect each poll).
            base_url=url if platform == Platform.FEED else url.rstrip("/"),
            name=name or f"{urlsplit(url).hostname} {' '.join(str(t) for t in tags)}",
            poll_interval=interval or settings.ENGAGEMENT_DEFAULT_POLL_INTERVAL,
            settings=options or {},
        )
        source.hashtags.set(tags)
    return source


# --- edits and deletions -------------------------------------------------------------------------

# Posts re-checked per source per run, one request each: bounded so a re-check never starves polling.
RECHECK_BATCH = 100


@dataclass(frozen=True)
class RecheckReport:
    checked: int = 0
    edited: int = 0
    deleted: int = 0
    errors: int = 0
    message: str = ""


def recheck_source(source_id: int, *, owner: str, now: datetime | None = None) -> RecheckReport | None:
    """Look again at this source's recent posts (published within ENGAGEMENT_RECHECK_DAYS), least recently
    checked first: an edit is stored (the old text kept as a revision), a deletion becomes a tombstone.

    Returns None when the source is gone, disabled, rate-limited or being polled. Idempotent.
    """
    if not Source.objects.take_lease(source_id, owner=owner, seconds=LEASE_SECONDS):
        return None
    try:
        source = Source.objects.get(pk=source_id)
        connector = connector_for(source)
        if not hasattr(connector, "recheck"):
            return RecheckReport(message=f"{source.platform} sources cannot be re-checked yet")
        now = now or timezone.now()
        posts = list(
            Post.objects.alive()
            .filter(source=source, created_at__gte=now - timedelta(days=settings.ENGAGEMENT_RECHECK_DAYS))
            .order_by(F("last_checked_at").asc(nulls_first=True), "id")
            .values_list("id", "external_id", "raw")[:RECHECK_BATCH]
        )
        ids = {external_id: pk for pk, external_id, _raw in posts}
        checked, edited_items, deleted, errors, message = set(), [], 0, 0, ""
        try:
            for result in connector.recheck([(external_id, raw) for _pk, external_id, raw in posts]):
                checked.add(result.external_id)
                if result.item is not None:
                    edited_items.append(result.item)
                elif result.deleted_reason:
                    deleted += mark_deleted(ids[result.external_id], result.deleted_reason)
                else:
                    errors += 1
        except RateLimited as exc:
            Source.objects.filter(pk=source_id).update(rate_limited_until=exc.until)
            message = str(exc)
        except SourceError as exc:
            message = str(exc)
        _new, edited = upsert_posts(edited_items, source_id=source.pk)
        Post.objects.filter(pk__in=[ids[e] for e in checked if e in ids]).update(last_checked_at=timezone.now())
        report = RecheckReport(checked=len(checked), edited=edited, deleted=deleted, errors=errors, message=message)
        logger.info("re-check of source %s: %s", source_id, report)
        return report
    finally:
        Source.objects.release_lease(source_id, owner=owner)


def mark_deleted(post_id: int, reason: str) -> int:
    """Turn a post into a tombstone (deleted upstream): it leaves the API, exports and every figure."""
    with transaction.atomic():
        gone = Post.objects.filter(pk=post_id, deleted_at__isnull=True).update(
            deleted_at=timezone.now(), deletion_reason=reason[:300])
        if gone:
            rollups.refresh_for_posts([post_id])
    return gone


def sources_to_recheck(*, now: datetime | None = None) -> list[int]:
    """Enabled sources with posts recent enough to re-check."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.ENGAGEMENT_RECHECK_DAYS)
    return list(
        Source.objects.filter(enabled=True, posts__created_at__gte=cutoff, posts__deleted_at__isnull=True)
        .distinct().order_by("id").values_list("id", flat=True)
    )


# --- backfill and re-parsing ---------------------------------------------------------------------


def backfill_source(source_id: int, *, since: datetime, owner: str,
                    on_page: Callable[[CollectionRun], None] | None = None) -> CollectionRun | None:
    """Walk a source back to `since` (bounded per call by the connector; call again to go on).

    The polling cursor never moves backwards. Returns None when the source is gone, disabled,
    rate-limited or being polled; raises SourceError when the platform cannot backfill.
    """
    if not Source.objects.take_lease(source_id, owner=owner, seconds=LEASE_SECONDS):
        return None
    try:
        source = Source.objects.get(pk=source_id)
        connector = connector_for(source)
        if not hasattr(connector, "backfill"):
            raise SourceError(f"{source.platform} sources cannot backfill yet")
        run = CollectionRun.objects.create(source=source, message=f"backfill since {since.isoformat()}")
        try:
            health_detail: dict = {}
            for page in connector.backfill(since=since, cursor=source.cursor):
                new, updated = store_page(source, run, page)
                health_detail.update(page.health_detail)
                if page.note and page.note not in run.message:
                    run.message = f"{run.message}: {page.note}"
                run.pages += 1
                run.fetched += page.fetched
                run.new += new
                run.updated += updated
                run.errors += len(page.rejected)
                if on_page:
                    on_page(run)
                if page.rate_limited_until:
                    Source.objects.filter(pk=source_id).update(rate_limited_until=page.rate_limited_until)
                    break
            run.outcome = CollectionRun.Outcome.PARTIAL if run.errors else CollectionRun.Outcome.OK
            if health_detail:  # e.g. the quota a backfill spent
                Source.objects.filter(pk=source_id).update(health_detail={**source.health_detail, **health_detail})
        except RateLimited as exc:
            Source.objects.filter(pk=source_id).update(rate_limited_until=exc.until)
            run.outcome, run.message = CollectionRun.Outcome.RATE_LIMITED, f"{run.message}: {exc}"
        except SourceError as exc:
            run.outcome, run.message = CollectionRun.Outcome.FAILED, f"{run.message}: {exc}"
        run.finished_at = timezone.now()
        run.save()
        return run
    finally:
        Source.objects.release_lease(source_id, owner=owner)


# Posts re-parsed per batch: one SELECT and one upsert per batch.
RENORMALISE_BATCH = 1000


def renormalise(*, platform: str | None = None,
                on_batch: Callable[[int, int], None] | None = None) -> tuple[int, int, int]:
    """Rebuild stored fields from each post's raw payload with the current parser (after a parser fix).

    Returns (checked, changed, failed); a post its parser no longer accepts is left as it is and counted
    as failed. Moderation status, identity and collection times are kept; no revision is recorded.
    """
    checked = changed = failed = 0
    last_id = 0
    modules: dict[str, object] = {}
    queryset = Post.objects.filter(platform=platform) if platform else Post.objects.all()
    while True:
        batch = list(queryset.filter(id__gt=last_id).order_by("id").values_list("id", "platform", "raw", "hashtags")
                     [:RENORMALISE_BATCH])
        if not batch:
            break
        last_id = batch[-1][0]
        items = []
        for _pk, post_platform, raw, hashtags in batch:
            if post_platform not in modules:
                modules[post_platform] = importlib.import_module(MODULES[post_platform]) \
                    if post_platform in MODULES else None
            parser = getattr(modules[post_platform], "normalise_native", None)
            result = parser(raw, hashtags=tuple(hashtags) or tuple(settings.ENGAGEMENT_HASHTAGS)) if parser else None
            if isinstance(result, NormalisedItem):
                items.append(result)
            else:
                failed += 1
        _new, updated = upsert_posts(items, source_id=None, record_revisions=False)
        checked += len(batch)
        changed += updated
        if on_batch:
            on_batch(checked, changed)
    return checked, changed, failed
