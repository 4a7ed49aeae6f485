"""English sentiment: vaderSentiment on cleaned text, in windows VADER was made for, in linear time.

`EnglishVader.score(text, tracked=...)` returns VADER's compound in [-1, 1]. Differences from calling
`SentimentIntensityAnalyzer.polarity_scores` on the raw text, each on purpose:

- Cleaning: HTML entities decoded (`&amp;`), links and @mentions removed (they carry no sentiment but can
  hold lexicon words: `https://example.org/great-news`), the tracked hashtags removed (the topic, not an
  opinion), other hashtags kept as words (`#sad`), letters stretched past two repeats brought back to a word
  VADER knows (`goooood` -> `good`).
- Windows: a paragraph (up to WINDOW_SENTENCES sentences; tweets and sentences are what VADER was validated
  on) is scored whole; a longer text is cut into windows of that many sentences, each window is scored, and
  the compound is the mean of the windows that carry sentiment. A long, mildly positive article comment thus
  stays mildly positive instead of saturating at 0.99 (a known VADER weakness: its compound grows with the
  number of sentiment words).
- Linear cost: VADER rebuilds the lowercased word list for every word it looks at (quadratic in the words of a
  text) and its "but" rule uses list.index (quadratic, and wrong for repeated values). VaderRules ports the
  same rules with constant work per word, and the "but" rule scales by position.
"""

from __future__ import annotations

import html
import re
import string
from importlib.metadata import version

from vaderSentiment.vaderSentiment import (
    BOOSTER_DICT, C_INCR, N_SCALAR, NEGATE, SPECIAL_CASES, SentimentIntensityAnalyzer, normalize,
)

# VADER was built and validated on tweets and single sentences: a paragraph (up to this many sentences)
# is scored as one window, as VADER would; a longer text as the mean of such windows.
WINDOW_SENTENCES = 5
# A run of words without sentence punctuation longer than this counts as several sentences.
WINDOW_WORDS = 40
URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
MENTION = re.compile(r"(?<![\w@])@[\w.\-]+(?:@[\w.\-]+)?")
HASHTAG = re.compile(r"(?<!\w)#(\w+)")
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
STRETCHED = re.compile(r"(\w)\1{2,}")
STRETCHED_WORD = re.compile(r"\w*(\w)\1{2,}\w*")


NEGATIONS = frozenset(NEGATE)
# Words VADER's negation check looks for two and three words back ("never so", "without doubt", negations).
SO_THIS = frozenset({"so", "this"})
NEGATION_CUES = NEGATIONS | {"never", "without"}
# VADER dampens a booster one and two words further away.
DAMPING = (1.0, 0.95, 0.9)
# The preceding words VADER looks at: up to three.
RANGES, RANGE_3 = (range(0), range(1), range(2)), range(3)


class VaderRules:
    """VADER's compound score (vaderSentiment's lexicon, emoji descriptions, constants and rules) computed in
    one pass with constant work per word. The rules are VADER's own, ported; two of its bugs are not: the
    "but" rule scales words by their position (VADER's list.index picks the first equal value), and the
    per-word lookups read the neighbouring words instead of re-lowercasing the whole text for each word."""

    def __init__(self):
        analyzer = SentimentIntensityAnalyzer()
        self.lexicon: dict[str, float] = analyzer.lexicon
        self.emojis: dict[str, str] = analyzer.emojis
        self.emoji_chars = frozenset(self.emojis)

    def _describe_emojis(self, text: str) -> str:
        if self.emoji_chars.isdisjoint(text):
            return text
        out, previous_space = [], True
        for char in text:
            description = self.emojis.get(char)
            if description is None:
                out.append(char)
                previous_space = char == " "
                continue
            if not previous_space:
                out.append(" ")
            out.append(description)
            previous_space = False
        return "".join(out)

    def compound(self, text: str) -> float:
        total = self.valence(text)
        return normalize(total) if total else 0.0

    def valence(self, text: str) -> float:
        """VADER's summed valence of a text, with its punctuation emphasis, before normalising."""
        text = self._describe_emojis(text).strip()
        punctuation = string.punctuation
        words = [token if len(stripped := token.strip(punctuation)) <= 2 else stripped for token in text.split()]
        if not words:
            return 0.0
        lower = [word.lower() for word in words]
        # Where a multi-word special case or booster could start: VADER's idiom check is skipped elsewhere.
        phrase_at = [k for k in range(len(lower) - 1)
                     if lower[k] in PHRASE_STARTS and f"{lower[k]} {lower[k + 1]}" in PHRASE_BIGRAMS]
        capitals = sum(map(str.isupper, words))
        cap_diff = 0 < len(words) - capitals < len(words)
        lexicon, n = self.lexicon, len(words)
        has_no = "no" in lower
        # VADER's "but" rule: words before the first "but" count half, words after it one and a half.
        but = lower.index("but") if "but" in lower else -1
        total = 0.0
        for i in [k for k, word in enumerate(lower) if word in lexicon]:
            word = lower[i]
            if word in BOOSTER_DICT or (word == "kind" and i < n - 1 and lower[i + 1] == "of"):
                continue
            valence = lexicon[word]
            if has_no:
                if word == "no" and i != n - 1 and lower[i + 1] in lexicon:
                    valence = 0.0
                if (i > 0 and lower[i - 1] == "no") or (i > 1 and lower[i - 2] == "no") or (
                        i > 2 and lower[i - 3] == "no" and lower[i - 1] in ("or", "nor")):
                    valence = lexicon[word] * N_SCALAR
            if cap_diff and words[i].isupper():
                valence += C_INCR if valence > 0 else -C_INCR
            for start in RANGES[i] if i < 3 else RANGE_3:
                previous = lower[i - start - 1]
                if previous in lexicon:
                    continue
                if previous in BOOSTER_DICT:
                    valence += _booster(words[i - start - 1], previous, valence, cap_diff) * DAMPING[start]
                if start == 0:
                    if previous in NEGATIONS or "n't" in previous:
                        valence *= N_SCALAR
                elif previous in NEGATION_CUES or "n't" in previous or (start == 2 and lower[i - 1] in SO_THIS):
                    # Only these words can change anything in VADER's 2- and 3-words-back checks.
                    valence = _negation(valence, lower, start, i)
                if start == 2 and phrase_at and any(-3 <= k - i <= 1 for k in phrase_at):
                    valence = _idioms(valence, lower, i)
            if i and lower[i - 1] == "least":
                valence = _least(valence, lower, i, lexicon)
            if but >= 0 and i != but:
                valence *= 0.5 if i < but else 1.5
            total += valence
        if total:
            exclamations = min(text.count("!"), 4) * 0.292
            questions = text.count("?")
            emphasis = exclamations + (0.0 if questions <= 1 else questions * 0.18 if questions <= 3 else 0.96)
            total += emphasis if total > 0 else -emphasis
        return total


def _booster(word: str, lowered: str, valence: float, cap_diff: bool) -> float:
    scalar = BOOSTER_DICT.get(lowered, 0.0)
    if not scalar:
        return 0.0
    if valence < 0:
        scalar = -scalar
    if cap_diff and word.isupper():
        scalar += C_INCR if valence > 0 else -C_INCR
    return scalar


def _negated(word: str) -> bool:
    return word in NEGATIONS or "n't" in word


def _negation(valence: float, lower: list[str], start: int, i: int) -> float:
    if start == 0:
        return valence * N_SCALAR if _negated(lower[i - 1]) else valence
    if start == 1:
        if lower[i - 2] == "never" and lower[i - 1] in ("so", "this"):
            return valence * 1.25
        if lower[i - 2] == "without" and lower[i - 1] == "doubt":
            return valence
        return valence * N_SCALAR if _negated(lower[i - 2]) else valence
    if (lower[i - 3] == "never" and lower[i - 2] in ("so", "this")) or lower[i - 1] in ("so", "this"):
        return valence * 1.25
    if lower[i - 3] == "without" and "doubt" in (lower[i - 2], lower[i - 1]):
        return valence
    return valence * N_SCALAR if _negated(lower[i - 3]) else valence


# VADER's multi-word special cases and boosters, by their first two words: the idiom check runs only
# where one of them could be.
PHRASES = [phrase.split() for phrase in list(SPECIAL_CASES) + list(BOOSTER_DICT) if " " in phrase]
PHRASE_STARTS = frozenset(words[0] for words in PHRASES)
PHRASE_BIGRAMS = frozenset(f"{words[0]} {words[1]}" for words in PHRASES)


def _idioms(valence: float, lower: list[str], i: int) -> float:
    one_zero = f"{lower[i - 1]} {lower[i]}"
    three_two_one = f"{lower[i - 3]} {lower[i - 2]} {lower[i - 1]}"
    three_two = f"{lower[i - 3]} {lower[i - 2]}"
    two_one = f"{lower[i - 2]} {lower[i - 1]}"
    for sequence in (one_zero, f"{lower[i - 2]} {lower[i - 1]} {lower[i]}", two_one, three_two_one, three_two):
        if sequence in SPECIAL_CASES:
            valence = SPECIAL_CASES[sequence]
            break
    if len(lower) - 1 > i and f"{lower[i]} {lower[i + 1]}" in SPECIAL_CASES:
        valence = SPECIAL_CASES[f"{lower[i]} {lower[i + 1]}"]
    if len(lower) - 1 > i + 1 and f"{lower[i]} {lower[i + 1]} {lower[i + 2]}" in SPECIAL_CASES:
        valence = SPECIAL_CASES[f"{lower[i]} {lower[i + 1]} {lower[i + 2]}"]
    for n_gram in (three_two_one, three_two, two_one):
        valence += BOOSTER_DICT.get(n_gram, 0.0)
    return valence


def _least(valence: float, lower: list[str], i: int, lexicon: dict) -> float:
    if i > 1 and lower[i - 1] == "least" and "least" not in lexicon:
        return valence * N_SCALAR if lower[i - 2] not in ("at", "very") else valence
    if i > 0 and lower[i - 1] == "least" and "least" not in lexicon:
        return valence * N_SCALAR
    return valence


class EnglishVader:
    """The English backend. `name` and `version` are stored with every score."""

    name = "vader-windows"

    def __init__(self):
        self.rules = VaderRules()
        self.version = f"vaderSentiment {version('vaderSentiment')}; windows of {WINDOW_SENTENCES} sentences"

    def clean(self, text: str, tracked: frozenset[str] = frozenset()) -> str:
        text = html.unescape(text) if "&" in (text or "") else (text or "")
        if "http" in text or "www." in text:
            text = URL.sub(" ", text)
        if "@" in text:
            text = MENTION.sub(" ", text)
        if "#" in text:
            text = HASHTAG.sub(lambda m: " " if m.group(1).casefold() in tracked else m.group(1), text)
        return STRETCHED_WORD.sub(self._unstretch, text) if STRETCHED.search(text) else text

    def _unstretch(self, match: re.Match) -> str:
        word = match.group(0)
        lexicon = self.rules.lexicon
        for candidate in (STRETCHED.sub(r"\1\1", word), STRETCHED.sub(r"\1", word)):
            if candidate.lower() in lexicon:
                return candidate
        return word

    def windows(self, text: str) -> list[str]:
        """A paragraph-sized text is one window; a longer one is cut every WINDOW_SENTENCES sentences (a
        sentence longer than WINDOW_WORDS words counts as several)."""
        pieces: list[str] = []
        for sentence in SENTENCE_END.split(text):
            words = sentence.split()
            pieces.extend(" ".join(words[n:n + WINDOW_WORDS]) for n in range(0, len(words), WINDOW_WORDS))
        return [" ".join(pieces[n:n + WINDOW_SENTENCES]) for n in range(0, len(pieces), WINDOW_SENTENCES)]

    def score(self, text: str, tracked: frozenset[str] = frozenset()) -> float:
        """VADER's compound for the cleaned text: one window scored whole, several averaged over those
        that carry sentiment (0.0 when none does)."""
        compounds = [self.rules.compound(window) for window in self.windows(self.clean(text, tracked))]
        bearing = [c for c in compounds if c != 0.0]
        return round(sum(bearing) / len(bearing), 4) if bearing else 0.0
