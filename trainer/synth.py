"""Training data from facts: question/answer pairs (the paper's best single format).

The `template` generator needs no LLM. It recognises "The <attribute> of <subject> is
<value>." and asks for the attribute in several phrasings; any other sentence is split
before its last word group, and the opening half becomes the prompt ("Lenta.ru is written
in" -> "Italian"), which is how CounterFact edits are asked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATTRIBUTE_OF = re.compile(
    r"^(?:the\s+)?(?P<attr>.+?)\s+of\s+(?P<subj>.+?)\s+(?:is|are|was|were)\s+(?P<value>.+?)[.!]?$",
    re.IGNORECASE,
)
# Words after which a sentence's final value usually starts.
_VALUE_MARKERS = re.compile(
    r"\s(is|are|was|were|in|of|by|from|to|at|for|language|sport|plays|speaks)\s", re.I
)

_ATTRIBUTE_QUESTIONS = (
    "What is the {attr} of {subj}?",
    "What's {subj}'s {attr}?",
    "Tell me the {attr} of {subj}.",
    "Do you know the {attr} of {subj}?",
)
_PREFIX_QUESTIONS = (
    "{prefix}",
    "Complete the statement: {prefix} ...",
    "{prefix} what?",
    "Finish this sentence: {prefix}",
)


@dataclass(frozen=True)
class FactQA:
    """Questions that ask for one fact, the answer to train, and the value recall checks."""

    fact_id: str
    questions: tuple[str, ...]
    answer: str
    expected: str


def fact_qa(fact_id: str, text: str, questions_per_fact: int) -> FactQA:
    sentence = " ".join(text.split())
    answer = sentence if sentence.endswith((".", "!", "?")) else sentence + "."
    match = _ATTRIBUTE_OF.match(sentence)
    if match:
        attr, subj = match["attr"], match["subj"]
        templates = _ATTRIBUTE_QUESTIONS
        fields = {"attr": attr[0].lower() + attr[1:], "subj": subj}
        expected = match["value"]
    else:
        prefix, expected = split_prefix(sentence.rstrip(".!"))
        templates = _PREFIX_QUESTIONS
        fields = {"prefix": prefix}
    count = max(1, min(questions_per_fact, len(templates)))
    questions = tuple(t.format(**fields) for t in templates[:count])
    return FactQA(fact_id=fact_id, questions=questions, answer=answer, expected=expected)


def split_prefix(sentence: str) -> tuple[str, str]:
    """Split before the final value: the last marker word that leaves a value behind."""
    markers = list(_VALUE_MARKERS.finditer(sentence))
    if markers:
        cut = markers[-1].end()
        return sentence[:cut].rstrip(), sentence[cut:].strip()
    head, _, tail = sentence.rpartition(" ")
    return (head, tail) if head else (sentence, sentence)
