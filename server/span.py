"""Answering a question that spans modules (router/span.py decides that it does).

- `compose` (the default, `LORAMEM_ROUTER_SPAN`): each part's module is asked its part
  (router/span.py `part_question`: its fact's trained question, or the question without
  the names the other parts added), all at once, and the answers are joined, one line
  each, in the parts' order, as one answer. A streamed request gets the composed answer
  as a stream of one chunk per part.
- `compose-hybrid`: the same, each part's module with that part's own fact (the one the
  router matched) in context, as `hybrid` puts the top facts.
- `context`: the chosen module answers the whole question with the other parts' facts
  in context (router/answer.py's quoting).
- `off`: the chosen module answers alone, as if the question did not span.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from router.answer import add_context
from router.router import RouteDecision
from router.span import part_question
from server.forwarding import EngineForwarder, Upstream

METHODS = ("compose", "compose-hybrid", "context", "off")
COMPOSING = ("compose", "compose-hybrid")
# Answer modes in which a question may span modules: rag serves no module to compose.
SPANNING_MODES = ("lora", "hybrid")


def applies(decision: RouteDecision, method: str) -> bool:
    return bool(decision.span) and method != "off"


def context_fact_ids(decision: RouteDecision) -> list[str]:
    """`context`: the facts of the parts the chosen module does not hold."""
    return [part.fact_id for part in decision.span[1:]]


def composable(body: dict[str, Any]) -> bool:
    """One choice, and a query that can be rewritten: chat, or a single text prompt."""
    if body.get("n", 1) != 1:
        return False
    return "messages" in body or isinstance(body.get("prompt"), str)


def part_bodies(
    decision: RouteDecision,
    body: dict[str, Any],
    query: str,
    trained: bool = True,
    facts: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One engine request per part: its module, its question (`trained`: its fact's
    trained question where it has one), not streamed; with `facts` (fact id -> text,
    `compose-hybrid`), the part's own fact in context."""
    bodies = []
    for part, target in zip(decision.span, decision.span_targets, strict=True):
        sub = copy.deepcopy(body)
        sub["model"], sub["stream"] = target, False
        sub.pop("stream_options", None)
        _replace_query(sub, part_question(query, part, decision.span, trained))
        if facts and part.fact_id in facts:
            add_context(sub, [facts[part.fact_id]])
        bodies.append(sub)
    return bodies


def _replace_query(body: dict[str, Any], text: str) -> None:
    """The last user turn (or the text prompt) becomes `text`."""
    if "messages" not in body:
        body["prompt"] = text
        return
    messages = body["messages"]
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            messages[i] = {**messages[i], "content": text}
            return


@dataclass
class Composed:
    engine: str  # the engine that answered the first part
    status: int
    payload: dict[str, Any] | None = None  # the joined answer (status 200)
    content: bytes = b""  # the first failing part's error body


async def compose(
    forwarder: EngineForwarder, targets: list[str], path: str, bodies: list[dict[str, Any]]
) -> Composed:
    """Ask every part at once (the engine batches them) and join the answers."""
    pairs = zip(targets, bodies, strict=True)
    sent = (forwarder.forward(t, True, path, b, stream=False) for t, b in pairs)
    answered = await asyncio.gather(*sent, return_exceptions=True)
    replies = [a for a in answered if isinstance(a, Upstream)]
    for upstream in replies:
        upstream.release()
    failed = [a for a in answered if isinstance(a, BaseException)]
    if failed:
        raise failed[0]  # e.g. no engine reachable: the gateway's error for it
    for upstream in replies:
        if upstream.reply.status_code != 200:
            reply = upstream.reply
            return Composed(upstream.engine, reply.status_code, content=reply.content)
    return Composed(replies[0].engine, 200, join([r.reply.json() for r in replies]))


def join(payloads: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer from the parts' answers: texts one per line, usage summed, the last
    part's finish reason."""
    joined = copy.deepcopy(payloads[0])
    choice = joined["choices"][0]
    texts = [_text(p["choices"][0]).strip() for p in payloads]
    if "message" in choice:
        choice["message"]["content"] = "\n".join(texts)
    else:
        choice["text"] = "\n".join(texts)
    choice["finish_reason"] = payloads[-1]["choices"][0].get("finish_reason")
    usage: dict[str, int] = {}
    for payload in payloads:
        for key, value in (payload.get("usage") or {}).items():
            if isinstance(value, int):
                usage[key] = usage.get(key, 0) + value
    joined["usage"] = usage
    return joined


def _text(choice: dict[str, Any]) -> str:
    if "message" in choice:
        return str(choice["message"].get("content") or "")
    return str(choice.get("text") or "")


async def as_stream(payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """A composed answer as the OpenAI stream of a chat or text completion: one chunk per
    line of it, then one with the finish reason, then [DONE]."""
    choice = payload["choices"][0]
    chat = "message" in choice
    lines = _text(choice).split("\n")
    kind = "chat.completion.chunk" if chat else "text_completion"
    created = payload.get("created", int(time.time()))
    base = {"id": payload.get("id"), "object": kind, "created": created, "model": payload["model"]}
    for i, line in enumerate(lines):
        text = line if i == len(lines) - 1 else line + "\n"
        delta: dict[str, Any] = {"content": text} | ({"role": "assistant"} if i == 0 else {})
        part = {"index": 0, "delta": delta} if chat else {"index": 0, "text": text}
        yield _event({**base, "choices": [{**part, "finish_reason": None}]})
        yield b"\n"
    end = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
    yield _event({**base, "choices": [{**end, "finish_reason": choice.get("finish_reason")}]})
    yield b"\n"
    yield b"data: [DONE]\n"
    yield b"\n"


def _event(chunk: dict[str, Any]) -> bytes:
    """One SSE line; the blank line that ends the event is yielded apart, as the relay of
    an engine's stream does (server/explain.py rewrites the first data line)."""
    return f"data: {json.dumps(chunk)}\n".encode()
