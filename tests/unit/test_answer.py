"""Answer modes (router/answer.py): pure functions on decisions and request bodies."""

from __future__ import annotations

from router.answer import RAG_INSTRUCTION, add_context, context_fact_ids, for_mode, merge_allowed
from router.index import Hit
from router.router import RouteDecision

HITS = [Hit("f1", "m1", 0.9), Hit("f2", "m2", 0.5)]
ROUTED = RouteDecision("m1@v2", "m1", "module", 0.9, HITS)


def test_rag_answers_from_base_with_the_same_facts() -> None:
    rag = for_mode(ROUTED, "rag", "base-model")
    assert (rag.target, rag.module, rag.outcome, rag.header) == ("base-model", None, "base", "base")
    assert (rag.score, rag.candidates) == (0.9, HITS)
    assert for_mode(ROUTED, "hybrid", "base-model") is ROUTED
    assert for_mode(ROUTED, "lora", "base-model") is ROUTED


def test_rag_never_asks_for_a_merge() -> None:
    assert merge_allowed("lora", True, False) and merge_allowed("hybrid", False, True)
    assert not merge_allowed("rag", True, True)
    assert not merge_allowed("lora", False, False)


def test_context_goes_in_front_of_chat_and_text_requests() -> None:
    assert context_fact_ids(ROUTED, "lora") == []
    assert context_fact_ids(ROUTED, "hybrid") == ["f1", "f2"]
    chat = {"messages": [{"role": "user", "content": "q"}]}
    add_context(chat, ["a", "b"])
    assert chat["messages"][0] == {"role": "system", "content": RAG_INSTRUCTION + "- a\n- b"}
    assert chat["messages"][1]["content"] == "q"
    text = {"prompt": "q"}
    add_context(text, ["a"])
    assert text["prompt"] == f"{RAG_INSTRUCTION}- a\n\nq"
