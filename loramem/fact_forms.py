"""How a fact is asked: the sentence shapes the template generator recognises, and the
questions it trains for each.

- "The <attribute> of <subject> is <value>." is asked for the attribute in several
  phrasings ("What is the phone number of Jeffrey Buck?").
- Any other sentence is split before its final value, and the opening becomes the
  prompt ("Lenta.ru is written in" -> "Italian"), which is how CounterFact edits are asked.

The first question is the one every training format trains and the recall gate asks
(trainer/synth.py), so it is the question a published module is known to answer: a
question spanning modules asks each module that one (router/span.py). `questions_per_fact`
takes the first phrasings of a list; the later ones make a module answer questions worded
unlike its sentence (docs/RESULTS.md, "Questions phrased unlike the stored sentence"). None is
an evaluation's phrasing: tests/unit/test_fact_forms.py keeps them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATTRIBUTE_OF = re.compile(
    r"^(?:the\s+)?(?P<attr>.+?)\s+of\s+(?P<subj>.+?)\s+(?:is|are|was|were)\s+(?P<value>.+?)[.!]?$",
    re.IGNORECASE,
)
_FIELD = re.compile(r"{(\w+)}")
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
    # Other word orders and openings, none tied to one attribute.
    "Which {attr} does {subj} have?",
    "{subj}: what is the {attr}?",
    "Could you give me {subj}'s {attr}, please?",
    "I am looking for the {attr} of {subj}.",
    "Where can I find {subj}'s {attr}?",
)
PREFIX_QUESTIONS: tuple[str, ...] = (
    "{prefix}",
    "Complete the statement: {prefix} ...",
    "{question}",  # the sentence turned into a question (`wh_question`), where it can be
    "{prefix} what?",
    "Finish this sentence: {prefix}",
    "Answer in a full sentence. {question}",
)
# Words a sentence's value may begin with that belong to the question, not the answer
# ("Pitchfork's headquarters are | in Cairo": "What are Pitchfork's headquarters in?").
_LEADING_FUNCTION_WORDS = frozenset({"is", "are", "was", "were", "in", "of", "at", "by",
                                     "from", "a", "an", "the"})  # fmt: skip
_COPULAS = frozenset({"is", "are", "was", "were"})
_MODALS = frozenset({"can", "could", "will", "would", "may", "might", "should", "must"})
_HAVE = {"has": "does", "have": "do", "had": "did"}
_NOT_VERBS = frozenset({"is", "was", "has", "does", "its", "this", "his", "hers", "us", "as"})


def wh_question(stem: str) -> str | None:
    """The statement before its value, asked as a "What ...?" question, or None where the
    sentence has no verb these rules move: "Lenta.ru is written in" -> "What is Lenta.ru
    written in?"; "In Macau, an official language is" -> "In Macau, what is an official
    language?"; "Anton Zeilinger works in the field of" -> "What does Anton Zeilinger work
    in the field of?". Grammar only, so it serves any sentence, not one data set."""
    if "?" in stem or " whose " in stem:  # a question already, or a clause these miss
        return None
    front = ""
    opening = re.match(r"^(In [^,]+,)\s*(.+)$", stem)
    if opening:  # a fronted place stays in front
        front, stem = opening[1] + " ", opening[2]
    stem = re.sub(r",\s+(?:who|which|that)\s+", " ", stem)
    stem = re.sub(r",\s+(an?|the)\s+", r" is \1 ", stem)
    words = stem.split()
    while words and words[-1].lower() in ("a", "an", "the"):
        words.pop()
    asked = _moved(words)
    if asked is None:
        return None
    return f"{front}{asked[0].lower() + asked[1:] if front else asked}?"


def _moved(words: list[str]) -> str | None:
    """ "What" and the verb moved in front of the subject, the first rule that applies."""

    def parts(i: int) -> tuple[str, str]:
        return _lower_first(" ".join(words[:i])), " ".join(words[i + 1 :])

    verbs = list(enumerate(words))[1:]
    for i, word in verbs:  # an auxiliary anywhere goes first: "The language used by X is"
        lower = word.lower()
        head, tail = parts(i)
        if lower in _COPULAS or lower in _MODALS:
            return f"What {lower} {head} {tail}".rstrip()
        if lower in _HAVE:
            return f"What {_HAVE[lower]} {head} have {tail}".rstrip()
    for i, word in verbs:
        head, tail = parts(i)
        if head.endswith(",") and word.endswith(("ed", "ing")):  # "X, created by"
            return f"What is {head[:-1]} {word} {tail}".rstrip()
        if not word.islower() or head.endswith(","):
            continue
        if word.endswith("s") and word not in _NOT_VERBS:  # "X speaks"
            return f"What does {head} {_plain_verb(word)} {tail}".rstrip()
        if word.endswith("ed"):  # "X worked in"
            return f"What did {head} {_past_plain(word)} {tail}".rstrip()
    return None


def _lower_first(text: str) -> str:
    """ "The language of X" mid-sentence is "the language of X"; names keep their case."""
    first, _, rest = text.partition(" ")
    return f"{first.lower()} {rest}".rstrip() if first in ("The", "A", "An") else text


def _plain_verb(verb: str) -> str:
    """ "speaks" -> "speak", "specializes" -> "specialize", "teaches" -> "teach"."""
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("ches", "shes", "sses", "xes")):
        return verb[:-2]
    return verb[:-1]


def _past_plain(verb: str) -> str:
    """ "worked" -> "work", "originated" -> "originate", "used" -> "use" (close enough
    where English is irregular: the question only has to carry the sentence's words)."""
    if verb.endswith("ied"):
        return verb[:-3] + "y"
    stem = verb[:-2]
    return stem + "e" if stem.endswith(("at", "ir", "ur", "iz", "us", "v", "c")) else stem


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
            question = wh_question(self.question_stem)
            return {"prefix": self.prefix, **({"question": question} if question else {})}
        return {
            "attr": self.attr[0].lower() + self.attr[1:],
            "subj": self.subj,
            "prefix": self.prefix,
        }

    @property
    def question_stem(self) -> str:
        """The prefix with the value's leading function words ("is", "in", "an"), which
        ask rather than answer; the value's last word always stays the answer."""
        words = self.value.split()
        stem = [self.prefix]
        while len(words) > 1 and words[0].lower() in _LEADING_FUNCTION_WORDS:
            stem.append(words.pop(0))
        return " ".join(stem)

    @property
    def topic(self) -> str:
        """What the fact is about: the subject, or the sentence's opening."""
        return self.subj or self.prefix

    def questions(self, count: int) -> tuple[str, ...]:
        """The first `count` (at least one) trained questions; the first is the gate's."""
        templates = ATTRIBUTE_QUESTIONS if self.attr is not None else PREFIX_QUESTIONS
        fields = self.fields
        # A template whose field this sentence lacks (no question form) is left out.
        usable = [t for t in templates if set(_FIELD.findall(t)) <= fields.keys()]
        return tuple(t.format(**fields) for t in usable[: max(1, count)])

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
