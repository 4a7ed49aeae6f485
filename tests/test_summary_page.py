"""The editors' summary page (/summary/) and its CSV downloads (engagement/summary_views.py), through the
Django test client: who may see it, that every chart and table shows the figures of `summaries.build()` for
known data, that the CSV files match the tables, bad pickers, hostile content, and a bounded query count."""

from __future__ import annotations

import csv
import io
from dataclasses import replace
from datetime import timedelta

import pytest
from bs4 import BeautifulSoup
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from engagement import moderation, sentiment, summaries
from engagement.models import Actor, CollectionRun, Hashtag, Post, ReasonCode, Source, SpikeAlert
from engagement.summary_views import picker_params
from tests.test_moderation import T0, TAG, item, store

pytestmark = pytest.mark.django_db
KYIV = "Europe/Kyiv"
# 20 November in Kyiv (UTC+2): 2026-11-19 22:00 to 2026-11-20 22:00 UTC, hour by hour. T0 is 14:00 there.
DAY = {"hashtag": TAG, "since": "2026-11-20", "until": "2026-11-21"}
CHARTS = ["volume", "sentiment", "net", "languages", "terms", "hashtags", "authors", "posts"]
HOSTILE_TEXT = "<script>alert(1)</script> <img src=x onerror=alert(1)> talks"
HOSTILE_HANDLE = "<img src=x onerror=alert(1)>"
HOSTILE_TAG = "<svg/onload=alert(1)>"


@pytest.fixture(autouse=True)
def kyiv(settings):
    settings.ENGAGEMENT_SUMMARY_TIMEZONE = KYIV


@pytest.fixture
def hashtag():
    return Hashtag.objects.get_or_create(key=TAG, defaults={"name": "UkrainePeaceTalks"})[0]


def person(django_user_model, name: str, group: str | None = None, **flags):
    user = django_user_model.objects.create_user(username=name, password="pw", is_staff=True, **flags)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def editor_client(client, django_user_model):
    client.force_login(person(django_user_model, "ed", "Editors"))
    return client


def approve(posts: list[Post]) -> None:
    moderation.moderate([p.pk for p in posts], Post.Status.APPROVED, actor=Actor.SYSTEM,
                        reason_code=ReasonCode.POST_MODERATION)


def conversation(hashtag) -> dict[str, Post]:
    """Four approved posts (three English with a clear sentiment, one Ukrainian) and two pending ones (Russian,
    English), on Mastodon and Bluesky; a failed collection run in the afternoon and a volume spike at T0."""
    posts = dict(zip(["m1", "m2", "b1", "b2", "m3", "b3"], store(
        replace(item(1, "Wonderful progress in Geneva, great hopeful news, I love it", author="anna",
                     tags=(TAG, "peace")), like_count=5, url="https://social.example/@anna/1"),
        replace(item(2, "Terrible, awful failure. I hate this disaster", author="anna", minutes=70,
                     tags=(TAG, "peace", "geneva")), repost_count=3, url="javascript:alert(1)"),
        replace(item(3, "The delegations meet on Tuesday in Geneva", platform="bluesky", minutes=80),
                reply_count=1),
        item(4, "Переговори у Женеві тривають уже третій день, делегації працюють", platform="bluesky", minutes=90),
        item(5, "Переговоры в Женеве продолжаются уже третий день, делегации работают", minutes=100),
        item(6, "Another quiet and ordinary day of talks", platform="bluesky", minutes=180),
    )))
    sentiment.score_pending()
    approve([posts[key] for key in ("m1", "m2", "b1", "b2")])
    source = Source.objects.create(platform="mastodon", name="social.example", base_url="https://social.example")
    source.hashtags.add(hashtag)
    CollectionRun.objects.create(source=source, started_at=T0 - timedelta(hours=3), finished_at=T0 - timedelta(hours=3),
                                 outcome=CollectionRun.Outcome.OK)
    CollectionRun.objects.create(source=source, started_at=T0 + timedelta(hours=2),
                                 finished_at=T0 + timedelta(hours=2, minutes=1), outcome=CollectionRun.Outcome.FAILED,
                                 message="HTTP 503 from the instance")
    CollectionRun.objects.create(source=source, started_at=T0 + timedelta(hours=4),
                                 finished_at=T0 + timedelta(hours=4, minutes=1), outcome=CollectionRun.Outcome.OK)
    SpikeAlert.objects.create(hashtag=TAG, bucket=T0, kind=SpikeAlert.Kind.VOLUME, value=40, baseline=2, factor=3)
    return {key: Post.objects.get(pk=post.pk) for key, post in posts.items()}


# --- reading the page --------------------------------------------------------------------------------


def page(client, **params):
    response = client.get("/summary/", params)
    return response, BeautifulSoup(response.content.decode(), "html.parser")


def table(soup, key: str) -> list[list[str]]:
    """A table's rows (header first) as the page shows them."""
    node = soup.find("table", attrs={"data-table": key})
    assert node is not None, f"no table {key}"
    return [[cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"])] for row in node.find_all("tr")]


def rows_by_first_column(rows: list[list[str]]) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in rows[1:]}


def download(client, chart: str, **params) -> list[list[str]]:
    response = client.get(f"/summary/csv/{chart}/", params)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.reader(io.StringIO(response.content.decode())))


def build(**params) -> summaries.Summary:
    return summaries.build(summaries.Filters.from_params(params))


# --- who may see it ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/summary/", "/summary/csv/volume/"])
def test_an_anonymous_visitor_is_sent_to_the_admin_login(client, hashtag, path):
    response = client.get(path, {"period": "7d"})
    assert response.status_code == 302
    assert response["Location"].startswith(f"/admin/login/?next={path}")


@pytest.mark.parametrize("group, flags, status", [
    (None, {}, 403),  # staff, but neither editor nor moderator
    ("Editors", {}, 200),
    ("Moderators", {}, 200),
    (None, {"is_superuser": True}, 200),
])
@pytest.mark.parametrize("path", ["/summary/", "/summary/csv/volume/"])
def test_editors_moderators_and_superusers_may_see_it_other_staff_may_not(
    client, django_user_model, hashtag, group, flags, status, path
):
    client.force_login(person(django_user_model, "someone", group, **flags))
    assert client.get(path).status_code == status


def test_the_page_links_to_the_admin_and_names_its_time_zone(editor_client, hashtag):
    response, soup = page(editor_client)
    assert response.status_code == 200
    assert soup.find("a", href="/admin/") is not None
    assert "times in Europe/Kyiv" in soup.get_text(" ")
    assert soup.find("link", rel="stylesheet")["href"] == "/static/engagement/summary.css"
    assert "<script" not in response.content.decode()  # no script needed, none fetched from elsewhere
    assert "http://" not in response.content.decode().replace("http://www.w3.org", "")


# --- the charts and their tables -------------------------------------------------------------------


def test_the_collected_data_is_what_the_figures_below_expect(hashtag):
    posts = conversation(hashtag)
    assert {key: (p.language, p.sentiment, p.status) for key, p in posts.items()} == {
        "m1": ("en", "positive", "approved"), "m2": ("en", "negative", "approved"),
        "b1": ("en", "neutral", "approved"), "b2": ("uk", "unscored", "approved"),
        "m3": ("ru", "unscored", "pending"), "b3": ("en", "neutral", "pending"),
    }


def test_every_chart_has_its_svg_its_table_and_a_csv_link(editor_client, hashtag):
    conversation(hashtag)
    response, soup = page(editor_client, **DAY)
    assert response.status_code == 200
    for key in ["volume", "sentiment", "net", "languages", "terms", "hashtags"]:
        section = soup.find(id=f"chart-{key}")
        assert section.find("svg", attrs={"data-chart": key}) is not None, key
        assert section.find("details").find("table", attrs={"data-table": key}) is not None, key
    for key in CHARTS:
        link = soup.find(id=f"chart-{key}").find("a", class_="csv")
        assert link["href"].startswith(f"/summary/csv/{key}/?hashtag=ukrainepeacetalks&scope=approved&since=2026-11-20")


def test_volume_is_stacked_by_platform_per_hour_in_kyiv_time(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY)
    rows = table(soup, "volume")
    assert rows[0] == ["hour starting (Europe/Kyiv)", "Bluesky", "Mastodon"]
    assert len(rows) == 1 + 24
    volume = rows_by_first_column(rows)
    assert volume["2026-11-20 14:00"] == ["0", "1"]  # T0 is 12:00 UTC
    assert volume["2026-11-20 15:00"] == ["2", "1"]
    assert volume["2026-11-20 16:00"] == ["0", "0"]  # b3 at 17:00 is pending
    assert volume["2026-11-20 17:00"] == ["0", "0"]
    titles = [t.get_text() for t in soup.find("svg", attrs={"data-chart": "volume"}).select("g.bars title")]
    assert titles == ["2026-11-20 14:00 · Mastodon: 1 posts", "2026-11-20 15:00 · Bluesky: 2 posts",
                      "2026-11-20 15:00 · Mastodon: 1 posts"]
    totals = {dd["id"]: dd.get_text() for dd in soup.select(".totals dd")}
    assert totals == {"total-posts": "4", "total-positive": "1", "total-neutral": "1", "total-negative": "1",
                      "total-unscored": "1", "total-waiting": "0"}


def test_sentiment_share_and_net_sentiment_per_hour(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY)
    shares = rows_by_first_column(table(soup, "sentiment"))
    # positive, neutral, negative, not scored: posts, then % of posts
    assert shares["2026-11-20 14:00"] == ["1", "0", "0", "0", "100.0", "0.0", "0.0", "0.0"]
    assert shares["2026-11-20 15:00"] == ["0", "1", "1", "1", "0.0", "33.3", "33.3", "33.3"]
    assert shares["2026-11-20 16:00"] == ["0"] * 4 + [""] * 4  # no posts: no share
    net = rows_by_first_column(table(soup, "net"))
    assert (net["2026-11-20 14:00"], net["2026-11-20 15:00"], net["2026-11-20 16:00"]) == (["1.0"], ["-0.5"], [""])
    svg = soup.find("svg", attrs={"data-chart": "net"})
    assert svg.find("line", class_="zero") is not None
    assert [t.get_text() for t in svg.select("circle title")] == [
        "2026-11-20 14:00 · net sentiment +1.00", "2026-11-20 15:00 · net sentiment -0.50"]
    bars = soup.find("svg", attrs={"data-chart": "sentiment"}).select("g.bars rect")
    assert [bar["class"] for bar in bars] == [["positive"], ["neutral"], ["negative"], ["unscored"]]


def test_languages_terms_hashtags_authors_and_posts(editor_client, hashtag):
    posts = conversation(hashtag)
    _response, soup = page(editor_client, **DAY)
    assert table(soup, "languages")[1:] == [["English (en)", "3"], ["Ukrainian (uk)", "1"]]
    terms = rows_by_first_column(table(soup, "terms"))
    assert terms["geneva"] == ["2"]
    assert table(soup, "hashtags")[1:] == [["#peace", "2"], ["#geneva", "1"]]
    assert table(soup, "authors")[1] == ["anna", "Mastodon", "2"]
    top = table(soup, "posts")
    assert top[0] == ["published", "text", "author", "platform", "likes", "reposts", "replies", "link"]
    assert top[1][:7] == ["2026-11-20 14:00", posts["m1"].text, "anna", "Mastodon", "5", "0", "0"]
    assert top[2][4:7] == ["0", "3", "0"] and top[3][4:7] == ["0", "0", "1"]
    links = soup.find("table", attrs={"data-table": "posts"}).find_all("a", target="_blank")
    assert [a["href"] for a in links] == ["https://social.example/@anna/1"]  # never the javascript: one
    bar_titles = [t.get_text() for t in soup.find("svg", attrs={"data-chart": "languages"}).find_all("title")]
    assert bar_titles == ["English (en): 3 posts", "Ukrainian (uk): 1 posts"]


def test_the_page_shows_exactly_the_figures_of_summaries_build(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY, scope="all")
    summary = build(**DAY, scope="all")
    assert int(soup.find(id="total-posts").get_text()) == summary.totals["posts"] == 6
    assert [[row[0], int(row[1])] for row in table(soup, "terms")[1:]] == [list(t) for t in summary.top_terms]
    assert [int(row[-1]) for row in table(soup, "authors")[1:]] == [n for _h, _p, n in summary.top_authors]


def test_the_approved_only_switch_changes_the_numbers(editor_client, hashtag):
    conversation(hashtag)
    _response, approved = page(editor_client, **DAY, scope="approved")
    _response, everything = page(editor_client, **DAY, scope="all")
    assert approved.find(id="total-posts").get_text() == "4"
    assert everything.find(id="total-posts").get_text() == "6"
    assert rows_by_first_column(table(everything, "volume"))["2026-11-20 15:00"] == ["2", "2"]
    assert rows_by_first_column(table(everything, "volume"))["2026-11-20 17:00"] == ["1", "0"]
    assert table(everything, "languages")[1:] == [["English (en)", "4"], ["Russian (ru)", "1"], ["Ukrainian (uk)", "1"]]
    assert everything.find("input", attrs={"name": "scope", "value": "all"}).has_attr("checked")
    assert "all collected posts" in everything.find(class_="period").get_text()


def test_the_platform_checkboxes_narrow_the_figures(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY, platform=["bluesky"])
    assert soup.find(id="total-posts").get_text() == "2"
    assert table(soup, "volume")[0] == ["hour starting (Europe/Kyiv)", "Bluesky"]
    assert soup.find("input", attrs={"name": "platform", "value": "bluesky"}).has_attr("checked")
    assert not soup.find("input", attrs={"name": "platform", "value": "mastodon"}).has_attr("checked")
    # Ticking two boxes gives both; the comma form of the API and of the CSV links gives the same.
    _response, both = page(editor_client, **DAY, platform=["bluesky", "mastodon"])
    _response, comma = page(editor_client, **DAY, platform="bluesky,mastodon")
    assert both.find(id="total-posts").get_text() == comma.find(id="total-posts").get_text() == "4"


def test_the_outage_is_shaded_with_its_reason_and_the_spike_is_listed_and_marked(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY)
    reason = ("Collection gap: social.example (Mastodon), 2026-11-20 16:00 to 2026-11-20 18:00 Europe/Kyiv: "
              "failed: HTTP 503 from the instance")
    for key in ["volume", "sentiment", "net"]:
        gaps = soup.find("svg", attrs={"data-chart": key}).select("g.gap")
        assert [g.find("title").get_text() for g in gaps] == [reason], key  # 16:00 and 17:00, one shaded stretch
        assert gaps[0].find("rect", class_="gap-area")
    assert "HTTP 503 from the instance" in soup.find(class_="gaps-list").get_text()
    alert = "Volume spike in the hour from 2026-11-20 14:00: 40 posts (before: 2.0 an hour)"
    assert [li.get_text() for li in soup.select(".alerts li")] == [alert]
    marks = soup.find("svg", attrs={"data-chart": "volume"}).select("g.spike")
    assert [m.find("title").get_text() for m in marks] == [alert]


def test_a_period_of_days_is_shown_day_by_day(editor_client, hashtag):
    conversation(hashtag)
    _response, soup = page(editor_client, hashtag=TAG, since="2026-11-15", until="2026-11-25")
    rows = table(soup, "volume")
    assert rows[0][0] == "day starting (Europe/Kyiv)" and len(rows) == 1 + 10
    assert rows_by_first_column(rows)["2026-11-20 00:00"] == ["2", "2"]


# --- CSV -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["approved", "all"])
@pytest.mark.parametrize("chart", [c for c in CHARTS if c != "posts"])
def test_each_csv_download_matches_its_table(editor_client, hashtag, chart, scope):
    conversation(hashtag)
    _response, soup = page(editor_client, **DAY, scope=scope)
    link = soup.find(id=f"chart-{chart}").find("a", class_="csv")["href"]
    response = editor_client.get(link)
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows == table(soup, chart)
    if chart in ("volume", "sentiment", "net"):
        assert "(Europe/Kyiv)" in rows[0][0]


def test_the_posts_csv_has_the_whole_texts_and_the_numbers_of_the_table(editor_client, hashtag):
    posts = conversation(hashtag)
    _response, soup = page(editor_client, **DAY)
    rows = download(editor_client, "posts", **DAY)
    assert rows[0] == ["published (Europe/Kyiv)", "platform", "author", "likes", "reposts", "replies", "engagement",
                       "status", "text", "link"]
    shown = table(soup, "posts")[1:]
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows[1:]] == [
        (s[0], s[3], s[2], s[4], s[5], s[6]) for s in shown]
    assert rows[1][6:] == ["5", "approved", posts["m1"].text, "https://social.example/@anna/1"]
    assert rows[2][9] == ""  # the javascript: URL is not given out as a link


def test_a_csv_cell_a_spreadsheet_would_run_is_quoted(editor_client, hashtag):
    approve(store(item(1, "=HYPERLINK(\"https://evil.example\",\"click\") talks", author="=cmd")))
    rows = download(editor_client, "posts", **DAY)
    assert rows[1][2] == "'=cmd" and rows[1][8].startswith("'=HYPERLINK")
    net = download(editor_client, "net", **DAY)
    assert all(not cell.startswith("'") for row in net for cell in row)


def test_an_unknown_chart_is_404(editor_client, hashtag):
    assert editor_client.get("/summary/csv/pie/").status_code == 404


# --- bad pickers, hostile content, queries ---------------------------------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"period": "5y"}, "period must be one of 24h, 7d, 30d, 90d"),
    ({"hashtag": "nosuchtag"}, "unknown hashtag &#x27;nosuchtag&#x27;"),
    ({"platform": "myspace"}, "unknown platform &#x27;myspace&#x27;"),
    ({"scope": "some"}, "scope must be &#x27;approved&#x27;"),
    ({"period": "", "since": "yesterday"}, "since must be an ISO date or time"),
    ({"period": "", "since": "2026-11-21", "until": "2026-11-20"}, "until must be after since"),
])
def test_an_invalid_picker_gives_400_with_the_message(editor_client, hashtag, params, message):
    response = editor_client.get("/summary/", params)
    assert response.status_code == 400
    body = response.content.decode()
    assert message in body
    assert 'role="alert"' in body and "<form" in body  # the pickers are still there to correct it
    csv_response = editor_client.get("/summary/csv/volume/", params)
    assert csv_response.status_code == 400
    assert message.replace("&#x27;", "'") in csv_response.content.decode()


def test_a_hostile_picker_value_is_shown_as_text(editor_client, hashtag):
    response = editor_client.get("/summary/", {"hashtag": "<script>alert(1)</script>"})
    assert response.status_code == 400
    assert "<script>alert(1)</script>" not in response.content.decode()


def test_hostile_text_handles_hashtags_source_names_and_reasons_render_as_text(editor_client, hashtag):
    approve(store(replace(item(1, HOSTILE_TEXT, author=HOSTILE_HANDLE, tags=(TAG, HOSTILE_TAG)), like_count=1)))
    source = Source.objects.create(platform="mastodon", name="<b onmouseover=alert(2)>src</b>",
                                   base_url="https://social.example")
    source.hashtags.add(hashtag)
    CollectionRun.objects.create(source=source, started_at=T0, finished_at=T0, outcome=CollectionRun.Outcome.FAILED,
                                 message="<script>alert(3)</script>")
    response, soup = page(editor_client, **DAY)
    body = response.content.decode()
    for hostile in ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "<script>alert(3)</script>",
                    "<b onmouseover=alert(2)>", "<svg/onload=alert(1)>"]:
        assert hostile not in body, hostile
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;img src=x onerror=alert(1)&gt;" in body
    assert soup.find("script") is None and soup.find("img") is None and soup.find("b", onmouseover=True) is None
    assert table(soup, "authors")[1][0] == HOSTILE_HANDLE
    assert table(soup, "hashtags")[1][0] == f"#{HOSTILE_TAG}"
    assert soup.find("table", attrs={"data-table": "posts"}).find("td", class_="excerpt").get_text() == HOSTILE_TEXT
    assert any("<script>alert(3)</script>" in t.get_text() for t in soup.select("g.gap title"))


def test_the_page_runs_the_same_number_of_queries_for_10_and_200_posts(editor_client, hashtag):
    def load() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert editor_client.get("/summary/", {**DAY, "scope": "all"}).status_code == 200
        return len(queries)

    store(*[item(n, f"Post number {n} about the talks", author=f"a{n % 7}", minutes=n % 600) for n in range(10)])
    few = load()
    store(*[item(n, f"Post number {n} about the talks", author=f"a{n % 7}", minutes=n % 600) for n in range(10, 200)])
    many = load()
    assert many == few <= 20
    assert Post.objects.count() == 200


def test_the_checkbox_form_and_the_comma_form_of_platforms_are_read_alike():
    from django.http import QueryDict

    assert picker_params(QueryDict("platform=bluesky&platform=mastodon"))["platform"] == "bluesky,mastodon"
    assert picker_params(QueryDict("platform=bluesky,mastodon"))["platform"] == "bluesky,mastodon"
    assert picker_params(QueryDict(""))["platform"] == ""
