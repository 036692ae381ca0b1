"""Evaluation metrics against hand-computed values; judge and log-probability parsing."""

from __future__ import annotations

import math

import pytest

from evaluation import metrics
from evaluation.client import tail_logprob
from evaluation.counterfact import own_value

HYP, REF = "the cat sat on a mat", "the cat sat on the mat"


def test_bleu_matches_hand_computed_value() -> None:
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.corpus_bleu([HYP], [REF]) == pytest.approx(expected, abs=0.01)
    assert metrics.sentence_bleu(HYP, REF) == pytest.approx(expected, abs=0.01)
    assert metrics.corpus_bleu([REF], [REF]) == pytest.approx(100.0)
    # sacrebleu alone gives this sentence 100.00000000000004 against itself.
    same = "The phone number of Jasper Thistlewood is 948-722-3425."
    assert metrics.corpus_bleu([same], [same]) == metrics.sentence_bleu(same, same) == 100.0


def test_rouge_l_matches_hand_computed_value() -> None:
    # Longest common subsequence "the cat sat on mat": 5 of 6 words either way.
    assert metrics.rouge_l(HYP, REF) == pytest.approx(5 / 6)
    assert metrics.rouge_l("dogs bark", REF) == 0.0


@pytest.mark.parametrize(
    ("answer", "exact", "strict"),
    [
        ("The phone number of Jeffrey Buck is 603-556-7631.", True, True),
        ("It is (603) 556 7631", True, False),
        ("6035567631", True, False),
        ("The phone number of Jeffrey Buck is 603-556-7632.", False, False),
        ("603-556-7631, or 603-556-7631", False, True),  # extra digits are not exact
        ("I don't know.", False, False),
    ],
)
def test_phone_matches(answer: str, exact: bool, strict: bool) -> None:
    assert metrics.phone_exact(answer, "603-556-7631") is exact
    assert metrics.strict_match(answer, "603-556-7631") is strict


def test_phone_exact_needs_digits() -> None:
    assert not metrics.phone_exact("none", "no number")


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ('{"score": 7, "explanation": "mostly right"}', 7.0),
        ('```json\n{"score": 10}\n```', 10.0),
        ('Here you go: {"score": 0.5, "explanation": "x"} done', 0.5),
        ('{"score": 11}', None),
        ('{"score": "7"}', None),
        ('{"score": true}', None),
        ('{"rating": 7}', None),
        ("Score: 7/10", None),
        ('{"score": 7', None),
        ("[1, 2]", None),
    ],
)
def test_parse_judge(text: str, score: float | None) -> None:
    verdict = metrics.parse_judge(text)
    assert (verdict.score if verdict else None) == score


def _entry(token: str, logprob: float) -> dict:
    return {"123": {"logprob": logprob, "rank": 1, "decoded_token": token}}


def test_tail_logprob_sums_the_candidate_tokens() -> None:
    entries = [None, _entry(" is", -1.0), _entry(" in", -0.5), _entry(" Ital", -2.0),
               _entry("ian", -0.25)]  # fmt: skip
    assert tail_logprob(entries, "Italian") == pytest.approx(-2.25)
    assert math.isclose(tail_logprob(entries, "in Italian") or 0, -2.75)
    # A token that straddles the boundary cannot be split: undefined, not guessed.
    assert tail_logprob(entries, "talian") is None
    assert tail_logprob([None], "x") is None


def test_own_value_reads_the_completion() -> None:
    prompt = "Lenta.ru is written in"
    assert own_value("Lenta.ru is written in Russian, mostly.", prompt) == "Russian"
    assert own_value("Russian.", prompt) == "Russian"
    assert own_value("", prompt) == ""
    assert own_value("Lenta.ru is written in Old Church Slavonic", prompt, words=1) == "Old"
