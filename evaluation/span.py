"""`loramem eval span`: questions that span modules, every method side by side.

Trains `--modules` PhoneBook modules of `--facts` facts each (`POST /facts`, one module
named per batch), merges them all (`POST /merges`, the default combination) unless
`--no-merge`, then asks `--pairs` two-module questions ("What are the phone numbers of A
and B?", A and B in different modules, people of the same row of every pairing of two
modules in turn) and every single-fact question, through each arm of `--arms`:
- `off`: `model=auto` with `span: off`, the best module alone;
- `merged`: the merged adapter of all the modules, by name (two-module questions only);
- `compose` (the default): `span: compose`, each part's module asked its fact's trained
  question, the answers joined (server/span.py, router/span.py);
- `wording`: `span: compose` with each part asked in the user's wording less the other
  names (`span_question: wording`, two-module questions only);
- `compose-hybrid`: `compose` with each part's own fact in its context;
- `context`: the chosen module with the other parts' facts in context;
- `rag`: `mode: rag`, the base model with the top facts in context;
- `hybrid`: `mode: hybrid` with `span: off`, the chosen module with the top facts
  (two-module questions only);
- `oracle`: each half asked of its own module by name, the answers joined (perfect
  routing and splitting; two-module questions only).
A two-module answer counts when it holds both numbers as the data writes them; a
single-fact one when it holds the number. `spanned`: answers the gateway marked
`x-loramem-outcome: span`.

`results.json` (besides evaluation/__init__.py's common fields): `data` (the PhoneBook
file and rows read, or "generated" where the file is missing), `modules` (each module's
name, facts and job), `merged` (the merged module's name, or null where skipped) and
`arms`, each with `arm`, `label`, `pairs` and `singles` (null where not asked): `asked`,
`all` (answers with every number), `share` (all / asked), `numbers` (numbers found),
`spanned`, `request_errors` and `answers` (each question's `question`, `phones`,
`answer`, `found`, `outcome`), so the misses can be read afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evaluation import metrics
from evaluation.client import Answer, EvalClient, Unsupported
from evaluation.data_evals import training
from evaluation.experiments import bars, job_summary
from evaluation.run import EvalRun, table
from loramem.datasets import PhoneEntry, phonebook


@dataclass(frozen=True)
class Question:
    text: str
    phones: list[str]
    owners: list[str]  # the module holding each phone
    halves: list[str]  # the single-fact questions it is made of


@dataclass(frozen=True)
class Arm:
    name: str  # what --arms names
    label: str  # the report's row
    request: dict[str, str]  # chat() arguments through model=auto (mode, loramem options)
    singles: bool  # asked the single-fact questions too


ARMS = (
    Arm("off", "best module alone (span: off)", {"span": "off"}, True),
    Arm("merged", "merged adapter of all the modules", {}, False),
    Arm("wording", "span: compose, each part in the user's wording less the other names",
        {"span": "compose", "span_question": "wording"}, False),
    Arm("compose", "span: compose, each part its fact's trained question (default)",
        {"span": "compose", "span_question": "trained"}, True),
    Arm("compose-hybrid", "span: compose-hybrid (trained question + its own fact in context)",
        {"span": "compose-hybrid"}, True),
    Arm("context", "span: context (chosen module + the other parts' facts)",
        {"span": "context"}, True),
    Arm("rag", "mode: rag (base model + top facts)", {"mode": "rag"}, True),
    Arm("hybrid", "mode: hybrid, span off (chosen module + top facts)",
        {"mode": "hybrid", "span": "off"}, False),
    Arm("hybrid-compose", "mode: hybrid, span: compose (parts composed, else module + facts)",
        {"mode": "hybrid", "span": "compose"}, True),
    Arm("oracle", "oracle (each half asked of its module by name)", {}, False),
)  # fmt: skip
DEFAULT_ARMS = ",".join(a.name for a in ARMS)


def phonebook_modules(
    entries: list[PhoneEntry], names: list[str], facts: int
) -> dict[str, list[PhoneEntry]]:
    """Consecutive runs of `facts` entries, one per module name."""
    return {name: entries[i * facts : (i + 1) * facts] for i, name in enumerate(names)}


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
    rows = min(len(people) for people in modules.values())
    pairs = []
    for row in range(rows):
        for first, second in pairings:
            a, b = modules[first][row], modules[second][row]
            text = f"What are the phone numbers of {a.name} and {b.name}?"
            pairs.append(
                Question(text, [a.phone, b.phone], [first, second], [a.question, b.question])
            )
    return singles, pairs[:count]


def score(items: list[Question], answers: list[Answer]) -> dict[str, Any]:
    """How many answers hold every number of their question, and each answer as given."""
    rows: list[dict[str, Any]] = []
    for q, a in zip(items, answers, strict=True):
        found = sum(metrics.strict_match(a.text, phone) for phone in q.phones)
        rows.append({"question": q.text, "phones": q.phones, "answer": a.text or a.error,
                     "found": found, "outcome": a.outcome})  # fmt: skip
    complete = sum(r["found"] == len(r["phones"]) for r in rows)
    return {
        "asked": len(items),
        "all": complete,
        "share": complete / len(items) if items else None,
        "numbers": sum(r["found"] for r in rows),
        "spanned": sum(a.outcome == "span" for a in answers),
        "request_errors": sum(a.error is not None for a in answers),
        "answers": rows,
    }


def chosen_arms(names: str, merged: str | None) -> list[Arm]:
    """The arms of --arms, in the report's order; `merged` only where one was built."""
    wanted = set(names.split(","))
    unknown = wanted - {a.name for a in ARMS}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; known: {DEFAULT_ARMS}")
    return [a for a in ARMS if a.name in wanted and (a.name != "merged" or merged)]


def span_eval(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    flags = run.flags
    count, facts = flags["modules"], flags["facts"]
    names = [run.module(f"span{i}") for i in range(count)]
    people = phonebook(run.settings.data_dir, count * facts, offset=flags["offset"])
    modules = phonebook_modules(people, names, facts)
    flags["arms"] = flags["arms"] or DEFAULT_ARMS  # spelled out in results.json's command
    chosen_arms(flags["arms"], None)  # an unknown arm fails before anything trains
    jobs = train(run, client, modules)
    merged = merge(run, client, names) if "merged" in flags["arms"].split(",") else None
    singles, pairs = questions(modules, flags["pairs"])
    arms: list[dict[str, Any]] = []
    for arm in chosen_arms(flags["arms"], merged):
        answer = _answerer(client, arm, merged, flags["max_tokens"])
        two = score(pairs, client.map(answer, pairs, desc=f"{arm.name} pairs"))
        one = (score(singles, client.map(answer, singles, desc=f"{arm.name} singles"))
               if arm.singles else None)  # fmt: skip
        arms.append({"arm": arm.name, "label": arm.label, "pairs": two, "singles": one})
    report = table(
        ["arm", "two-module: both numbers", "share", "numbers found", "spanned",
         "single-fact: number", "spanned"],
        [[a["label"], f"{a['pairs']['all']}/{a['pairs']['asked']}", a["pairs"]["share"],
          f"{a['pairs']['numbers']}/{2 * a['pairs']['asked']}", a["pairs"]["spanned"],
          *((f"{a['singles']['all']}/{a['singles']['asked']}", a["singles"]["spanned"])
            if a["singles"] else ("-", "-"))]
         for a in arms],
    )  # fmt: skip
    figure = bars(
        f"{len(pairs)} two-module PhoneBook questions",
        [a["arm"] for a in arms],
        [a["pairs"]["share"] for a in arms],
    )
    figure.axes[0].set_ylabel("both numbers in the answer")
    figure.axes[0].tick_params(axis="x", labelrotation=45)
    csv = run.settings.data_dir / "phonebook" / "phonebook.csv"
    # Which names were asked: a run without the data file reads generated stand-ins.
    data = f"{csv} rows {flags['offset']}-{flags['offset'] + len(people) - 1}"
    return {
        "results": {
            "data": data if csv.exists() else "generated",
            "modules": jobs,
            "merged": merged,
            "arms": arms,
        },
        "report": report,
        "figures": {"span": figure},
    }


def train(run: EvalRun, client: EvalClient, modules: dict[str, list[PhoneEntry]]) -> list[dict]:
    """Post each module's facts under its name (the worker trains them in turn); wait."""
    posted = [client.post_facts([p.fact for p in held], name, training(run))["job_id"]
              for name, held in modules.items()]  # fmt: skip
    finished = client.wait_jobs(posted, desc="train span modules")
    return [{"module": name, "facts": len(held), "job": job_summary(job)}
            for (name, held), job in zip(modules.items(), finished, strict=True)]  # fmt: skip


def merge(run: EvalRun, client: EvalClient, names: list[str]) -> str | None:
    """The merged module of all of them (the gateway's default combination), or None."""
    try:
        reply = client.post_merge(names, run.settings.merge_combination)
    except Unsupported as exc:
        run.skip("merged", str(exc))
        return None
    (job,) = client.wait_jobs([reply["job_id"]], desc="merge")
    if job["status"] != "published":
        run.skip("merged", f"merge job {job['status']}: {job.get('error')}")
        return None
    return str(reply["module"])


def _answerer(
    client: EvalClient, arm: Arm, merged: str | None, max_tokens: int
) -> Callable[[Question], Answer]:
    """One question -> its answer, as the arm asks it."""
    if arm.name == "oracle":

        def oracle(q: Question) -> Answer:
            halves = [client.chat(h, o, max_tokens=max_tokens)
                      for h, o in zip(q.halves, q.owners, strict=True)]  # fmt: skip
            errors = [h.error for h in halves if h.error]
            text = "\n".join(h.text for h in halves)
            return Answer(text, "oracle", errors[0] if errors else None, "oracle")

        return oracle
    model = merged if arm.name == "merged" and merged else "auto"
    request = dict(arm.request)
    mode = request.pop("mode", "lora")
    return lambda q: client.chat(q.text, model, mode, max_tokens=max_tokens, **request)
