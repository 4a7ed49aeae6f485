"""English sentiment: accuracy against VADER's own human-rated sets, and speed, ours next to plain VADER.

    .venv/bin/python bench/sentiment.py

Reads tweets_GroundTruth.txt and nytEditorialSnippets_GroundTruth.txt (VADER's validation sets: id, mean
human rating -4..+4, text) in place from $ENGAGEMENT_SHARED_FIXTURES/sentiment/ (default ../shared/fixtures
beside the repository), and compares plain vaderSentiment (`polarity_scores(text)["compound"]` on the raw
text) with ours (engagement.scoring.EnglishVader) on:

- Pearson r between the compound and the mean rating;
- 3-class weighted F1: gold label is the sign of the mean rating, predicted label is the compound cut at
  +-0.05 (engagement.sentiment's thresholds);
- texts/s on the tweets (ours through the batch path, engagement.sentiment.score_texts), and on 200
  sentiment-dense 1,024-character texts generated here, where plain VADER's cost is quadratic;
- the compound of a 20-sentence, mildly positive text (plain VADER saturates near 1.0 on long texts).

No database: score_texts does not touch one, so the settings get addresses that are never connected to
(which also keeps the embedded servers from starting). It prints the figures next to their goals and never
fails on them.
"""

from __future__ import annotations

import math
import os
import random
import sys
import statistics
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "engagement.settings")
# Never connected to (score_texts reads no table); set so that settings.py starts no embedded server.
os.environ["DATABASE_URL"] = "postgresql://unused@127.0.0.1:1/unused"
os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"

FIXTURES = Path(os.environ.get("ENGAGEMENT_SHARED_FIXTURES") or ROOT.parent / "shared" / "fixtures") / "sentiment"
SETS = [("tweets", "tweets_GroundTruth.txt"), ("NYT editorials", "nytEditorialSnippets_GroundTruth.txt")]
# Goals: ours not worse than plain VADER on either set; what we aim for on each.
AIMS = {"tweets": "aim r >= 0.89", "NYT editorials": "aim r clearly above 0.503"}
# engagement.sentiment's cut between labels (repeated here so the accuracy part needs no Django).
POSITIVE_AT, NEGATIVE_AT = 0.05, -0.05
CLASSES = ("positive", "negative", "neutral")
RUNS = 7  # timed runs of each, alternating (a 2-core VM whose speed varies from moment to moment)
DENSE_TEXTS, DENSE_CHARS, SEED = 200, 1_024, 20_261_101
FUNCTION_WORDS = ["the", "and", "was", "it", "not", "very", "but", "this", "that", "of", "to", "a", "in", "is",
                  "we", "they", "so", "for", "with", "as", "on", "at", "all", "there", "really", "quite"]


def read_set(path: Path) -> list[tuple[float, str]]:
    """(mean rating, text) per line of a ground-truth file (TSV, CRLF)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            _id, rating, text = line.split("\t", 2)
            rows.append((float(rating), text))
    return rows


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    var_x = sum((x - mean_x) ** 2 for x in xs)
    var_y = sum((y - mean_y) ** 2 for y in ys)
    return cov / math.sqrt(var_x * var_y) if var_x and var_y else 0.0


def label_of(compound: float) -> str:
    return "positive" if compound >= POSITIVE_AT else "negative" if compound <= NEGATIVE_AT else "neutral"


def gold_of(rating: float) -> str:
    return "positive" if rating > 0 else "negative" if rating < 0 else "neutral"


def weighted_f1(gold: list[str], predicted: list[str]) -> float:
    """Per-class F1 (0 where a class has no precision or recall), weighted by each class's gold support."""
    support = Counter(gold)
    total = 0.0
    for cls in CLASSES:
        true_pos = sum(1 for g, p in zip(gold, predicted) if g == cls and p == cls)
        predicted_n = sum(1 for p in predicted if p == cls)
        precision = true_pos / predicted_n if predicted_n else 0.0
        recall = true_pos / support[cls] if support[cls] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += f1 * support[cls]
    return total / len(gold)


def paired_rates(plain_action, ours_action, count: int) -> tuple[float, float, float]:
    """Texts per second of each, and ours / plain: RUNS runs alternating plain and ours, so a slow moment
    of the machine hits both; the medians of the rates and of the per-pair ratios."""
    plain_rates, ours_rates, ratios = [], [], []
    for _ in range(RUNS):
        started = time.perf_counter()
        plain_action()
        plain_seconds = time.perf_counter() - started
        started = time.perf_counter()
        ours_action()
        ours_seconds = time.perf_counter() - started
        plain_rates.append(count / plain_seconds)
        ours_rates.append(count / ours_seconds)
        ratios.append(plain_seconds / ours_seconds)
    return statistics.median(plain_rates), statistics.median(ours_rates), statistics.median(ratios)


def dense_texts(lexicon: dict[str, float]) -> list[str]:
    """DENSE_TEXTS texts of exactly DENSE_CHARS characters: sentences of 8-20 words alternating a strong
    lexicon word (|valence| >= 1.5) and a function word, each ending with a period."""
    rng = random.Random(SEED)
    strong = sorted(word for word, valence in lexicon.items() if abs(valence) >= 1.5 and word.isalpha())
    by_length: dict[int, list[str]] = {}
    for word in strong + FUNCTION_WORDS:
        by_length.setdefault(len(word), []).append(word)
    texts = []
    for _ in range(DENSE_TEXTS):
        text, in_sentence, left, strong_next = "", False, 0, rng.random() < 0.5
        while True:
            word = rng.choice(strong if strong_next else FUNCTION_WORDS)
            piece = (" " if text else "") + (word if in_sentence else word.capitalize())
            if not in_sentence:
                left = rng.randint(8, 20)  # words in this sentence
            ends = left == 1
            # Stop while at least a few characters remain for the closing words (see below).
            if len(text) + len(piece) + (1 if ends else 0) + 5 > DENSE_CHARS:
                break
            text += piece + ("." if ends else "")
            left -= 1
            in_sentence = not ends
            strong_next = not strong_next
        # Close with one or two words whose lengths make the text exactly DENSE_CHARS long.
        room = DENSE_CHARS - len(text) - 1  # characters for " word" pieces before the final period
        lengths = [room - 1] if room - 1 in by_length else [(room - 2) // 2, room - 2 - (room - 2) // 2]
        for length in lengths:
            word = rng.choice(by_length[length])
            text += " " + (word if in_sentence else word.capitalize())
            in_sentence = True
        text += "."
        assert len(text) == DENSE_CHARS, len(text)
        texts.append(text)
    return texts


# A long, mildly positive text: plain news sentences, every other one with one mild positive word.
NEUTRAL = [
    "The talks resumed on Tuesday in Geneva.",
    "Both delegations arrived by car shortly after nine.",
    "The agenda lists prisoner exchanges and grain shipments.",
    "A second round is planned for next month.",
    "Reporters waited outside the building until the evening.",
]
MILD = [
    "Delegates said the first session went fine.",
    "The mood in the room was calm.",
    "Observers called the exchange useful.",
    "One negotiator said the talks were okay so far.",
    "A spokesman said there was a chance of a deal.",
]


def mild_text(rng: random.Random) -> str:
    return " ".join(rng.choice(MILD if n % 2 else NEUTRAL) for n in range(20))


def main() -> None:
    missing = [name for _label, name in SETS if not (FIXTURES / name).is_file()]
    if missing:
        print(f"VADER's ground-truth files are not in {FIXTURES} ({', '.join(missing)} missing): nothing to "
              "compare. Set ENGAGEMENT_SHARED_FIXTURES to the folder holding sentiment/.")
        return

    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from engagement.scoring import EnglishVader

    plain, ours = SentimentIntensityAnalyzer(), EnglishVader()

    def plain_score(text: str) -> float:
        return plain.polarity_scores(text)["compound"]

    print(f"accuracy against the human ratings ({FIXTURES})\n")
    print(f"{'set':<16}{'texts':>6}  {'scorer':<8}{'r':>8}{'F1':>7}   goal")
    sets = {}
    for label, name in SETS:
        rows = read_set(FIXTURES / name)
        sets[label] = rows
        ratings = [rating for rating, _text in rows]
        gold = [gold_of(rating) for rating in ratings]
        figures = {}
        for scorer, score in (("plain", plain_score), ("ours", ours.score)):
            compounds = [score(text) for _rating, text in rows]
            figures[scorer] = (pearson(compounds, ratings), weighted_f1(gold, [label_of(c) for c in compounds]))
        for scorer, (r, f1) in figures.items():
            goal = ""
            if scorer == "ours":
                verdict = "not worse" if r >= figures["plain"][0] and f1 >= figures["plain"][1] else "WORSE"
                goal = f"not worse than plain ({verdict}); {AIMS[label]}"
            print(f"{label if scorer == 'plain' else '':<16}{len(rows) if scorer == 'plain' else '':>6}  "
                  f"{scorer:<8}{r:>8.4f}{f1:>7.3f}   {goal}")
        plain_r, ours_r = figures["plain"][0], figures["ours"][0]
        print(f"{'':<22}r to 3 decimals: plain {plain_r:.3f}, ours {ours_r:.3f}; "
              f"F1: plain {figures['plain'][1]:.3f}, ours {figures['ours'][1]:.3f}")

    import django

    django.setup()
    from engagement.sentiment import score_texts

    tweets = [text for _rating, text in sets["tweets"]]
    languages = ["en"] * len(tweets)
    score_texts(tweets[:1], languages[:1])  # the backend is built once per process: not part of the timing
    print(f"\nspeed, texts/s (medians of {RUNS} alternating runs; ratio: median of the per-pair ratios)\n")
    print(f"{'texts':<44}{'plain':>9}{'ours':>9}{'ratio':>8}   goal")
    plain_rate, ours_rate, ratio = paired_rates(lambda: [plain_score(text) for text in tweets],
                                                lambda: score_texts(tweets, languages), len(tweets))
    print(f"{f'{len(tweets):,} tweets (ours: sentiment.score_texts)':<44}{plain_rate:>9,.0f}{ours_rate:>9,.0f}"
          f"{ratio:>7.2f}x   >= 0.8x")

    dense = dense_texts(plain.lexicon)
    dense_languages = ["en"] * len(dense)
    plain_rate, ours_rate, ratio = paired_rates(lambda: [plain_score(text) for text in dense],
                                                lambda: score_texts(dense, dense_languages), len(dense))
    print(f"{f'{len(dense)} sentiment-dense texts of {DENSE_CHARS:,} chars':<44}{plain_rate:>9,.0f}"
          f"{ours_rate:>9,.0f}{ratio:>7.1f}x   >= 10x")

    plain_labels = [label_of(plain_score(text)) for text in dense]
    ours_labels = [label for label, _compound, _backend, _reason in score_texts(dense, dense_languages)]
    counts = {name: Counter(labels) for name, labels in (("plain", plain_labels), ("ours", ours_labels))}
    print(f"\nlabels on the dense texts (e.g. {dense[0][:70]!r}...)")
    for name, counted in counts.items():
        print(f"  {name:<6}" + ", ".join(f"{cls} {counted[cls]}" for cls in CLASSES))
    same = sum(1 for a, b in zip(plain_labels, ours_labels) if a == b)
    print(f"  the same label on {same} of {len(dense)}")

    mild = mild_text(random.Random(SEED))
    alone = [plain_score(sentence) for sentence in MILD]
    print(f"\na 20-sentence mildly positive text ({len(mild):,} chars; 10 plain news sentences, 10 with one mild "
          f"word, each of those {min(alone):.2f}-{max(alone):.2f} alone, e.g. {MILD[0]!r}):")
    print(f"  compound: plain {plain_score(mild):.4f}, ours {ours.score(mild):.4f}   "
          "(plain VADER's compound climbs toward 1.0 with every sentiment word; ours averages 5-sentence windows)")

if __name__ == "__main__":
    main()
