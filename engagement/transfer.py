"""Posts in and out of files: import NDJSON (normalised items, or a platform's native objects) and CSV;
export NDJSON and CSV. The formats are specified in docs/import-export.md.

Import reads a file line by line and judges each line on its own: a bad line is kept in RejectedItem
(platform "import", or the native platform) with "line N: reason", handed to `on_rejected`, and the rest
of the file is stored. Items are stored through `collect.upsert_posts` in batches, so importing the same
file twice adds no row. Export reads alive posts in keyset pages of (created_at, id) and writes each page
as it goes, so its memory does not grow with the table.

Nothing here prints: the management commands show progress through the `Progress` object they pass
(a tqdm bar fits it) and print the `ImportReport`.
"""

from __future__ import annotations

import codecs
import csv
import functools
import importlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Protocol, TextIO
from urllib.parse import urlsplit

from django.db import DatabaseError, transaction
from django.db.models import Q, QuerySet

from engagement import collect
from engagement.models import Platform, Post, RejectedItem
from engagement.sources import MODULES
from engagement.sources.base import (
    MAX_ITEM_HTML_CHARS,
    NormalisedArticle,
    NormalisedAuthor,
    NormalisedItem,
    RejectedRaw,
    html_to_text,
    normalise_tag,
    parse_timestamp,
    sanitise_html,
)

NDJSON = "ndjson"
CSV = "csv"
FORMATS = (NDJSON, CSV)

# Items per INSERT ... ON CONFLICT: 22 parameters a post keeps 1,000 far below PostgreSQL's 65,535 per
# statement, and round trips stop dominating the run.
IMPORT_BATCH = 1_000
# A batch is also stored once its lines reach this size, so a file of large items never holds gigabytes.
IMPORT_BATCH_BYTES = 32 * 1024 * 1024
# A longer line is rejected without being read into memory whole. A normalised item carries html, text
# and raw of up to MAX_ITEM_HTML_CHARS characters each; 2 MiB leaves room for JSON escaping.
MAX_LINE_BYTES = 2 * 1024 * 1024
# How much of an unreadable line is kept as its raw text in RejectedItem (the file has the rest).
REJECTED_RAW_CHARS = 10_000
# A reason quotes the offending value; a 1 MB date must not make a 1 MB reason.
MAX_REASON_CHARS = 500
# Rejected lines the report keeps for the summary; `on_rejected` sees every one as it happens.
REPORTED_REJECTIONS = 20
# Posts per keyset page of an export: a post with its parsed raw payload takes ~10 KB in Python, so a page
# holds ~10 MB whatever the table's size, and each query stays short.
EXPORT_PAGE_SIZE = 1_000

# Column limits of the models: a longer value would make PostgreSQL refuse the whole batch.
MAX_ID_CHARS = 2048
MAX_HANDLE_CHARS = 300
MAX_TITLE_CHARS = 1000
MAX_LANGUAGE_CHARS = 16
MAX_TAG_CHARS = 200
MAX_COUNT = 2_147_483_647  # PositiveIntegerField is a PostgreSQL integer

# CSV columns, in this order; docs/import-export.md explains each. Export adds EXPORT_ONLY at the end, so an
# export is itself importable (import ignores columns it does not know).
CSV_COLUMNS = ("platform", "external_id", "created_at", "text", "url", "author_handle", "author_external_id",
               "language", "hashtags", "kind")
CSV_EXPORT_ONLY_COLUMNS = ("id", "status", "collected_at")
CSV_EXPORT_COLUMNS = CSV_COLUMNS + CSV_EXPORT_ONLY_COLUMNS
CSV_REQUIRED_COLUMNS = ("platform", "external_id", "created_at")

# What a spreadsheet would run as a formula when a cell starts with it (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_cell(cell):
    """A cell a spreadsheet would run as a formula, with a leading quote; any other value as it is."""
    return f"'{cell}" if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell
# JSON escapes that decode to what PostgreSQL cannot store (NUL, lone surrogates); when a line has one,
# its strings are checked before the line can reach a batch.
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")

_PLATFORMS = frozenset(Platform.values)
_KINDS = frozenset(Post.Kind.values)

Outcome = NormalisedItem | RejectedRaw | None  # None: skipped (a native object without a tracked tag)


class TransferError(Exception):
    """The whole file or request cannot be handled (unknown platform, CSV without its header columns).
    The message is meant for the person running the command."""


class Progress(Protocol):
    """What import and export report progress to; a tqdm bar is one."""

    def reset(self, total: float | None = None) -> None: ...

    def update(self, n: float = 1) -> bool | None: ...


@dataclass
class ImportReport:
    lines: int = 0  # non-blank lines (CSV: records after the header) read
    imported: int = 0  # items handed to the store
    new: int = 0
    updated: int = 0
    rejected: int = 0
    skipped: int = 0  # native objects without a tracked hashtag
    first_rejections: list[tuple[int, str]] = field(default_factory=list)

    @property
    def unchanged(self) -> int:
        """Imported items already stored exactly so (and repeats of an item within the file)."""
        return self.imported - self.new - self.updated


# --- the normalised format -----------------------------------------------------------------------


def item_from_dict(obj: Any) -> NormalisedItem:
    """One object of the normalised NDJSON format as a NormalisedItem. Raises ValueError naming the field.

    `html` is sanitised (a file is never trusted); `text` is derived from it when absent. Without `raw`,
    the object itself is kept as the raw payload.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(obj)}")
    platform = _string(obj, "platform", required=True)
    if platform not in _PLATFORMS:
        raise ValueError(f"platform {_quote(platform)} is not one of {', '.join(Platform.values)}")
    html = _string(obj, "html", max_length=MAX_ITEM_HTML_CHARS)
    html = sanitise_html(html) if html else ""
    kind = _string(obj, "kind") or Post.Kind.POST
    if kind not in _KINDS:
        raise ValueError(f"kind {_quote(kind)} is not one of {', '.join(Post.Kind.values)}")
    raw = obj.get("raw")
    if raw is None:
        raw = obj
    elif not isinstance(raw, dict):
        raise ValueError(f"raw must be a JSON object or null, got {_json_type(raw)}")
    return NormalisedItem(
        platform=platform,
        external_id=_string(obj, "external_id", required=True, max_length=MAX_ID_CHARS),
        created_at=_timestamp(obj, "created_at", required=True),
        edited_at=_timestamp(obj, "edited_at"),
        uri=_string(obj, "uri", max_length=MAX_ID_CHARS),
        url=_url(obj, "url"),
        kind=kind,
        language=_string(obj, "language", max_length=MAX_LANGUAGE_CHARS),
        html=html,
        text=_string(obj, "text", max_length=MAX_ITEM_HTML_CHARS) or (html_to_text(html) if html else ""),
        hashtags=_hashtags(obj.get("hashtags")),
        author=_author(obj.get("author")),
        article=_article(obj.get("article")),
        reply_to_external_id=_string(obj, "reply_to_external_id", max_length=MAX_ID_CHARS),
        reply_count=_count(obj, "reply_count"),
        repost_count=_count(obj, "repost_count"),
        like_count=_count(obj, "like_count"),
        raw=raw,
    )


def post_to_dict(post: Post) -> dict:
    """A stored post in the normalised NDJSON format: what `item_from_dict` reads back to the same item."""
    author, article = post.author, post.article
    return {
        "platform": post.platform,
        "external_id": post.external_id,
        "created_at": _iso(post.created_at),
        "edited_at": _iso(post.edited_at),
        "uri": post.uri,
        "url": post.url,
        "kind": post.kind,
        "language": post.language,
        "text": post.text,
        "html": post.html,
        "hashtags": list(post.hashtags),
        "author": {"external_id": author.external_id, "handle": author.handle,
                   "display_name": author.display_name, "url": author.url} if author else None,
        "article": {"url": article.url, "title": article.title, "published_at": _iso(article.published_at),
                    "external_id": article.external_id} if article else None,
        "reply_to_external_id": post.reply_to_external_id,
        "reply_count": post.reply_count,
        "repost_count": post.repost_count,
        "like_count": post.like_count,
        "raw": post.raw,
    }


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _string(obj: dict, key: str, *, required: bool = False, max_length: int | None = None,
            label: str = "") -> str:
    name = label + key
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{name} is missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {_json_type(value)}")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"{name} is {len(value):,} characters long, over the {max_length:,} limit")
    return value


def _url(obj: dict, key: str, *, required: bool = False, label: str = "") -> str:
    value = _string(obj, key, required=required, max_length=MAX_ID_CHARS, label=label)
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{label}{key} must be an http(s) URL, not {_quote(value)}")
    return value


def _timestamp(obj: dict, key: str, *, required: bool = False, label: str = "") -> datetime | None:
    value = obj.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"{label}{key} is missing")
        return None
    try:
        return parse_timestamp(value, field_name=label + key)
    except OverflowError:  # year 1 with a negative offset: no UTC time exists for it
        raise ValueError(f"{label}{key} is out of range: {_quote(value)}") from None


def _count(obj: dict, key: str) -> int:
    value = obj.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{key} must be a whole number from 0 to {MAX_COUNT:,}, not {_quote(value)}")
    return value


def _hashtags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ValueError("hashtags must be a list of strings")
    keys = [normalise_tag(tag) for tag in value]
    too_long = next((key for key in keys if len(key) > MAX_TAG_CHARS), None)
    if too_long:
        raise ValueError(f"a hashtag is {len(too_long):,} characters long, over the {MAX_TAG_CHARS} limit")
    return tuple(dict.fromkeys(key for key in keys if key))  # casefolded, in order, each once


def _author(value: Any) -> NormalisedAuthor | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"author must be an object or null, got {_json_type(value)}")
    return NormalisedAuthor(
        external_id=_string(value, "external_id", required=True, max_length=MAX_ID_CHARS, label="author."),
        handle=_string(value, "handle", max_length=MAX_HANDLE_CHARS, label="author."),
        display_name=_string(value, "display_name", max_length=MAX_HANDLE_CHARS, label="author."),
        url=_url(value, "url", label="author."),
    )


def _article(value: Any) -> NormalisedArticle | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"article must be an object or null, got {_json_type(value)}")
    return NormalisedArticle(
        url=_url(value, "url", required=True, label="article."),
        title=_string(value, "title", max_length=MAX_TITLE_CHARS, label="article."),
        published_at=_timestamp(value, "published_at", label="article."),
        external_id=_string(value, "external_id", max_length=MAX_ID_CHARS, label="article."),
    )


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else None


def _storage_problem(value: Any) -> str:
    """Why PostgreSQL could not store this parsed JSON (a NUL or a lone surrogate in a string), or ""."""
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
        elif isinstance(current, str):
            if "\x00" in current:
                return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
            try:
                current.encode("utf-8")
            except UnicodeEncodeError:
                return "contains a lone surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return ""


# --- the CSV format ------------------------------------------------------------------------------


def _dict_from_csv(values: dict[str, str]) -> dict:
    """A CSV row (column -> text) as an object of the normalised format; the row itself is its raw."""
    handle = values.get("author_handle", "").strip()
    author_id = values.get("author_external_id", "").strip() or handle
    return {
        "platform": values.get("platform", "").strip(),
        "external_id": values.get("external_id", "").strip(),
        "created_at": values.get("created_at", "").strip(),
        "text": values.get("text", ""),
        "url": values.get("url", "").strip(),
        "language": values.get("language", "").strip(),
        "kind": values.get("kind", "").strip(),
        "hashtags": values.get("hashtags", "").split(),
        "author": {"external_id": author_id, "handle": handle} if author_id else None,
        "raw": values,
    }


def _csv_row(post: Post, *, spreadsheet_safe: bool) -> list:
    row = [post.platform, post.external_id, _iso(post.created_at), post.text, post.url,
           post.author.handle if post.author else "", post.author.external_id if post.author else "",
           post.language, " ".join(post.hashtags), post.kind, post.pk, post.status, _iso(post.collected_at)]
    if spreadsheet_safe:
        row = [spreadsheet_cell(cell) for cell in row]
    return row


# --- reading files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    number: int
    data: bytes | None  # None when the line is over MAX_LINE_BYTES (then `head` has its start)
    head: bytes = b""


def _read_lines(stream: BinaryIO, *, progress: Progress | None) -> Iterator[_Line]:
    """The file's lines (split on \\n only), numbered from 1; a line over MAX_LINE_BYTES is skipped in
    small reads, never held whole."""
    number = 0
    while True:
        data = stream.readline(MAX_LINE_BYTES + 1)
        if not data:
            return
        number += 1
        size = len(data)
        if number == 1 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8):]
        if size > MAX_LINE_BYTES and not data.endswith(b"\n"):
            head, rest = data[:REJECTED_RAW_CHARS], data
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(64 * 1024)
                size += len(rest)
            if progress is not None:
                progress.update(size)
            yield _Line(number, None, head)
            continue
        if progress is not None:
            progress.update(size)
        yield _Line(number, data)


def _excerpt(data: bytes | str) -> str:
    """The start of an unreadable line, as text PostgreSQL can store."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    cut = text[:REJECTED_RAW_CHARS]
    if len(cut) < len(text):
        cut += f"... [{len(text) - len(cut):,} more characters]"
    return cut.replace("\x00", "\ufffd")


def _too_long(line: _Line) -> RejectedRaw:
    return RejectedRaw(reason=f"the line is over the {MAX_LINE_BYTES:,}-byte limit", raw=_excerpt(line.head))


def _decode(line: _Line) -> str:
    """The line as text without its line ending. Raises ValueError when it is not UTF-8."""
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start + 1} of the line)") from None
    return text.rstrip("\r\n")


def _ndjson_outcomes(lines: Iterator[_Line], convert: Callable[[Any], Outcome]) -> Iterator[tuple[_Line, Outcome]]:
    for line in lines:
        if line.data is None:
            yield line, _too_long(line)
            continue
        try:
            text = _decode(line)
        except ValueError as exc:
            yield line, RejectedRaw(reason=str(exc), raw=_excerpt(line.data))
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line, RejectedRaw(reason=f"not valid JSON: {exc.msg} (column {exc.colno})", raw=_excerpt(text))
            continue
        except RecursionError:
            yield line, RejectedRaw(reason="not valid JSON: nested too deeply", raw=_excerpt(text))
            continue
        problem = _storage_problem(obj) if "\x00" in text or _RISKY_ESCAPE.search(text) else ""
        if problem:
            yield line, RejectedRaw(reason=problem, raw=_excerpt(text))
            continue
        yield line, convert(obj)


def _normalised(obj: Any) -> Outcome:
    try:
        return item_from_dict(obj)
    except ValueError as exc:
        external_id = obj.get("external_id") if isinstance(obj, dict) else None
        return RejectedRaw(reason=str(exc), raw=obj, external_id=external_id if isinstance(external_id, str) else "")


def _native(obj: Any, *, normalise: Callable[..., Outcome], platform: str, hashtags: tuple[str, ...]) -> Outcome:
    try:
        outcome = normalise(obj, hashtags=hashtags)
    except Exception as exc:  # noqa: BLE001 - a normaliser's bug on one odd object costs that line, not the file
        return RejectedRaw(reason=f"the {platform} normaliser failed: {exc.__class__.__name__}: {exc}", raw=obj)
    if isinstance(outcome, RejectedRaw):
        # Keep the whole line as received (a normaliser may keep only part of it, e.g. a boost's original).
        return RejectedRaw(reason=outcome.reason, raw=obj, external_id=outcome.external_id)
    return outcome


def _csv_outcomes(lines: Iterator[_Line]) -> Iterator[tuple[_Line, Outcome]]:
    """CSV records (a quoted field may span lines), each reported at its first line. The first record is
    the header: it must name CSV_REQUIRED_COLUMNS; columns it does not know are ignored."""
    columns: list[str] | None = None
    record: list[str] = []
    first: _Line | None = None
    quotes = size = 0

    def rejected(line: _Line, outcome: RejectedRaw) -> tuple[_Line, Outcome]:
        if columns is None:
            raise TransferError(f"line {line.number}: cannot read the CSV header: {outcome.reason}")
        return line, outcome

    for line in lines:
        if line.data is None:
            yield rejected(first or line, _too_long(line))
            record, first, quotes, size = [], None, 0, 0
            continue
        try:
            text = line.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield rejected(first or line, RejectedRaw(reason=f"not UTF-8 (byte {exc.start + 1} of line {line.number})",
                                                      raw=_excerpt(line.data)))
            record, first, quotes, size = [], None, 0, 0
            continue
        if first is None:
            if not text.strip():
                continue
            first = line
        record.append(text)
        quotes += text.count('"')
        size += len(line.data)
        if quotes % 2:  # inside a quoted field: the record goes on on the next line
            if size > MAX_LINE_BYTES:
                yield rejected(first, RejectedRaw(reason=f"a quoted field is not closed within {MAX_LINE_BYTES:,} bytes",
                                                  raw=_excerpt("".join(record))))
                record, first, quotes, size = [], None, 0, 0
            continue
        joined, start = "".join(record), first
        record, first, quotes, size = [], None, 0, 0
        if "\x00" in joined:
            yield rejected(start, RejectedRaw(reason="contains a NUL character, which PostgreSQL cannot store",
                                              raw=_excerpt(joined)))
            continue
        try:
            row = next(csv.reader([joined]))
        except csv.Error as exc:
            yield rejected(start, RejectedRaw(reason=f"not valid CSV: {exc}", raw=_excerpt(joined)))
            continue
        if columns is None:
            columns = [name.strip().lower() for name in row]
            missing = [name for name in CSV_REQUIRED_COLUMNS if name not in columns]
            if missing:
                raise TransferError(f"line {start.number}: the CSV header has no {', '.join(missing)} column "
                                    f"(it needs {', '.join(CSV_REQUIRED_COLUMNS)}; see docs/import-export.md)")
            continue
        if len(row) != len(columns):
            yield start, RejectedRaw(reason=f"{len(row)} fields where the header has {len(columns)}", raw=row)
            continue
        yield start, _normalised(_dict_from_csv(dict(zip(columns, row))))
    if record:
        yield rejected(first, RejectedRaw(reason="the file ends inside a quoted field", raw=_excerpt("".join(record))))


# --- import --------------------------------------------------------------------------------------


def native_normaliser(platform: str) -> Callable[..., Outcome]:
    """`normalise_native(obj, *, hashtags)` of a platform's module in engagement/sources/.
    Raises TransferError when the platform is unknown or its module has none."""
    module_name = MODULES.get(platform)
    if module_name is None:
        raise TransferError(f"unknown platform {platform!r}; one of: {', '.join(MODULES)}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise TransferError(f"the {platform} connector is not available in this version") from None
    normalise = getattr(module, "normalise_native", None)
    if normalise is None:
        raise TransferError(f"native {platform} objects cannot be imported: {module_name} has no "
                            "normalise_native(obj, *, hashtags=...); import normalised items instead")
    return normalise


def import_file(
    *,
    stream: BinaryIO,
    name: str,
    format: str = NDJSON,
    platform: str = "",
    hashtags: Iterable[str] = (),
    progress: Progress | None = None,
    on_rejected: Callable[[int, str], None] | None = None,
) -> ImportReport:
    """Import every good line of `stream` and report the others; return the counts.

    `format`: NDJSON of normalised items, or of `platform`'s native objects when `platform` is given
    (kept when they carry one of `hashtags`, else counted as skipped); or CSV. Each batch of IMPORT_BATCH
    items is one transaction through collect.upsert_posts: importing the same file again adds no row. Each
    bad line becomes a RejectedItem ("line N: reason (import of NAME)") and a call of
    `on_rejected(N, reason)`. `progress.update(n)` gets the bytes read. Raises TransferError for an unknown
    format or platform, a platform without normalise_native, or a CSV header without the required columns.
    """
    if format not in FORMATS:
        raise TransferError(f"unknown format {format!r}; one of: {', '.join(FORMATS)}")
    lines = _read_lines(stream, progress=progress)
    record_platform = Platform.IMPORT.value
    if platform:
        if format != NDJSON:
            raise TransferError("native objects are read from NDJSON only; leave out --platform for CSV")
        tags = tuple(dict.fromkeys(normalise_tag(tag) for tag in hashtags if normalise_tag(tag)))
        if not tags:
            raise TransferError("native objects are kept only when they carry a tracked hashtag: give at least one")
        convert = functools.partial(_native, normalise=native_normaliser(platform), platform=platform, hashtags=tags)
        outcomes = _ndjson_outcomes(lines, convert)
        record_platform = platform
    elif format == CSV:
        outcomes = _csv_outcomes(lines)
    else:
        outcomes = _ndjson_outcomes(lines, _normalised)
    batch = _Batch(report=ImportReport(), name=name, platform=record_platform, on_rejected=on_rejected)
    for line, outcome in outcomes:
        batch.report.lines += 1
        if outcome is None:
            batch.report.skipped += 1
        elif isinstance(outcome, RejectedRaw):
            batch.reject(line.number, outcome, size=len(line.data or line.head))
        else:
            batch.add(line.number, outcome, size=len(line.data))
        if batch.full():
            batch.store()
    batch.store()
    return batch.report


@dataclass
class _Batch:
    report: ImportReport
    name: str
    platform: str
    on_rejected: Callable[[int, str], None] | None
    items: list[tuple[int, NormalisedItem]] = field(default_factory=list)
    rejected: list[RejectedItem] = field(default_factory=list)
    size: int = 0

    def add(self, number: int, item: NormalisedItem, *, size: int) -> None:
        self.items.append((number, item))
        self.size += size

    def reject(self, number: int, outcome: RejectedRaw, *, size: int) -> None:
        reason = outcome.reason if len(outcome.reason) <= MAX_REASON_CHARS else outcome.reason[:MAX_REASON_CHARS] + "..."
        self.report.rejected += 1
        if len(self.report.first_rejections) < REPORTED_REJECTIONS:
            self.report.first_rejections.append((number, reason))
        if self.on_rejected is not None:
            self.on_rejected(number, reason)
        self.rejected.append(RejectedItem(
            source=None, platform=self.platform, external_id=outcome.external_id[:MAX_ID_CHARS],
            reason=f"line {number}: {reason} (import of {self.name})", raw=outcome.raw,
        ))
        self.size += size

    def full(self) -> bool:
        return len(self.items) + len(self.rejected) >= IMPORT_BATCH or self.size >= IMPORT_BATCH_BYTES

    def store(self) -> None:
        """One transaction: this batch's rejected lines, then its items in one upsert."""
        items, self.items, self.size = self.items, [], 0
        with transaction.atomic():
            self._store_items(items)
            rejected, self.rejected = self.rejected, []
            RejectedItem.objects.bulk_create(rejected)

    def _store_items(self, items: list[tuple[int, NormalisedItem]]) -> None:
        if not items:
            return
        try:
            with transaction.atomic():
                new, updated = collect.upsert_posts([item for _, item in items], source_id=None)
        except (DatabaseError, RecursionError) as exc:
            # Validation should leave nothing PostgreSQL refuses; if something slips through, halve the
            # batch until the refused lines are found, so every other line is still stored.
            if len(items) == 1:
                number, item = items[0]
                self.reject(number, RejectedRaw(reason=f"the database refused it: {str(exc).strip()}",
                                                raw=_safe_raw(item.raw), external_id=item.external_id), size=0)
                return
            half = len(items) // 2
            self._store_items(items[:half])
            self._store_items(items[half:])
            return
        self.report.imported += len(items)
        self.report.new += new
        self.report.updated += updated


def _safe_raw(raw: Any) -> str | None:
    """A refused item's raw payload as ASCII JSON text, which any column accepts."""
    try:
        return _excerpt(json.dumps(raw, default=str))
    except (TypeError, ValueError, RecursionError):
        return None


# --- export --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    hashtag: str = ""
    since: datetime | None = None  # published at or after
    until: datetime | None = None  # published before
    status: str = ""
    platform: str = ""

    def queryset(self) -> QuerySet:
        """Alive posts (never those deleted upstream) matching these filters."""
        posts = Post.objects.alive()
        if self.hashtag:
            posts = posts.for_hashtag(self.hashtag)
        if self.since:
            posts = posts.filter(created_at__gte=self.since)
        if self.until:
            posts = posts.filter(created_at__lt=self.until)
        if self.status:
            posts = posts.filter(status=self.status)
        if self.platform:
            posts = posts.filter(platform=self.platform)
        return posts


def keyset_pages(posts: QuerySet, *, page_size: int = EXPORT_PAGE_SIZE) -> Iterator[list[Post]]:
    """`posts` with their authors and articles in (created_at, id) order, one page (one query with LIMIT)
    at a time: each page starts after the last row of the previous one, never with OFFSET."""
    ordered = posts.select_related("author", "article").order_by("created_at", "id")
    page = list(ordered[:page_size])
    while page:
        yield page
        if len(page) < page_size:
            return
        last = page[-1]
        # (created_at, id) > (last's): the created_at >= bound lets the index start at the last row.
        page = list(ordered.filter(Q(created_at__gte=last.created_at),
                                   Q(created_at__gt=last.created_at) | Q(id__gt=last.pk))[:page_size])


def export_posts(
    *,
    out: TextIO,
    format: str = NDJSON,
    filters: ExportFilters = ExportFilters(),
    progress: Progress | None = None,
    page_size: int = EXPORT_PAGE_SIZE,
    spreadsheet_safe: bool = False,
) -> int:
    """Write the alive posts matching `filters` to `out`, oldest first; return how many were written.

    NDJSON is the format `import_file` reads (a round trip gives the same posts); CSV has CSV_EXPORT_COLUMNS
    after a header line. Posts are read in keyset pages of `page_size` and each page is written before the
    next is read, so memory stays flat as the table grows. With `progress`, matching posts are counted first
    (one COUNT) so it can show an ETA. `spreadsheet_safe` (CSV) puts a ' before cells a spreadsheet would run
    as a formula; such a file is for reading, not for import.
    """
    if format not in FORMATS:
        raise TransferError(f"unknown format {format!r}; one of: {', '.join(FORMATS)}")
    posts = filters.queryset()
    if progress is not None:
        progress.reset(total=posts.count())
    writer = csv.writer(out)
    if format == CSV:
        writer.writerow(CSV_EXPORT_COLUMNS)
    written = 0
    for page in keyset_pages(posts, page_size=page_size):
        for post in page:
            if format == CSV:
                writer.writerow(_csv_row(post, spreadsheet_safe=spreadsheet_safe))
            else:
                out.write(json.dumps(post_to_dict(post), ensure_ascii=False) + "\n")
        written += len(page)
        if progress is not None:
            progress.update(len(page))
    return written
