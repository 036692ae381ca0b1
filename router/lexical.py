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
"""

from __future__ import annotations

import math
import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+")  # "Wyatt's" holds "wyatt": a possessive still names


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


class LexicalIndex:
    """Each fact's words and every word's document frequency, for one tenant. Not
    thread-safe: the router's lock covers it."""

    def __init__(self) -> None:
        self._words: dict[str, frozenset[str]] = {}
        self._df: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._words)

    def add(self, fact_id: str, text: str) -> None:
        self.remove(fact_id)
        held = words(text)
        self._words[fact_id] = held
        self._df.update(held)

    def remove(self, fact_id: str) -> None:
        held = self._words.pop(fact_id, None)
        if held:
            self._df.subtract(held)
            for word in held:
                if self._df[word] <= 0:
                    del self._df[word]

    def weights(self, query: str) -> dict[str, float]:
        """The query's words the tenant knows, with their idf."""
        total = len(self._words)
        return {w: math.log(1 + total / self._df[w]) for w in words(query) if self._df.get(w)}

    def score(self, weights: dict[str, float], fact_id: str) -> float:
        norm = sum(weights.values())
        held = self._words.get(fact_id, frozenset())
        return sum(v for w, v in weights.items() if w in held) / norm if norm else 0.0

    def texts(self) -> tuple[list[str], list[str]]:
        """Fact ids and their words, space-joined: `add` of these rebuilds the index."""
        ids = list(self._words)
        return ids, [" ".join(sorted(self._words[f])) for f in ids]
