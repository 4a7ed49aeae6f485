"""The editors' summary page (/summary/) and its CSV downloads (/summary/csv/<chart>/).

Thin entry points: the pickers are read by `summaries.Filters.from_params` and every figure comes from
`summaries.build()`, the function the API uses too, so the page, its tables, its CSV files and the API always
agree. This module only lays the figures out: it turns them into table rows (one function per chart, shared
by the HTML tables and the CSV files, so the two cannot differ) and into the geometry of server-rendered SVG
charts. No markup is built here: the templates render the geometry with autoescaping on, so collected text
(post texts, handles, hashtags, terms, source names, gap reasons) can only ever show as text.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.conf.locale import LANG_INFO
from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import reverse_lazy
from django.utils.http import urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from engagement import summaries
from engagement.models import Hashtag, Platform, Post, Sentiment, SpikeAlert
from engagement.summaries import Filters, Gap, InvalidFilters, Summary
from engagement.transfer import spreadsheet_cell

LOGIN_URL = reverse_lazy("admin:login")
# Editors and Moderators hold it (engagement/roles.py), superusers hold every permission.
PERMISSION = "engagement.view_post"

# SVG geometry, in viewBox units: the charts scale to their box with the page, the proportions stay.
WIDTH, TIME_HEIGHT = 760, 250
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 14, 40
BAR_ROW, BAR_LABEL = 24, 190
X_LABELS = 8  # at most this many time labels under a chart, so they never overlap
LABEL_CHARS = 28  # longer terms, hashtags and language names are cut in the chart (the table has them whole)
EXCERPT_CHARS = 160


def editors_only(view: Callable) -> Callable:
    """Log in through the admin's form first; then Editors, Moderators and superusers only (403 otherwise)."""
    return login_required(permission_required(PERMISSION, raise_exception=True)(view), login_url=LOGIN_URL)


def picker_params(query) -> dict[str, str]:
    """The request's pickers for `Filters.from_params`: the platform checkboxes arrive as repeated
    `platform` values, the API and `Filters.query()` give one comma-separated value; both are accepted."""
    params = {key: query.get(key, "") for key in ("hashtag", "period", "since", "until", "scope")}
    params["platform"] = ",".join(value for value in query.getlist("platform") if value)
    return params


# --- tables: one function per chart, used by the page's tables and by the CSV downloads -----------------


@dataclass
class Table:
    header: list[str]
    rows: list[list] = field(default_factory=list)


def when(moment: datetime, filters: Filters) -> str:
    """A time as the page shows it, in the page's time zone (the tables' headers name the zone)."""
    return moment.astimezone(filters.zone).strftime("%Y-%m-%d %H:%M")


def bucket_label(filters: Filters) -> str:
    return f"{'hour' if filters.step == 'hour' else 'day'} starting ({filters.tz})"


def percent(share: float | None) -> float | None:
    return None if share is None else round(share * 100, 1)


def language_name(code: str) -> str:
    info = LANG_INFO.get(code)
    return f"{info['name']} ({code})" if info and "name" in info else code


def platform_name(value: str) -> str:
    return Platform(value).label if value in Platform.values else value


def volume_table(summary: Summary) -> Table:
    platforms = list(summary.volume)
    table = Table([bucket_label(summary.filters), *(platform_name(p) for p in platforms)])
    for n, bucket in enumerate(summary.buckets):
        table.rows.append([when(bucket, summary.filters), *(summary.volume[p][n] for p in platforms)])
    return table


def sentiment_table(summary: Summary) -> Table:
    labels = [Sentiment(label).label for label in summaries.LABELS]
    table = Table([bucket_label(summary.filters), *(f"{label} (posts)" for label in labels),
                   *(f"{label} (% of posts)" for label in labels)])
    shares = [summary.share(label) for label in summaries.LABELS]
    for n, bucket in enumerate(summary.buckets):
        table.rows.append([when(bucket, summary.filters), *(summary.sentiment[label][n] for label in summaries.LABELS),
                           *(percent(share[n]) for share in shares)])
    return table


def net_table(summary: Summary) -> Table:
    table = Table([bucket_label(summary.filters), "net sentiment (-1 to 1)"])
    for bucket, net in zip(summary.buckets, summary.net):
        table.rows.append([when(bucket, summary.filters), None if net is None else round(net, 3)])
    return table


def languages_table(summary: Summary) -> Table:
    return Table(["language", "posts"], [[language_name(code), n] for code, n in summary.languages])


def terms_table(summary: Summary) -> Table:
    return Table(["term", "posts"], [[term, n] for term, n in summary.top_terms])


def hashtags_table(summary: Summary) -> Table:
    return Table(["hashtag", "posts"], [[f"#{tag}", n] for tag, n in summary.co_hashtags])


def authors_table(summary: Summary) -> Table:
    return Table(["author", "platform", "posts"],
                 [[handle, platform_name(platform), n] for handle, platform, n in summary.top_authors])


def posts_table(summary: Summary) -> Table:
    table = Table([f"published ({summary.filters.tz})", "platform", "author", "likes", "reposts", "replies",
                   "engagement", "status", "text", "link"])
    for post in summary.top_posts:
        table.rows.append([when(post.created_at, summary.filters), platform_name(post.platform),
                           post.author.handle if post.author else "", post.like_count, post.repost_count,
                           post.reply_count, post.engagement, post.status, post.text, link_of(post)])
    return table


def link_of(post: Post) -> str:
    # Only web links become links: a collected `javascript:` or `data:` URL is never put in an href.
    return post.url if post.url.lower().startswith(("https://", "http://")) else ""


TABLES: dict[str, Callable[[Summary], Table]] = {
    "volume": volume_table, "sentiment": sentiment_table, "net": net_table, "languages": languages_table,
    "terms": terms_table, "hashtags": hashtags_table, "authors": authors_table, "posts": posts_table,
}


# --- chart geometry (rendered by templates/summary/_time_chart.html and _bar_chart.html) ---------------


@dataclass
class Shape:
    x: float
    y: float
    width: float
    height: float
    title: str
    css: str = ""


@dataclass
class TimeChart:
    key: str
    width: int = WIDTH
    height: int = TIME_HEIGHT
    left: int = LEFT
    top: int = TOP
    right_x: int = WIDTH - RIGHT
    bottom_y: int = TIME_HEIGHT - BOTTOM
    gaps: list[Shape] = field(default_factory=list)
    bars: list[Shape] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # polyline points, one per unbroken run
    dots: list[Shape] = field(default_factory=list)
    spikes: list[Shape] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    zero_y: float | None = None


@dataclass
class Bar:
    y: float  # the row's middle (for the texts)
    top: float
    width: float
    value_x: float
    label: str
    value: int
    title: str


@dataclass
class BarChart:
    key: str
    width: int = WIDTH
    height: int = 0
    label_x: int = BAR_LABEL - 8
    bar_x: int = BAR_LABEL
    bar_height: int = BAR_ROW - 6
    bars: list[Bar] = field(default_factory=list)
    empty: bool = False


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (at least 1): a round axis top."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class TimeAxis:
    """Maps bucket n to its column and a value to its height, for the charts over time."""

    def __init__(self, summary: Summary, low: float, high: float):
        self.count = max(len(summary.buckets), 1)
        self.plot_width = WIDTH - LEFT - RIGHT
        self.plot_height = TIME_HEIGHT - TOP - BOTTOM
        self.low, self.high = low, high

    def x(self, n: int) -> float:
        return round(LEFT + n * self.plot_width / self.count, 2)

    def column(self) -> float:
        return round(self.plot_width / self.count, 2)

    def y(self, value: float) -> float:
        return round(TOP + self.plot_height * (self.high - value) / (self.high - self.low), 2)


def _time_chart(key: str, summary: Summary, axis: TimeAxis, ticks: Sequence[float], tick_label) -> TimeChart:
    filters = summary.filters
    chart = TimeChart(key=key)
    chart.y_ticks = [(axis.y(value), tick_label(value)) for value in ticks]
    every = max(1, math.ceil(len(summary.buckets) / X_LABELS))
    previous_day = None
    for n, bucket in enumerate(summary.buckets):
        if n % every:
            continue
        local = bucket.astimezone(filters.zone)
        if filters.step == "day":
            label = local.strftime("%d %b")
        else:
            label = local.strftime("%H:%M") if local.date() == previous_day else local.strftime("%d %b %H:%M")
            previous_day = local.date()
        chart.x_ticks.append((round(axis.x(n) + axis.column() / 2, 2), label))
    chart.gaps = _gap_shapes(summary, axis)
    return chart


def gap_title(gaps: Sequence[Gap], filters: Filters) -> str:
    return "\n".join(f"Collection gap: {gap.source} ({platform_name(gap.platform)}), {when(gap.start, filters)} to "
                     f"{when(gap.end, filters)} {filters.tz}: {gap.reason}" for gap in gaps)


def _gap_shapes(summary: Summary, axis: TimeAxis) -> list[Shape]:
    """One shaded column per run of neighbouring buckets that overlap the same gaps."""
    shapes: list[Shape] = []
    previous: list[Gap] | None = None
    for n, gaps in enumerate(summary.gap_buckets()):
        if not gaps:
            previous = None
            continue
        if previous is not None and [id(g) for g in gaps] == [id(g) for g in previous]:
            shapes[-1].width = round(shapes[-1].width + axis.column(), 2)
        else:
            shapes.append(Shape(axis.x(n), TOP, axis.column(), axis.plot_height, gap_title(gaps, summary.filters),
                                "gap"))
        previous = gaps
    return shapes


def _bucket_of(summary: Summary, moment: datetime) -> int | None:
    found = None
    for n, bucket in enumerate(summary.buckets):
        if bucket <= moment:
            found = n
    return found


def spike_text(alert: SpikeAlert, filters: Filters) -> str:
    hour = when(alert.bucket, filters)
    if alert.kind == SpikeAlert.Kind.NEGATIVE:
        return (f"Negative share spike in the hour from {hour}: {alert.value * 100:.0f} % of scored posts negative "
                f"(before: {alert.baseline * 100:.0f} %)")
    return (f"Volume spike in the hour from {hour}: {alert.value:.0f} posts "
            f"(before: {alert.baseline:.1f} an hour)")


def volume_chart(summary: Summary) -> TimeChart:
    platforms = list(summary.volume)
    # Only the axis's top: the stack's height per bucket (no number shown comes from here).
    stacked = [sum(summary.volume[p][n] for p in platforms) for n in range(len(summary.buckets))]
    top = nice_ceiling(max(stacked, default=0))
    axis = TimeAxis(summary, 0, top)
    chart = _time_chart("volume", summary, axis, [0, top / 2, top], number)
    for n, bucket in enumerate(summary.buckets):
        base = 0
        for index, platform in enumerate(platforms):
            value = summary.volume[platform][n]
            if value:
                chart.bars.append(Shape(axis.x(n) + 1, axis.y(base + value), max(axis.column() - 2, 0.5),
                                        round(axis.y(base) - axis.y(base + value), 2),
                                        f"{when(bucket, summary.filters)} · {platform_name(platform)}: {value} posts",
                                        f"series-{index % 10}"))
            base += value
    for alert in summary.spikes:
        n = _bucket_of(summary, alert.bucket)
        if n is not None:
            chart.spikes.append(Shape(round(axis.x(n) + axis.column() / 2, 2), TOP, 0, axis.plot_height,
                                      spike_text(alert, summary.filters), f"spike spike-{alert.kind}"))
    return chart


def sentiment_chart(summary: Summary) -> TimeChart:
    axis = TimeAxis(summary, 0, 1)
    chart = _time_chart("sentiment", summary, axis, [0, 0.5, 1], lambda v: f"{v * 100:.0f} %")
    shares = {label: summary.share(label) for label in summaries.LABELS}
    for n, bucket in enumerate(summary.buckets):
        base = 0.0
        for label in summaries.LABELS:
            share = shares[label][n]
            if share:
                chart.bars.append(Shape(axis.x(n) + 1, axis.y(base + share), max(axis.column() - 2, 0.5),
                                        round(axis.y(base) - axis.y(base + share), 2),
                                        f"{when(bucket, summary.filters)} · {Sentiment(label).label}: "
                                        f"{percent(share)} % ({summary.sentiment[label][n]} posts)", str(label)))
                base += share
    return chart


def net_chart(summary: Summary) -> TimeChart:
    axis = TimeAxis(summary, -1, 1)
    chart = _time_chart("net", summary, axis, [-1, -0.5, 0, 0.5, 1], lambda v: f"{v:+g}" if v else "0")
    chart.zero_y = axis.y(0)
    run: list[str] = []
    for n, (bucket, net) in enumerate(zip(summary.buckets, summary.net)):
        if net is None:
            if run:
                chart.lines.append(" ".join(run))
            run = []
            continue
        x, y = round(axis.x(n) + axis.column() / 2, 2), axis.y(net)
        run.append(f"{x},{y}")
        chart.dots.append(Shape(x, y, 0, 0, f"{when(bucket, summary.filters)} · net sentiment {net:+.2f}",
                                "positive" if net > 0 else "negative" if net < 0 else "neutral"))
    if run:
        chart.lines.append(" ".join(run))
    return chart


def bar_chart(key: str, items: Sequence[tuple[str, int]]) -> BarChart:
    top = max((n for _label, n in items), default=0) or 1
    chart = BarChart(key=key, height=max(len(items), 1) * BAR_ROW + 4, empty=not items)
    room = WIDTH - BAR_LABEL - 60  # leaves space for the number after the longest bar
    for row, (label, n) in enumerate(items):
        short = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"
        middle, width = 2 + row * BAR_ROW + BAR_ROW / 2, round(max(room * n / top, 1), 2)
        chart.bars.append(Bar(y=middle, top=middle - (BAR_ROW - 6) / 2, width=width, value_x=BAR_LABEL + width + 6,
                              label=short, value=n, title=f"{label}: {n} posts"))
    return chart


# --- views -----------------------------------------------------------------------------------------


def _form(request, filters: Filters | None) -> dict:
    since = until = ""
    if filters and not filters.period:
        since = filters.start.astimezone(filters.zone).date().isoformat()
        until = filters.end.astimezone(filters.zone).date().isoformat()
    elif not filters:
        since, until = request.GET.get("since", ""), request.GET.get("until", "")
    chosen = set(filters.platforms) if filters else set(picker_params(request.GET)["platform"].split(","))
    return {
        "hashtags": list(Hashtag.objects.order_by("name").values_list("key", "name")),
        "hashtag": filters.hashtag if filters else request.GET.get("hashtag", ""),
        "periods": list(summaries.PERIODS),
        "period": filters.period if filters else request.GET.get("period", ""),
        "since": since, "until": until,
        "platforms": [(value, label, value in chosen) for value, label in Platform.choices],
        "approved_only": filters.approved_only if filters else request.GET.get("scope") != "all",
    }


@require_GET
@never_cache
@editors_only
def summary_page(request):
    try:
        filters = Filters.from_params(picker_params(request.GET))
    except InvalidFilters as error:
        return render(request, "summary/page.html", {"form": _form(request, None), "error": str(error)}, status=400)
    summary = summaries.build(filters)
    query = urlencode(filters.query())
    tables = {key: make(summary) for key, make in TABLES.items()}
    form = _form(request, filters)
    context = {
        "form": form,
        "hashtag_name": dict(form["hashtags"]).get(filters.hashtag, filters.hashtag),
        "filters": filters,
        "summary": summary,
        "query": query,
        "period_start": when(filters.start, filters),
        "period_end": when(filters.end, filters),
        "spikes": [spike_text(alert, filters) for alert in summary.spikes],
        "gaps": [{"gap": gap, "start": when(gap.start, filters), "end": when(gap.end, filters),
                  "platform": platform_name(gap.platform)} for gap in summary.gaps],
        "legend_platforms": [(f"series-{n % 10}", platform_name(p)) for n, p in enumerate(summary.volume)],
        "legend_sentiment": [(str(label), Sentiment(label).label) for label in summaries.LABELS],
        "charts": {
            "volume": volume_chart(summary),
            "sentiment": sentiment_chart(summary),
            "net": net_chart(summary),
            "languages": bar_chart("languages", [(language_name(c), n) for c, n in summary.languages]),
            "terms": bar_chart("terms", summary.top_terms),
            "hashtags": bar_chart("hashtags", [(f"#{tag}", n) for tag, n in summary.co_hashtags]),
        },
        "tables": tables,
        "top_posts": [{"post": post, "link": link_of(post), "when": when(post.created_at, filters),
                       "platform": platform_name(post.platform)} for post in summary.top_posts],
        "excerpt_chars": EXCERPT_CHARS,
    }
    return render(request, "summary/page.html", context)


@require_GET
@never_cache
@editors_only
def summary_csv(request, chart: str):
    if chart not in TABLES:
        raise Http404(f"no chart {chart!r}; one of: {', '.join(TABLES)}")
    try:
        filters = Filters.from_params(picker_params(request.GET))
    except InvalidFilters as error:
        return HttpResponse(f"{error}\n", status=400, content_type="text/plain; charset=utf-8")
    table = TABLES[chart](summaries.build(filters))
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    tag = re.sub(r"[^A-Za-z0-9_-]", "", filters.hashtag) or "hashtag"  # a header wants plain ASCII
    response["Content-Disposition"] = (f'attachment; filename="summary-{chart}-{tag}-'
                                       f'{filters.start:%Y%m%d}-{filters.end:%Y%m%d}.csv"')
    writer = csv.writer(response)
    writer.writerow(table.header)
    # Cells a spreadsheet would run as formulas get a leading quote, as `manage.py export --spreadsheet-safe`.
    writer.writerows([spreadsheet_cell(cell) for cell in row] for row in table.rows)
    return response
