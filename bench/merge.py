"""Do merged adapters help with questions that span modules? Through a running gateway.

    .venv/bin/python -m bench.merge --gateway http://127.0.0.1:19000 --modules 2 --facts 8

Trains `--modules` PhoneBook modules of `--facts` facts each in a fresh tenant, builds
one merged module per `--variants` entry (combination:weight) with POST /merges, then asks:
- single-fact questions ("What is the phone number of A?"), exact match;
- two-module questions ("What are the phone numbers of A and B?", A and B from
  different modules): both numbers in the answer, and the share of numbers found.
Systems: model=auto (the best module serves), model=auto with "merge": true (the merged
module of the default combination once built), each merged module by name, and the
oracle: the owning module by name; for a two-module question, each half asked of its
own module (perfect routing and question splitting, an upper bound). A `cat` merge has
rank modules x lora_rank: start the engine with LORAMEM_ENGINE_MAX_LORA_RANK to allow it.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from evaluation.span import Question
from loramem.datasets import PhoneEntry, phonebook
from loramem.registry.jobs import TERMINAL
from loramem.settings import get_settings


class Bench:
    def __init__(self, gateway: str, tenant: str, max_tokens: int, concurrency: int) -> None:
        self.client = httpx.Client(base_url=gateway, timeout=600)
        self.headers = {"x-loramem-tenant": tenant}
        self.max_tokens = max_tokens
        self.pool = ThreadPoolExecutor(concurrency)  # the engine batches concurrent requests

    def wait(self, job_id: str) -> dict:
        while True:
            job = self.client.get(f"/jobs/{job_id}", headers=self.headers).json()
            if job["status"] in TERMINAL:  # a cancelled job ends the wait too
                return dict(job)
            time.sleep(0.5)

    def ask(self, question: str, model: str, merge: bool = False) -> tuple[str, str]:
        """(answer text, module that served it)."""
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "loramem": {"merge": merge},
        }
        reply = self.client.post("/v1/chat/completions", json=body, headers=self.headers)
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"], reply.headers["x-loramem-module"]

    def train(self, modules: dict[str, list[PhoneEntry]]) -> None:
        """Post each module's facts under its name, then wait for every job."""
        jobs = []
        for name, entries in modules.items():
            posted = self.client.post(
                "/facts", json={"facts": [p.fact for p in entries], "module": name},
                headers=self.headers,
            )  # fmt: skip
            posted.raise_for_status()
            jobs.append((name, posted.json()["job_id"]))
        for name, job_id in jobs:  # the worker trains them one at a time anyway
            job = self.wait(job_id)
            print(f"{name}: {job['status']} (recall {job['progress'].get('recall')})", flush=True)

    def score(self, questions: list[Question], answer: Callable[[Question], str]) -> list[int]:
        """Numbers found per question."""
        answers = list(self.pool.map(answer, questions))
        return [
            sum(p in text for p in q.phones) for q, text in zip(questions, answers, strict=True)
        ]


def phonebook_modules(count: int, facts: int, offset: int) -> dict[str, list[PhoneEntry]]:
    """`count` modules "pb0", "pb1", ... of `facts` PhoneBook entries each, from `offset`."""
    people = phonebook(get_settings().data_dir, count * facts, offset=offset)
    return {f"pb{i}": people[i * facts : (i + 1) * facts] for i in range(count)}


def make_questions(modules: dict[str, list[PhoneEntry]]) -> tuple[list[Question], list[Question]]:
    singles = [
        Question(p.question, [p.phone], [m], [p.question]) for m, people in modules.items()
        for p in people
    ]  # fmt: skip
    names = list(modules)
    pairs = []
    for i in range(len(names)):
        first, second = names[i], names[(i + 1) % len(names)]
        if first == second or (len(names) == 2 and i == 1):
            continue  # two modules make one pairing, not two
        for a, b in zip(modules[first], modules[second], strict=True):
            text = f"What are the phone numbers of {a.name} and {b.name}?"
            pairs.append(Question(text, [a.phone, b.phone], [first, second],
                                  [a.question, b.question]))  # fmt: skip
    return singles, pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:19000")
    parser.add_argument("--modules", type=int, default=2)
    parser.add_argument("--facts", type=int, default=8)
    parser.add_argument("--offset", type=int, default=1200)
    # combination:weight of each module, e.g. "ties:1,linear:0.5"
    parser.add_argument("--variants", default="ties:1,linear:1,cat:1,ties:0.5,linear:0.5,cat:0.5")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    tenant = f"bench-merge-{uuid.uuid4().hex[:6]}"
    bench = Bench(args.gateway, tenant, args.max_tokens, args.concurrency)
    modules = phonebook_modules(args.modules, args.facts, args.offset)
    started = time.monotonic()
    bench.train(modules)
    merged: dict[str, str] = {}
    for variant in args.variants.split(","):
        combination, weight = variant.split(":")
        reply = bench.client.post(
            "/merges",
            json={"modules": list(modules), "combination": combination,
                  "weights": [float(weight)] * len(modules)},
            headers=bench.headers,
        )  # fmt: skip
        if reply.status_code != 202:
            print(f"{variant}: refused: {reply.json()['error']['message']}")
            continue
        job = bench.wait(reply.json()["job_id"])
        print(f"merge {variant}: {job['status']} {job.get('error') or ''}", flush=True)
        if job["status"] == "published":
            merged[f"{combination}, weights {weight}"] = reply.json()["module"]
    print(f"setup {time.monotonic() - started:.0f} s", flush=True)

    singles, pairs = make_questions(modules)
    served: list[str] = []

    def auto_merge(q: Question) -> str:
        text, module = bench.ask(q.text, "auto", merge=True)
        served.append(module)
        return text

    systems: list[tuple[str, Callable[[Question], str]]] = [
        ("model=auto (best module)", lambda q: bench.ask(q.text, "auto")[0]),
        (f"model=auto, merge: true ({get_settings().merge_combination})", auto_merge),
    ]
    systems += [
        (f"merged `{c}` by name", lambda q, m=m: bench.ask(q.text, m)[0])  # type: ignore[misc]
        for c, m in merged.items()
    ]
    systems.append(
        ("oracle (owning module per fact)", lambda q: " ".join(
            bench.ask(h, o)[0] for h, o in zip(q.halves, q.owners, strict=True)
        ))
    )  # fmt: skip
    print(f"\n{args.modules} modules x {args.facts} PhoneBook facts, tenant {tenant}\n")
    print("| system | single-fact EM | two-module: both numbers | two-module: numbers found |")
    print("|---|---|---|---|")
    for label, answer in systems:
        one = bench.score(singles, answer)
        two = bench.score(pairs, answer)
        print(
            f"| {label} | {sum(one)}/{len(singles)} | {sum(n == 2 for n in two)}/{len(pairs)} "
            f"| {sum(two)}/{2 * len(pairs)} |",
            flush=True,
        )
    merged_serves = sum(m.split("@")[0] in merged.values() for m in served)
    print(f"\nmerge: true requests served by a merged module: {merged_serves}/{len(served)}")


if __name__ == "__main__":
    main()
