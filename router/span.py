"""Questions that span modules: "What are the phone numbers of A and B?" with A's fact in
one module and B's in another.

The router decides a question spans modules when, beside the module it chose, another
module's best fact among the query's top-k
  1. clears the route threshold and lies within `margin` of the chosen module's best fact
     (a question naming two people embeds about as close to each one's fact: 0.58-0.73
     on PhoneBook pairs, against at most 0.67 for another module's nearest fact to a
     one-person question, whose own fact scores 0.85 and more), and
  2. names something the query names and the facts chosen so far do not: a word of the
     query (not a stop word) that this fact holds, that none of the parts chosen so far
     holds, and that at most half of the top-k facts hold (so "phone" or "number",
     which every look-alike fact holds, never counts; a name does).
The second test is what tells a two-entity question from a one-entity question whose
look-alike neighbours sit in other modules: those score close too, but they add no word
of the question. Each part keeps the words it added.

What each part's module is asked (`SpanPart.question`, `sub_question`): the question its
fact was trained on and gated with (loramem/fact_forms.py: "What is the phone number of
A?" for "The phone number of A is N."), when the query asks what the fact states about
what the part names, i.e. the part's words name the fact's subject and the query holds a
word of its attribute (for another sentence shape: the part's words are in its opening,
and so is another query word); a module is only known to answer that question (the user's
wording less the other names, "What are the phone numbers of A?", lost one number in 10
of 40 PhoneBook pairs: docs/RESULTS.md). Otherwise, e.g. the query asks for something
the fact does not say, the part is asked the user's wording less the words the other
parts added (`sub_question`).

Pure functions; the router reads the candidate facts' texts and calls them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from loramem.fact_forms import fact_form
from router.index import Hit
from router.lexical import words

# Where another part's words were cut out, and the conjunction or comma that joined them.
_GAP = "\x00"
_JOIN_BEFORE = re.compile(r"\s*(?:,|\band\b|&)\s*" + _GAP, re.IGNORECASE)
_JOIN_AFTER = re.compile(_GAP + r"\s*(?:,|\band\b|&)\s*", re.IGNORECASE)
_SPACES = re.compile(r"\s{2,}")


@dataclass(frozen=True)
class SpanPart:
    """One module's share of a spanning question."""

    module: str  # the module's id
    fact_id: str  # its best fact among the query's top-k
    score: float  # that fact's score
    words: tuple[str, ...]  # the query's words this part added (what it names)
    question: str = ""  # its fact's trained question, when the query asks what it states


def find_span(
    query: str,
    hits: list[Hit],
    texts: Mapping[str, str],
    chosen: str,
    threshold: float,
    margin: float,
    max_parts: int,
) -> list[SpanPart]:
    """The parts of a spanning question, the chosen module's first; [] when the question
    does not span modules. `hits`: the top-k facts best first; `texts`: fact id -> text
    (facts without a text are skipped)."""
    asked = words(query) - ENGLISH_STOP_WORDS
    held = {h.fact_id: words(texts[h.fact_id]) & asked for h in hits if h.fact_id in texts}
    common = _common_words(held, len(hits))
    first = next((h for h in hits if h.module == chosen and h.fact_id in held), None)
    if first is None:
        return []
    covered = set(held[first.fact_id])
    parts = [SpanPart(chosen, first.fact_id, first.score, tuple(sorted(covered - common)))]
    eligible = [
        h
        for h in hits
        if h.fact_id in held and h.score >= threshold and first.score - h.score <= margin
    ]
    while len(parts) < max_parts:
        # The fact that names most of what is still unnamed (a whole name over a shared
        # first name), the closer one on a tie; one part per module.
        taken = {p.module for p in parts}
        added = [(held[h.fact_id] - covered - common, h) for h in eligible if h.module not in taken]
        best = max(added, key=lambda a: (len(a[0]), a[1].score), default=None)
        if best is None or not best[0]:
            break
        new, hit = best
        parts.append(SpanPart(hit.module, hit.fact_id, hit.score, tuple(sorted(new))))
        covered |= held[hit.fact_id]
    if len(parts) < 2:
        return []
    names = {w for p in parts for w in p.words}
    return [
        replace(p, question=trained_question(texts[p.fact_id], asked, set(p.words), names))
        for p in parts
    ]


def trained_question(text: str, asked: frozenset[str], named: set[str], names: set[str]) -> str:
    """The question the fact was trained and gated on, when the query (its words `asked`)
    asks what the fact states about what the part named; "" otherwise. `named`: the
    words this part added; `names`: those every part added."""
    form = fact_form(text)
    if form.attr is not None and form.subj is not None:
        # "The <attr> of <subject> is <value>.": the query names the subject (not only
        # the value) and asks for the attribute
        about, stated = words(form.subj) & named, words(form.attr) & asked
    else:  # any other sentence: its opening names the part and holds another query word
        opening = words(form.prefix)
        about, stated = opening & named, (opening & asked) - names
    return form.gate_question if about and stated - ENGLISH_STOP_WORDS else ""


def _common_words(held: Mapping[str, frozenset[str]], k: int) -> set[str]:
    """Words of the query that more than half of the top-k facts hold: shared shape, no name."""
    counts: dict[str, int] = {}
    for found in held.values():
        for word in found:
            counts[word] = counts.get(word, 0) + 1
    return {w for w, n in counts.items() if 2 * n > k}


def part_question(query: str, part: SpanPart, parts: list[SpanPart], trained: bool) -> str:
    """What one part's module is asked: its fact's trained question where it has one
    (and `trained`), else the query less the other parts' words."""
    return part.question if trained and part.question else sub_question(query, part, parts)


def sub_question(query: str, part: SpanPart, parts: list[SpanPart]) -> str:
    """The query in the user's wording, less the words the other parts added, with the
    conjunction or comma that joined them ("A and B?" -> "A?", "B, A." -> "B.")."""
    others = {w for p in parts if p is not part for w in p.words} - set(part.words)
    if not others:
        return query
    word = r"\b(?:" + "|".join(map(re.escape, sorted(others))) + r")\b"
    # A run of cut words (a full name, initials and all, a possessive) becomes one gap.
    run = re.compile(word + r"(?:[\s.'-]*" + word + r")*(?:'s\b)?", re.IGNORECASE)
    text = run.sub(_GAP, query)
    text = _JOIN_BEFORE.sub("", text)
    text = _JOIN_AFTER.sub("", text).replace(_GAP, "")
    return _SPACES.sub(" ", text).strip().replace(" ?", "?").replace(" .", ".")
