"""The moderators' and operators' console."""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html

from engagement.models import ApiToken, Author, CollectionRun, Hashtag, Post, RejectedItem, Source
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


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["excerpt", "author_handle", "platform", "created_at", "status", "open_link"]
    list_filter = ["platform", "status", HashtagListFilter, LanguageListFilter, "kind", "created_at"]
    date_hierarchy = "created_at"
    search_fields = ["text", "author__handle", "author__display_name", "external_id"]
    list_select_related = ["author"]
    list_per_page = 50
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    ordering = ["-created_at", "-id"]
    readonly_fields = [
        "platform", "external_id", "uri", "url", "kind", "author", "source", "created_at", "collected_at",
        "updated_at", "edited_at", "language", "html", "text", "hashtags", "reply_to", "reply_to_external_id",
        "reply_count", "repost_count", "like_count", "raw",
    ]
    fields = ["status"] + readonly_fields

    @admin.display(description="text")
    def excerpt(self, post: Post) -> str:
        text = post.text.replace("\n", " ")
        return text[:120] + ("…" if len(text) > 120 else "")

    @admin.display(description="author", ordering="author__handle")
    def author_handle(self, post: Post) -> str:
        return str(post.author) if post.author else "—"

    @admin.display(description="link")
    def open_link(self, post: Post) -> str:
        if not post.url.startswith(("https://", "http://")):
            return "—"
        return format_html('<a href="{}" rel="noopener noreferrer nofollow" target="_blank">open</a>', post.url)

    def has_add_permission(self, request):
        return False  # posts come from collection only


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    list_display = ["name", "platform", "base_url", "enabled", "health_badge", "last_success_at", "lag",
                    "consecutive_failures", "short_error", "rate_limited_until"]
    list_filter = ["platform", "enabled"]
    search_fields = ["name", "base_url"]
    filter_horizontal = ["hashtags"]
    readonly_fields = ["cursor", "created_at", "next_poll_at", "last_poll_at", "last_success_at", "last_error",
                       "last_error_at", "consecutive_failures", "rate_limited_until", "lease_owner",
                       "lease_expires_at"]

    @admin.display(description="health")
    def health_badge(self, source: Source) -> str:
        colours = {"ok": "#2e7d32", "new": "#555", "rate-limited": "#b26a00", "failing": "#c62828",
                   "disabled": "#777"}
        return format_html('<strong style="color:{}">{}</strong>', colours.get(source.health, "#555"),
                           source.health)

    @admin.display(description="lag")
    def lag(self, source: Source) -> str:
        return _duration(source.lag)

    @admin.display(description="last error")
    def short_error(self, source: Source) -> str:
        return source.last_error[:100] if source.consecutive_failures else ""


@admin.register(CollectionRun)
class CollectionRunAdmin(admin.ModelAdmin):
    list_display = ["started_at", "source", "outcome", "pages", "fetched", "new", "updated", "errors",
                    "took", "message"]
    list_filter = ["outcome", "source__platform", "source"]
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
    list_select_related = ["source"]
    search_fields = ["reason", "external_id"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Hashtag)
class HashtagAdmin(admin.ModelAdmin):
    list_display = ["name", "key", "created_at"]
    search_fields = ["name"]


@admin.register(Author)
class AuthorAdmin(admin.ModelAdmin):
    list_display = ["handle", "display_name", "platform", "first_seen_at"]
    list_filter = ["platform"]
    search_fields = ["handle", "display_name", "external_id"]
    show_full_result_count = False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["key_prefix", "user", "name", "scope", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["scope"]
    list_select_related = ["user"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at"]
    fields = ["user", "name", "scope", "key_prefix", "created_at", "last_used_at", "revoked_at"]

    def has_add_permission(self, request):
        return False  # keys are shown once: create them with `manage.py tokens create`
