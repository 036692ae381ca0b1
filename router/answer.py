"""Answer modes: how a routed request is answered.

- `lora`: the routed module (or the base model, below the threshold) answers as asked;
- `rag`: the base model answers, with the top-k facts put in front of the request; it never
  serves a module, so it never asks for a merge either;
- `hybrid`: the routed module answers, with the same facts in front of the request.

Plain functions on router decisions and request bodies; the serving layer calls them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from router.router import RouteDecision, Router

MODES = ("lora", "rag", "hybrid")
RAG_INSTRUCTION = "Answer using these facts when they are relevant:\n"


def merge_allowed(mode: str, asked: bool, default: bool) -> bool:
    """LORAMEM_ROUTER_MERGE asks for every request; rag never serves a module anyway."""
    return (asked or default) and mode != "rag"


def for_mode(decision: RouteDecision, mode: str, base_name: str) -> RouteDecision:
    """RAG answers from the base model with the facts in context, never a module."""
    if mode == "rag" and decision.module is not None:
        return replace(decision, target=base_name, module=None, outcome="base")
    return decision


def route(
    router: Router, tenant: str, model: str, query: str, mode: str, merge: bool
) -> RouteDecision:
    """The router's decision for this request, shaped by its answer mode."""
    allowed = merge_allowed(mode, merge, router.merge_default)
    decision = router.route(tenant, model, query, merge=allowed)
    return for_mode(decision, mode, router.base_name)


def context_fact_ids(decision: RouteDecision, mode: str) -> list[str]:
    """The facts to put in context: the top-k ones for rag and hybrid, none for lora."""
    return [] if mode == "lora" else [hit.fact_id for hit in decision.candidates]


def add_context(body: dict[str, Any], facts: Iterable[str]) -> None:
    """Put the facts in front of a chat (a system message) or text (a prefix) request."""
    context = RAG_INSTRUCTION + "\n".join(f"- {text}" for text in facts)
    if "messages" in body:
        body["messages"] = [{"role": "system", "content": context}, *body["messages"]]
    else:
        body["prompt"] = f"{context}\n\n{body['prompt']}"
