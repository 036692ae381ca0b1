"""A lexical signal beside the dense embedding: how much of the query's rare vocabulary a
candidate fact holds, each word weighted by its inverse document frequency in the tenant.

Why: many modules of the same shape ("The phone number of <name> is <number>") embed
close together, and a question about one person lands near all of them; the name is
what tells them apart, and a name is a rare word. The router re-scores its widened
dense candidates with `dense + weight * lexical` (router/router.py), and the threshold
applies to that fused score: a question naming a stored person by surname alone embeds
far from the fact ("What's Wyatt's number?") but shares its rarest word with it.

    lexical(q, f) = sum_{w in q & f} idf(w) / sum_{w in q, df(w) > 0} idf(w)
    idf(w) = log(1 + N / df(w))

Words the tenant's facts never use carry no signal and are left out of the sum, so the
signal lies in [0, 1] for every query.

The subject check (`names_subject`, LORAMEM_ROUTER_SUBJECT_CHECK): a question may go into
a module only when it names what a matched fact is about. "Justin Trudeau has a
citizenship from" embeds close to the fact "Chico Buarque has a citizenship from Canada"
(the template is most of both sentences) and clears the route threshold, but names
someone else. A fact's subject words are the names in its statement before the value
(fact_forms: "The phone number of Jeffrey Buck is" -> jeffrey, buck; "Chico Buarque has
a citizenship from" -> chico, buarque): words written with a capital or a digit that are
not stop words. Capitals are read on the fact, which its writer spelled out, never on
the question, which users type in lower case. The question names the subject when it
holds the subject word the tenant's facts use least (a surname alone, "What's Wyatt's
number?") or at least half of the subject's idf weight; so "Toyota Corolla" does not
name "Toyota Avalon". A fact with no subject words (no names; or a long sentence, such
as a document's, whose capitals are citations and sentence openings rather than what it
is about) is not checked: the dense score decides as before.
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from collections.abc import Iterable

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from loramem.fact_forms import fact_form

_WORD = re.compile(r"[a-z0-9]+")  # "Wyatt's" holds "wyatt": a possessive still names
_CASED_WORD = re.compile(r"[A-Za-z0-9]+")


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def is_document_sentence(text: str, max_words: int) -> bool:
    """A sentence of a document rather than a statement about one subject: more than
    `max_words` words (PaperQA's sentences have a median of 24, PhoneBook's and
    CounterFact's facts 3-12; LORAMEM_ROUTER_SUBJECT_MAX_WORDS)."""
    return len(text.split()) > max_words


def subject_words(text: str, max_words: int) -> frozenset[str]:
    """The names of what a fact is about, lower-cased: the words of its statement before
    the value (its subject, for "The <attr> of <subject> is <value>.") written with a
    capital or a digit, stop words left out. Empty for a fact of more than `max_words`
    words (a sentence of a document, not a statement about one subject)."""
    if is_document_sentence(text, max_words):
        return frozenset()
    form = fact_form(text)
    statement = form.subj or form.prefix
    return frozenset(
        word.lower()
        for word in _CASED_WORD.findall(statement)
        if word.lower() not in ENGLISH_STOP_WORDS and any(c.isupper() or c.isdigit() for c in word)
    )


class LexicalIndex:
    """Per tenant: each fact's words (for the lexical signal, `keep_words`) and subject
    words (for the subject check, `subject_max_words` > 0), with their document
    frequencies. Not thread-safe: the router's lock covers it."""

    def __init__(self, subject_max_words: int = 0, keep_words: bool = True) -> None:
        self.subject_max_words = subject_max_words  # 0: no subject words kept
        self.keep_words = keep_words
        self._words: dict[str, frozenset[str]] = {}  # every fact (empty sets when not kept)
        self._df: Counter[str] = Counter()
        # A few interned words a fact, as a tuple: a million facts' subjects fit in
        # a few hundred MB, where every fact's word set would take gigabytes.
        self._subjects: dict[str, tuple[str, ...]] = {}
        self._subject_df: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._words)

    def add(self, fact_id: str, text: str, subject: frozenset[str] | None = None) -> None:
        """Index a fact's text; `subject`: its subject words when known (a snapshot's),
        else they are read from the text."""
        self.remove(fact_id)
        held = words(text) if self.keep_words else frozenset()
        self._words[fact_id] = held
        self._df.update(held)
        if subject is None:
            subject = subject_words(text, self.subject_max_words)
        if subject and self.subject_max_words:
            self._subjects[fact_id] = tuple(sys.intern(w) for w in sorted(subject))
            self._subject_df.update(subject)

    def remove(self, fact_id: str) -> None:
        _drop(self._subject_df, self._subjects.pop(fact_id, ()))
        _drop(self._df, self._words.pop(fact_id, frozenset()))

    def weights(self, query: str) -> dict[str, float]:
        """The query's words the tenant knows, with their idf."""
        total = len(self._words)
        return {w: math.log(1 + total / self._df[w]) for w in words(query) if self._df.get(w)}

    def score(self, weights: dict[str, float], fact_id: str) -> float:
        norm = sum(weights.values())
        held = self._words.get(fact_id, frozenset())
        return sum(v for w, v in weights.items() if w in held) / norm if norm else 0.0

    def subject(self, fact_id: str) -> frozenset[str]:
        return frozenset(self._subjects.get(fact_id, ()))

    def names_subject(self, query: str, subject: frozenset[str]) -> bool:
        """Whether the query names a fact whose subject words are `subject` (True when
        it has none: nothing to check). A word weighs by how few of the tenant's facts
        have it in their subject; one none has (a pending fact's) weighs as the rarest."""
        if not subject:
            return True
        asked = words(query)
        total = max(len(self._words), 1)
        idf = {w: math.log(1 + total / max(self._subject_df.get(w, 0), 1)) for w in subject}
        rarest = max(idf.values())
        if any(w in asked for w, v in idf.items() if v == rarest):
            return True
        return 2 * sum(v for w, v in idf.items() if w in asked) >= sum(idf.values())

    def texts(self) -> tuple[list[str], list[str], list[str]]:
        """Fact ids, their words and their subject words, space-joined: `add` of these
        rebuilds the index."""
        ids = list(self._words)
        return (
            ids,
            [" ".join(sorted(self._words[f])) for f in ids],
            [" ".join(self._subjects.get(f, ())) for f in ids],
        )


def _drop(counts: Counter[str], held: Iterable[str]) -> None:
    for word in held:
        counts[word] -= 1
        if counts[word] <= 0:
            del counts[word]
