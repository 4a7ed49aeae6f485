"""Sentiment: language detection, scoring in batches by a backend per language, corrections, re-scoring.

- Language: lingua, restricted to ENGAGEMENT_LANGUAGES (en, uk and ru always among them), on the text with
  links, mentions and hashtags removed. When lingua cannot decide (very short or mixed text) the platform's
  own language tag is kept.
- Backends: ENGAGEMENT_SENTIMENT_BACKENDS maps a language to a class with `name`, `version` and
  `score(text, tracked=frozenset) -> compound in [-1, 1]` (English: engagement.scoring.EnglishVader). A
  model for uk/ru is added by setting `uk=some.module.Backend`; callers do not change.
- Labels: positive (compound >= 0.05), negative (<= -0.05), neutral, or "unscored" with the reason
  (unsupported language, empty text): a Ukrainian or Russian post is never given a fake neutral.
- Every score stores the backend's name and version. A person's correction wins in every figure and is kept
  with who and when; re-scoring never overwrites it.

Posts waiting to be scored have `scored_at` NULL (new posts, and edited ones: their text changed).
`score_pending()` claims a batch of them (SKIP LOCKED, so parallel workers take different posts), scores it,
stores the results in one UPDATE and refreshes the rollups of their hours, in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from engagement import rollups
from engagement.models import Post, Sentiment

POSITIVE_AT, NEGATIVE_AT = 0.05, -0.05
# Characters of a post given to language detection (a language shows well before this).
DETECT_CHARS = 1_000
# Characters of a post given to a backend: a long comment's tone is clear well before this, and the cost of
# one post stays bounded whatever an upstream sends.
MAX_SCORED_CHARS = 20_000
NOISE = re.compile(r"https?://\S+|www\.\S+|(?<!\w)[@#][\w.\-]+")


def label_for(compound: float) -> str:
    if compound >= POSITIVE_AT:
        return Sentiment.POSITIVE
    if compound <= NEGATIVE_AT:
        return Sentiment.NEGATIVE
    return Sentiment.NEUTRAL


@lru_cache(maxsize=1)
def detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in settings.ENGAGEMENT_LANGUAGES]
    # A minimum distance: on text too short to tell, lingua says "don't know" rather than guess.
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).with_minimum_relative_distance(0.1).build()


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """ISO 639-1 codes (None where lingua cannot tell), for many texts at once."""
    cleaned = [NOISE.sub(" ", text[:DETECT_CHARS]) for text in texts]
    results = detector().detect_languages_in_parallel_of(cleaned)
    return [language.iso_code_639_1.name.lower() if language else None for language in results]


@lru_cache(maxsize=None)
def backend_for(language: str):
    path = settings.ENGAGEMENT_SENTIMENT_BACKENDS.get(language)
    return import_string(path)() if path else None


def score_texts(texts: Sequence[str], languages: Sequence[str], tracked: frozenset[str] = frozenset()
                ) -> list[tuple[str, float | None, str, str]]:
    """(label, compound, backend, reason) for each text in its language."""
    results = []
    for text, language in zip(texts, languages):
        if not (text or "").strip():
            results.append((Sentiment.UNSCORED, None, "", "empty text"))
            continue
        backend = backend_for(language) if language else None
        if backend is None:
            results.append((Sentiment.UNSCORED, None, "",
                            f"unsupported language ({language})" if language else "language unknown"))
            continue
        compound = backend.score(text[:MAX_SCORED_CHARS], tracked)
        results.append((label_for(compound), compound, f"{backend.name} ({backend.version})", ""))
    return results


def _tracked() -> frozenset[str]:
    from engagement.models import Hashtag

    return frozenset(Hashtag.objects.values_list("key", flat=True))


def score_pending(limit: int | None = None) -> int:
    """Score up to `limit` posts waiting for it (ENGAGEMENT_SCORE_BATCH by default); returns how many."""
    limit = limit or settings.ENGAGEMENT_SCORE_BATCH
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, text, language FROM {Post._meta.db_table} WHERE scored_at IS NULL "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", [limit])
            rows = cursor.fetchall()
        if rows:
            _store_scores(rows)
    return len(rows)


def rescore(queryset, *, on_batch: Callable[[int], None] | None = None, batch: int | None = None) -> int:
    """Score these posts again (after a backend change), in batches; corrections are kept."""
    batch = batch or settings.ENGAGEMENT_SCORE_BATCH
    done, last = 0, 0
    while True:
        with transaction.atomic():
            rows = list(queryset.filter(id__gt=last).order_by("id").values_list("id", "text", "language")[:batch])
            if not rows:
                return done
            _store_scores(rows)
        done += len(rows)
        last = rows[-1][0]
        if on_batch:
            on_batch(done)


def _store_scores(rows: list[tuple[int, str, str]]) -> None:
    ids = [pk for pk, _text, _language in rows]
    detected = detect_languages([text for _pk, text, _language in rows])
    languages = [found or stored or "" for found, (_pk, _text, stored) in zip(detected, rows)]
    scores = score_texts([text for _pk, text, _language in rows], languages, _tracked())
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {Post._meta.db_table} AS p SET language = v.language, sentiment_auto = v.label,
                    sentiment = CASE WHEN p.sentiment_corrected_at IS NULL THEN v.label ELSE p.sentiment END,
                    sentiment_score = v.score, sentiment_backend = v.backend, sentiment_reason = v.reason,
                    scored_at = %s
                FROM unnest(%s::bigint[], %s::varchar[], %s::varchar[], %s::float8[], %s::varchar[], %s::varchar[])
                     AS v(id, language, label, score, backend, reason)
                WHERE p.id = v.id""",
            [now, ids, languages, [s[0] for s in scores], [s[1] for s in scores], [s[2] for s in scores],
             [s[3] for s in scores]],
        )
    rollups.refresh_for_posts(ids)


def correct(post_ids: Sequence[int], label: str, *, user) -> int:
    """A person sets the label of these posts; it wins over the backend's in every figure."""
    if label not in Sentiment.values:
        raise ValueError(f"unknown sentiment {label!r}")
    if not (user and user.is_active and user.has_perm("engagement.correct_sentiment")):
        raise PermissionDenied("only editors and moderators can correct sentiment")
    with transaction.atomic():
        changed = Post.objects.filter(pk__in=list(post_ids)).update(
            sentiment=label, sentiment_corrected_by=user, sentiment_corrected_at=timezone.now())
        rollups.refresh_for_posts(list(post_ids))
    return changed
