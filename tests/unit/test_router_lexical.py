"""The lexical signal: idf-weighted overlap, kept in step with adds and removals, and the
router's fusion of it with the dense score."""

import numpy as np

from loramem.registry import Registry
from router.lexical import LexicalIndex, words
from router.router import NO_ADAPTER, Router


def test_rare_words_weigh_more_and_unknown_words_not_at_all() -> None:
    index = LexicalIndex()
    index.add("a", "The phone number of Albert Wyatt is 705-882-9365.")
    index.add("b", "The phone number of Jeffrey Buck is 603-556-7631.")
    weights = index.weights("What's Wyatt's number, please?")
    assert set(weights) == {"wyatt", "number"}  # "please" is in no fact
    assert weights["wyatt"] > weights["number"]
    assert index.score(weights, "a") == 1.0
    assert 0 < index.score(weights, "b") < 0.5


def test_removal_and_replacement_keep_document_frequencies() -> None:
    index = LexicalIndex()
    index.add("a", "Ann likes tea")
    index.add("b", "Bob likes tea")
    index.add("a", "Ann drinks coffee")  # replaced
    index.remove("b")
    assert len(index) == 1
    assert index.weights("tea likes") == {}
    assert index.texts() == (["a"], [" ".join(sorted(words("Ann drinks coffee")))], [""])


class NameBlindEmbedder:
    """Dense vectors that miss the name: every phone fact lands near the question, one
    look-alike nearest (the case PhoneBook at scale shows with surname-only questions)."""

    dim = 2

    def embed(self, texts: list[str]) -> np.ndarray:
        angle = {"Quill": 0.9, "Ann": 0.5, "Bob": 0.6}  # radians from the question
        rows = [
            0.0 if t.endswith("?") else next(a for name, a in angle.items() if name in t)
            for t in texts
        ]
        return np.array([[np.cos(a), np.sin(a)] for a in rows], dtype=np.float32)


def test_the_router_lets_a_named_fact_win_over_closer_look_alikes() -> None:
    embedder = NameBlindEmbedder()
    facts = {
        "m0": "The phone number of Zed Quill is 555-0101.",
        "m1": "The phone number of Ann Lee is 555-0102.",
        "m2": "The phone number of Bob Ray is 555-0103.",
    }
    question = "What's Quill's number?"

    def router(weight: float, threshold: float = 0.5) -> Router:
        made = Router(
            Registry.from_url("redis://127.0.0.1:9/0"),  # never contacted
            embedder,
            "base",
            threshold=threshold,
            lexical_weight=weight,
        )
        for module, text in facts.items():
            vectors = embedder.embed([text])
            made.index_module("t", module, 1, NO_ADAPTER, [f"f-{module}"], vectors, texts=[text])
        return made

    dense = router(0.0).route("t", "auto", question)
    fused = router(1.0).route("t", "auto", question)
    assert dense.module == "m1"  # the nearest look-alike
    assert fused.module == "m0"  # the rare name decides
    assert dense.score is not None and fused.score is not None and fused.score > dense.score
    # The threshold applies to the fused score: the name lifts Quill's fact (dense 0.62)
    # over 1.0, which no dense score here (at most 0.88) reaches.
    assert router(1.0, threshold=1.0).route("t", "auto", question).module == "m0"
    assert router(0.0, threshold=1.0).route("t", "auto", question).module is None
    # Without the query's text (an embedded vector only) the order stays dense.
    assert router(1.0).decide("t", embedder.embed([question])[0]).module == "m1"
