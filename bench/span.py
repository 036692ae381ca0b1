"""Questions that span modules, answered side by side through a running gateway.

    .venv/bin/python -m bench.span --gateway http://127.0.0.1:19000 --modules 4 --facts 8

Trains `--modules` PhoneBook modules of `--facts` facts each in a fresh tenant (through
POST /facts, as a user would), merges them all with POST /merges (the default
combination), then asks `--pairs` two-module questions ("What are the phone numbers of A
and B?", A and B in different modules) and every single-fact question, each through
`model=auto` unless said otherwise:
- `span: off`: the best module alone (what model=auto did before spanning);
- the merged adapter of all the modules, by name;
- `span: compose`: each module asked its part, the answers joined (server/span.py),
  the part asked in the user's wording less the other names (before), or as its fact's
  trained question (router/span.py);
- `span: context`: the chosen module with the other parts' facts in context;
- `mode: rag`: the base model with the top facts in context;
- `mode: hybrid`: the chosen module with the top facts in context;
- oracle: each half asked of its own module by name (perfect routing and splitting).
A two-module answer counts when it contains both numbers; a single-fact one when it
contains the number. "spanned" counts the answers the router marked as spanning.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.merge import Bench, Question, phonebook_modules
from loramem.datasets import PhoneEntry


def ask(bench: Bench, question: str, model: str = "auto", **options: str) -> tuple[str, str]:
    """(answer text, x-loramem-outcome)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": bench.max_tokens,
        "loramem": options,
    }
    reply = bench.client.post("/v1/chat/completions", json=body, headers=bench.headers)
    reply.raise_for_status()
    text = reply.json()["choices"][0]["message"]["content"]
    return text, reply.headers.get("x-loramem-outcome", "")


def questions(
    modules: dict[str, list[PhoneEntry]], count: int
) -> tuple[list[Question], list[Question]]:
    """Single-fact questions, and `count` pairs: every pairing of two modules in turn,
    people of the same row."""
    singles = [
        Question(p.question, [p.phone], [m], [p.question])
        for m, people in modules.items()
        for p in people
    ]
    names = list(modules)
    pairings = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    rows = len(next(iter(modules.values())))
    pairs = []
    for row in range(rows):
        for first, second in pairings:
            a, b = modules[first][row], modules[second][row]
            text = f"What are the phone numbers of {a.name} and {b.name}?"
            halves = [a.question, b.question]
            pairs.append(Question(text, [a.phone, b.phone], [first, second], halves))
    return singles, pairs[:count]


def setup(bench: Bench, modules: dict[str, list[PhoneEntry]], merge: bool) -> str | None:
    """Train the modules, then merge them all; the merged module's name (None if refused)."""
    bench.train(modules)
    if not merge:
        return None
    reply = bench.client.post("/merges", json={"modules": list(modules)}, headers=bench.headers)
    if reply.status_code != 202:
        print(f"merge refused: {reply.json()['error']['message']}")
        return None
    job = bench.wait(reply.json()["job_id"])
    print(f"merge: {job['status']} {job.get('error') or ''}", flush=True)
    return str(reply.json()["module"]) if job["status"] == "published" else None


def run_arm(
    bench: Bench, items: list[Question], answer: Callable[[Question], tuple[str, str]]
) -> dict[str, Any]:
    replies = list(bench.pool.map(answer, items))
    found = [sum(p in text for p in q.phones) for q, (text, _o) in zip(items, replies, strict=True)]
    return {
        "asked": len(items),
        "all": sum(n == len(q.phones) for n, q in zip(found, items, strict=True)),
        "numbers": sum(found),
        "spanned": sum(outcome == "span" for _t, outcome in replies),
        # what was answered where a number was missing (--out keeps it, to look at)
        "missed": [
            {"question": q.text, "phones": q.phones, "answer": text}
            for q, n, (text, _o) in zip(items, found, replies, strict=True)
            if n < len(q.phones)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:19000")
    parser.add_argument("--modules", type=int, default=4)
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--offset", type=int, default=1200)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--arms", default="", help="only arms whose label starts so (a,b)")
    parser.add_argument("--no-merge", action="store_true", help="skip the merged adapter")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    tenant = f"bench-span-{uuid.uuid4().hex[:6]}"
    bench = Bench(args.gateway, tenant, args.max_tokens, args.concurrency)
    modules = phonebook_modules(args.modules, args.facts, args.offset)
    started = time.monotonic()
    merged = setup(bench, modules, not args.no_merge)
    print(f"setup {time.monotonic() - started:.0f} s", flush=True)
    singles, pairs = questions(modules, args.pairs)

    def oracle(q: Question) -> tuple[str, str]:
        halves = [ask(bench, h, o)[0] for h, o in zip(q.halves, q.owners, strict=True)]
        return " ".join(halves), "oracle"

    def via(model: str = "auto", **options: str) -> Callable[[Question], tuple[str, str]]:
        return lambda q: ask(bench, q.text, model, **options)

    arms: list[tuple[str, Callable[[Question], tuple[str, str]], bool]] = [
        ("best module alone (span: off)", via(span="off"), True),
        (
            "span: compose, user's wording (before)",
            via(span="compose", span_question="wording"),
            False,
        ),
        (
            "span: compose, trained question (per module, joined)",
            via(span="compose", span_question="trained"),
            True,
        ),
        ("span: compose-hybrid (each with its fact)", via(span="compose-hybrid"), True),
        ("span: context (module + other facts)", via(span="context"), True),
        ("mode: rag (base + top facts)", via(mode="rag"), True),
        ("mode: hybrid (module + top facts)", via(mode="hybrid", span="off"), False),
    ]
    if args.arms:  # a subset, by the start of their labels
        arms = [a for a in arms if any(a[0].startswith(p) for p in args.arms.split(","))]
    if merged:
        arms.insert(1, (f"merged adapter of all {args.modules}", via(merged), False))
    arms.append(("oracle (each half to its module)", oracle, False))
    print(f"\n{args.modules} modules x {args.facts} PhoneBook facts, tenant {tenant}\n")
    print(
        "| arm | two-module: both numbers | numbers found | spanned "
        "| single-fact: number | spanned |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
    for label, answer, with_singles in arms:
        two = run_arm(bench, pairs, answer)
        one = run_arm(bench, singles, answer) if with_singles else None
        results[label] = {"pairs": two, "singles": one}
        single = f"{one['all']}/{one['asked']} | {one['spanned']}" if one else "- | -"
        print(
            f"| {label} | {two['all']}/{two['asked']} ({100 * two['all'] / two['asked']:.0f}%) "
            f"| {two['numbers']}/{2 * two['asked']} | {two['spanned']} | {single} |",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps({"tenant": tenant, "arms": results}, indent=2))


if __name__ == "__main__":
    main()
