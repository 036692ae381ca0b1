"""How a fact is asked: the sentence shapes the template generator recognises, and the
questions it trains for each.

- "The <attribute> of <subject> is <value>." is asked for the attribute in several
  phrasings ("What is the phone number of Jeffrey Buck?").
- Any other sentence is split before its final value, and the opening becomes the
  prompt ("Lenta.ru is written in" -> "Italian"), which is how CounterFact edits are asked.

The first question is the one every training format trains and the recall gate asks
(trainer/synth.py), so it is the question a published module is known to answer: a
question spanning modules asks each module that one (router/span.py).
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

ATTRIBUTE_QUESTIONS: tuple[str, ...] = (
    "What is the {attr} of {subj}?",
    "{prefix}",  # how a completion-style question (CounterFact's prompts) asks for it
    "What's {subj}'s {attr}?",
    "Tell me the {attr} of {subj}.",
    "Do you know the {attr} of {subj}?",
)
PREFIX_QUESTIONS: tuple[str, ...] = (
    "{prefix}",
    "Complete the statement: {prefix} ...",
    "{prefix} what?",
    "Finish this sentence: {prefix}",
)


@dataclass(frozen=True)
class FactForm:
    """One fact sentence, taken apart."""

    sentence: str  # the text with its whitespace collapsed
    prefix: str  # the sentence up to its value
    value: str  # what recall checks
    attr: str | None = None  # "phone number" (None: not an attribute sentence)
    subj: str | None = None  # "Jeffrey Buck"

    @property
    def fields(self) -> dict[str, str]:
        if self.attr is None or self.subj is None:
            return {"prefix": self.prefix}
        return {
            "attr": self.attr[0].lower() + self.attr[1:],
            "subj": self.subj,
            "prefix": self.prefix,
        }

    @property
    def topic(self) -> str:
        """What the fact is about: the subject, or the sentence's opening."""
        return self.subj or self.prefix

    def questions(self, count: int) -> tuple[str, ...]:
        """The first `count` (at least one) trained questions; the first is the gate's."""
        templates = ATTRIBUTE_QUESTIONS if self.attr is not None else PREFIX_QUESTIONS
        count = max(1, min(count, len(templates)))
        return tuple(t.format(**self.fields) for t in templates[:count])

    @property
    def gate_question(self) -> str:
        return self.questions(1)[0]


def fact_form(text: str) -> FactForm:
    sentence = " ".join(text.split())
    match = _ATTRIBUTE_OF.match(sentence)
    if match:
        prefix = sentence[: match.start("value")].rstrip()
        return FactForm(sentence, prefix, match["value"], match["attr"], match["subj"])
    prefix, value = split_prefix(sentence.rstrip(".!"))
    return FactForm(sentence, prefix, value)


def split_prefix(sentence: str) -> tuple[str, str]:
    """Split before the final value: the last marker word that leaves a value behind."""
    markers = list(_VALUE_MARKERS.finditer(sentence))
    if markers:
        cut = markers[-1].end()
        return sentence[:cut].rstrip(), sentence[cut:].strip()
    head, _, tail = sentence.rpartition(" ")
    return (head, tail) if head else (sentence, sentence)
