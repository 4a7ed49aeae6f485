"""The moderators' side of the admin: the queue (Post changelist), one post at a time, bulk jobs with
progress and undo, rules with a dry-run before saving, authors' bans, and the audit trail.

Every state change here goes through engagement.moderation; the views only check who may act.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import TruncDate
from django.http import HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from engagement import moderation, sentiment
from engagement.models import (
    PERSON_REASONS, Actor, Author, BulkJob, ModerationEvent, ModerationRule, Post, ReasonCode, Sentiment, Standing,
)

Status = Post.Status
# Ticked rows covering up to this many posts are changed during the request; larger selections and every
# "select all N matching" run as a job in the worker. Both are undoable jobs with audit entries.
INLINE_JOB_LIMIT = 200
BADGE_COLOURS = {
    ReasonCode.BANNED_WORD: "#c62828", ReasonCode.AUTHOR_BANNED: "#c62828",
    ReasonCode.DUPLICATE_OF_REJECTED: "#c62828", ReasonCode.SUSPECT_WORD: "#b26a00",
    ReasonCode.TOO_MANY_LINKS: "#b26a00", ReasonCode.BURST: "#6a1b9a", ReasonCode.CHECK_FAILED: "#37474f",
    ReasonCode.AUTHOR_ALLOWED: "#2e7d32",
}
STATUS_COLOURS = {Status.PENDING: "#555", Status.APPROVED: "#2e7d32", Status.REJECTED: "#c62828",
                  Status.FLAGGED: "#b26a00"}


def can_moderate(request) -> bool:
    return moderation.can_moderate(request.user)


def reason_badges(codes, reasons=()) -> str:
    """Coloured badges; hovering one shows what fired (rule, terms, score)."""
    details = defaultdict(list)
    for hit in reasons or ():
        terms = ", ".join(f"“{t['term']}” at {t['start']}" for t in hit.get("terms", []))
        text = " · ".join(part for part in (hit.get("rule", ""), terms, f"score {hit.get('score')}",
                                           hit.get("error", "")) if part)
        details[hit.get("code")].append(text)
    return format_html_join(
        " ", '<span class="reason-badge" style="background:{}" title="{}" data-code="{}">{}</span>',
        ((BADGE_COLOURS.get(code, "#455a64"), " | ".join(details.get(code, [])) or ReasonCode(code).label
          if code in ReasonCode.values else code, code, code) for code in codes),
    )


def highlighted(text: str, reasons) -> str:
    """The text, escaped, with every matched term of the screening hits marked."""
    spans = sorted({(t["start"], t["end"]) for hit in reasons or () for t in hit.get("terms", [])
                    if isinstance(t.get("start"), int) and isinstance(t.get("end"), int)})
    parts, position = [], 0
    for start, end in spans:
        if start < position or end > len(text):
            continue
        parts.append(format_html("{}<mark>{}</mark>", text[position:start], text[start:end]))
        position = end
    parts.append(format_html("{}", text[position:]))
    return format_html_join("", "{}", ((part,) for part in parts))


def explain(reasons) -> str:
    """A post's screening hits, one line each: phase, rule, matched terms with positions, score, by whom."""
    if not reasons:
        return "—"
    rows = []
    for hit in reasons:
        terms = ", ".join(f"“{t['term']}” ({t['start']}–{t['end']})" for t in hit.get("terms", []))
        rows.append((hit.get("code", ""), hit.get("phase", ""), hit.get("rule", "") or "built-in",
                     terms or hit.get("error", "") or "—", hit.get("score", ""), hit.get("by", "")))
    return format_html(
        "<table class='screening'><tr><th>reason</th><th>phase</th><th>rule</th><th>matched</th><th>score</th>"
        "<th>by</th></tr>{}</table>",
        format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
    )


# --- the queue: list filters ------------------------------------------------------------------------


class ReasonListFilter(admin.SimpleListFilter):
    title = "reason"
    parameter_name = "reason"

    def lookups(self, request, model_admin):
        return [(code.value, code.label) for code in ReasonCode]

    def queryset(self, request, queryset):
        return queryset.filter(reason_codes__contains=[self.value()]) if self.value() else queryset


class DecidedByListFilter(admin.SimpleListFilter):
    title = "decided by"
    parameter_name = "decided_by"

    def lookups(self, request, model_admin):
        return Actor.choices

    def queryset(self, request, queryset):
        return queryset.filter(decided_by=self.value()) if self.value() else queryset


class _ValueFilter(admin.SimpleListFilter):
    """A filter set by links (an author's posts, a cluster, an article's comments): it lists only the
    value in use, so the sidebar shows it and it can be cleared."""

    field = ""

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, self.describe(value))] if value else []

    def describe(self, value) -> str:
        return value

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class ClusterListFilter(_ValueFilter):
    title = "near-duplicate cluster"
    parameter_name = "cluster"
    field = "fingerprint"

    def describe(self, value):
        return f"cluster {value[:8]}…"


class AuthorListFilter(_ValueFilter):
    title = "author"
    parameter_name = "author"
    field = "author_id"

    def describe(self, value):
        author = Author.objects.filter(pk=value).first() if str(value).isdigit() else None
        return str(author) if author else value


class ArticleListFilter(_ValueFilter):
    title = "article"
    parameter_name = "article"
    field = "article_id"

    def describe(self, value):
        from engagement.models import Article

        article = Article.objects.filter(pk=value).first() if str(value).isdigit() else None
        return (article.title or article.url)[:60] if article else value


# --- forms ------------------------------------------------------------------------------------------------


class DecisionForm(forms.Form):
    state = forms.ChoiceField(choices=Status.choices)
    reason = forms.ChoiceField(choices=[(c.value, c.label) for c in PERSON_REASONS])
    note = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(attrs={"size": 60}))


class BulkForm(DecisionForm):
    scope = forms.ChoiceField(choices=[("selection", "these posts"), ("author", "every post by their authors"),
                                       ("cluster", "every post in their near-duplicate clusters")])


# --- the queue: the admin class bits used by PostAdmin ----------------------------------------------------


class ModerationQueueMixin:
    """Mixed into PostAdmin: columns, actions, the keyboard endpoint and the one-at-a-time view."""

    change_list_template = "admin/engagement/post/change_list.html"
    change_form_template = "admin/engagement/post/change_form.html"

    class Media:
        css = {"all": ["engagement/moderation.css"]}
        js = ["engagement/moderation.js"]

    def get_queryset(self, request):
        copies = (Post.objects.filter(fingerprint=OuterRef("fingerprint")).exclude(fingerprint="")
                  .order_by().values("fingerprint").annotate(n=Count("id")).values("n"))
        return (super().get_queryset(request).select_related("author", "article")
                .annotate(cluster_size=Subquery(copies, output_field=IntegerField())))

    @admin.display(description="state", ordering="status")
    def state_badge(self, post: Post) -> str:
        return format_html('<span class="state-badge state-{}" style="color:{}" data-post-state="{}">{}</span>',
                           post.status, STATUS_COLOURS.get(post.status, "#555"), post.status, post.status)

    @admin.display(description="sentiment", ordering="sentiment")
    def sentiment_badge(self, post: Post) -> str:
        if not post.sentiment:
            return "—"
        title = post.sentiment_reason or (f"{post.sentiment_score:+.2f} by {post.sentiment_backend}"
                                          if post.sentiment_score is not None else "")
        if post.sentiment_corrected_at:
            title = f"corrected by a person (the model said {post.sentiment_auto or 'nothing'})"
        return format_html('<span class="sentiment sentiment-{}" title="{}">{}{}</span>', post.sentiment, title,
                           Sentiment(post.sentiment).label, " ✎" if post.sentiment_corrected_at else "")

    @admin.display(description="reasons")
    def reasons_column(self, post: Post) -> str:
        return reason_badges(post.reason_codes, post.reasons) or "—"

    @admin.display(description="copies")
    def copies(self, post: Post) -> str:
        size = getattr(post, "cluster_size", None)
        if not size or size < 2:
            return "—"
        url = reverse("admin:engagement_post_changelist") + f"?cluster={post.fingerprint}"
        return format_html('<a href="{}" title="near-duplicates on any platform">{} copies</a>', url, size)

    @admin.display(description="context")
    def context(self, post: Post) -> str:
        changelist = reverse("admin:engagement_post_changelist")
        if post.article_id:
            title = (post.article.title or post.article.url)[:60]
            return format_html('<a href="{}?article={}" title="every comment on this article">{}</a>',
                               changelist, post.article_id, title)
        if post.reply_to_id:
            return format_html('<a href="{}">in reply to #{}</a>',
                               reverse("admin:engagement_post_change", args=[post.reply_to_id]), post.reply_to_id)
        return "—"

    @admin.display(description="author", ordering="author__handle")
    def author_link(self, post: Post) -> str:
        if not post.author_id:
            return "—"
        banned = " (banned)" if post.author.standing == Standing.BANNED else ""
        return format_html('<a href="{}?author={}" title="this author\'s posts">{}</a>{}',
                           reverse("admin:engagement_post_changelist"), post.author_id, str(post.author), banned)

    @admin.display(description="screening")
    def screening(self, post: Post) -> str:
        return explain(post.reasons)

    # -- actions: a preview with the count, then a job ---------------------------------------------------

    def has_moderate_permission(self, request) -> bool:
        return can_moderate(request)

    def get_actions(self, request):
        actions = super().get_actions(request)
        return actions if can_moderate(request) else {}

    @admin.action(description="Approve…", permissions=["moderate"])
    def approve_posts(self, request, queryset):
        return self._bulk(request, queryset, Status.APPROVED)

    @admin.action(description="Reject…", permissions=["moderate"])
    def reject_posts(self, request, queryset):
        return self._bulk(request, queryset, Status.REJECTED)

    @admin.action(description="Flag for review…", permissions=["moderate"])
    def flag_posts(self, request, queryset):
        return self._bulk(request, queryset, Status.FLAGGED)

    def _bulk(self, request, queryset, state):
        """Preview (how many posts, in which states) then confirm; runs as an undoable job."""
        selected_all = request.POST.get("select_across") == "1"
        form = BulkForm(request.POST if "confirm" in request.POST else None,
                        initial={"state": state, "scope": "selection",
                                 "reason": ReasonCode.OK if state == Status.APPROVED else ReasonCode.SPAM})
        scope = request.POST.get("scope", "selection")
        target = _expand(queryset, scope)
        if "confirm" in request.POST and form.is_valid():
            data = form.cleaned_data
            description = (f"{data['state']} {'all matching the filter' if selected_all else 'selected'} posts"
                           + ("" if data["scope"] == "selection" else f", expanded to {data['scope']}")
                           + f" ({request.GET.urlencode() or 'no filter'})")
            kind = {"author": BulkJob.Kind.AUTHOR, "cluster": BulkJob.Kind.CLUSTER}.get(data["scope"],
                                                                                        BulkJob.Kind.FILTER)
            inline = not selected_all and target.count() <= INLINE_JOB_LIMIT
            job = moderation.create_job(target, to_state=data["state"], reason_code=data["reason"],
                                        note=data["note"], user=request.user, kind=kind, description=description,
                                        enqueue=not inline)
            if inline:
                job = moderation.run_job(job.pk)
                self.message_user(request, format_html(
                    '{} of {} posts changed to {} (<a href="{}">job {}</a>, undoable).', job.changed, job.total,
                    job.to_state, reverse("admin:engagement_bulkjob_change", args=[job.pk]), job.pk))
                return None
            self.message_user(request, format_html(
                'Job {} queued for {} posts: <a href="{}">follow its progress</a>.', job.pk, job.total,
                reverse("admin:engagement_bulkjob_change", args=[job.pk])))
            return HttpResponseRedirect(reverse("admin:engagement_bulkjob_change", args=[job.pk]))
        by_state = dict(target.order_by().values_list("status").annotate(n=Count("id")))
        return TemplateResponse(request, "admin/engagement/post/bulk_confirm.html", {
            **self.admin_site.each_context(request), "title": f"{state.capitalize()} posts: preview",
            "opts": self.model._meta, "form": form, "state": state, "total": sum(by_state.values()),
            "by_state": sorted(by_state.items()), "scope": scope, "select_across": selected_all,
            "action": request.POST.get("action"),
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            "sample": list(target.select_related("author").order_by("-created_at")[:10]),
            "scopes": BulkForm.base_fields["scope"].choices,
        })

    # -- the keyboard endpoint and the one-at-a-time view --------------------------------------------------

    def get_urls(self):
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path("review/", self.admin_site.admin_view(self.review_view), name="%s_%s_review" % info),
            path("<int:post_id>/moderate/", self.admin_site.admin_view(self.moderate_view),
                 name="%s_%s_moderate" % info),
            path("<int:post_id>/sentiment/", self.admin_site.admin_view(self.sentiment_view),
                 name="%s_%s_sentiment" % info),
        ] + super().get_urls()

    def moderate_view(self, request, post_id):
        """POST state, reason, note: change one post (used by the keyboard shortcuts and the buttons)."""
        if request.method != "POST":
            return JsonResponse({"error": "POST only"}, status=405)
        if not can_moderate(request):
            return JsonResponse({"error": "only moderators can change a post's state"}, status=403)
        post = get_object_or_404(Post, pk=post_id)
        form = DecisionForm(request.POST)
        if not form.is_valid():
            return JsonResponse({"error": form.errors.get_json_data()}, status=400)
        data = form.cleaned_data
        changed = moderation.moderate([post.pk], data["state"], actor=Actor.PERSON, user=request.user,
                                      reason_code=data["reason"], note=data["note"])
        post.refresh_from_db()
        if request.headers.get("Accept", "").startswith("application/json"):
            return JsonResponse({"id": post.pk, "status": post.status, "changed": changed})
        self.message_user(request, f"Post {post.pk} is {post.status}.")
        return HttpResponseRedirect(request.POST.get("next") or reverse("admin:engagement_post_change",
                                                                        args=[post.pk]))

    def sentiment_view(self, request, post_id):
        """POST label: an editor's or moderator's correction of one post's sentiment (wins in every figure)."""
        if request.method != "POST":
            return JsonResponse({"error": "POST only"}, status=405)
        post = get_object_or_404(Post, pk=post_id)
        label = request.POST.get("label", "")
        if label not in Sentiment.values:
            return JsonResponse({"error": f"label must be one of {', '.join(Sentiment.values)}"}, status=400)
        try:
            sentiment.correct([post.pk], label, user=request.user)
        except PermissionDenied:
            return JsonResponse({"error": "only editors and moderators can correct sentiment"}, status=403)
        if request.headers.get("Accept", "").startswith("application/json"):
            return JsonResponse({"id": post.pk, "sentiment": label})
        self.message_user(request, f"Post {post.pk}: sentiment set to {label}.")
        return HttpResponseRedirect(reverse("admin:engagement_post_change", args=[post.pk]))

    def review_view(self, request):
        """One post at a time: the first post of the queue (pending and flagged, oldest first unless a
        filter says otherwise) after `after`, with its reasons and context."""
        queryset = self.get_queryset(request).filter(deleted_at__isnull=True)
        states = request.GET.getlist("status") or [Status.PENDING, Status.FLAGGED]
        queryset = queryset.filter(status__in=states).order_by("created_at", "id")
        for name, field in (("platform", "platform"), ("language", "language"), ("cluster", "fingerprint"),
                            ("author", "author_id"), ("article", "article_id")):
            if request.GET.get(name):
                queryset = queryset.filter(**{field: request.GET[name]})
        if request.GET.get("hashtag"):
            queryset = queryset.for_hashtag(request.GET["hashtag"])
        if request.GET.get("reason"):
            queryset = queryset.filter(reason_codes__contains=[request.GET["reason"]])
        skipped = [int(x) for x in request.GET.getlist("skip") if x.isdigit()][-200:]
        post = queryset.exclude(pk__in=skipped).first()
        context = {
            **self.admin_site.each_context(request), "title": "Review one post at a time", "opts": self.model._meta,
            "post": post, "remaining": queryset.count(), "can_moderate": can_moderate(request),
            "reasons": PERSON_REASONS, "query": request.GET.urlencode(),
            "text": highlighted(post.text, post.reasons) if post else "",
            "screening": explain(post.reasons) if post else "", "badges": reason_badges(
                post.reason_codes, post.reasons) if post else "",
            "thread": _thread(post) if post else [],
            "events": list(post.moderation_events.select_related("user")[:20]) if post else [],
        }
        return TemplateResponse(request, "admin/engagement/post/review.html", context)

    def changelist_view(self, request, extra_context=None):
        extra = {"title": "Moderation queue", **(extra_context or {}), "can_moderate": can_moderate(request),
                 "reasons": PERSON_REASONS}
        return super().changelist_view(request, extra)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra = extra_context or {}
        if object_id and str(object_id).isdigit():
            post = Post.objects.filter(pk=object_id).first()
            if post:
                extra.update({
                    "can_moderate": can_moderate(request), "reasons": PERSON_REASONS, "post": post,
                    "can_correct": request.user.has_perm("engagement.correct_sentiment"),
                    "sentiments": [Sentiment.POSITIVE, Sentiment.NEUTRAL, Sentiment.NEGATIVE],
                    "screening": explain(post.reasons), "badges": reason_badges(post.reason_codes, post.reasons),
                    "text": highlighted(post.text, post.reasons),
                    "events": list(post.moderation_events.select_related("user", "rule", "job")[:50]),
                    "thread": _thread(post),
                })
        return super().changeform_view(request, object_id, form_url, extra)


def _expand(queryset, scope: str):
    """The posts a bulk action covers: the selection, or everything by its authors or in its clusters."""
    if scope == "author":
        return Post.objects.filter(author_id__in=queryset.exclude(author_id=None).values("author_id"))
    if scope == "cluster":
        return Post.objects.filter(fingerprint__in=queryset.exclude(fingerprint="").values("fingerprint"))
    return Post.objects.filter(pk__in=queryset.values("pk"))


def _thread(post: Post, limit: int = 20) -> list[Post]:
    """The post's context: its parent, its replies, or the article's other comments around it."""
    near = Post.objects.select_related("author").exclude(pk=post.pk)
    if post.reply_to_id:
        return list(near.filter(pk=post.reply_to_id)) + list(near.filter(reply_to_id=post.reply_to_id)[:limit])
    if post.article_id:
        return list(near.filter(article_id=post.article_id).order_by("created_at")[:limit])
    return list(near.filter(reply_to_id=post.pk).order_by("created_at")[:limit])


# --- bulk jobs ------------------------------------------------------------------------------------------------


@admin.register(BulkJob)
class BulkJobAdmin(admin.ModelAdmin):
    list_display = ["id", "description", "state", "progress_bar", "total", "changed", "created_by", "created_at",
                    "undo_state"]
    list_filter = ["state", "kind", "to_state", "reason_code"]
    list_select_related = ["created_by", "undone_by"]
    show_facets = admin.ShowFacets.NEVER
    change_form_template = "admin/engagement/bulkjob/change_form.html"
    fields = ["description", "kind", "state", "progress_bar", "to_state", "reason_code", "note", "actor", "rule",
              "undo_of", "created_by", "created_at", "started_at", "finished_at", "total", "done", "changed",
              "error", "audit_link"]
    readonly_fields = fields

    @admin.display(description="progress")
    def progress_bar(self, job: BulkJob) -> str:
        return format_html('<progress max="100" value="{}" data-job-progress="{}"></progress> {} %  '
                           '({} of {})', job.progress, job.progress, job.progress, job.done, job.total)

    @admin.display(description="undo")
    def undo_state(self, job: BulkJob) -> str:
        undo = getattr(job, "undone_by", None)
        if undo:
            return format_html('undone by <a href="{}">job {}</a>',
                               reverse("admin:engagement_bulkjob_change", args=[undo.pk]), undo.pk)
        return "—"

    @admin.display(description="audit entries")
    def audit_link(self, job: BulkJob) -> str:
        return format_html('<a href="{}?job__id__exact={}">audit entries of this job</a>',
                           reverse("admin:engagement_moderationevent_changelist"), job.pk)

    def has_add_permission(self, request):
        return False  # jobs start from the queue's actions, a ban, or a rule

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [path("<int:job_id>/undo/", self.admin_site.admin_view(self.undo_view),
                     name="engagement_bulkjob_undo"),
                path("<int:job_id>/progress/", self.admin_site.admin_view(self.progress_view),
                     name="engagement_bulkjob_progress")] + super().get_urls()

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        job = BulkJob.objects.filter(pk=object_id).first() if str(object_id).isdigit() else None
        extra = {**(extra_context or {}), "job": job, "can_moderate": can_moderate(request),
                 "can_undo": bool(job and job.state == BulkJob.State.DONE and job.kind != BulkJob.Kind.UNDO
                                  and not BulkJob.objects.filter(undo_of=job).exists())}
        return super().changeform_view(request, object_id, form_url, extra)

    def progress_view(self, request, job_id):
        job = get_object_or_404(BulkJob, pk=job_id)
        return JsonResponse({"state": job.state, "done": job.done, "total": job.total, "changed": job.changed,
                             "progress": job.progress, "error": job.error})

    def undo_view(self, request, job_id):
        if request.method != "POST":
            return HttpResponseRedirect(reverse("admin:engagement_bulkjob_change", args=[job_id]))
        job = get_object_or_404(BulkJob, pk=job_id)
        try:
            undo = moderation.create_undo(job, user=request.user)
        except PermissionDenied:
            raise
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:engagement_bulkjob_change", args=[job_id]))
        self.message_user(request, f"Undo queued as job {undo.pk} for {undo.total} posts.")
        return HttpResponseRedirect(reverse("admin:engagement_bulkjob_change", args=[undo.pk]))


# --- rules with a dry-run ------------------------------------------------------------------------------


@admin.register(ModerationRule)
class ModerationRuleAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "hashtag", "enabled", "term_count", "threshold", "updated_at", "updated_by"]
    list_filter = ["kind", "enabled", "hashtag"]
    list_select_related = ["hashtag", "updated_by"]
    fields = ["name", "kind", "terms", "threshold", "hashtag", "enabled"]
    actions = ["apply_to_stored_posts"]

    @admin.display(description="terms")
    def term_count(self, rule: ModerationRule) -> int:
        return len(rule.term_list())

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """A save shows the dry-run first: what the rule would newly reject, flag or release among the
        stored posts, with a sample. Saving does not touch stored posts; applying is a separate step."""
        if request.method == "POST" and "_confirmed" not in request.POST and self.has_change_permission(request):
            obj = self.get_object(request, object_id) if object_id else None
            form = self.get_form(request, obj, change=obj is not None)(request.POST, instance=obj)
            if form.is_valid():
                candidate = form.save(commit=False)
                result = moderation.dry_run(candidate)
                return TemplateResponse(request, "admin/engagement/moderationrule/dry_run.html", {
                    **self.admin_site.each_context(request), "opts": self.model._meta, "rule": candidate,
                    "title": f"Dry-run of rule “{candidate.name}”", "counts": result.counts(),
                    "samples": dict(result.samples), "post_data": _hidden_fields(request.POST),
                })
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        from django.utils import timezone

        obj.updated_by, obj.updated_at = request.user, timezone.now()
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        self._maybe_apply(request, obj)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request, obj):
        self._maybe_apply(request, obj)
        return super().response_change(request, obj)

    def _maybe_apply(self, request, rule):
        if "_apply" in request.POST:
            self._apply(request, rule)

    def _apply(self, request, rule):
        jobs = moderation.apply_rule(rule, user=request.user)
        if not jobs:
            self.message_user(request, f"Rule “{rule.name}” changes no stored post.")
        for job in jobs:
            self.message_user(request, format_html('Job {} queued: {} (<a href="{}">progress</a>).', job.pk,
                                                   job.description,
                                                   reverse("admin:engagement_bulkjob_change", args=[job.pk])))

    @admin.action(description="Apply to stored posts (as undoable jobs)")
    def apply_to_stored_posts(self, request, queryset):
        if not can_moderate(request):
            raise PermissionDenied
        if "confirm" in request.POST:
            for rule in queryset:
                self._apply(request, rule)
            return None
        previews = [(rule, moderation.dry_run(rule).counts()) for rule in queryset]
        return TemplateResponse(request, "admin/engagement/moderationrule/apply_confirm.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "previews": previews,
            "title": "Apply rules to stored posts", "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
        })


def _hidden_fields(data) -> list[tuple[str, str]]:
    return [(key, value) for key in data for value in data.getlist(key)
            if key not in ("csrfmiddlewaretoken", "_save", "_continue", "_addanother")]


# --- authors -----------------------------------------------------------------------------------------------


class StandingForm(forms.Form):
    note = forms.CharField(required=False, max_length=2000, widget=forms.TextInput(attrs={"size": 60}))


class AuthorModerationMixin:
    list_display = ["handle", "display_name", "platform", "standing", "post_count", "first_seen_at"]
    list_filter = ["platform", "standing"]
    readonly_fields = ["platform", "external_id", "handle", "display_name", "url", "first_seen_at", "standing",
                       "standing_changed_at", "standing_changed_by", "posts_link"]
    fields = readonly_fields[:-1] + ["notes", "posts_link"]
    actions = ["ban", "unban", "allow_list"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_posts=Count("posts")).select_related("standing_changed_by")

    @admin.display(description="posts", ordering="n_posts")
    def post_count(self, author: Author) -> int:
        return author.n_posts

    @admin.display(description="posts")
    def posts_link(self, author: Author) -> str:
        return format_html('<a href="{}?author={}">this author\'s posts in the queue</a>',
                           reverse("admin:engagement_post_changelist"), author.pk)

    def get_actions(self, request):
        actions = super().get_actions(request)
        return actions if can_moderate(request) else {}

    def _standing(self, request, queryset, standing, verb):
        if "confirm" not in request.POST:
            return TemplateResponse(request, "admin/engagement/author/standing_confirm.html", {
                **self.admin_site.each_context(request), "opts": self.model._meta, "authors": list(queryset[:50]),
                "count": queryset.count(), "verb": verb, "form": StandingForm(), "action": request.POST["action"],
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                "posts": Post.objects.filter(author__in=queryset).exclude(status=Status.REJECTED).count(),
                "title": f"{verb.capitalize()} authors",
            })
        note = StandingForm(request.POST).data.get("note", "")[:2000]
        for author in queryset:
            job = moderation.set_standing(author, standing, user=request.user, note=note)
            if job:
                self.message_user(request, format_html(
                    '{} banned; job {} rejects their {} stored posts (<a href="{}">progress, undo</a>).', author,
                    job.pk, job.total, reverse("admin:engagement_bulkjob_change", args=[job.pk])))
            else:
                self.message_user(request, f"{author}: {Standing(standing).label}.")
        return None

    @admin.action(description="Ban (rejects their posts, now and at ingest)…")
    def ban(self, request, queryset):
        return self._standing(request, queryset, Standing.BANNED, "ban")

    @admin.action(description="Unban (their rejected posts stay rejected)…")
    def unban(self, request, queryset):
        return self._standing(request, queryset, Standing.NORMAL, "unban")

    @admin.action(description="Allow-list (approved at ingest unless a banned word fires)…")
    def allow_list(self, request, queryset):
        return self._standing(request, queryset, Standing.ALLOWED, "allow-list")


# --- the audit trail ----------------------------------------------------------------------------------------


@admin.register(ModerationEvent)
class ModerationEventAdmin(admin.ModelAdmin):
    list_display = ["at", "post_link", "actor", "user", "from_state", "to_state", "reason_code", "note", "rule",
                    "job_link"]
    list_filter = ["actor", "to_state", "from_state", "reason_code", "user", "at", "job"]
    list_select_related = ["user", "rule"]
    date_hierarchy = "at"
    search_fields = ["note"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    change_list_template = "admin/engagement/moderationevent/change_list.html"
    list_per_page = 100

    @admin.display(description="post")
    def post_link(self, event: ModerationEvent) -> str:
        if not event.post_id:
            return "(removed)"
        return format_html('<a href="{}">#{}</a>', reverse("admin:engagement_post_change", args=[event.post_id]),
                           event.post_id)

    @admin.display(description="job")
    def job_link(self, event: ModerationEvent) -> str:
        if not event.job_id:
            return "—"
        return format_html('<a href="{}">{}</a>', reverse("admin:engagement_bulkjob_change", args=[event.job_id]),
                           event.job_id)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        return [
            path("export.csv", self.admin_site.admin_view(self.export_view), name="engagement_moderationevent_export"),
            path("per-day/", self.admin_site.admin_view(self.per_day_view), name="engagement_moderationevent_per_day"),
        ] + super().get_urls()

    def _filtered(self, request):
        """The changelist's queryset for the request's filters (the same filters as on screen)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist: ChangeList = self.get_changelist_instance(request)
        return changelist.get_queryset(request)

    def export_view(self, request):
        """The audit entries of the current filter as CSV, streamed in keyset pages."""
        queryset = self._filtered(request).order_by("id").select_related("user", "rule")
        header = ["id", "at", "post_id", "actor", "user", "from_state", "to_state", "reason_code", "note", "rule",
                  "job_id", "details"]

        class Echo:
            def write(self, value):
                return value

        writer = csv.writer(Echo())

        def rows():
            yield writer.writerow(header)
            last = 0
            while True:
                page = list(queryset.filter(id__gt=last)[:2000])
                if not page:
                    return
                for e in page:
                    yield writer.writerow([e.pk, e.at.isoformat(), e.post_id or "", e.actor,
                                           e.user.get_username() if e.user else "", e.from_state, e.to_state,
                                           e.reason_code, e.note, e.rule.name if e.rule else "", e.job_id or "",
                                           json.dumps(e.details, ensure_ascii=False)])
                last = page[-1].pk

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="audit-trail.csv"'
        return response

    def per_day_view(self, request):
        """Decisions per moderator per day (people only; rules and defaults are counted apart)."""
        queryset = self._filtered(request)
        counts = (queryset.annotate(day=TruncDate("at")).order_by().values("day", "user__username", "actor")
                  .annotate(n=Count("id")).order_by("-day", "user__username", "actor"))
        return TemplateResponse(request, "admin/engagement/moderationevent/per_day.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "rows": list(counts[:1000]),
            "title": "Decisions per moderator per day", "query": request.GET.urlencode(),
        })

