"""Sentiment: language detection, labels and reasons, the English scorer, corrections and re-scoring
(engagement/sentiment.py, engagement/scoring.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from engagement import sentiment
from engagement.models import Post, Sentiment
from engagement.scoring import EnglishVader, VaderRules
from tests.test_moderation import item, store

TRACKED = frozenset({"ukrainepeacetalks"})


# --- the English scorer (no database) ------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "The talks went well and everyone is hopeful!!",
    "This is NOT good at all, a terrible and sad day",
    "Kind of a letdown, but the delegations were very kind",
    "I don't care, I DON'T CARE",
    "They said the deal is the bomb :) 😀",
    "no problem, no worries, never so happy",
    "At least it was not the worst outcome",
    "",
])
def test_the_ported_rules_give_vaders_own_compound(text):
    plain = SentimentIntensityAnalyzer().polarity_scores(text)["compound"]
    assert round(VaderRules().compound(text), 4) == plain


def test_a_long_text_is_scored_in_windows_and_does_not_saturate():
    scorer = EnglishVader()
    paragraph = ("The second round of talks was fine. The mood was good. Not all was good. "
                 "The hall was cold. Lunch was late. ")
    long = scorer.score(paragraph * 20)
    plain = SentimentIntensityAnalyzer()
    # VADER's compound grows with the number of sentiment words until it saturates...
    assert plain.polarity_scores(paragraph)["compound"] < 0.9 < 0.98 < plain.polarity_scores(paragraph * 20)["compound"]
    paragraph = scorer.score(paragraph)
    # ...ours is the mean of paragraph-sized windows, so a longer text of the same tone scores the same.
    assert 0 < long < 0.9 and abs(long - paragraph) < 0.1


def test_links_mentions_and_the_tracked_hashtag_are_not_read_as_sentiment():
    scorer = EnglishVader()
    assert scorer.score("Update https://news.example/great-success-love @happyjoy #UkrainePeaceTalks",
                        TRACKED) == 0.0
    # Another hashtag is a word like any other.
    assert scorer.score("Another round #sad", TRACKED) < 0


def test_stretched_words_are_read_as_the_word():
    scorer = EnglishVader()
    assert scorer.score("this is goooood") == scorer.score("this is good") > 0


def test_the_cost_is_linear_in_the_text(monkeypatch):
    calls = []
    rules = VaderRules()
    original = rules.valence
    monkeypatch.setattr(rules, "valence", lambda text: calls.append(len(text.split())) or original(text))
    scorer = EnglishVader()
    scorer.rules = rules
    scorer.score("good words and bad words here. " * 200)
    # Each window holds at most WINDOW_SENTENCES sentences: work per window is bounded, windows grow linearly.
    assert max(calls) <= 5 * 6 and len(calls) == 40


# --- labels, languages, reasons (database) ------------------------------------------------------------


@pytest.mark.django_db
def test_english_posts_get_a_label_a_score_and_the_backend_that_gave_it():
    good, bad, flat = store(item(1, "What a wonderful, hopeful day for the talks"),
                            item(2, "This is a terrible, shameful betrayal"),
                            item(3, "The delegations meet at noon in the main building"))
    assert sentiment.score_pending() == 3
    good, bad, flat = (Post.objects.get(pk=p.pk) for p in (good, bad, flat))
    assert (good.sentiment, bad.sentiment, flat.sentiment) == ("positive", "negative", "neutral")
    assert good.language == "en" and good.sentiment_score > 0.05 and good.scored_at is not None
    assert good.sentiment_backend.startswith("vader-windows (vaderSentiment 3.3.2")
    assert sentiment.score_pending() == 0  # nothing left


@pytest.mark.django_db
def test_ukrainian_and_russian_posts_get_their_language_and_are_not_scored_never_neutral():
    uk, ru = store(item(1, "Переговори в Женеві знову відклали, ніхто не знає, що буде далі з перемир'ям"),
                   item(2, "Переговоры в Женеве снова отложили, никто не знает, что будет дальше с перемирием"))
    sentiment.score_pending()
    uk, ru = Post.objects.get(pk=uk.pk), Post.objects.get(pk=ru.pk)
    assert (uk.language, uk.sentiment, uk.sentiment_reason) == ("uk", "unscored", "unsupported language (uk)")
    assert (ru.language, ru.sentiment, ru.sentiment_reason) == ("ru", "unscored", "unsupported language (ru)")
    assert uk.sentiment_score is None and ru.sentiment_score is None


@pytest.mark.django_db
def test_an_empty_text_is_not_scored_with_its_reason():
    [empty] = store(item(1, "   "))
    sentiment.score_pending()
    empty.refresh_from_db()
    assert (empty.sentiment, empty.sentiment_reason) == ("unscored", "empty text")


@pytest.mark.django_db
def test_a_backend_for_another_language_is_a_setting(settings):
    settings.ENGAGEMENT_SENTIMENT_BACKENDS = {**settings.ENGAGEMENT_SENTIMENT_BACKENDS,
                                              "uk": "tests.test_sentiment.AlwaysNegative"}
    sentiment.backend_for.cache_clear()
    try:
        [uk] = store(item(1, "Переговори в Женеві знову відклали, ніхто не знає, що буде далі"))
        sentiment.score_pending()
        uk.refresh_from_db()
        assert (uk.sentiment, uk.sentiment_score, uk.sentiment_backend) == ("negative", -0.5, "test-uk (1)")
    finally:
        sentiment.backend_for.cache_clear()


class AlwaysNegative:
    name, version = "test-uk", "1"

    def score(self, text, tracked=frozenset()):
        return -0.5


@pytest.mark.django_db
def test_an_edited_text_is_scored_again():
    [post] = store(item(1, "A wonderful day"))
    sentiment.score_pending()
    store(item(1, "A terrible day"))
    post.refresh_from_db()
    assert post.scored_at is None  # waiting again
    sentiment.score_pending()
    post.refresh_from_db()
    assert post.sentiment == "negative"


# --- corrections and re-scoring -------------------------------------------------------------------------


@pytest.fixture
def editor(django_user_model):
    user = django_user_model.objects.create_user(username="ed", is_staff=True)
    user.groups.add(Group.objects.get(name="Editors"))
    return django_user_model.objects.get(pk=user.pk)


@pytest.mark.django_db
def test_a_correction_wins_and_survives_rescoring_with_who_and_when(editor, capsys):
    [post] = store(item(1, "What a wonderful day"))
    sentiment.score_pending()
    assert sentiment.correct([post.pk], "negative", user=editor) == 1
    call_command("rescore")
    post.refresh_from_db()
    assert (post.sentiment, post.sentiment_auto) == ("negative", "positive")
    assert post.sentiment_corrected_by == editor and post.sentiment_corrected_at is not None
    assert "rescored=1" in capsys.readouterr().out


@pytest.mark.django_db
def test_someone_without_the_role_cannot_correct(django_user_model):
    [post] = store(item(1, "What a wonderful day"))
    nobody = django_user_model.objects.create_user(username="nobody", is_staff=True)
    with pytest.raises(PermissionDenied):
        sentiment.correct([post.pk], "negative", user=nobody)


@pytest.mark.django_db
def test_rescore_since_a_date_only_touches_newer_posts(capsys):
    old, new = store(item(1, "A wonderful day", minutes=0), item(2, "A wonderful evening", minutes=600))
    sentiment.score_pending()
    Post.objects.update(sentiment_backend="old backend")
    call_command("rescore", "--since", "2026-11-20T15:00:00Z")
    assert Post.objects.get(pk=old.pk).sentiment_backend == "old backend"
    assert Post.objects.get(pk=new.pk).sentiment_backend.startswith("vader-windows")


@pytest.mark.django_db
def test_the_admin_corrects_sentiment_for_editors_and_shows_it(client, editor):
    [post] = store(item(1, "What a wonderful day"))
    sentiment.score_pending()
    client.force_login(editor)
    response = client.post(f"/admin/engagement/post/{post.pk}/sentiment/", {"label": "neutral"},
                           HTTP_ACCEPT="application/json")
    assert response.json() == {"id": post.pk, "sentiment": "neutral"}
    page = client.get("/admin/engagement/post/").content.decode()
    assert "neutral ✎" in page
    assert client.post(f"/admin/engagement/post/{post.pk}/sentiment/", {"label": "meh"}).status_code == 400
    assert Sentiment(Post.objects.get(pk=post.pk).sentiment) == Sentiment.NEUTRAL


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_worker_scores_a_stored_page_in_one_batch_by_itself(flushed_redis, upstream, start_worker):
    from engagement import collect
    from engagement.models import Rollup
    from tests.conftest import wait_for
    from tests.mastodon_fake import MastodonTimeline, make_status

    texts = ["What a wonderful, hopeful day for the talks", "This is a terrible, shameful betrayal",
             "Переговори знову відклали, ніхто не знає, що буде далі з перемир'ям"]
    MastodonTimeline(upstream, "UkrainePeaceTalks", [make_status(n, text=t) for n, t in enumerate(texts, 1)])
    start_worker()
    source = collect.register_source(platform="mastodon", url=upstream.url, hashtags=["UkrainePeaceTalks"])
    collect.run_source(source.pk, owner="test")  # stores the page and queues its scoring on commit
    wait_for(lambda: not Post.objects.filter(scored_at__isnull=True).exists(), timeout=60,
             message="the page scored by the worker")
    assert sorted(Post.objects.values_list("sentiment", flat=True)) == ["negative", "positive", "unscored"]
    # One batch: every post carries the same scoring time.
    assert Post.objects.values("scored_at").distinct().count() == 1
    assert sorted(Rollup.objects.values_list("sentiment", flat=True)) == ["negative", "positive", "unscored"]
