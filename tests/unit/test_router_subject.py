"""The subject check: a model=auto question goes into a module only when it names what a
matched fact is about (router/lexical.py); the router's decision and the pending path."""

import numpy as np

from loramem.registry import Registry
from router.answer import Interim, with_pending
from router.index import Hit
from router.lexical import LexicalIndex, subject_words
from router.router import NO_ADAPTER, RouteDecision, Router


def test_subject_words_are_the_names_before_the_value() -> None:
    # "The <attr> of <subject> is <value>.": the subject; the number is the value
    assert subject_words("The phone number of Dr Jeffrey Buck is 603-556-7631.", 16) == {
        "dr",
        "jeffrey",
        "buck",
    }
    # CounterFact: the statement before its value, less stop words ("In")
    assert subject_words("Chico Buarque has a citizenship from Canada", 16) == {"chico", "buarque"}
    assert subject_words("In Macau, an official language is French", 16) == {"macau"}
    assert subject_words("Lenta.ru is written in Italian", 16) == {"lenta"}
    assert subject_words("Windows 8, developed by Google", 16) == {"windows", "8"}
    # No name before the value: nothing to check ("Japan" is the value)
    assert subject_words("golf, from Japan", 16) == frozenset()
    # A document's sentence: its capitals are citations and openings, not its subject
    long = "Lastly, we present experimental results (Xie et al., 2022) on MCTD and its variants."
    assert subject_words(long, 16) == {"lastly", "xie", "2022", "mctd"}
    assert subject_words(long, 12) == frozenset()


def tenant(*facts: str) -> LexicalIndex:
    index = LexicalIndex(subject_max_words=16)
    for i, text in enumerate(facts):
        index.add(f"f{i}", text)
    return index


def test_a_template_with_another_subject_does_not_name_the_fact() -> None:
    one = tenant("Chico Buarque has a citizenship from Canada")
    subject = one.subject("f0")
    assert not one.names_subject("Justin Trudeau has a citizenship from", subject)
    assert not one.names_subject("What citizenship does a person have?", subject)
    assert one.names_subject("Which country is Chico Buarque a citizen of?", subject)
    assert one.names_subject("which country is chico buarque a citizen of", subject)  # no caps
    # Half the name (equal weights in a tenant of one fact) names it
    assert one.names_subject("Where is Buarque from?", subject)
    assert one.names_subject("Anything at all", frozenset())  # no subject words: no check


def test_a_shared_first_word_does_not_name_another_subject() -> None:
    cars = tenant(
        "Toyota Avalon, created by Douglas",
        "Toyota Supra, developed by Nissan",
        "Toyota Cresta, developed by BMW",
        "The phone number of Albert Wyatt is 705-882-9365.",
        "The phone number of Albert Stone is 705-882-1111.",
    )
    # "toyota" is common in this tenant, "avalon" is not: Toyota Corolla is someone else
    assert not cars.names_subject("Toyota Corolla, created by", cars.subject("f0"))
    assert cars.names_subject("Who makes the Avalon?", cars.subject("f0"))
    # The surname alone is the subject's rarest word: it names the person
    assert cars.names_subject("What's Wyatt's number?", cars.subject("f3"))
    assert not cars.names_subject("What's Albert's number?", cars.subject("f3"))


class TemplateEmbedder:
    """Dense vectors that see only the template: a subject swapped embeds alike (the
    case CounterFact's locality prompts show with real embeddings)."""

    dim = 2

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = [[1.0, 0.0] if "citizen" in t else [0.0, 1.0] for t in texts]
        return np.array(rows, dtype=np.float32)


def router(check: bool) -> Router:
    made = Router(
        Registry.from_url("redis://127.0.0.1:9/0"),  # never contacted
        TemplateEmbedder(),
        "base",
        threshold=0.5,
        subject_check=check,
    )
    facts = {
        "m-chico": "Chico Buarque has a citizenship from Canada",
        "m-lee": "Ann Lee is a citizen of Peru",
    }
    for module, text in facts.items():
        vectors = made.embed([text])
        made.index_module("t", module, 1, NO_ADAPTER, [f"f-{module}"], vectors, texts=[text])
    return made


def test_the_router_sends_an_unnamed_subject_to_base() -> None:
    question = "Justin Trudeau has a citizenship from"
    before = router(check=False).route("t", "auto", question)
    assert before.module is not None and before.outcome == "module"
    after = router(check=True).route("t", "auto", question)
    assert (after.target, after.module, after.outcome) == ("base", None, "unnamed_subject")
    assert after.score == before.score  # the best fact's score is still told
    assert {h.fact_id for h in after.candidates} == {"f-m-chico", "f-m-lee"}
    # Below the threshold stays below_threshold
    assert router(check=True).route("t", "auto", "Grass is green").outcome == "below_threshold"


def test_the_router_routes_to_the_module_whose_subject_is_named() -> None:
    checked = router(check=True)
    # Both facts embed alike here; the named one's module wins whichever is nearer
    for question, module in (
        ("Which country is Chico Buarque a citizen of?", "m-chico"),
        ("Which country is Ann Lee a citizen of?", "m-lee"),
    ):
        decision = checked.route("t", "auto", question)
        assert (decision.module, decision.outcome) == (module, "module")
    # A vector without the question's text cannot be checked: dense order
    vector = checked.embed(["Justin Trudeau has a citizenship from"])[0]
    assert checked.decide("t", vector).module is not None
    # The pending path asks the same check of texts outside the index
    assert not checked.names_subject(
        "t", "Justin Trudeau, citizen of", "Bo Day is a citizen of Chad"
    )
    assert checked.names_subject("t", "Is Bo Day a citizen?", "Bo Day is a citizen of Chad")
    assert router(check=False).names_subject("t", "anything", "Bo Day is a citizen of Chad")


def test_an_unnamed_pending_fact_never_wins() -> None:
    interim = Interim(0.5, 8, "base", {"m": "m@v1.abc"}, 0.5)
    sent_to_base = RouteDecision("base", None, "unnamed_subject", 0.9, [Hit("p", "m", 0.9)])
    fresh = [Hit("new", "m", 0.7)]
    named = with_pending(sent_to_base, fresh, {}, "lora", "rag", interim)
    # a named new fact wins over a decision sent to base for an unnamed subject, even
    # though the unnamed published fact scores higher
    assert (named.outcome, named.score) == ("pending", 0.7)
    unnamed = with_pending(sent_to_base, fresh, {}, "lora", "rag", interim, {"new"})
    assert unnamed == sent_to_base
    # rag: neither the unnamed new text nor the unnamed published fact is context
    context = with_pending(sent_to_base, fresh, {}, "rag", "rag", interim, {"new"})
    assert (context.outcome, context.candidates) == ("unnamed_subject", [])
    # a named new text is, and the answer is the pending one's
    told = with_pending(sent_to_base, fresh, {}, "rag", "rag", interim)
    assert (told.outcome, [h.fact_id for h in told.candidates]) == ("pending", ["new"])
