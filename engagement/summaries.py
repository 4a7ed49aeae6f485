"""The editors' figures: one code path for the summary page and the API, so both always show the same numbers.

`Filters.from_params(params)` reads and checks the pickers (hashtag, period, platforms, approved only or all
collected, time zone); `build(filters)` returns a `Summary`. Time series, totals, sentiment and languages
come from the hourly rollups (engagement/rollups.py); terms, co-occurring hashtags, authors and posts from
the posts of the period; collection gaps from the sources' runs. Buckets are UTC hours underneath; a period
longer than HOURLY_UP_TO is shown by day, days being days in the page's time zone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = ZoneInfo("UTC")

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from engagement.models import (
    CollectionRun, Hashtag, Platform, Post, Rollup, Sentiment, SeriesRollup, Source, SpikeAlert,
)
from engagement.sources.base import normalise_tag

logger = logging.getLogger(__name__)

# Periods up to this long are shown hour by hour, longer ones day by day.
HOURLY_UP_TO = timedelta(days=3)
# The longest period a page or an API call may ask for.
MAX_PERIOD = timedelta(days=366)
PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30), "90d": timedelta(days=90)}
DEFAULT_PERIOD = "7d"
TOP = 10
# Top terms are counted over the newest posts of the period, at most this many (a sample on busy periods).
TERM_SAMPLE = 10_000
LABELS = [Sentiment.POSITIVE, Sentiment.NEUTRAL, Sentiment.NEGATIVE, Sentiment.UNSCORED]
WORD = re.compile(r"[^\W\d_][\w'’-]*[^\W_]|[^\W\d_]")
LINK_OR_HANDLE = re.compile(r"https?://\S+|www\.\S+|(?<!\w)[@#][\w.\-]+")


class InvalidFilters(ValueError):
    """A picker value that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    hashtag: str  # the hashtag's key (casefolded, no '#')
    start: datetime  # aware, inclusive
    end: datetime  # aware, exclusive
    platforms: tuple[str, ...] = ()  # empty: every platform
    approved_only: bool = True
    tz: str = "UTC"
    period: str = ""  # the named period picked, if any
    resolution: str = ""  # "hour" or "day"; empty: by hour up to HOURLY_UP_TO, by day beyond

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def step(self) -> str:
        if self.resolution:
            return self.resolution
        return "hour" if self.end - self.start <= HOURLY_UP_TO else "day"

    def query(self) -> dict[str, str]:
        """These filters as request parameters (for links, CSV downloads and the API)."""
        params = {"hashtag": self.hashtag, "scope": "approved" if self.approved_only else "all"}
        if self.period:
            params["period"] = self.period
        else:
            params.update(since=self.start.isoformat(), until=self.end.isoformat())
        if self.platforms:
            params["platform"] = ",".join(self.platforms)
        if self.resolution:
            params["step"] = self.resolution
        return params

    @classmethod
    def from_params(cls, params, *, now: datetime | None = None) -> "Filters":
        now = now or timezone.now()
        tz = settings.ENGAGEMENT_SUMMARY_TIMEZONE
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidFilters(f"ENGAGEMENT_SUMMARY_TIMEZONE {tz!r} is not a known time zone") from None
        tags = dict(Hashtag.objects.values_list("key", "name"))
        hashtag = normalise_tag(params.get("hashtag") or "") or (next(iter(sorted(tags)), "") if tags else "")
        if hashtag not in tags:
            raise InvalidFilters(f"unknown hashtag {params.get('hashtag')!r}; one of: {', '.join(sorted(tags)) or 'none yet'}")
        period = params.get("period") or ("" if params.get("since") else DEFAULT_PERIOD)
        if period:
            if period not in PERIODS:
                raise InvalidFilters(f"period must be one of {', '.join(PERIODS)}")
            end = (now + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
            start = end - PERIODS[period]
        else:
            start = _parse_time(params.get("since"), "since", tz)
            end = _parse_time(params.get("until"), "until", tz) if params.get("until") else now
            if end <= start:
                raise InvalidFilters("until must be after since")
            if end - start > MAX_PERIOD:
                raise InvalidFilters(f"a period is at most {MAX_PERIOD.days} days")
            # Figures are counted by UTC hour: a period starts and ends on one.
            start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0).astimezone(ZoneInfo(tz))
            end = _ceil_hour(end.astimezone(UTC)).astimezone(ZoneInfo(tz))
        # Several checkboxes (?platform=a&platform=b) or one comma-separated value.
        raw_platforms = ",".join(params.getlist("platform")) if hasattr(params, "getlist") else \
            (params.get("platform") or "")
        platforms = tuple(sorted({p.strip() for p in raw_platforms.split(",") if p.strip()}))
        unknown = [p for p in platforms if p not in Platform.values]
        if unknown:
            raise InvalidFilters(f"unknown platform {unknown[0]!r}; one of: {', '.join(Platform.values)}")
        scope = params.get("scope") or "approved"
        if scope not in ("approved", "all"):
            raise InvalidFilters("scope must be 'approved' (approved only) or 'all' (everything collected)")
        resolution = params.get("step") or ""
        if resolution not in ("", "hour", "day"):
            raise InvalidFilters("step must be 'hour' or 'day' (or left out: by hour up to 3 days, by day beyond)")
        return cls(hashtag=hashtag, start=start, end=end, platforms=platforms, approved_only=scope == "approved",
                   tz=tz, period=period, resolution=resolution)


def _ceil_hour(moment: datetime) -> datetime:
    floor = moment.replace(minute=0, second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(hours=1)


def _parse_time(value: str | None, name: str, tz: str) -> datetime:
    try:
        moment = datetime.fromisoformat((value or "").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidFilters(f"{name} must be an ISO date or time, e.g. 2026-11-20 or 2026-11-20T14:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(tz))


@dataclass
class Gap:
    """A period when a source of the hashtag could not collect."""

    source: str
    platform: str
    start: datetime
    end: datetime
    reason: str


@dataclass
class Summary:
    filters: Filters
    buckets: list[datetime] = field(default_factory=list)  # aware, in the page's time zone
    volume: dict[str, list[int]] = field(default_factory=dict)  # platform -> posts per bucket
    sentiment: dict[str, list[int]] = field(default_factory=dict)  # label -> posts per bucket
    net: list[float | None] = field(default_factory=list)  # (positive - negative) / scored, per bucket
    totals: dict[str, int] = field(default_factory=dict)
    languages: list[tuple[str, int]] = field(default_factory=list)
    top_terms: list[tuple[str, int]] = field(default_factory=list)
    co_hashtags: list[tuple[str, int]] = field(default_factory=list)
    top_authors: list[tuple[str, str, int]] = field(default_factory=list)  # handle, platform, posts
    top_posts: list[Post] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    spikes: list[SpikeAlert] = field(default_factory=list)

    def share(self, label: str) -> list[float | None]:
        """A label's share of the posts with a label (scored or not scored) per bucket."""
        totals = [sum(values[n] for values in self.sentiment.values()) for n in range(len(self.buckets))]
        return [self.sentiment.get(label, [0] * len(totals))[n] / total if total else None
                for n, total in enumerate(totals)]

    def gap_buckets(self) -> list[list[Gap]]:
        """The gaps overlapping each bucket (for shading)."""
        step = timedelta(hours=1) if self.filters.step == "hour" else timedelta(days=1)
        return [[gap for gap in self.gaps if gap.start < bucket + step and gap.end > bucket] for bucket in self.buckets]


def _post_conditions(filters: Filters, alias: str = "") -> tuple[str, list]:
    prefix = f"{alias}." if alias else ""
    where = [f"{prefix}deleted_at IS NULL", f"{prefix}hashtags @> ARRAY[%s]::varchar[]",
             f"{prefix}created_at >= %s", f"{prefix}created_at < %s"]
    params: list = [filters.hashtag, filters.start, filters.end]
    if filters.platforms:
        where.append(f"{prefix}platform = ANY(%s)")
        params.append(list(filters.platforms))
    if filters.approved_only:
        where.append(f"{prefix}status = %s")
        params.append(Post.Status.APPROVED)
    return " AND ".join(where), params


def _rollup_conditions(filters: Filters) -> tuple[str, list]:
    where = ["hashtag = %s", "bucket >= %s", "bucket < %s"]
    params: list = [filters.hashtag, filters.start, filters.end]
    if filters.platforms:
        where.append("platform = ANY(%s)")
        params.append(list(filters.platforms))
    if filters.approved_only:
        where.append("status = %s")
        params.append(Post.Status.APPROVED)
    return " AND ".join(where), params


def _buckets(filters: Filters) -> list[datetime]:
    """The start of each bucket, aware, in the page's zone.

    Hours are UTC hours (what the rollups count), shown in the zone: in a zone whose offset is not a whole
    number of hours (India, +05:30) they run from :30 to :30. Days are the zone's calendar days, each holding
    the UTC hours that start in it (exact wherever the offset is whole hours).
    """
    zone = filters.zone
    if filters.step == "hour":
        first = filters.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        count = max(0, -int((first - filters.end).total_seconds() // 3600))
        return [(first + timedelta(hours=n)).astimezone(zone) for n in range(count)]
    buckets, moment = [], filters.start.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    while moment < filters.end:
        buckets.append(moment)
        moment = (moment.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=zone)
    return buckets


def _bucket_key(hour_sql: str, filters: Filters) -> tuple[str, list]:
    """SQL for the bucket of a UTC hour (`hour_sql`), as a timestamp without zone (those load fast): the UTC
    hour itself, or the zone's day it starts in; and its parameters."""
    if filters.step == "hour":
        return f"({hour_sql}) AT TIME ZONE 'UTC'", []
    return f"date_trunc('day', ({hour_sql}) AT TIME ZONE %s)", [filters.tz]


def _positions(rows: list[tuple], filters: Filters, buckets: list[datetime]) -> list[int]:
    """The bucket index of each row, by its first column (from _bucket_key); -1 outside the period."""
    if filters.step == "hour":
        first = (buckets[0] if buckets else filters.start).astimezone(UTC).replace(tzinfo=None)
        positions = [int((row[0] - first).total_seconds() // 3600) for row in rows]
        return [n if 0 <= n < len(buckets) else -1 for n in positions]
    index = {bucket.replace(tzinfo=None): n for n, bucket in enumerate(buckets)}
    return [index.get(row[0], -1) for row in rows]


def series(filters: Filters, *, live: bool = False) -> tuple[list[datetime], dict, dict]:
    """Posts per bucket by platform and by sentiment label.

    From the series rollups when no platform is picked (at most two rows an hour), from the rollups when
    platforms are picked, or (live=True, for benches and tests) straight from the posts with the same buckets.
    """
    if not live and not filters.platforms:
        return _series_from_series_rollups(filters)
    if live:
        key, key_params = _bucket_key("date_trunc('hour', created_at, 'UTC')", filters)
        where, params = _post_conditions(filters)
        sql = f"SELECT {key}, platform, sentiment, count(*) FROM {Post._meta.db_table} WHERE {where} GROUP BY 1, 2, 3"
    else:
        key, key_params = _bucket_key("bucket", filters)
        where, params = _rollup_conditions(filters)
        sql = f"SELECT {key}, platform, sentiment, sum(posts) FROM {Rollup._meta.db_table} WHERE {where} GROUP BY 1, 2, 3"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*key_params, *params])
        rows = cursor.fetchall()
    buckets = _buckets(filters)
    volume: dict[str, list[int]] = defaultdict(lambda: [0] * len(buckets))
    labels: dict[str, list[int]] = {label: [0] * len(buckets) for label in [*LABELS, ""]}
    for n, (_key, platform, label, posts) in zip(_positions(rows, filters, buckets), rows):
        if n >= 0:
            volume[platform][n] += int(posts)
            labels[label if label in labels else ""][n] += int(posts)
    return buckets, dict(sorted(volume.items())), labels


def _series_from_series_rollups(filters: Filters):
    from engagement.rollups import SERIES_LABELS, SERIES_PLATFORMS

    sums = ", ".join([f"sum(platform_posts[{k}])" for k in range(1, len(SERIES_PLATFORMS) + 1)]
                     + [f"sum(label_posts[{k}])" for k in range(1, len(SERIES_LABELS) + 1)])
    key, key_params = _bucket_key("bucket", filters)
    sql = (f"SELECT {key}, {sums} FROM {SeriesRollup._meta.db_table} "
           "WHERE hashtag = %s AND bucket >= %s AND bucket < %s" + (" AND approved" if filters.approved_only else "")
           + " GROUP BY 1")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*key_params, filters.hashtag, filters.start, filters.end])
        rows = cursor.fetchall()
    buckets = _buckets(filters)
    columns = [[0] * len(buckets) for _ in range(len(SERIES_PLATFORMS) + len(SERIES_LABELS))]
    for n, (_key, *counts) in zip(_positions(rows, filters, buckets), rows):
        if n >= 0:
            for column, posts in zip(columns, counts):
                if posts:
                    column[n] += posts
    width = len(SERIES_PLATFORMS)
    volume = {platform: columns[k] for k, platform in sorted(enumerate(SERIES_PLATFORMS), key=lambda kp: kp[1])
              if any(columns[k])}
    labels = {label: columns[width + k] for k, label in enumerate(SERIES_LABELS)}
    return buckets, volume, labels


def build(filters: Filters) -> Summary:
    buckets, volume, labels = series(filters)
    summary = Summary(filters=filters, buckets=buckets, volume=volume,
                      sentiment={label: labels[label] for label in LABELS})
    for n in range(len(buckets)):
        positive, negative, neutral = (labels[Sentiment.POSITIVE][n], labels[Sentiment.NEGATIVE][n],
                                       labels[Sentiment.NEUTRAL][n])
        scored = positive + negative + neutral
        summary.net.append((positive - negative) / scored if scored else None)
    summary.totals = {
        "posts": sum(sum(values) for values in volume.values()),
        **{str(label): sum(labels[label]) for label in LABELS},
        "waiting": sum(labels[""]),  # stored, not scored yet
    }
    where, params = _rollup_conditions(filters)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT language, sum(posts) FROM {Rollup._meta.db_table} WHERE {where} "
                       "GROUP BY 1 ORDER BY 2 DESC, 1", params)
        summary.languages = [(language or "unknown", int(n)) for language, n in cursor.fetchall()]
    summary.co_hashtags = co_hashtags(filters)
    summary.top_terms = top_terms(filters)
    summary.top_authors = top_authors(filters)
    summary.top_posts = top_posts(filters)
    summary.gaps = gaps(filters)
    summary.spikes = list(SpikeAlert.objects.filter(hashtag=filters.hashtag, bucket__gte=filters.start,
                                                    bucket__lt=filters.end))
    return summary


def co_hashtags(filters: Filters) -> list[tuple[str, int]]:
    where, params = _post_conditions(filters, "p")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT tag, count(*) FROM {Post._meta.db_table} p CROSS JOIN LATERAL unnest(p.hashtags) tag "
                       f"WHERE {where} AND tag <> %s GROUP BY tag ORDER BY 2 DESC, 1 LIMIT %s",
                       [*params, filters.hashtag, TOP])
        return [(tag, int(n)) for tag, n in cursor.fetchall()]


def top_authors(filters: Filters) -> list[tuple[str, str, int]]:
    where, params = _post_conditions(filters, "p")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT a.handle, a.platform, count(*) FROM {Post._meta.db_table} p JOIN engagement_author a "
            f"ON a.id = p.author_id WHERE {where} GROUP BY a.id, a.handle, a.platform ORDER BY 3 DESC, 1 LIMIT %s",
            [*params, TOP])
        return [(handle, platform, int(n)) for handle, platform, n in cursor.fetchall()]


def _posts(filters: Filters):
    posts = Post.objects.alive().for_hashtag(filters.hashtag).filter(created_at__gte=filters.start,
                                                                     created_at__lt=filters.end)
    if filters.platforms:
        posts = posts.filter(platform__in=filters.platforms)
    if filters.approved_only:
        posts = posts.filter(status=Post.Status.APPROVED)
    return posts


def top_posts(filters: Filters) -> list[Post]:
    from django.db.models import F

    return list(_posts(filters).select_related("author")
                .annotate(engagement=F("like_count") + F("repost_count") + F("reply_count"))
                .order_by("-engagement", "-created_at")[:TOP])


@lru_cache(maxsize=1)
def stop_words() -> frozenset[str]:
    """English, Ukrainian and Russian stop words (engagement/stopwords/*.txt), casefolded."""
    folder = Path(__file__).resolve().parent / "stopwords"
    return frozenset(line.strip().casefold() for path in sorted(folder.glob("*.txt"))
                     for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#"))


def terms_of(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", LINK_OR_HANDLE.sub(" ", text)).casefold()
    stops = stop_words()
    return [word for word in WORD.findall(text) if len(word) > 2 and word not in stops]


def top_terms(filters: Filters) -> list[tuple[str, int]]:
    texts = _posts(filters).order_by("-created_at").values_list("text", flat=True)[:TERM_SAMPLE]
    counts = Counter(term for text in texts for term in set(terms_of(text)))
    counts.pop(filters.hashtag, None)
    return counts.most_common(TOP)


def gaps(filters: Filters) -> list[Gap]:
    """Failed or rate-limited stretches of the hashtag's sources overlapping the period: from the first
    failing run to the next successful one (or now)."""
    sources = Source.objects.filter(hashtags__key=filters.hashtag)
    if filters.platforms:
        sources = sources.filter(platform__in=filters.platforms)
    bad = (CollectionRun.Outcome.FAILED, CollectionRun.Outcome.RATE_LIMITED)
    runs = (CollectionRun.objects.filter(source__in=sources)
            .filter(Q(started_at__lt=filters.end))
            .filter(Q(finished_at__isnull=True) | Q(finished_at__gte=filters.start - timedelta(days=7)))
            .exclude(outcome=CollectionRun.Outcome.RUNNING)
            .select_related("source").order_by("source_id", "started_at"))
    found: list[Gap] = []
    open_gap: dict[int, Gap] = {}
    for run in runs:
        if run.outcome in bad:
            if run.source_id not in open_gap:
                open_gap[run.source_id] = Gap(source=run.source.name, platform=run.source.platform,
                                              start=run.started_at, end=run.finished_at or run.started_at,
                                              reason=f"{run.get_outcome_display()}: {run.message}"[:300])
            else:
                open_gap[run.source_id].end = run.finished_at or run.started_at
        elif run.source_id in open_gap:
            gap = open_gap.pop(run.source_id)
            gap.end = run.started_at
            found.append(gap)
    now = timezone.now()
    for gap in open_gap.values():
        gap.end = max(gap.end, now)
        found.append(gap)
    return sorted((g for g in found if g.start < filters.end and g.end > filters.start), key=lambda g: g.start)


# --- spike alerts ----------------------------------------------------------------------------------


def detect_spikes(now: datetime | None = None) -> list[SpikeAlert]:
    """For every hashtag, compare the last finished hour with the 24 hours before it (everything collected):
    volume, and the negative share of the scored posts. A jump past ENGAGEMENT_SPIKE_FACTOR with at least
    ENGAGEMENT_SPIKE_MIN_POSTS posts is recorded once."""
    now = now or timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    baseline_start = hour - timedelta(hours=24)
    factor, minimum = settings.ENGAGEMENT_SPIKE_FACTOR, settings.ENGAGEMENT_SPIKE_MIN_POSTS
    found = []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT hashtag, bucket = %s, sum(posts), sum(posts) FILTER (WHERE sentiment = 'negative'), "
            f"sum(posts) FILTER (WHERE sentiment IN ('positive', 'negative', 'neutral')) "
            f"FROM {Rollup._meta.db_table} WHERE bucket >= %s AND bucket <= %s GROUP BY 1, 2",
            [hour, baseline_start, hour])
        rows = cursor.fetchall()
    per_tag: dict[str, dict] = defaultdict(lambda: {"now": (0, 0, 0), "before": (0, 0, 0)})
    for tag, is_hour, posts, negative, scored in rows:
        per_tag[tag]["now" if is_hour else "before"] = (int(posts or 0), int(negative or 0), int(scored or 0))
    for tag, values in per_tag.items():
        posts, negative, scored = values["now"]
        before_posts, before_negative, before_scored = values["before"]
        baseline = before_posts / 24
        if posts >= minimum and posts >= factor * max(baseline, 1.0):
            found.append((tag, SpikeAlert.Kind.VOLUME, float(posts), baseline))
        share = negative / scored if scored else 0.0
        before_share = before_negative / before_scored if before_scored else 0.0
        if scored >= minimum and share > 0 and share >= factor * max(before_share, 0.05):
            found.append((tag, SpikeAlert.Kind.NEGATIVE, share, before_share))
    alerts = []
    for tag, kind, value, baseline in found:
        alert, created = SpikeAlert.objects.get_or_create(
            hashtag=tag, bucket=hour, kind=kind, defaults={"value": value, "baseline": baseline, "factor": factor})
        if created:
            alerts.append(alert)
    return alerts


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_spike(alert: SpikeAlert) -> None:
    """To the webhook (JSON, HMAC-SHA256 of the body in X-Engagement-Signature) and/or by email."""
    payload = {"hashtag": alert.hashtag, "hour": alert.bucket.isoformat(), "kind": alert.kind,
               "value": alert.value, "baseline": alert.baseline, "factor": alert.factor}
    errors = []
    if settings.ENGAGEMENT_SPIKE_WEBHOOK_URL:
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "User-Agent": settings.ENGAGEMENT_USER_AGENT}
        if settings.ENGAGEMENT_SPIKE_WEBHOOK_SECRET:
            headers["X-Engagement-Signature"] = signature(body, settings.ENGAGEMENT_SPIKE_WEBHOOK_SECRET)
        try:
            response = requests.post(settings.ENGAGEMENT_SPIKE_WEBHOOK_URL, data=body, headers=headers,
                                     timeout=(settings.ENGAGEMENT_HTTP_CONNECT_TIMEOUT,
                                              settings.ENGAGEMENT_HTTP_READ_TIMEOUT))
            if response.status_code >= 300:
                errors.append(f"webhook answered {response.status_code}")
        except requests.RequestException as exc:
            errors.append(f"webhook: {exc}")
    if settings.ENGAGEMENT_SPIKE_EMAIL:
        try:
            send_mail(f"engagement: {alert}", json.dumps(payload, indent=2), None, settings.ENGAGEMENT_SPIKE_EMAIL)
        except Exception as exc:  # noqa: BLE001 - a mail server problem is recorded on the alert
            errors.append(f"email: {exc}")
    SpikeAlert.objects.filter(pk=alert.pk).update(delivered_at=None if errors else timezone.now(),
                                                  delivery_error="; ".join(errors))


def detect_and_send_spikes(now: datetime | None = None) -> list[SpikeAlert]:
    alerts = detect_spikes(now)
    if settings.ENGAGEMENT_SPIKE_WEBHOOK_URL or settings.ENGAGEMENT_SPIKE_EMAIL:
        for alert in alerts:
            send_spike(alert)
    return alerts
