"""`loramem eval read-your-writes`: how soon, and how well, a write is answered.

Per data set (PhoneBook, CounterFact), in a tenant of its own:

1. add: `POST /facts` with `--count` facts, then ask the first fact's question through
   `model=auto` until the answer is right: the time from sending the POST to that answer
   (`first_right_s`), of which the POST itself (`write_s`) and the right answer's own
   request (`first_right_answer_s`).
   While the ingest job trains, every question is asked once per interim arm (`rag`,
   `hybrid`, `off`: the gateway's `interim` option; `off` is the system without read
   your writes). Once it is published, every question is asked again (`published`: the
   module's own answers, the figure the interim answers are measured against).
2. edit: `PUT /facts/{id}` of the first `--edits` facts with new values (another
   PhoneBook entry's number; another target of the same CounterFact relation), the same
   time to the first right answer, the arms while the edit jobs train, and `published`
   after. The fact asked is the last one written, timed from its own PUT: the earlier
   edits' jobs are training by then, as a write lands while the trainer trains. An edit
   arm also counts answers that still give the old value.

`published_s`: from the phase's first write until every job of it finished (polled every
second), with the arms' questions asked meanwhile.

Every answer records its `x-loramem-outcome`; `pending_share` is the share answered as
pending (from context). An arm is only an interim measurement while its jobs had not
published when it ended (`jobs_published_after`: false).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evaluation import metrics
from evaluation.client import Answer, EvalClient
from evaluation.data_evals import training
from evaluation.experiments import bars
from evaluation.run import EvalRun, table
from loramem.client import FINISHED
from loramem.datasets import counterfact_edits, phonebook

INTERIM_ARMS = ("rag", "hybrid", "off")


@dataclass(frozen=True)
class Probe:
    fact: str  # the text written
    question: str
    value: str  # what a right answer gives
    right: Callable[[str, str], bool]  # (answer, value) -> right

    def says(self, answer: Answer, value: str | None = None) -> bool:
        return answer.error is None and self.right(answer.text, value or self.value)


def phonebook_probes(run: EvalRun) -> tuple[list[Probe], list[Probe]]:
    """The facts, and their edits: the same people with other entries' numbers."""
    count, offset, edits = run.flags["count"], run.flags["offset"], run.flags["edits"]
    people = phonebook(run.settings.data_dir, count, offset=offset)
    others = phonebook(run.settings.data_dir, edits, offset=offset + count)
    probes = [Probe(p.fact, p.question, p.phone, metrics.phone_exact) for p in people]
    changed = [
        Probe(
            f"The phone number of {p.name} is {o.phone}.", p.question, o.phone, metrics.phone_exact
        )
        for p, o in zip(people, others, strict=False)
    ]
    return probes, changed


def counterfact_probes(run: EvalRun) -> tuple[list[Probe], list[Probe]]:
    """The edits as facts, and edits of those: another target of the same relation (the
    prompt's last two words) taken from the whole file."""
    pool = counterfact_edits(run.settings.data_dir, 100_000)
    chosen = pool[run.flags["offset"] : run.flags["offset"] + run.flags["count"]]
    probes = [Probe(e.sentence, e.prompt, e.target, metrics.contains) for e in chosen]
    changed = []
    for edit in chosen[: run.flags["edits"]]:
        relation = edit.prompt.split()[-2:]
        targets = [e.target for e in pool if e.prompt.split()[-2:] == relation]
        others = [t for t in targets if t.lower() != edit.target.lower()] or ["Antarctica"]
        new = others[len(edit.prompt) % len(others)]  # deterministic, spread over the pool
        changed.append(Probe(f"{edit.prompt} {new}", edit.prompt, new, metrics.contains))
    return probes, changed


PROBES = {"phonebook": phonebook_probes, "counterfact": counterfact_probes}


def read_your_writes(run: EvalRun) -> dict[str, Any]:
    sets: dict[str, Any] = {}
    for name in run.flags["datasets"].split(","):
        probes, changed = PROBES[name](run)
        sets[name] = one_set(run, run.client(name), probes, changed)
    rows = [
        [name, phase["phase"], arm["arm"], arm["questions"], arm["right"], arm["old_value"],
         arm["pending_share"], arm["jobs_published_after"], phase["first_right_s"],
         phase["write_s"], phase["first_right_answer_s"], phase["published_s"]]
        for name, result in sets.items() for phase in result["phases"] for arm in phase["arms"]
    ]  # fmt: skip
    report = table(
        ["data", "phase", "arm", "questions", "right", "old value", "answered pending",
         "jobs published after", "write -> first right answer (s)", "of which the write (s)",
         "the answer (s)", "write -> published (s)"],
        rows,
    )  # fmt: skip
    figures = {
        f"read_your_writes_{name}": bars(
            f"{name}: interim against published",
            [f"{p['phase']} {a['arm']}" for p in result["phases"] for a in p["arms"]],
            [a["right"] for p in result["phases"] for a in p["arms"]],
        )
        for name, result in sets.items()
    }
    return {"results": {"sets": sets}, "report": report, "figures": figures}


def one_set(run: EvalRun, client: EvalClient, probes: list[Probe], changed: list[Probe]) -> dict:
    arms = [a for a in run.flags["interims"].split(",") if a]
    with Write() as add_write:
        reply = client.post_facts([p.fact for p in probes], None, training(run))
    job_ids = [reply["job_id"]]
    add = phase(client, "add", probes, probes[0], add_write, add_write, job_ids, arms, None)
    fact_ids = reply["fact_ids"]
    olds = [p.value for p in probes[: len(changed)]]
    writes, jobs = [], []
    for i, p in enumerate(changed):  # the last one is asked: the others' jobs train by then
        with Write() as write:
            jobs.append(client.put_fact(fact_ids[i], p.fact)["job_id"])
        writes.append(write)
    edit = (
        phase(client, "edit", changed, changed[-1], writes[-1], writes[0], jobs, arms, olds)
        if changed
        else None
    )
    modules = client.wait_modules()
    return {
        "facts": len(probes),
        "edits": len(changed),
        "phases": [p for p in (add, edit) if p],
        "modules": [{"module": m["name"], "active_version": m["active_version"]} for m in modules],
    }


class Write:
    """When a POST or PUT was sent, and how long it took to be accepted."""

    def __enter__(self) -> Write:
        self.started = time.monotonic()
        self.seconds: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = round(time.monotonic() - self.started, 3)


def phase(
    client: EvalClient,
    name: str,
    probes: list[Probe],
    asked: Probe,
    asked_write: Write,
    first_write: Write,
    jobs: list[str],
    arms: list[str],
    olds: list[str] | None,
) -> dict:
    """Time to the first right answer of `asked` (from its own write), the interim arms,
    then the published module."""
    first_s, tries, answer_s = first_right(client, asked, asked_write.started)
    rows = []
    for arm in arms:
        answers = ask(client, probes, arm, f"{name} {arm}")
        rows.append(score(arm, probes, answers, olds, published=_published(client, jobs)))
    finished = client.wait_jobs(jobs, desc=f"{name} jobs")
    published_s = round(time.monotonic() - first_write.started, 1)
    answers = ask(client, probes, None, f"{name} published")
    rows.append(score("published", probes, answers, olds, published=True))
    return {
        "phase": name,
        "first_right_s": first_s,
        "first_right_tries": tries,
        "write_s": asked_write.seconds,  # of which: the write itself (embed, store)
        "first_right_answer_s": answer_s,  # and the right answer's own request
        "published_s": published_s,
        "jobs": [{"status": j["status"], "version": j.get("version")} for j in finished],
        "arms": rows,
    }


def first_right(
    client: EvalClient, probe: Probe, started: float, timeout_s: float = 120.0
) -> tuple[float | None, int, float | None]:
    """Seconds from the write to a right answer (asked again until then), the tries, and
    the seconds of the request that gave it (the engine's generation, mostly)."""
    tries = 0
    while time.monotonic() - started < timeout_s:
        tries += 1
        asked = time.monotonic()
        if probe.says(client.chat(probe.question, "auto", max_tokens=32)):
            now = time.monotonic()
            return round(now - started, 3), tries, round(now - asked, 3)
        time.sleep(0.05)
    return None, tries, None


def ask(client: EvalClient, probes: list[Probe], interim: str | None, desc: str) -> list[Answer]:
    return client.map(
        lambda p: client.chat(p.question, "auto", max_tokens=32, interim=interim), probes, desc
    )


def score(
    arm: str, probes: list[Probe], answers: list[Answer], olds: list[str] | None, published: bool
) -> dict:
    pairs = list(zip(probes, answers, strict=True))
    return {
        "arm": arm,
        "questions": len(probes),
        "right": metrics.mean([float(p.says(a)) for p, a in pairs]),
        "old_value": (
            metrics.mean([float(p.says(a, old)) for (p, a), old in zip(pairs, olds, strict=True)])
            if olds
            else None
        ),
        "pending_share": metrics.mean([float(a.outcome == "pending") for a in answers]),
        "request_errors": sum(a.error is not None for a in answers),
        "jobs_published_after": published,
        "examples": [
            {"question": p.question, "expected": p.value, "answer": a.text, "outcome": a.outcome}
            for p, a in pairs[:2]
        ],
    }


def _published(client: EvalClient, jobs: list[str]) -> bool:
    """Whether every job had finished (published, failed, cancelled) by now."""
    return all(client.api.job(j)["status"] in FINISHED for j in jobs)
