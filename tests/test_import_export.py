"""File import and export (engagement/transfer.py, manage.py import / export) on the real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import DataError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone as dj_timezone

from engagement import collect, transfer
from engagement.models import Article, Author, Post, RejectedItem
from engagement.sources import MODULES
from engagement.sources.base import NormalisedAuthor, NormalisedItem
from tests.mastodon_fake import make_status

pytestmark = pytest.mark.django_db
FIXTURES = Path(__file__).parent / "fixtures"
T0 = datetime(2026, 11, 20, tzinfo=timezone.utc)


def run(*args, **kwargs) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=kwargs.pop("stderr", io.StringIO()), **kwargs)
    return out.getvalue()


def normalised_line(n: int, **changes) -> str:
    item = {"platform": "mastodon", "external_id": f"https://social.example/users/r/statuses/{n}",
            "created_at": (T0 + timedelta(seconds=n)).isoformat(), "html": f"<p>Post {n} #UkrainePeaceTalks</p>",
            "hashtags": ["UkrainePeaceTalks"], "author": {"external_id": f"https://social.example/users/r{n % 5}",
                                                           "handle": f"@r{n % 5}@social.example"}}
    item.update(changes)
    return json.dumps(item)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def store_posts(count: int, *, start: int = 0, **fields) -> None:
    """`count` posts through the same bulk path as collection, in batches."""
    for first in range(start, start + count, 1000):
        collect.upsert_posts([
            NormalisedItem(platform=fields.get("platform", "mastodon"), external_id=f"https://social.example/s/{n}",
                           created_at=fields.get("created_at", T0 + timedelta(seconds=n)),
                           raw={"id": str(n), "content": "x" * 300}, text=f"post {n} " + "y" * 200,
                           html=f"<p>post {n}</p>", hashtags=fields.get("hashtags", ("ukrainepeacetalks",)),
                           author=NormalisedAuthor(external_id=f"https://social.example/u/{n % 50}", handle=f"@u{n % 50}"))
            for n in range(first, min(first + 1000, start + count))
        ], source_id=None)


# --- import ----------------------------------------------------------------------------------------


def test_it_imports_normalised_ndjson_with_authors_articles_replies_and_sanitised_html():
    output = run("import", str(FIXTURES / "import_normalised.ndjson"))
    assert "imported 3 of 3 lines from import_normalised.ndjson: 3 new, 0 updated, 0 unchanged; 0 rejected" in output
    comment = Post.objects.get(platform="wordpress")
    assert "<script>" not in comment.html and "javascript:" not in comment.html and "onclick" not in comment.html
    assert "<b>now</b>" in comment.html
    assert comment.text.startswith("Talks now!")  # derived from the sanitised html: "text" was empty
    assert comment.created_at == datetime(2026, 11, 20, 8, 30, tzinfo=timezone.utc)
    assert comment.edited_at == datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
    assert comment.hashtags == ["ukrainepeacetalks", "ceasefire"]
    assert (comment.reply_count, comment.repost_count, comment.like_count) == (2, 0, 5)
    assert comment.raw == {"id": 17, "content": {"rendered": "<p>Talks now!</p>"}}
    assert comment.source is None and comment.status == Post.Status.PENDING
    assert comment.article.title == "Talks resume in Geneva" and comment.author.display_name == "Olena K."
    reply = Post.objects.get(external_id="at://did:plc:def456/app.bsky.feed.post/3kq3")
    assert reply.reply_to.external_id == "at://did:plc:abc123/app.bsky.feed.post/3kq2"
    assert reply.author is None and reply.raw["text"] == "A reply"  # no raw given: the line itself is kept


def test_it_imports_native_mastodon_statuses_and_skips_the_untagged(tmp_path, settings):
    settings.ENGAGEMENT_HASHTAGS = ["UkrainePeaceTalks"]
    boost = make_status(90)
    boost = {**make_status(91, host="other.example"), "reblog": boost, "content": "", "tags": []}
    lines = [json.dumps(make_status(1)), json.dumps(make_status(2, tag="SomethingElse")), json.dumps(boost),
             json.dumps({**make_status(3), "created_at": "yesterday"}), json.dumps(make_status(4, tag="PeaceTalks"))]
    path = write_lines(tmp_path / "statuses.ndjson", lines)
    output = run("import", str(path), "--platform", "mastodon")
    assert "imported 2 of 5 lines from statuses.ndjson: 2 new" in output
    assert "1 rejected; 2 skipped (not tagged)" in output
    assert "line 4: created_at is not an ISO 8601 timestamp: 'yesterday'" in output
    assert sorted(Post.objects.values_list("external_id", flat=True)) == [
        make_status(1)["uri"], make_status(90)["uri"]]  # the boost is stored as its original
    rejected = RejectedItem.objects.get()
    assert (rejected.platform, rejected.source) == ("mastodon", None)
    assert rejected.reason.startswith("line 4: created_at") and rejected.raw["id"] == make_status(3)["id"]
    # --hashtag replaces ENGAGEMENT_HASHTAGS, and may be repeated.
    output = run("import", str(path), "--platform", "mastodon", "--hashtag", "#peacetalks", "--hashtag", "somethingelse")
    assert "imported 2 of 5 lines from statuses.ndjson: 2 new" in output


def test_native_import_names_a_platform_it_cannot_read(monkeypatch):
    path = str(FIXTURES / "import_normalised.ndjson")
    with pytest.raises(CommandError, match="unknown platform 'myspace'"):
        run("import", path, "--platform", "myspace")
    with pytest.raises(CommandError, match="NDJSON only"):
        run("import", str(FIXTURES / "import_posts.csv"), "--platform", "mastodon")
    monkeypatch.setitem(MODULES, "oldstyle", "engagement.sources.base")  # a module without normalise_native
    monkeypatch.setitem(MODULES, "unwritten", "engagement.sources.unwritten")
    with pytest.raises(CommandError, match=r"native oldstyle objects cannot be imported: engagement.sources.base "
                                           r"has no normalise_native\(obj, \*, hashtags=...\)"):
        run("import", path, "--platform", "oldstyle")
    with pytest.raises(CommandError, match="the unwritten connector is not available in this version"):
        run("import", path, "--platform", "unwritten")
    assert not Post.objects.exists()


def test_it_imports_csv_rows_with_quoted_newlines_and_space_separated_hashtags():
    output = run("import", str(FIXTURES / "import_posts.csv"))
    assert "imported 3 of 3 lines from import_posts.csv: 3 new" in output
    telegram = Post.objects.get(platform="telegram")
    assert telegram.text == 'First line\nsecond line, with a comma and "quotes"'
    assert telegram.hashtags == ["ukrainepeacetalks", "ceasefire"]
    assert (telegram.author.handle, telegram.author.external_id) == ("@peacechannel", "https://t.me/peacechannel")
    assert (telegram.language, telegram.kind, telegram.html) == ("uk", "post", "")
    assert telegram.raw["external_id"] == "https://t.me/peacechannel/101"
    hn = Post.objects.get(platform="hackernews")
    assert hn.created_at == datetime(2026, 11, 21, 7, tzinfo=timezone.utc) and hn.kind == "comment"
    assert hn.author.external_id == "hnreader"  # no author_external_id: the handle identifies the author
    youtube = Post.objects.get(platform="youtube")
    assert youtube.created_at == datetime(2026, 11, 21, tzinfo=timezone.utc) and youtube.author is None


def test_a_csv_without_the_required_header_columns_is_refused(tmp_path):
    path = write_lines(tmp_path / "bad.csv", ["id,text", "1,hello"])
    with pytest.raises(CommandError, match="line 1: the CSV header has no platform, external_id, created_at column"):
        run("import", str(path))


def test_a_file_with_broken_lines_stores_every_good_line_and_names_each_bad_one(tmp_path):
    lines = [normalised_line(n) for n in range(1, 21)]
    broken = {
        3: ('{"platform": "mastodon", "external_id": ', "not valid JSON: Expecting value (column 41)"),
        5: (normalised_line(5, external_id=None), "external_id is missing"),
        8: (normalised_line(8, created_at="20/11/2026"), "created_at is not an ISO 8601 timestamp: '20/11/2026'"),
        11: (normalised_line(11, html="x" * (11 * 1024 * 1024)), "the line is over the 2,097,152-byte limit"),
        13: (normalised_line(13, platform="myspace"), "platform 'myspace' is not one of"),
        14: (normalised_line(14, text="nul \u0000 inside"), "contains a NUL character"),
        16: ("[1, 2]", "expected a JSON object, got an array"),
        17: (normalised_line(17, url="javascript:alert(1)"), "url must be an http(s) URL"),
        18: (normalised_line(18, like_count=-1), "like_count must be a whole number"),
        19: (normalised_line(19, author={"handle": "@nobody"}), "author.external_id is missing"),
    }
    for number, (text, _reason) in broken.items():
        lines[number - 1] = text
    path = tmp_path / "posts.ndjson"
    path.write_bytes("".join(line + "\n" for line in lines).encode() + b'{"platform": "\xff"}\n')
    report_path = tmp_path / "report.txt"
    output = run("import", str(path), "--report", str(report_path))

    assert "imported 10 of 21 lines from posts.ndjson: 10 new, 0 updated, 0 unchanged; 11 rejected" in output
    reported = [line.strip() for line in output.splitlines() if line.startswith("  line ")]
    assert [int(line.split(":")[0].split()[1]) for line in reported] == [*broken, 21]
    for line, (number, (_text, reason)) in zip(reported, broken.items()):
        assert line.startswith(f"line {number}: {reason}"), line
    assert reported[-1] == "line 21: not UTF-8 (byte 15 of the line)"
    assert report_path.read_text().splitlines() == reported
    assert Post.objects.count() == 10
    rows = {int(r.reason.split(":")[0].split()[1]): r for r in RejectedItem.objects.all()}
    assert sorted(rows) == [*broken, 21]
    assert all(r.platform == "import" and r.source is None and "(import of posts.ndjson)" in r.reason
               for r in rows.values())
    assert rows[3].raw == '{"platform": "mastodon", "external_id": '  # unreadable: the line's text
    assert rows[5].raw["created_at"] == (T0 + timedelta(seconds=5)).isoformat()  # readable: the parsed object
    assert rows[11].raw.startswith('{"platform": "mastodon"') and len(rows[11].raw) < 11_000  # only its start
    assert rows[8].external_id == "https://social.example/users/r/statuses/8"


def test_verbose_prints_every_rejected_line_and_the_summary_only_the_first(tmp_path):
    lines = ["not json"] * (transfer.REPORTED_REJECTIONS + 5) + [normalised_line(1)]
    path = write_lines(tmp_path / "many.ndjson", lines)
    output = run("import", str(path))
    assert f"rejected lines (first {transfer.REPORTED_REJECTIONS} of 25; --verbose or --report FILE lists all):" in output
    assert "line 20: not valid JSON" in output and "line 21:" not in output
    verbose = run("import", str(path), "--verbose")
    assert [line for line in verbose.splitlines() if line.startswith("line ")] == [
        f"line {n}: not valid JSON: Expecting value (column 1)" for n in range(1, 26)]


def test_a_line_the_database_refuses_is_rejected_and_the_rest_of_its_batch_is_stored(tmp_path, monkeypatch):
    real_upsert = collect.upsert_posts

    def refuse_poison(items, *, source_id):
        if any(item.text == "poison" for item in items):
            raise DataError("value out of range for this test")
        return real_upsert(items, source_id=source_id)

    monkeypatch.setattr(collect, "upsert_posts", refuse_poison)
    lines = [normalised_line(n, text="poison" if n in (7, 30) else f"post {n}") for n in range(1, 41)]
    report = transfer.import_file(stream=io.BytesIO("\n".join(lines).encode()), name="p.ndjson")
    assert (report.imported, report.new, report.rejected) == (38, 38, 2)
    assert report.first_rejections == [(7, "the database refused it: value out of range for this test"),
                                       (30, "the database refused it: value out of range for this test")]
    assert Post.objects.count() == 38 and RejectedItem.objects.count() == 2


def test_importing_the_same_file_again_adds_no_rows_and_changes_none():
    path = str(FIXTURES / "import_normalised.ndjson")
    run("import", path)
    run("import", str(FIXTURES / "import_posts.csv"))
    before = list(Post.objects.order_by("id").values())
    counts = (Post.objects.count(), Author.objects.count(), Article.objects.count())
    assert "imported 3 of 3 lines from import_normalised.ndjson: 0 new, 0 updated, 3 unchanged" in run("import", path)
    assert "0 new, 0 updated, 3 unchanged" in run("import", str(FIXTURES / "import_posts.csv"))
    assert list(Post.objects.order_by("id").values()) == before
    assert (Post.objects.count(), Author.objects.count(), Article.objects.count()) == counts


def test_import_of_ten_thousand_lines_with_ten_broken_ones_names_exactly_those_and_shows_progress(tmp_path):
    bad_numbers = [n * 1000 - 7 for n in range(1, 11)]
    lines = [normalised_line(n, created_at="never") if n in bad_numbers else normalised_line(n)
             for n in range(1, 10_001)]
    path = write_lines(tmp_path / "big.ndjson", lines)
    stderr = io.StringIO()
    output = run("import", str(path), "--progress", stderr=stderr)
    assert "imported 9,990 of 10,000 lines from big.ndjson: 9,990 new" in output and "10 rejected" in output
    assert [int(line.split()[1].rstrip(":")) for line in output.splitlines() if line.startswith("  line ")] == bad_numbers
    assert Post.objects.count() == 9_990
    progress = stderr.getvalue()
    assert "import big.ndjson: 100%" in progress and "B/s" in progress  # rate; the ETA shows while it runs


def test_progress_is_off_when_stderr_is_not_a_terminal():
    stderr = io.StringIO()
    run("import", str(FIXTURES / "import_normalised.ndjson"), stderr=stderr)
    assert stderr.getvalue() == ""


# --- export ----------------------------------------------------------------------------------------


def test_ndjson_export_then_import_gives_back_the_same_posts(tmp_path):
    run("import", str(FIXTURES / "import_normalised.ndjson"))
    run("import", str(FIXTURES / "import_posts.csv"))
    first = tmp_path / "first.ndjson"
    assert "exported 6 posts as ndjson" in run("export", "--output", str(first))
    exported = [json.loads(line) for line in first.read_text().splitlines()]
    assert list(exported[0]) == ["platform", "external_id", "created_at", "edited_at", "uri", "url", "kind",
                                 "language", "text", "html", "hashtags", "author", "article",
                                 "reply_to_external_id", "reply_count", "repost_count", "like_count", "raw"]
    assert "imported 6 of 6 lines from first.ndjson: 0 new, 0 updated, 6 unchanged" in run("import", str(first))

    Post.objects.all().delete()
    Author.objects.all().delete()
    Article.objects.all().delete()
    assert "6 new" in run("import", str(first))
    second = tmp_path / "second.ndjson"
    run("export", "--output", str(second))
    assert second.read_text() == first.read_text()
    assert Post.objects.get(kind="comment", platform="bluesky").reply_to.platform == "bluesky"


def test_csv_export_has_the_documented_columns_and_imports_back_unchanged(tmp_path):
    run("import", str(FIXTURES / "import_posts.csv"))
    out = tmp_path / "posts.csv"
    run("export", "--format", "csv", "--output", str(out))
    rows = list(csv.reader(out.open(newline="", encoding="utf-8")))
    assert tuple(rows[0]) == transfer.CSV_EXPORT_COLUMNS == (
        "platform", "external_id", "created_at", "text", "url", "author_handle", "author_external_id", "language",
        "hashtags", "kind", "id", "status", "collected_at")
    telegram = Post.objects.get(platform="telegram")
    assert [row[0] for row in rows[1:]] == ["youtube", "hackernews", "telegram"]  # oldest first
    assert rows[3] == ["telegram", "https://t.me/peacechannel/101", "2026-11-21T08:00:00Z", telegram.text,
                       "https://t.me/peacechannel/101", "@peacechannel", "https://t.me/peacechannel", "uk",
                       "ukrainepeacetalks ceasefire", "post", str(telegram.pk), "pending",
                       telegram.collected_at.isoformat().replace("+00:00", "Z")]
    fields = ("platform", "external_id", "created_at", "text", "url", "author_id", "language", "hashtags", "kind")
    before = list(Post.objects.order_by("id").values_list(*fields))
    output = run("import", str(out))
    assert "imported 3 of 3 lines from posts.csv: 0 new, 3 updated" in output  # raw gains the export-only columns
    assert list(Post.objects.order_by("id").values_list(*fields)) == before


def test_spreadsheet_safe_csv_defuses_cells_a_spreadsheet_would_run():
    store_posts(1)
    Post.objects.update(text='=HYPERLINK("https://evil.example","click")')
    out = io.StringIO()
    transfer.export_posts(out=out, format="csv", spreadsheet_safe=True)
    row = list(csv.reader(io.StringIO(out.getvalue())))[1]
    assert row[3] == '\'=HYPERLINK("https://evil.example","click")' and row[5] == "'@u0"
    plain = io.StringIO()
    transfer.export_posts(out=plain, format="csv")
    assert list(csv.reader(io.StringIO(plain.getvalue())))[1][3].startswith("=HYPERLINK")


def test_export_leaves_out_posts_deleted_upstream():
    store_posts(5)
    Post.objects.filter(external_id__in=["https://social.example/s/1", "https://social.example/s/3"]).update(
        deleted_at=dj_timezone.now(), deletion_reason="deleted upstream")
    exported = [json.loads(line)["external_id"] for line in run("export").splitlines()]
    assert exported == [f"https://social.example/s/{n}" for n in (0, 2, 4)]


def test_export_filters_by_hashtag_dates_status_and_platform():
    store_posts(10)
    store_posts(3, start=100, hashtags=("otherthing",))
    store_posts(2, start=200, platform="bluesky")
    Post.objects.filter(external_id="https://social.example/s/4").update(status=Post.Status.APPROVED)

    def exported(*args) -> list[str]:
        return [json.loads(line)["external_id"].rsplit("/", 1)[1] for line in run("export", *args).splitlines()]

    assert exported("--hashtag", "#UKRAINEPeaceTalks") == [*map(str, range(10)), "200", "201"]
    assert exported("--hashtag", "otherthing") == ["100", "101", "102"]
    assert exported("--since", (T0 + timedelta(seconds=3)).isoformat(), "--until", "2026-11-20T00:00:06Z") == [
        "3", "4", "5"]
    assert exported("--status", "approved") == ["4"]
    assert exported("--platform", "bluesky") == ["200", "201"]
    assert exported("--since", "2026-11-21") == []
    with pytest.raises(CommandError, match="--since: .* not an ISO 8601 timestamp"):
        run("export", "--since", "last week")


def test_export_reads_keyset_pages_with_limit_never_the_whole_table():
    store_posts(2_345)
    out = io.StringIO()
    with CaptureQueriesContext(connection) as queries:
        assert transfer.export_posts(out=out, page_size=500) == 2_345
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 5 and all(sql.endswith("LIMIT 500") for sql in selects)
    assert "OFFSET" not in " ".join(selects)
    assert all('ORDER BY "engagement_post"."created_at" ASC, "engagement_post"."id" ASC' in sql for sql in selects)
    ids = [json.loads(line)["external_id"] for line in out.getvalue().splitlines()]
    assert len(set(ids)) == 2_345  # no row lost or repeated at page edges


def test_export_of_posts_with_equal_times_pages_without_losing_any():
    store_posts(1_050, created_at=T0)  # every post at the same instant: only the id orders them
    out = io.StringIO()
    assert transfer.export_posts(out=out, page_size=100) == 1_050
    assert len({json.loads(line)["external_id"] for line in out.getvalue().splitlines()}) == 1_050


def test_export_memory_stays_far_below_what_loading_every_row_takes():
    store_posts(5_000)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        everything = list(Post.objects.alive().select_related("author", "article"))
        _, loaded_peak = tracemalloc.get_traced_memory()
        del everything
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        with open("/dev/null", "w", encoding="utf-8") as devnull:
            assert transfer.export_posts(out=devnull, page_size=500) == 5_000
        _, export_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Ten pages of 500: holding one page at a time must stay well under a third of holding all 5,000.
    assert export_peak - base < loaded_peak / 3, (export_peak - base, loaded_peak)


def test_export_to_stdout_streams_the_data_and_puts_the_summary_on_stderr():
    store_posts(3)
    stderr = io.StringIO()
    out = run("export", "--format", "csv", stderr=stderr)
    assert out.splitlines()[0] == ",".join(transfer.CSV_EXPORT_COLUMNS) and len(out.splitlines()) == 4
    assert stderr.getvalue() == "exported 3 posts as csv\n"
    stderr = io.StringIO()
    run("export", "--progress", stderr=stderr)
    assert "export: 100%" in stderr.getvalue() and "3/3" in stderr.getvalue()


def test_import_reads_standard_input_when_the_file_is_a_dash(monkeypatch):
    data = (FIXTURES / "import_normalised.ndjson").read_bytes()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert "imported 3 of 3 lines from stdin: 3 new" in run("import", "-")


def test_commands_name_a_file_they_cannot_open(tmp_path):
    with pytest.raises(CommandError, match="cannot read .*missing.ndjson"):
        run("import", str(tmp_path / "missing.ndjson"))
    with pytest.raises(CommandError, match="cannot write .*posts.csv.partial"):
        run("export", "--format", "csv", "--output", str(tmp_path / "no-such-folder" / "posts.csv"))
