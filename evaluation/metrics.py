"""Scores as the paper computes them; BLEU and ROUGE-L come from sacrebleu and rouge-score."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

_NOT_DIGIT = re.compile(r"\D")
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def digits(text: str) -> str:
    return _NOT_DIGIT.sub("", text)


def phone_exact(answer: str, phone: str) -> bool:
    """PhoneBook exact match: the answer's digits, and nothing else, are the number's digits
    (formatting such as dashes, spaces or brackets does not count)."""
    return digits(answer) == digits(phone) != ""


def strict_match(answer: str, expected: str) -> bool:
    """The expected string, exactly as written in the data, appears in the answer."""
    return expected in answer


def contains(answer: str, expected: str) -> bool:
    """Case-insensitive containment (CounterFact's greedy-answer check)."""
    return expected.strip().lower() in answer.lower()


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) with its default 13a tokenizer."""
    return _at_most_100(BLEU().corpus_score(list(hypotheses), [list(references)]).score)


def sentence_bleu(hypothesis: str, reference: str) -> float:
    # effective_order: short answers lack 4-grams; without it most sentences score 0.
    return _at_most_100(BLEU(effective_order=True).sentence_score(hypothesis, [reference]).score)


def _at_most_100(score: float) -> float:
    # sacrebleu sums logs and exponentiates: identical texts score 100.00000000000004.
    return min(100.0, float(score))


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure (0-1)."""
    return float(_ROUGE.score(reference, hypothesis)["rougeL"].fmeasure)


@dataclass(frozen=True)
class JudgeVerdict:
    score: float  # 0-10, the paper's rubric
    explanation: str


def parse_judge(text: str) -> JudgeVerdict | None:
    """The judge's JSON verdict, or None when it is not a JSON object with a 0-10 score.

    Tolerates code fences and prose around one object; anything else is a parse failure
    (counted and reported by the caller, never replaced by a default score).
    """
    match = _JSON_OBJECT.search(text)
    if match is None:
        return None
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    score = data.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    if not 0 <= score <= 10:
        return None
    return JudgeVerdict(float(score), str(data.get("explanation", "")))


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
