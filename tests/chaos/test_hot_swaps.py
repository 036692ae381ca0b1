"""Hot swaps (delete, add, edit in turn) of one module while 8 clients chat through every
model name: `auto`, the module, and each `module@vN` seen so far. Real gateway, worker
and engine; the first version is trained to the gate so that the fact deleted first is
really known, the swaps themselves train one step (bookkeeping, not recall).

Shows: 0 failed requests (an explicit retired `module@vN` is a 404 `model_not_found`, which
is the contract, not a failure); after each swap's drain grace no answer comes from a
version older than the active one; the deleted fact's value never appears in an answer
sent after its delete was published, through any model name."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from loramem.datasets import phonebook
from loramem.knobs import TrainingKnobs
from tests.chaos.support import ClientThreads, RedisServer, Stack, count, figures
from tests.e2e.support import System

SWAPS = count(short=3, soak=10)
CLIENTS = 8
MODULE = "swap"


@dataclass
class Answer:
    sent: float
    model: str
    status: int
    served: str  # x-loramem-module: module@vN or base
    content: str
    error: str


class Clients(ClientThreads):
    def __init__(self, stack: Stack, questions: list[str]) -> None:
        self.stack, self.questions = stack, questions
        self.models = ["auto", MODULE]
        self.answers: list[Answer] = []
        super().__init__([partial(self._run, random.Random(i)) for i in range(CLIENTS)])

    def _run(self, rng: random.Random) -> None:
        while not self.stop.is_set():
            model, question = rng.choice(self.models), rng.choice(self.questions)
            sent = time.monotonic()
            try:
                reply = self.stack.chat(question, model, max_tokens=32)
                body = reply.json()
                ok = reply.status_code == 200
                self.answers.append(
                    Answer(
                        sent,
                        model,
                        reply.status_code,
                        reply.headers.get("x-loramem-module", ""),
                        body["choices"][0]["message"]["content"] if ok else "",
                        "" if ok else body["error"]["type"],
                    )
                )
            except Exception as exc:  # a transport error is a failed request
                self.answers.append(Answer(sent, model, 0, "", "", repr(exc)))


def _version(served: str) -> int:
    return int(served.rsplit("@v", 1)[1]) if served.startswith(MODULE + "@v") else 0


@pytest.mark.timeout(1200 + 180 * SWAPS)
def test_hot_swaps_under_chat_serve_no_stale_or_deleted_answer(
    tmp_path: Path, system: System
) -> None:
    people = phonebook(system.settings.data_dir, 2 + SWAPS, offset=1500)
    grace_s = float(system.env["LORAMEM_RETIRE_GRACE_S"])
    with Stack(system, RedisServer(tmp_path), tmp_path) as stack:
        knobs = TrainingKnobs()  # the worker's defaults are one step: ask for the real ones
        first = stack.post(
            "/facts",
            {
                "facts": [p.fact for p in people[:2]],
                "module": MODULE,
                "training": {"max_steps": knobs.max_steps, "recall_gate": knobs.recall_gate},
            },
        )
        assert first.status_code == 202, first.text
        ids = dict(zip(first.json()["fact_ids"], people[:2], strict=True))
        stack.wait_job(first.json()["job_id"])
        deadline = time.monotonic() + 60
        while (known := stack.chat(people[0].question, MODULE, max_tokens=32)).status_code != 200:
            assert time.monotonic() < deadline, known.text  # the follower applies the publish
            time.sleep(0.5)
        assert people[0].phone in known.json()["choices"][0]["message"]["content"], known.text
        live = list(ids)  # oldest first
        swaps: list[tuple[str, int, float]] = []  # (kind, version, observed published at)
        deleted: list[tuple[str, float]] = []  # (phone, published at)
        questions = [p.question for p in people]
        serial = 2
        with Clients(stack, questions) as clients:
            clients.models.append(f"{MODULE}@v1")
            for swap in range(SWAPS):
                kind = ("delete", "add", "edit")[swap % 3]
                if kind == "delete":
                    fact_id = live.pop(0)
                    reply = stack.http.delete(
                        f"/facts/{fact_id}", headers={"x-loramem-tenant": "chaos"}
                    )
                elif kind == "add":
                    reply = stack.post("/facts", {"facts": [people[serial].fact], "module": MODULE})
                    serial += 1
                else:
                    fact_id = live[-1]
                    text = f"The phone number of {ids[fact_id].name} is 555-{swap:04d}."
                    reply = stack.http.put(
                        f"/facts/{fact_id}",
                        json={"text": text},
                        headers={"x-loramem-tenant": "chaos"},
                    )
                assert reply.status_code == 202, reply.text
                if kind == "add":
                    new_id = reply.json()["fact_ids"][0]
                    ids[new_id] = people[serial - 1]
                    live.append(new_id)
                version = stack.wait_job(reply.json()["job_id"], timeout_s=900)["version"]
                published = time.monotonic()
                swaps.append((kind, version, published))
                if kind == "delete":
                    deleted.append((ids[fact_id].phone, published))
                clients.models.append(f"{MODULE}@v{version}")
                time.sleep(grace_s + 2)  # traffic across the drain grace
        answers = clients.answers
    failed = [
        a
        for a in answers
        if a.status != 200
        and not (a.status == 404 and a.error == "model_not_found" and "@v" in a.model)
    ]
    stale = [
        (a.model, a.served, version)
        for _kind, version, published in swaps
        for a in answers
        if a.sent > published + grace_s and 0 < _version(a.served) < version
    ]
    leaked = [
        (a.model, a.served, a.content)
        for phone, published in deleted
        for a in answers
        if a.sent > published and phone in a.content
    ]
    figures(
        "hot-swaps",
        swaps=len(swaps),
        clients=CLIENTS,
        requests=len(answers),
        answered=sum(a.status == 200 for a in answers),
        retired_404=sum(a.status == 404 for a in answers),
        failed=len(failed),
        stale_after_grace=len(stale),
        deleted_value_answers=len(leaked),
        versions=[v for _k, v, _p in swaps],
    )
    assert answers and not failed, failed[:5]
    assert not stale, stale[:5]
    assert not leaked, leaked[:5]
