from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.db import models
from django.db.models import Q
from django.utils import timezone


from engagement.sources.base import normalise_tag


class Platform(models.TextChoices):
    MASTODON = "mastodon", "Mastodon"
    BLUESKY = "bluesky", "Bluesky"
    WORDPRESS = "wordpress", "WordPress comments"
    FEED = "feed", "RSS/Atom comment feed"
    DISQUS = "disqus", "Disqus"
    YOUTUBE = "youtube", "YouTube"
    REDDIT = "reddit", "Reddit"
    HACKERNEWS = "hackernews", "Hacker News"
    TELEGRAM = "telegram", "Telegram"
    IMPORT = "import", "File import"


class Hashtag(models.Model):
    class Moderation(models.TextChoices):
        PRE = "pre", "pre-moderation: every post waits for a moderator"
        POST = "post", "post-moderation: approved unless screening flags or rejects it"

    name = models.CharField(max_length=100, help_text="As editors write it, without '#'.")
    key = models.CharField(max_length=100, unique=True, editable=False)
    moderation = models.CharField(max_length=8, choices=Moderation.choices, default=Moderation.PRE,
                                  db_default=Moderation.PRE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"#{self.name}"

    def save(self, *args, **kwargs):
        self.name = self.name.strip().lstrip("#")
        self.key = normalise_tag(self.name)
        super().save(*args, **kwargs)


class SourceQuerySet(models.QuerySet):
    def due(self, now=None):
        """Enabled sources whose next poll time has come and that are not rate-limited."""
        now = now or timezone.now()
        return self.filter(enabled=True).filter(
            Q(next_poll_at__isnull=True) | Q(next_poll_at__lte=now),
            Q(rate_limited_until__isnull=True) | Q(rate_limited_until__lte=now),
            Q(paused_until__isnull=True) | Q(paused_until__lte=now),
        )

    def with_last_run(self):
        """Annotate each source with its latest run's outcome, fetched and new counts (one query)."""
        latest = CollectionRun.objects.filter(source=models.OuterRef("pk")).order_by("-started_at", "-id")
        return self.annotate(
            last_run_outcome=models.Subquery(latest.values("outcome")[:1]),
            last_run_fetched=models.Subquery(latest.values("fetched")[:1]),
            last_run_new=models.Subquery(latest.values("new")[:1]),
        )

    def take_lease(self, source_id: int, *, owner: str, seconds: int) -> bool:
        """Atomically claim a source for one run; False if it is gone, disabled, rate-limited (no request
        may go out before its reset time) or held by a live run."""
        now = timezone.now()
        return bool(
            self.filter(pk=source_id, enabled=True)
            .filter(Q(rate_limited_until__isnull=True) | Q(rate_limited_until__lte=now))
            .filter(Q(paused_until__isnull=True) | Q(paused_until__lte=now))
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))
            .update(lease_owner=owner[:64], lease_expires_at=now + timedelta(seconds=seconds))
        )

    def release_lease(self, source_id: int, *, owner: str) -> None:
        self.filter(pk=source_id, lease_owner=owner[:64]).update(lease_owner="", lease_expires_at=None)


class Source(models.Model):
    class Health(models.TextChoices):
        NEW = "new", "never polled"
        OK = "ok", "ok"
        RATE_LIMITED = "rate-limited", "rate-limited"
        NEEDS_CREDENTIALS = "needs-credentials", "needs credentials"
        FAILING = "failing", "failing"
        PAUSED = "paused", "paused (too many failures)"
        DISABLED = "disabled", "disabled"

    class ErrorKind(models.TextChoices):
        TEMPORARY = "temporary", "temporary (timeout, 5xx)"
        PERMANENT = "permanent", "permanent (refused, blocked)"
        CREDENTIALS = "credentials", "credentials missing or refused"
        MALFORMED = "malformed", "malformed response"
        INTERNAL = "internal", "internal error"

    platform = models.CharField(max_length=32, choices=Platform.choices)
    name = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500)
    settings = models.JSONField(default=dict, blank=True, help_text="Platform-specific options.")
    hashtags = models.ManyToManyField(Hashtag, related_name="sources")
    poll_interval = models.PositiveIntegerField(default=300, help_text="Seconds between polls.")
    enabled = models.BooleanField(default=True)
    cursor = models.JSONField(default=dict, blank=True, help_text="Where the next poll starts; set by collection.")
    created_at = models.DateTimeField(default=timezone.now)
    next_poll_at = models.DateTimeField(null=True, blank=True)
    last_poll_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error_kind = models.CharField(max_length=16, choices=ErrorKind.choices, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    # The circuit: after too many failures in a row the source rests until then (see collect.py).
    paused_until = models.DateTimeField(null=True, blank=True)
    # What the connector reports about itself, shown with the health (e.g. a daily quota left).
    health_detail = models.JSONField(default=dict, blank=True)
    # A run holds the lease while it fetches, so overlapping tasks for one source never fetch twice.
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    objects = SourceQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["enabled", "next_poll_at"], name="source_due_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def health(self) -> str:
        now = timezone.now()
        if not self.enabled:
            return self.Health.DISABLED
        if self.paused_until and self.paused_until > now:
            return self.Health.PAUSED
        if self.rate_limited_until and self.rate_limited_until > now:
            return self.Health.RATE_LIMITED
        if self.consecutive_failures and self.last_error_kind == self.ErrorKind.CREDENTIALS:
            return self.Health.NEEDS_CREDENTIALS
        if self.consecutive_failures:
            return self.Health.FAILING
        if not self.last_success_at:
            return self.Health.NEW
        return self.Health.OK

    @property
    def lag(self) -> timedelta | None:
        """Time since the last successful poll: how stale this source's posts may be."""
        return timezone.now() - self.last_success_at if self.last_success_at else None


class Standing(models.TextChoices):
    NORMAL = "normal", "normal"
    BANNED = "banned", "banned"
    ALLOWED = "allowed", "allow-listed"


class Author(models.Model):
    platform = models.CharField(max_length=32, choices=Platform.choices)
    external_id = models.CharField(max_length=2048, help_text="The platform's global id or URI of the account.")
    handle = models.CharField(max_length=300, blank=True)
    display_name = models.CharField(max_length=300, blank=True)
    url = models.URLField(max_length=2048, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    # Moderation: a banned author's posts are rejected at ingest, an allow-listed author's approved.
    standing = models.CharField(max_length=8, choices=Standing.choices, default=Standing.NORMAL,
                                db_default=Standing.NORMAL)
    standing_changed_at = models.DateTimeField(null=True, blank=True)
    standing_changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                            on_delete=models.SET_NULL, related_name="+")
    notes = models.TextField(blank=True, db_default="", help_text="Moderators' notes on this author.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "external_id"], name="author_platform_external_id_uniq")
        ]
        indexes = [models.Index(fields=["handle"], name="author_handle_idx")]

    def __str__(self) -> str:
        return self.handle or self.external_id


class Article(models.Model):
    """A newsroom article whose comments are collected (WordPress, comment feeds, Disqus)."""

    url = models.URLField(max_length=2048, unique=True)
    title = models.CharField(max_length=1000, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    external_id = models.CharField(max_length=2048, blank=True, help_text="The site's own id, when it has one.")
    source = models.ForeignKey(Source, null=True, blank=True, on_delete=models.SET_NULL, related_name="articles")
    first_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-published_at", "-id"]

    def __str__(self) -> str:
        return self.title or self.url


class PostQuerySet(models.QuerySet):
    def for_hashtag(self, tag: str):
        return self.filter(hashtags__contains=[normalise_tag(tag)])

    def alive(self):
        """Posts not deleted upstream: what the API, summaries and exports show."""
        return self.filter(deleted_at__isnull=True)


class Sentiment(models.TextChoices):
    POSITIVE = "positive", "positive"
    NEGATIVE = "negative", "negative"
    NEUTRAL = "neutral", "neutral"
    UNSCORED = "unscored", "not scored"


class Actor(models.TextChoices):
    """Who made a moderation decision."""

    PERSON = "person", "a person"
    RULE = "rule", "a rule"
    MODEL = "model", "a model"
    SYSTEM = "system", "the hashtag's default"


class Post(models.Model):
    class Kind(models.TextChoices):
        POST = "post", "post"
        COMMENT = "comment", "comment"

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        FLAGGED = "flagged", "flagged (needs review)"

    platform = models.CharField(max_length=32, choices=Platform.choices)
    # The id that is the same wherever the post is seen (for Mastodon: the status URI, not the
    # per-instance id), so a post seen through two sources is one row.
    external_id = models.CharField(max_length=2048)
    uri = models.CharField(max_length=2048, blank=True, help_text="The platform's global URI.")
    url = models.URLField(max_length=2048, blank=True, help_text="Where a person reads it.")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.POST)
    author = models.ForeignKey(Author, null=True, blank=True, on_delete=models.SET_NULL, related_name="posts")
    source = models.ForeignKey(
        Source, null=True, blank=True, on_delete=models.SET_NULL, related_name="posts",
        help_text="The source that first collected it.",
    )
    created_at = models.DateTimeField(help_text="When it was published (UTC).")
    collected_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now, help_text="When our copy last changed.")
    edited_at = models.DateTimeField(null=True, blank=True, help_text="When the author last edited it.")
    language = models.CharField(max_length=16, blank=True)
    html = models.TextField(blank=True, help_text="Sanitised HTML.")
    text = models.TextField(blank=True, help_text="Plain text.")
    hashtags = ArrayField(models.CharField(max_length=200), default=list, blank=True,
                          help_text="Casefolded tags, without '#'.")
    article = models.ForeignKey(Article, null=True, blank=True, on_delete=models.SET_NULL, related_name="comments")
    reply_to = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies")
    reply_to_external_id = models.CharField(max_length=2048, blank=True)
    reply_count = models.PositiveIntegerField(default=0)
    repost_count = models.PositiveIntegerField(default=0)
    like_count = models.PositiveIntegerField(default=0)
    raw = models.JSONField(default=dict, help_text="The upstream item as received.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # A tombstone: the post was deleted upstream (found by the re-check); the row and raw payload stay.
    deleted_at = models.DateTimeField(null=True, blank=True)
    deletion_reason = models.CharField(max_length=300, blank=True, db_default="")
    last_checked_at = models.DateTimeField(null=True, blank=True, help_text="Last re-check for edits and deletion.")
    # Moderation (engagement/moderation.py): the text's near-duplicate cluster key ('' when too short to
    # compare), why the current state was chosen, and who chose it.
    fingerprint = models.CharField(max_length=32, blank=True, db_default="")
    reasons = models.JSONField(default=list, blank=True, db_default=[],
                               help_text="Screening hits: phase, rule, matched terms with positions, score.")
    reason_codes = ArrayField(models.CharField(max_length=32), default=list, blank=True, db_default=[])
    decided_by = models.CharField(max_length=8, choices=Actor.choices, blank=True, db_default="")
    decided_at = models.DateTimeField(null=True, blank=True)
    # Sentiment (engagement/sentiment.py): `sentiment` is the label every figure uses (a person's correction
    # when there is one, else the backend's); '' until the post is scored.
    sentiment = models.CharField(max_length=10, choices=Sentiment.choices, blank=True, db_default="")
    sentiment_auto = models.CharField(max_length=10, choices=Sentiment.choices, blank=True, db_default="",
                                      help_text="The backend's label.")
    sentiment_score = models.FloatField(null=True, blank=True, help_text="The backend's compound, -1 to 1.")
    sentiment_backend = models.CharField(max_length=100, blank=True, db_default="",
                                         help_text="Backend name and version.")
    sentiment_reason = models.CharField(max_length=200, blank=True, db_default="",
                                        help_text="Why a post is not scored (unsupported language, empty text).")
    scored_at = models.DateTimeField(null=True, blank=True, help_text="Empty: waiting to be scored.")
    sentiment_corrected_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True,
                                               on_delete=models.SET_NULL, related_name="+")
    sentiment_corrected_at = models.DateTimeField(null=True, blank=True)

    objects = PostQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "external_id"], name="post_platform_external_id_uniq")
        ]
        indexes = [
            # API paging (newest first, id as tie-breaker) and the admin's default order.
            models.Index(fields=["-created_at", "-id"], name="post_created_idx"),
            models.Index(fields=["status", "-created_at"], name="post_status_created_idx"),
            models.Index(fields=["platform", "-created_at"], name="post_platform_created_idx"),
            models.Index(fields=["language"], name="post_language_idx"),
            GinIndex(fields=["hashtags"], name="post_hashtags_gin"),
            GinIndex(fields=["reason_codes"], name="post_reason_codes_gin"),
            models.Index(fields=["fingerprint"], name="post_fingerprint_idx", condition=~Q(fingerprint="")),
            models.Index(fields=["author", "-created_at"], name="post_author_created_idx"),
            models.Index(fields=["id"], name="post_unscored_idx", condition=Q(scored_at__isnull=True)),
        ]
        permissions = [("moderate_post", "Can approve, reject and flag posts"),
                       ("correct_sentiment", "Can correct a post's sentiment label")]

    def __str__(self) -> str:
        return f"{self.platform}:{self.external_id}"


class PostRevision(models.Model):
    """An earlier version of a post, kept when an edit replaces its text."""

    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="revisions")
    text = models.TextField(blank=True)
    html = models.TextField(blank=True)
    edited_at = models.DateTimeField(null=True, blank=True, help_text="When that version was written, if known.")
    raw = models.JSONField(default=dict)
    replaced_at = models.DateTimeField(default=timezone.now, help_text="When we saw it replaced.")

    class Meta:
        ordering = ["post", "-replaced_at"]

    def __str__(self) -> str:
        return f"revision of {self.post_id} replaced {self.replaced_at:%Y-%m-%d %H:%M}"


class CollectionRun(models.Model):
    class Outcome(models.TextChoices):
        RUNNING = "running", "running"
        OK = "ok", "ok"
        PARTIAL = "partial", "ok, some items rejected"
        RATE_LIMITED = "rate-limited", "rate-limited"
        FAILED = "failed", "failed"

    source = models.ForeignKey(Source, on_delete=models.CASCADE, related_name="runs")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    pages = models.PositiveIntegerField(default=0)
    fetched = models.PositiveIntegerField(default=0)
    new = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0, help_text="Items rejected (kept raw with the reason).")
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.RUNNING)
    message = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["source", "-started_at"], name="run_source_started_idx")]

    def __str__(self) -> str:
        return f"run {self.pk} of {self.source_id}: {self.outcome}"


class RejectedItem(models.Model):
    """An upstream item or page we could not store, kept as received with the reason."""

    source = models.ForeignKey(Source, null=True, on_delete=models.SET_NULL, related_name="rejected_items")
    run = models.ForeignKey(CollectionRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="rejected")
    platform = models.CharField(max_length=32)
    external_id = models.CharField(max_length=2048, blank=True)
    reason = models.TextField()
    raw = models.JSONField(null=True, help_text="The item as received (JSON), or the raw text.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.platform} {self.external_id or '?'}: {self.reason[:60]}"


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True, user__is_active=True)

    def for_key(self, key: str):
        return self.active().select_related("user").filter(key_hash=_hash_key(key)).first()


class ApiToken(models.Model):
    """An API token. Only its hash is stored: the key is shown once, when it is created."""

    class Scope(models.TextChoices):
        EDITOR = "editor", "editor"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True)
    scope = models.CharField(max_length=16, choices=Scope.choices, default=Scope.EDITOR)
    key_prefix = models.CharField(max_length=8, editable=False, help_text="First characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.user})"

    @classmethod
    def issue(cls, *, user, scope: str = Scope.EDITOR, name: str = "") -> tuple["ApiToken", str]:
        key = secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, scope=scope, name=name, key_prefix=key[:8], key_hash=_hash_key(key))
        return token, key


# --- moderation ----------------------------------------------------------------------------------


class ReasonCode(models.TextChoices):
    """Why a post is in its state: the codes a person picks and the ones screening records."""

    # Chosen by moderators.
    SPAM = "spam", "spam"
    ABUSE = "abuse", "abuse or harassment"
    OFF_TOPIC = "off-topic", "off-topic"
    PERSONAL_DATA = "personal-data", "personal data"
    MISINFORMATION = "misinformation", "misinformation"
    DUPLICATE = "duplicate", "duplicate"
    OK = "ok", "fine to publish"
    OTHER = "other", "other"
    # Recorded by screening and by jobs.
    BANNED_WORD = "banned-word", "banned word or phrase"
    SUSPECT_WORD = "suspect-word", "suspect word"
    AUTHOR_BANNED = "author-banned", "author banned"
    AUTHOR_ALLOWED = "author-allowed", "author allow-listed"
    TOO_MANY_LINKS = "too-many-links", "too many links"
    DUPLICATE_OF_REJECTED = "duplicate-of-rejected", "near-duplicate of a rejected post"
    BURST = "burst", "near-duplicate burst (coordinated posting)"
    CHECK_FAILED = "check-failed", "a screening check failed"
    PRE_MODERATION = "pre-moderation", "waits for a moderator (pre-moderation)"
    POST_MODERATION = "post-moderation", "approved by default (post-moderation)"
    RULE_CHANGED = "rule-changed", "a changed rule no longer matches"
    UNDO = "undo", "undo of a bulk job"


PERSON_REASONS = [ReasonCode.SPAM, ReasonCode.ABUSE, ReasonCode.OFF_TOPIC, ReasonCode.PERSONAL_DATA,
                  ReasonCode.MISINFORMATION, ReasonCode.DUPLICATE, ReasonCode.OK, ReasonCode.OTHER]


class ModerationRule(models.Model):
    """A screening rule moderators edit in the admin (the built-in phases are settings)."""

    class Kind(models.TextChoices):
        BANNED = "banned", "banned words and phrases (reject)"
        SUSPECT = "suspect", "suspect words (flag for review)"
        LINKS = "links", "too many links (flag for review)"

    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    terms = models.TextField(blank=True, help_text="One word or phrase per line; matched casefolded, "
                             "as whole words, in any script.")
    threshold = models.PositiveIntegerField(null=True, blank=True,
                                            help_text="Links rule: flag posts with more links than this.")
    hashtag = models.ForeignKey(Hashtag, null=True, blank=True, on_delete=models.CASCADE,
                                help_text="Only posts with this hashtag; empty for every hashtag.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")

    class Meta:
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return self.name

    def term_list(self) -> list[str]:
        return [line.strip() for line in self.terms.splitlines() if line.strip()]


class BulkJob(models.Model):
    """A moderation change over many posts, run in the worker; its audit entries carry its id."""

    class Kind(models.TextChoices):
        FILTER = "filter", "posts matching a filter"
        AUTHOR = "author", "posts by authors"
        CLUSTER = "cluster", "near-duplicate clusters"
        RULE = "rule", "posts matching a rule"
        UNDO = "undo", "undo of a job"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        DONE = "done", "done"
        FAILED = "failed", "failed"

    kind = models.CharField(max_length=8, choices=Kind.choices)
    description = models.CharField(max_length=500)
    to_state = models.CharField(max_length=16, choices=Post.Status.choices)
    reason_code = models.CharField(max_length=32, choices=ReasonCode.choices)
    note = models.TextField(blank=True)
    actor = models.CharField(max_length=8, choices=Actor.choices, default=Actor.PERSON)
    rule = models.ForeignKey(ModerationRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    undo_of = models.OneToOneField("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="undone_by")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.QUEUED)
    total = models.PositiveIntegerField(default=0, help_text="Posts selected when the job was created.")
    done = models.PositiveIntegerField(default=0, help_text="Posts processed so far.")
    changed = models.PositiveIntegerField(default=0, help_text="Posts whose state this job changed.")
    position = models.BigIntegerField(default=0, help_text="Last job item processed (a restarted job resumes after it).")
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "bulk moderation job"

    def __str__(self) -> str:
        return f"job {self.pk}: {self.description}"

    @property
    def progress(self) -> int:
        return 100 if not self.total else min(100, round(100 * self.done / self.total))


class BulkJobItem(models.Model):
    """A post selected by a bulk job (the set is fixed when the job is created, as previewed)."""

    job = models.ForeignKey(BulkJob, on_delete=models.CASCADE, related_name="items")
    post = models.ForeignKey(Post, on_delete=models.CASCADE, related_name="+")

    class Meta:
        indexes = [models.Index(fields=["job", "post"], name="bulkjobitem_job_post_idx")]


class ModerationEvent(models.Model):
    """One state change of one post: the audit trail. Nothing changes a state without one."""

    post = models.ForeignKey(Post, null=True, on_delete=models.SET_NULL, related_name="moderation_events")
    at = models.DateTimeField(default=timezone.now)
    actor = models.CharField(max_length=8, choices=Actor.choices)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="moderation_events")
    from_state = models.CharField(max_length=16, blank=True, help_text="Empty when the post was first stored.")
    to_state = models.CharField(max_length=16, choices=Post.Status.choices)
    reason_code = models.CharField(max_length=32, choices=ReasonCode.choices)
    note = models.TextField(blank=True)
    rule = models.ForeignKey(ModerationRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    job = models.ForeignKey(BulkJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    details = models.JSONField(default=list, blank=True, help_text="Screening hits behind the decision.")
    # The post's decision fields before this change (decided_by, decided_at, reason_codes), so an undo
    # restores the exact previous state.
    previous = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["post", "-at"], name="modevent_post_at_idx"),
            models.Index(fields=["-at"], name="modevent_at_idx"),
            models.Index(fields=["job", "post"], name="modevent_job_post_idx"),  # undo reads a job's entries
        ]
        verbose_name = "audit entry"
        verbose_name_plural = "audit trail"

    def __str__(self) -> str:
        return f"{self.post_id}: {self.from_state or 'new'} -> {self.to_state} ({self.reason_code})"


# --- figures ------------------------------------------------------------------------------------------


class Rollup(models.Model):
    """Posts per UTC hour x hashtag x platform x moderation state x sentiment x language (engagement/rollups.py).

    Rebuilt for the hours a change touches, in the change's transaction, so it always equals a live GROUP BY
    over the alive posts (`manage.py rebuild_rollups` rebuilds it all)."""

    bucket = models.DateTimeField(help_text="The hour (UTC).")
    hashtag = models.CharField(max_length=200)
    platform = models.CharField(max_length=32)
    status = models.CharField(max_length=16)
    sentiment = models.CharField(max_length=10)
    language = models.CharField(max_length=16)
    posts = models.PositiveIntegerField()
    score_sum = models.FloatField(default=0.0, help_text="Sum of the scored posts' compounds.")
    scored = models.PositiveIntegerField(default=0, help_text="Posts with a compound.")
    engagement = models.BigIntegerField(default=0, help_text="Likes + reposts + replies.")

    class Meta:
        constraints = [models.UniqueConstraint(
            fields=["bucket", "hashtag", "platform", "status", "sentiment", "language"], name="rollup_key_uniq")]
        indexes = [models.Index(fields=["hashtag", "bucket"], name="rollup_hashtag_bucket_idx")]


class SeriesRollup(models.Model):
    """Per UTC hour x hashtag x approved-or-not: posts per platform and per sentiment label, in the fixed
    orders of engagement.rollups.SERIES_PLATFORMS and SERIES_LABELS. Derived from Rollup in the same
    transaction; read by the editors' time charts when no platform is picked (two rows an hour at most)."""

    bucket = models.DateTimeField()
    hashtag = models.CharField(max_length=200)
    approved = models.BooleanField()
    posts = models.PositiveIntegerField()
    platform_posts = ArrayField(models.IntegerField())
    label_posts = ArrayField(models.IntegerField())
    score_sum = models.FloatField(default=0.0)
    scored = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hashtag", "bucket", "approved"], name="series_key_uniq")]
        indexes = [models.Index(fields=["bucket"], name="series_bucket_idx")]


class SpikeAlert(models.Model):
    """A jump in hourly volume or negative share over its trailing baseline (engagement/summaries.py)."""

    class Kind(models.TextChoices):
        VOLUME = "volume", "volume"
        NEGATIVE = "negative", "negative share"

    hashtag = models.CharField(max_length=200)
    bucket = models.DateTimeField(help_text="The hour (UTC) that jumped.")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    value = models.FloatField()
    baseline = models.FloatField()
    factor = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivery_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-bucket"]
        constraints = [models.UniqueConstraint(fields=["hashtag", "bucket", "kind"], name="spike_once_uniq")]

    def __str__(self) -> str:
        return f"#{self.hashtag} {self.kind} spike at {self.bucket:%Y-%m-%d %H:00} UTC"
