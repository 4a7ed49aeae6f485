"""The moderators' and operators' console."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from engagement.models import ApiToken, Article, Author, CollectionRun, Hashtag, Post, PostRevision, RejectedItem, Source
from engagement.moderation_admin import (
    ArticleListFilter, AuthorListFilter, AuthorModerationMixin, ClusterListFilter, DecidedByListFilter,
    ModerationQueueMixin, ReasonListFilter,
)
from engagement.sources.base import normalise_tag


def _duration(delta) -> str:
    if delta is None:
        return "—"
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


class HashtagListFilter(admin.SimpleListFilter):
    title = "hashtag"
    parameter_name = "hashtag"

    def lookups(self, request, model_admin):
        return [(tag.key, f"#{tag.name}") for tag in Hashtag.objects.all()]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(hashtags__contains=[normalise_tag(self.value())])
        return queryset


class LanguageListFilter(admin.SimpleListFilter):
    title = "language"
    parameter_name = "language"

    def lookups(self, request, model_admin):
        languages = (
            Post.objects.exclude(language="").order_by("language").values_list("language", flat=True).distinct()[:50]
        )
        return [(code, code) for code in languages]

    def queryset(self, request, queryset):
        return queryset.filter(language=self.value()) if self.value() else queryset


class DeletedListFilter(admin.SimpleListFilter):
    title = "deleted upstream"
    parameter_name = "deleted"

    def lookups(self, request, model_admin):
        return [("no", "no"), ("yes", "yes (tombstones)")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(deleted_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(deleted_at__isnull=False)
        return queryset


class RevisionInline(admin.TabularInline):
    model = PostRevision
    extra = 0
    fields = ["replaced_at", "edited_at", "text"]
    readonly_fields = fields
    can_delete = False
    verbose_name_plural = "earlier versions (edits)"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Post)
class PostAdmin(ModerationQueueMixin, admin.ModelAdmin):
    """The moderation queue (engagement/moderation_admin.py has its columns, actions and views)."""

    inlines = [RevisionInline]
    # State and reasons right after the text: what moderators need most must not scroll out of view.
    list_display = ["excerpt", "state_badge", "reasons_column", "copies", "sentiment_badge", "author_link",
                    "platform", "context", "created_at", "open_link"]
    list_filter = ["status", ReasonListFilter, "platform", HashtagListFilter, LanguageListFilter, "sentiment", "kind",
                   DecidedByListFilter, DeletedListFilter, "created_at", ClusterListFilter, AuthorListFilter,
                   ArticleListFilter]
    actions = ["approve_posts", "reject_posts", "flag_posts"]
    date_hierarchy = "created_at"
    search_fields = ["text", "author__handle", "author__display_name", "external_id"]
    list_per_page = 50
    list_max_show_all = 500
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    show_facets = admin.ShowFacets.NEVER  # per-option counts would scan the whole table too
    ordering = ["-created_at", "-id"]
    # The state is never edited here: it changes only through engagement.moderation (the buttons and keys).
    readonly_fields = [
        "status", "decided_by", "decided_at", "screening", "sentiment", "sentiment_auto", "sentiment_score",
        "sentiment_backend", "sentiment_reason", "scored_at", "sentiment_corrected_by", "sentiment_corrected_at",
        "platform", "external_id", "uri", "url", "kind",
        "author", "article", "source", "created_at", "collected_at", "updated_at", "edited_at", "deleted_at",
        "deletion_reason", "language", "html", "text", "hashtags", "fingerprint", "reply_to",
        "reply_to_external_id", "reply_count", "repost_count", "like_count", "raw",
    ]
    fields = readonly_fields

    @admin.display(description="text")
    def excerpt(self, post: Post) -> str:
        text = post.text.replace("\n", " ")
        excerpt = text[:100] + ("…" if len(text) > 100 else "")
        return f"[deleted upstream] {excerpt}" if post.deleted_at else excerpt

    @admin.display(description="link")
    def open_link(self, post: Post) -> str:
        if not post.url.startswith(("https://", "http://")):
            return "—"
        return format_html('<a href="{}" rel="noopener noreferrer nofollow" target="_blank">open</a>', post.url)

    def has_add_permission(self, request):
        return False  # posts come from collection only

    def has_delete_permission(self, request, obj=None):
        return False  # deleting would lose the raw payload; moderation rejects instead


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ["name", "platform", "health_badge", "last_success_at", "lag", "last_run",
                    "consecutive_failures", "short_error"]
    list_filter = ["platform", "enabled"]
    show_facets = admin.ShowFacets.NEVER
    search_fields = ["name", "base_url"]
    filter_horizontal = ["hashtags"]
    readonly_fields = ["cursor", "created_at", "next_poll_at", "last_poll_at", "last_success_at", "last_error",
                       "last_error_at", "last_error_kind", "consecutive_failures", "rate_limited_until",
                       "paused_until", "health_detail", "lease_owner", "lease_expires_at"]

    @admin.display(description="health")
    def health_badge(self, source: Source) -> str:
        colours = {"ok": "#2e7d32", "new": "#555", "rate-limited": "#b26a00", "failing": "#c62828",
                   "disabled": "#777"}
        label = Source.Health(source.health).label
        if source.health == Source.Health.RATE_LIMITED:
            label = f"{label} until {source.rate_limited_until:%Y-%m-%d %H:%M} UTC"
        return format_html('<strong style="color:{}">{}</strong>', colours.get(source.health, "#555"), label)

    @admin.display(description="lag")
    def lag(self, source: Source) -> str:
        return _duration(source.lag)

    @admin.display(description="last run")
    def last_run(self, source: Source) -> str:
        if source.last_run_outcome is None:
            return "—"
        return f"{source.last_run_outcome}: {source.last_run_new} new of {source.last_run_fetched}"

    def get_queryset(self, request):
        return super().get_queryset(request).with_last_run()

    @admin.display(description="last error")
    def short_error(self, source: Source) -> str:
        if not source.consecutive_failures:
            return ""
        error = source.last_error
        return error[:60] + ("…" if len(error) > 60 else "")


@admin.register(CollectionRun)
class CollectionRunAdmin(admin.ModelAdmin):
    list_display = ["started_at", "source", "outcome", "pages", "fetched", "new", "updated", "errors",
                    "took", "message"]
    list_filter = ["outcome", "source__platform", "source"]
    show_facets = admin.ShowFacets.NEVER
    list_select_related = ["source"]
    show_full_result_count = False
    date_hierarchy = "started_at"

    @admin.display(description="took")
    def took(self, run: CollectionRun) -> str:
        end = run.finished_at or timezone.now()
        return f"{(end - run.started_at).total_seconds():.1f} s"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(RejectedItem)
class RejectedItemAdmin(admin.ModelAdmin):
    list_display = ["created_at", "platform", "source", "external_id", "reason"]
    list_filter = ["platform", "source"]
    show_facets = admin.ShowFacets.NEVER
    list_select_related = ["source"]
    search_fields = ["reason", "external_id"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Hashtag)
class HashtagAdmin(admin.ModelAdmin):
    list_display = ["name", "key", "moderation", "created_at"]
    list_editable = ["moderation"]
    search_fields = ["name"]


@admin.register(Author)
class AuthorAdmin(AuthorModerationMixin, admin.ModelAdmin):
    show_facets = admin.ShowFacets.NEVER
    search_fields = ["handle", "display_name", "external_id"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False  # authors come from collection only


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["key_prefix", "user", "name", "scope", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["scope"]
    list_select_related = ["user"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]
    fields = ["user", "name", "scope", "key_prefix", "created_at", "last_used_at", "revoked_at"]

    def has_add_permission(self, request):
        return False  # keys are shown once: create them with `manage.py tokens create`


@admin.register(Article)
class ArticleAdmin(admin.ModelAdmin):
    list_display = ["title", "url", "published_at", "source"]
    list_select_related = ["source"]
    search_fields = ["title", "url"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = ["url", "external_id", "source", "first_seen_at"]

    def has_add_permission(self, request):
        return False  # articles come from collection only
