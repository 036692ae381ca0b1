"""Chat latency with and without an ingest flood, side by side in one run.

Start the system without a worker (posted facts queue training jobs; a worker would train
them on the same cores during the measurement), e.g. engine and gateway only:

    redis-server --port 6390 --save '' --appendonly no --daemonize yes
    export LORAMEM_REDIS_URL=redis://127.0.0.1:6390/0 LORAMEM_ENGINE_PORT=18400 \\
        LORAMEM_ENGINE_URL=http://127.0.0.1:18400 LORAMEM_GATEWAY_PORT=18401
    .venv/bin/python -m cli engine &      # wait until it says it is ready
    .venv/bin/python -m cli gateway &
    .venv/bin/python -m bench.ingest_flood

(`make run` works too, but its worker then trains the flood's jobs while chat is measured.)

Phase `quiet`: `--requests` chats (model = the base model's served name, so nothing needs
training; `--max-tokens` each, `--concurrency` at once) with nothing else going on. Phase
`flood`: the same chats while `--posters` clients POST /facts back to back, `--batch`
generated facts a request, until the chats are done. Each POST uses a fresh tenant so the
per-tenant quotas (open jobs, request rate) do not refuse the flood before the ingest pool
sees it. 503 and 429 answers from the ingest bound are expected and counted, not errors.
Prints p50/p99 of both phases, the p99 ratio (target: flood within 1.5x of quiet) and the
ingest answers by status.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import Counter

import httpx

from loramem.settings import get_settings

QUESTIONS = [
    "What is the capital of France?",
    "Name a colour of the sky.",
    "How many legs does a spider have?",
    "What do bees make?",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _chats(
    client: httpx.AsyncClient, model: str, requests: int, concurrency: int, max_tokens: int
) -> list[float]:
    latencies_s: list[float] = []
    headers = {"x-loramem-tenant": f"flood-chat-{uuid.uuid4().hex[:8]}"}
    next_index = 0

    async def one_client() -> None:
        nonlocal next_index
        while next_index < requests:
            i, next_index = next_index, next_index + 1
            body = {
                "model": model,
                "temperature": 0,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            }
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            latencies_s.append(time.perf_counter() - started)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies_s


async def _poster(
    client: httpx.AsyncClient, poster: int, batch: int, stop: asyncio.Event, answers: Counter[int]
) -> None:
    run = uuid.uuid4().hex[:6]
    sent = 0
    while not stop.is_set():
        facts = [
            f"Flood item {run}-{poster}-{sent}-{k} is kept in bin {(sent * batch + k) % 997}."
            for k in range(batch)
        ]
        headers = {"x-loramem-tenant": f"flood-{run}-{poster}-{sent}"}
        response = await client.post("/facts", json={"facts": facts}, headers=headers)
        answers[response.status_code] += 1
        sent += 1


async def _run(args: argparse.Namespace) -> None:
    settings = get_settings()
    model = settings.base_name
    limits = httpx.Limits(max_connections=args.concurrency + args.posters + 4)
    async with httpx.AsyncClient(base_url=args.gateway, timeout=600, limits=limits) as client:
        await _chats(client, model, args.warmup, args.concurrency, args.max_tokens)
        quiet_s = await _chats(client, model, args.requests, args.concurrency, args.max_tokens)

        stop = asyncio.Event()
        answers: Counter[int] = Counter()
        posters = [
            asyncio.create_task(_poster(client, p, args.batch, stop, answers))
            for p in range(args.posters)
        ]
        await asyncio.sleep(1.0)  # let the flood fill the ingest pool before measuring
        started = time.perf_counter()
        flood_s = await _chats(client, model, args.requests, args.concurrency, args.max_tokens)
        flood_wall_s = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*posters)

    print(
        f"model={model} requests={args.requests} concurrency={args.concurrency} "
        f"max_tokens={args.max_tokens} posters={args.posters} batch={args.batch}"
    )
    print("| phase | chats | p50 (ms) | p99 (ms) | max (ms) |")
    print("|---|---|---|---|---|")
    for name, values in (("quiet", quiet_s), ("flood", flood_s)):
        print(
            f"| {name} | {len(values)} | {statistics.median(values) * 1000:.0f} | "
            f"{_percentile(values, 0.99) * 1000:.0f} | {max(values) * 1000:.0f} |"
        )
    ratio = _percentile(flood_s, 0.99) / _percentile(quiet_s, 0.99)
    verdict = "met" if ratio <= 1.5 else "NOT met"
    print(f"p99 flood / quiet: {ratio:.2f}x (target <= 1.5x: {verdict})")
    total = sum(answers.values())
    by_status = ", ".join(f"{code}: {count}" for code, count in sorted(answers.items()))
    print(
        f"ingest answers: {total} POST /facts of {args.batch} facts "
        f"({total / flood_wall_s:.1f}/s over the flood phase's {flood_wall_s:.1f} s); "
        f"by status: {by_status}"
    )


def main() -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--gateway", default=f"http://{settings.gateway_host}:{settings.gateway_port}"
    )
    parser.add_argument("--requests", type=int, default=60, help="chats per phase")
    parser.add_argument("--warmup", type=int, default=4, help="chats before the quiet phase")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--posters", type=int, default=4, help="concurrent POST /facts clients")
    parser.add_argument("--batch", type=int, default=32, help="facts per POST")
    asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    main()
