"""Running sources: fetch pages -> normalise (in sources/) -> store each page in bulk -> cursor and health.

Every step is idempotent: storing the same page twice changes no row, and a run that dies midway leaves
the cursor at the last page it stored, so the next run fetches from there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Value
from django.utils import timezone
from psycopg.types.json import Jsonb

from engagement.models import Author, CollectionRun, Hashtag, Platform, Post, RejectedItem, Source
from engagement.sources import mastodon
from engagement.sources.base import (
    Connector,
    HttpClient,
    HttpSettings,
    MalformedResponse,
    NormalisedItem,
    Page,
    PermanentError,
    RateLimited,
    RejectedRaw,
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
    )


def connector_for(source: Source) -> Connector:
    client = HttpClient(http_settings())
    if source.platform == Platform.MASTODON:
        return mastodon.MastodonConnector(
            base_url=source.base_url,
            hashtags=[tag.name for tag in source.hashtags.all()],
            client=client,
            now=timezone.now,
        )
    raise PermanentError(f"no connector for platform {source.platform!r}")


def retry_delay(retries: int) -> int:
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2**retries)


# --- storing -------------------------------------------------------------------------------------

_POST_UPDATED_COLUMNS = (
    "uri", "url", "kind", "edited_at", "language", "html", "text", "hashtags",
    "reply_to_external_id", "reply_count", "repost_count", "like_count", "raw",
)
_POST_COLUMNS = (
    "platform", "external_id", "author_id", "source_id", "created_at", "collected_at", "updated_at", "status",
) + _POST_UPDATED_COLUMNS


def _upsert_authors(platform: str, items: list[NormalisedItem]) -> dict[str, int]:
    """Insert or refresh the page's authors; return their ids by external id (1 or 2 statements)."""
    authors = {item.author.external_id: item.author for item in items if item.author}
    if not authors:
        return {}
    table = Author._meta.db_table
    now = timezone.now()
    rows = [(platform, a.external_id, a.handle, a.display_name, a.url, now) for a in authors.values()]
    placeholders = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    sql = (
        f"INSERT INTO {table} AS a (platform, external_id, handle, display_name, url, first_seen_at) "
        f"VALUES {placeholders} "
        "ON CONFLICT (platform, external_id) DO UPDATE SET handle = EXCLUDED.handle, "
        "display_name = EXCLUDED.display_name, url = EXCLUDED.url "
        "WHERE (a.handle, a.display_name, a.url) IS DISTINCT FROM "
        "(EXCLUDED.handle, EXCLUDED.display_name, EXCLUDED.url) "
        "RETURNING id, external_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
        ids = {external_id: pk for pk, external_id in cursor.fetchall()}
    missing = [external_id for external_id in authors if external_id not in ids]
    if missing:  # unchanged authors are not returned by the upsert above
        ids.update(
            Author.objects.filter(platform=platform, external_id__in=missing).values_list("external_id", "id")
        )
    return ids


def upsert_posts(items: list[NormalisedItem], *, source_id: int | None) -> tuple[int, int]:
    """Store normalised items in one INSERT ... ON CONFLICT; return (new, updated).

    A post already stored with the same content is left untouched (not counted as updated); its
    moderation status, first source and collection time are never overwritten.
    """
    unique: dict[tuple[str, str], NormalisedItem] = {}
    for item in items:  # one statement cannot touch a row twice: keep the last copy of each post
        unique[(item.platform, item.external_id)] = item
    if not unique:
        return 0, 0
    by_platform: dict[str, list[NormalisedItem]] = {}
    for item in unique.values():
        by_platform.setdefault(item.platform, []).append(item)
    author_ids = {
        (platform, external_id): pk
        for platform, group in by_platform.items()
        for external_id, pk in _upsert_authors(platform, group).items()
    }
    now = timezone.now()
    rows = []
    for item in unique.values():
        author_id = author_ids.get((item.platform, item.author.external_id)) if item.author else None
        rows.append((
            item.platform, item.external_id, author_id, source_id, item.created_at, now, now,
            Post.Status.PENDING, item.uri, item.url, item.kind, item.edited_at, item.language, item.html,
            item.text, list(item.hashtags), item.reply_to_external_id, item.reply_count, item.repost_count,
            item.like_count, Jsonb(item.raw),
        ))
    columns = ", ".join(_POST_COLUMNS)
    placeholders = ", ".join(["(" + ", ".join(["%s"] * len(_POST_COLUMNS)) + ")"] * len(rows))
    compared = _POST_UPDATED_COLUMNS + ("author_id",)
    sql = (
        f"INSERT INTO {Post._meta.db_table} AS p ({columns}) VALUES {placeholders} "
        "ON CONFLICT (platform, external_id) DO UPDATE SET "
        + ", ".join(f"{col} = EXCLUDED.{col}" for col in _POST_UPDATED_COLUMNS)
        + ", author_id = COALESCE(EXCLUDED.author_id, p.author_id), updated_at = EXCLUDED.updated_at "
        + "WHERE (" + ", ".join(f"p.{col}" for col in compared) + ") IS DISTINCT FROM ("
        + ", ".join(
            "COALESCE(EXCLUDED.author_id, p.author_id)" if col == "author_id" else f"EXCLUDED.{col}"
            for col in compared
        )
        + ") RETURNING (xmax = 0) AS inserted"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])
        results = [inserted for (inserted,) in cursor.fetchall()]
    new = sum(1 for inserted in results if inserted)
    return new, len(results) - new


def record_rejected(source: Source, run: CollectionRun | None, rejected: list[RejectedRaw]) -> None:
    RejectedItem.objects.bulk_create(
        RejectedItem(source=source, run=run, platform=source.platform, external_id=r.external_id[:2048],
                     reason=r.reason, raw=r.raw)
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
    return new, updated


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


def _run_leased(source: Source) -> RunReport:
    started = timezone.now()
    run = CollectionRun.objects.create(source=source, started_at=started)
    retry = False
    rate_limited_until: datetime | None = None
    try:
        for page in connector_for(source).fetch(cursor=source.cursor):
            new, updated = store_page(source, run, page)
            run.pages += 1
            run.fetched += page.fetched
            run.new += new
            run.updated += updated
            run.errors += len(page.rejected)
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
    except MalformedResponse as exc:
        record_rejected(source, run, [RejectedRaw(reason=str(exc), raw=exc.raw)])
        run.errors += 1
        run.outcome, run.message = CollectionRun.Outcome.FAILED, str(exc)
    except TemporaryError as exc:
        run.outcome, run.message = CollectionRun.Outcome.FAILED, str(exc)
        retry = True
    except SourceError as exc:
        run.outcome, run.message = CollectionRun.Outcome.FAILED, str(exc)
    except Exception as exc:
        run.outcome, run.message = CollectionRun.Outcome.FAILED, f"internal error: {exc.__class__.__name__}: {exc}"
        _finish(source, run, started, rate_limited_until)
        raise
    _finish(source, run, started, rate_limited_until)
    return RunReport(run=run, retry=retry)


def _finish(source: Source, run: CollectionRun, started: datetime, rate_limited_until: datetime | None) -> None:
    now = timezone.now()
    run.finished_at = now
    run.save()
    changes: dict = {"last_poll_at": started, "next_poll_at": now + timedelta(seconds=source.poll_interval)}
    if run.outcome == CollectionRun.Outcome.FAILED:
        changes.update(
            last_error=run.message, last_error_at=now, consecutive_failures=F("consecutive_failures") + 1
        )
    else:
        changes.update(consecutive_failures=0)
        if run.outcome != CollectionRun.Outcome.RATE_LIMITED or run.pages:
            changes["last_success_at"] = now
    if rate_limited_until:
        changes["rate_limited_until"] = rate_limited_until
        changes["next_poll_at"] = max(changes["next_poll_at"], rate_limited_until)
    Source.objects.filter(pk=source.pk).update(**changes)
    log = logger.warning if run.outcome == CollectionRun.Outcome.FAILED else logger.info
    log("source %s (%s): %s fetched=%s new=%s updated=%s errors=%s %s", source.pk, source.name, run.outcome,
        run.fetched, run.new, run.updated, run.errors, run.message)


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
    *, platform: str, url: str, hashtags: list[str], interval: int | None = None, name: str = ""
) -> Source:
    """Create an enabled source. Raises SourceError for an unknown platform or a refused URL."""
    if platform not in Platform.values:
        raise SourceError(f"unknown platform {platform!r}; one of: {', '.join(Platform.values)}")
    if not hashtags:
        raise SourceError("a source needs at least one hashtag")
    check_url_allowed(url, allow_private=settings.ENGAGEMENT_ALLOW_PRIVATE_HOSTS, unresolvable_ok=True)
    tags = ensure_hashtags(hashtags)
    with transaction.atomic():
        source = Source.objects.create(
            platform=platform,
            base_url=url.rstrip("/"),
            name=name or f"{urlsplit(url).hostname} {' '.join(str(t) for t in tags)}",
            poll_interval=interval or settings.ENGAGEMENT_DEFAULT_POLL_INTERVAL,
        )
        source.hashtags.set(tags)
    return source
