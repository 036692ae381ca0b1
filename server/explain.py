"""The routing decision, told to the caller who asks for it (`"loramem": {"explain": true}`).

It travels inside the response as an extra top-level field, `loramem`: OpenAI clients
ignore fields they do not know, so the shape of every standard field stays as it was. A
streamed answer carries it on its first chunk, so the console can show the module before
the first token is drawn. The facts named are the top facts of the caller's own tenant
(the router searches no other), with their texts read from that tenant's records.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from loramem.names import module_name, parse_served_name, public_served_name
from loramem.registry.facts import Fact
from router.router import RouteDecision
from server.protocol import MatchedFactOut, RouteCandidateOut, RouteExplanation, SpanPartOut


def explain(
    decision: RouteDecision,
    mode: str,
    threshold: float,
    read_facts: Callable[[list[str]], list[Fact]],
) -> RouteExplanation:
    """`read_facts` reads the caller's tenant's facts by id (an empty list when Redis is
    away: the ids and scores are still told). Modules are shown by their names in the
    tenant's namespace, never by their ids (loramem/names.py)."""
    parsed = parse_served_name(decision.target) if decision.module else None
    texts = {f.id: f.text for f in read_facts([hit.fact_id for hit in decision.candidates])}
    return RouteExplanation(
        served=decision.header,
        module=module_name(decision.module) if decision.module else None,
        version=parsed.version if parsed else None,
        outcome=decision.outcome,
        mode=mode,
        score=decision.score,
        threshold=threshold,
        candidates=[
            RouteCandidateOut(module=module_name(m.module), score=m.score, best=m.best)
            for m in decision.modules
        ],
        facts=[
            MatchedFactOut(
                id=hit.fact_id,
                module=module_name(hit.module),
                score=hit.score,
                text=texts.get(hit.fact_id),
            )
            for hit in decision.candidates
        ],
        span=[
            SpanPartOut(
                module=module_name(part.module),
                served=public_served_name(target),
                fact_id=part.fact_id,
                score=part.score,
                words=list(part.words),
            )
            for part, target in zip(decision.span, decision.span_targets, strict=True)
        ],
    )


async def on_first_chunk(
    lines: AsyncIterator[bytes], explanation: RouteExplanation
) -> AsyncIterator[bytes]:
    """Relay an SSE stream, with the explanation added to its first JSON chunk."""
    pending = True
    async for line in lines:
        if pending and line.startswith(b"data: {"):
            try:
                chunk = json.loads(line[6:])
            except ValueError:
                chunk = None
            if isinstance(chunk, dict):
                chunk["loramem"] = explanation.model_dump()
                line = f"data: {json.dumps(chunk)}\n".encode()
                pending = False
        yield line
