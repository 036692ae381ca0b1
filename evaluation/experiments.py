"""Module experiments on PhoneBook, each point a real job on the system, asked through it:
capacity against rank, data formats, LoRA variants, target modules, multi-module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from evaluation import metrics
from evaluation.client import EvalClient, Unsupported
from evaluation.run import EvalRun, table
from loramem.base_model import cache_folder
from loramem.datasets import PhoneEntry, phonebook
from loramem.knobs import LORA_TARGETS, TargetName

ANSWER_TOKENS = 32  # a PhoneBook answer sentence is about 20 tokens


@dataclass
class Point:
    """One module trained through the API and asked through it."""

    arm: str
    module: str
    entries: list[PhoneEntry]
    training: dict[str, Any]
    job_id: str = ""
    job: dict[str, Any] | None = None


def submit(client: EvalClient, run: EvalRun, point: Point) -> bool:
    """Post the point's facts; False (arm skipped) when the gateway lacks a knob it needs."""
    try:
        reply = client.post_facts([e.fact for e in point.entries], point.module, point.training)
    except Unsupported as exc:
        run.skip(point.arm, str(exc))
        return False
    point.job_id = reply["job_id"]
    return True


def ask(client: EvalClient, point: Point, model: str | None = None) -> dict[str, Any]:
    """Served recall of the point's facts: oracle (`model=<module>`) unless told otherwise."""
    target = model or point.module
    answers = client.map(
        lambda e: client.chat(e.question, target, max_tokens=ANSWER_TOKENS),
        point.entries,
        desc=f"ask {point.arm}",
    )
    return score_phonebook(point.entries, answers, expected_module=point.module)


def score_phonebook(entries: list[PhoneEntry], answers: list, expected_module: str | None) -> dict:
    n = len(entries)
    pairs = list(zip(entries, answers, strict=True))
    exact = sum(metrics.phone_exact(a.text, e.phone) for e, a in pairs)
    strict = sum(metrics.strict_match(a.text, e.phone) for e, a in pairs)
    routed = sum(a.module != "base" for a in answers)
    hits = sum(a.module.split("@")[0] == expected_module for a in answers) if expected_module else 0
    return {
        "questions": n,
        "exact_match": exact / n,
        "strict_match": strict / n,
        "answered_by_module": routed / n,
        "answered_by_expected_module": hits / n if expected_module else None,
        "request_errors": sum(a.error is not None for a in answers),
        "examples": [
            {"question": e.question, "expected": e.phone, "answer": a.text, "module": a.module}
            for e, a in pairs[:3]
        ],
    }


def job_summary(job: dict[str, Any]) -> dict[str, Any]:
    progress = job.get("progress") or {}
    return {
        "status": job["status"],
        "version": job.get("version"),
        "recall": progress.get("recall"),  # the worker's own in-process check
        "steps": progress.get("step"),
        "loss": progress.get("loss"),
        "train_seconds": progress.get("train_seconds"),
        "error": job.get("error"),
    }


def train_points(client: EvalClient, run: EvalRun, points: list[Point]) -> list[Point]:
    """Submit all points first (the worker trains them back to back), then wait."""
    live = [p for p in points if submit(client, run, p)]
    if live:
        jobs = client.wait_jobs([p.job_id for p in live], desc=f"train {run.experiment}")
        for point, job in zip(live, jobs, strict=True):
            point.job = job
    return live


def measure(client: EvalClient, point: Point) -> dict[str, Any]:
    assert point.job is not None
    row: dict[str, Any] = {
        "arm": point.arm,
        "module": point.module,
        "facts": len(point.entries),
        "training": point.training,
        "job": job_summary(point.job),
    }
    if point.job["status"] == "published":
        row.update(ask(client, point))
    return row


def base_training(run: EvalRun, **extra: Any) -> dict[str, Any]:
    """Knobs every experiment job carries. recall_gate 0: publish what was learnt, so a
    point below the gate is measured instead of split into more modules."""
    training: dict[str, Any] = {"recall_gate": 0.0, "max_steps": run.flags["max_steps"]}
    training.update(top_layers=run.flags["top_layers"], targets=run.flags["targets"])
    return {**training, **extra}


# ------------------------------------------------------------------ capacity
def trainable_parameters(
    run: EvalRun, rank: int, targets: TargetName, top_layers: int
) -> int | None:
    """LoRA parameters r * (in + out) per adapted projection, from the base model's config
    in the local cache (None where this machine has not prepared the model)."""
    path = cache_folder(run.settings) / "config.json"
    if not path.exists():
        return None
    config = json.loads(path.read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    shapes = {
        "q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }  # fmt: skip
    layers = config["num_hidden_layers"]
    layers = min(top_layers, layers) if top_layers else layers
    per_layer = sum(rank * sum(shapes[name]) for name in LORA_TARGETS[targets].peft)
    return per_layer * layers


def capacity(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    ranks = [int(r) for r in run.flags["ranks"].split(",")]
    counts = sorted(int(c) for c in run.flags["counts"].split(","))
    people = phonebook(run.settings.data_dir, max(counts), offset=run.flags["offset"])
    points = [
        Point(f"r{r}-n{n}", run.module(f"cap-r{r}-n{n}"), people[:n], base_training(run, rank=r))
        for r in ranks
        for n in counts
    ]
    kept = _earlier_points(run, points) if run.flags["reuse"] else {}
    fresh = [p for p in points if p.arm not in kept]
    measured = {p.arm: measure(client, p) for p in train_points(client, run, fresh)}
    rows = [kept.get(p.arm) or measured[p.arm] for p in points if p.arm in kept | measured]
    thresholds = (0.9, 0.95, 1.0)
    summary: list[dict[str, Any]] = []
    for rank in ranks:
        curve: dict[int, float] = {
            r["facts"]: r["exact_match"]
            for r in rows
            if r["training"]["rank"] == rank and r.get("exact_match") is not None
        }
        params = trainable_parameters(run, rank, run.flags["targets"], run.flags["top_layers"])
        cap = {str(t): max((n for n, em in curve.items() if em >= t), default=0)
               for t in thresholds}  # fmt: skip
        summary.append({
            "rank": rank,
            "trainable_parameters": params,
            "exact_match_by_facts": curve,
            "capacity": cap,  # largest fact count tried whose exact match reached the level
            "facts_per_million_parameters": {
                t: (c / params * 1e6 if params else None) for t, c in cap.items()
            },
        })  # fmt: skip
    report = table(
        ["rank", "trainable params", *[f"EM @ {n}" for n in counts],
         "capacity 90/95/100%", "facts per M params (90%)"],
        [
            [s["rank"], s["trainable_parameters"],
             *[s["exact_match_by_facts"].get(n) for n in counts],
             "/".join(str(s["capacity"][str(t)]) for t in thresholds),
             s["facts_per_million_parameters"]["0.9"]]
            for s in summary
        ],
    )  # fmt: skip
    figure = _curve(summary, counts)
    return {"results": {"points": rows, "ranks": summary}, "report": report,
            "figures": {"capacity": figure}}  # fmt: skip


def _earlier_points(run: EvalRun, points: list[Point]) -> dict[str, dict[str, Any]]:
    """--reuse: points of an earlier run in --out with the same facts and training knobs,
    so a long sweep can run in several sittings (each system start trains only the rest)."""
    path = run.out / "results.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    if earlier["flags"]["offset"] != run.flags["offset"]:
        return {}
    wanted = {p.arm: p for p in points}
    return {
        row["arm"]: row
        for row in earlier.get("points", [])
        if row["arm"] in wanted
        and row["training"] == wanted[row["arm"]].training
        and row["job"]["status"] == "published"
    }


def _curve(summary: list[dict], counts: list[int]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5, 3.2))
    for s in summary:
        xs = [n for n in counts if s["exact_match_by_facts"].get(n) is not None]
        ems = [s["exact_match_by_facts"][n] for n in xs]
        axes.plot(xs, ems, marker="o", label=f"r={s['rank']}")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("facts in the module")
    axes.set_ylabel("exact match (served)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize=8)
    axes.set_title("PhoneBook recall against rank")
    return figure


def bars(
    title: str,
    labels: list[str],
    values: list[float | None],
    ylabel: str = "exact match",
    ranges: list[tuple[float, float]] | None = None,
) -> Any:
    """Bars of scores in [0, 1]; `ranges`: each bar's (min, max) over runs, drawn as
    error bars around it."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    heights = [v if v is not None else 0.0 for v in values]
    figure, axes = pyplot.subplots(figsize=(5, 3))
    if ranges is None:
        axes.bar(labels, heights)
    else:
        below = [max(h - low, 0.0) for h, (low, _high) in zip(heights, ranges, strict=True)]
        above = [max(high - h, 0.0) for h, (_low, high) in zip(heights, ranges, strict=True)]
        axes.bar(labels, heights, yerr=[below, above], capsize=4)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    return figure


# ------------------------------------------------- one knob, several values
KNOBS = {"formats": "data_format", "variants": "variant", "targets": "targets"}


def compare(run: EvalRun) -> dict[str, Any]:
    """formats, variants, targets: the same facts, one training knob varied."""
    knob = KNOBS[run.experiment]
    client = run.client()
    people = phonebook(run.settings.data_dir, run.flags["count"], offset=run.flags["offset"])
    points = [
        Point(value, run.module(f"{run.experiment[:3]}-{value}"), people,
              base_training(run, rank=run.flags["rank"], **{knob: value}))
        for value in run.flags["values"].split(",")
    ]  # fmt: skip
    rows = [measure(client, p) for p in train_points(client, run, points)]
    report = table(
        [knob, "facts", "exact match (served)", "strict match", "job recall (worker)", "steps",
         "train s", "status"],
        [[r["arm"], r["facts"], r.get("exact_match"), r.get("strict_match"), r["job"]["recall"],
          r["job"]["steps"], r["job"]["train_seconds"], r["job"]["status"]] for r in rows],
    )  # fmt: skip
    figure = bars(f"PhoneBook, {run.flags['count']} facts, by {knob}",
                  [r["arm"] for r in rows], [r.get("exact_match") for r in rows])  # fmt: skip
    return {"results": {"knob": knob, "arms": rows}, "report": report,
            "figures": {run.experiment: figure}}  # fmt: skip


# --------------------------------------------------------------- multi-module
def multi_module(run: EvalRun) -> dict[str, Any]:
    """One big module against several small ones (same total rank) under oracle routing,
    embedding routing (model=auto) and merged into one adapter."""
    count, parts, small = run.flags["count"], run.flags["modules"], run.flags["rank"]
    people = phonebook(run.settings.data_dir, count, offset=run.flags["offset"])
    size = -(-count // parts)
    big_client, small_client = run.client("big"), run.client("small")
    big = Point("big", run.module("mm-big"), people, base_training(run, rank=small * parts))
    smalls = [
        Point(f"small-{i}", run.module(f"mm-s{i}"), people[i * size : (i + 1) * size],
              base_training(run, rank=small))
        for i in range(parts)
    ]  # fmt: skip
    train_points(big_client, run, [big])
    trained = train_points(small_client, run, smalls)
    arms: list[dict[str, Any]] = []
    if big.job is not None:
        arms.append({"arm": "one big module (oracle)", **_pooled(big_client, [big], oracle=True)})
    if trained and all(p.job and p.job["status"] == "published" for p in trained):
        arms.append({"arm": f"{parts} small (oracle)", **_pooled(small_client, trained, True)})
        arms.append({"arm": f"{parts} small (model=auto)", **_pooled(small_client, trained, False)})
        merged = _merge(run, small_client, trained)
        if merged is not None:
            arms.append(merged)
    report = table(
        ["arm", "facts", "rank", "exact match", "strict match", "answered by expected module"],
        [[a["arm"], a["questions"], a.get("rank"), a["exact_match"], a["strict_match"],
          a["answered_by_expected_module"]] for a in arms],
    )  # fmt: skip
    figure = bars(f"{count} PhoneBook facts", [a["arm"] for a in arms],
                  [a["exact_match"] for a in arms])  # fmt: skip
    jobs = {p.arm: job_summary(p.job) for p in [big, *smalls] if p.job}
    return {"results": {"arms": arms, "jobs": jobs}, "report": report,
            "figures": {"multi_module": figure}}  # fmt: skip


def _pooled(client: EvalClient, points: list[Point], oracle: bool) -> dict[str, Any]:
    """Exact match over all points' facts, each asked of its own module or of model=auto."""
    entries, answers, expected = [], [], 0
    for point in points:
        result = ask(client, point, model=None if oracle else "auto")
        entries += point.entries
        expected += result["answered_by_expected_module"] * result["questions"]
        answers.append(result)
    n = len(entries)
    return {
        "questions": n,
        "rank": points[0].training.get("rank"),
        "exact_match": sum(r["exact_match"] * r["questions"] for r in answers) / n,
        "strict_match": sum(r["strict_match"] * r["questions"] for r in answers) / n,
        "answered_by_expected_module": expected / n,
        "request_errors": sum(r["request_errors"] for r in answers),
    }


def _merge(run: EvalRun, client: EvalClient, points: list[Point]) -> dict[str, Any] | None:
    combination = run.flags["combination"]
    arm = f"merged ({combination})"
    try:
        reply = client.post_merge([p.module for p in points], combination)
    except Unsupported as exc:
        run.skip(arm, str(exc))
        return None
    (job,) = client.wait_jobs([reply["job_id"]], desc="merge")
    if job["status"] != "published":
        run.skip(arm, f"merge job {job['status']}: {job.get('error')}")
        return None
    people = [e for p in points for e in p.entries]
    merged = Point(arm, reply["module"], people, {})
    result = ask(client, merged)
    return {"arm": arm, "rank": None, "job": job_summary(job), **result}
