"""`loramem eval counterfact`: CounterFact edits through the system, scored as the
model-editing literature scores them.

- efficacy: the arm gives the new target a higher log-probability than the base model's
  own value (vLLM `prompt_logprobs`), and its greedy answer contains the new target;
- generalization: each edit asked as a question of its relation (evaluation/
  counterfact_relations.py), a phrasing no training example has; the answer contains it;
- locality: an edit's template filled with a subject nobody edited, through
  `model=auto`: is the answer exactly the base model's (greedy, same max tokens), and did
  the router send it to base (header `x-loramem-module`)?

The edits are posted in batches as a user would (a module's worth each), every job is
waited for, and the base model is asked meanwhile: its answers do not depend on them.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from evaluation import metrics
from evaluation.client import Answer, EvalClient
from evaluation.counterfact_relations import LocalityPrompt, locality_prompts, paraphrase
from evaluation.data_evals import arm_request, ask_arms, training
from evaluation.experiments import job_summary
from evaluation.run import EvalRun, table
from loramem.datasets import COUNTERFACT_SIZES, Edit, counterfact_edits
from loramem.fact_forms import fact_form

_VALUE_END = re.compile(r"[.,;:!?\n]")


def own_value(answer: str, prompt: str, words: int = 4) -> str:
    """The base model's own completion of an edit prompt: what follows the prompt in its
    answer (or its answer's opening), up to punctuation, at most `words` words."""
    text = answer.strip()
    if text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :]
    return " ".join(_VALUE_END.split(text, maxsplit=1)[0].split()[:words])


@dataclass(frozen=True)
class Questions:
    """Everything one run asks, in three sets."""

    edits: list[Edit]
    paraphrases: list[str | None]  # None: the edit's relation is not known
    locality: list[LocalityPrompt]
    # Whether the edit's question form is, word for word, one the module trained on (a
    # sentence's own question, loramem/fact_forms.py `wh_question`, can be the relation's
    # natural question): such edits are left out of "unseen" generalization.
    trained: list[bool]

    @property
    def asked_paraphrases(self) -> list[str]:
        return [p for p in self.paraphrases if p is not None]


def questions(run: EvalRun) -> Questions:
    data_dir, size = run.settings.data_dir, run.flags["file"]
    edits = counterfact_edits(data_dir, run.flags["count"], size=size)
    # Locality subjects must be unedited in every file (the smaller files are prefixes of
    # the larger, so the largest names them all).
    edited = {e.subject for e in counterfact_edits(data_dir, 0, size=COUNTERFACT_SIZES[-1])}
    count = run.flags["locality"] if run.flags["locality"] is not None else len(edits)
    asked = [paraphrase(e) for e in edits]
    per_fact = run.flags.get("questions_per_fact") or run.settings.training.questions_per_fact
    trained = [
        q in fact_form(e.sentence).questions(per_fact) for e, q in zip(edits, asked, strict=True)
    ]
    return Questions(edits, asked, locality_prompts(edits, count, edited), trained)


# ---------------------------------------------------------------------- ingest
def ingest_batches(run: EvalRun, client: EvalClient, facts: list[str]) -> dict[str, Any]:
    """Post the facts in batches of --batch (no module named: the gateway packs them),
    then wait for every job and every module (splits too). A run resumed with --run-id
    posts only the facts its tenant lacks."""
    started = time.monotonic()
    held = {f["text"] for f in client.api.facts()}
    missing = [f for f in facts if f not in held]
    batches = client.post_batches(missing, run.flags["batch"], training(run))
    job_ids = [b["job_id"] for b in batches]
    posted_s = time.monotonic() - started
    jobs = client.wait_jobs(job_ids, desc=f"train {len(facts)} edits") if job_ids else []
    published_s = time.monotonic() - started
    # Nothing posted: ask the tenant as it stands (a partial run asks the edits whose
    # modules have published while the others still train).
    modules = client.wait_modules() if job_ids else client.api.modules()
    return {
        "facts": len(facts),
        "already_held": len(facts) - len(missing),
        "batches": len(batches),
        "post_seconds": round(posted_s, 3),  # a small POST takes tens of ms
        "post_to_published_seconds": round(published_s, 1),
        "jobs": [job_summary(j) | {"module": j["module"]} for j in jobs],
        "modules": [
            {"module": m["name"], "facts": m["fact_count"], "active_version": m["active_version"]}
            for m in modules
        ],
    }


# ------------------------------------------------------------------------- ask
def ask_base(run: EvalRun, client: EvalClient, asked: Questions) -> dict[str, Any]:
    """What the base model says: its own value of each edit (greedy continuation of the
    prompt, in the very turn candidates are scored in, cut to as many words as the new
    target, so both sum comparable log-probabilities), and its answer to the paraphrases
    and the locality prompts, which the other arms are compared with."""
    base, max_tokens = run.settings.base_name, run.flags["max_tokens"]
    continued = client.map(
        lambda e: client.continuation(e.prompt, e.prompt, base, max_tokens=16),
        asked.edits,
        desc="base own",
    )
    ask = _asker(client, {"model": base}, max_tokens)
    return {
        "replies": client.map(ask, [e.prompt for e in asked.edits], desc="base edits"),
        "own": [
            own_value(c, e.prompt, words=len(e.target.split()))
            for c, e in zip(continued, asked.edits, strict=True)
        ],
        "paraphrases": client.map(ask, asked.asked_paraphrases, desc="base paraphrases"),
        "locality": client.map(ask, [p.prompt for p in asked.locality], desc="base locality"),
    }


def _asker(client: EvalClient, request: dict[str, Any], max_tokens: int) -> Any:
    return lambda q: client.chat(q, max_tokens=max_tokens, **request)


def score_arm(
    run: EvalRun,
    client: EvalClient,
    arm: str,
    replies: list[Answer],
    asked: Questions,
    base: dict[str, Any],
) -> dict[str, Any]:
    edits, facts = asked.edits, [e.sentence for e in asked.edits]
    request = arm_request(run, arm, facts)
    scored = client.map(
        lambda i: _prefers_new(client, edits[i], base["own"][i], request),
        list(range(len(edits))),
        desc=f"score {arm}",
    )
    defined = [s for s in scored if s is not None]
    row: dict[str, Any] = {
        "arm": arm,
        "questions": len(edits),
        "efficacy": metrics.mean([float(s) for s in defined]),
        "efficacy_scored": len(defined),  # edits where both candidates could be scored
        "contains_target": _contains(replies, [e.target for e in edits]),
        "answered_by_module": metrics.mean([float(a.module != "base") for a in replies]),
        "request_errors": sum(a.error is not None for a in replies),
        "examples": [
            {"prompt": e.prompt, "target": e.target, "base_own": o, "answer": a.text}
            for e, o, a in list(zip(edits, base["own"], replies, strict=True))[:3]
        ],
    }
    ask = _asker(client, request, run.flags["max_tokens"])
    if arm == "base":
        paraphrased = base["paraphrases"]
    else:
        paraphrased = client.map(ask, asked.asked_paraphrases, desc=f"{arm} paraphrases")
    targets = [e.target for e, p in zip(edits, asked.paraphrases, strict=True) if p is not None]
    row["generalization"] = _contains(paraphrased, targets)
    row["generalization_asked"] = len(targets)
    asked_trained = [t for t, p in zip(asked.trained, asked.paraphrases, strict=True) if p]
    unseen = [(a, t) for a, t, s in zip(paraphrased, targets, asked_trained, strict=True) if not s]
    row["generalization_unseen"] = _contains([a for a, _ in unseen], [t for _, t in unseen])
    row["generalization_unseen_asked"] = len(unseen)
    answers = iter(paraphrased)
    row["per_edit"] = [
        {"edit": e.sentence, "prefers_new": s, "answer": a.text, "module": a.module,
         "paraphrase": p, "paraphrase_answer": next(answers).text if p else None}
        for e, s, a, p in zip(edits, scored, replies, asked.paraphrases, strict=True)
    ]  # fmt: skip
    if arm != "base":  # the base arm is what locality compares with
        local = client.map(ask, [p.prompt for p in asked.locality], desc=f"{arm} locality")
        row["locality"] = locality(asked.locality, base["locality"], local)
    return row


def _contains(answers: list[Answer], targets: list[str]) -> float | None:
    hits = [float(metrics.contains(a.text, t)) for a, t in zip(answers, targets, strict=True)]
    return metrics.mean(hits)


def locality(prompts: list[LocalityPrompt], base: list[Answer], arm: list[Answer]) -> dict:
    """How often the arm answers an unedited subject exactly as the base model does, how
    often the router sent it to base, and what happened when it did not."""
    same = [a.text.strip() == b.text.strip() for a, b in zip(arm, base, strict=True)]
    to_base = [a.module == "base" for a in arm]
    routed = [s for s, b in zip(same, to_base, strict=True) if not b]
    changed = [
        {"prompt": p.prompt, "near_edit": p.near_edit, "module": a.module,
         "base": b.text, "answer": a.text}
        for p, a, b, s in zip(prompts, arm, base, same, strict=True) if not s
    ]  # fmt: skip
    return {
        "prompts": len(prompts),
        "same_as_base": metrics.mean([float(s) for s in same]),
        "routed_to_base": metrics.mean([float(b) for b in to_base]),
        "routed_to_a_module": len(routed),
        "same_when_routed_to_a_module": metrics.mean([float(s) for s in routed]),
        "same_when_routed_to_base": metrics.mean(
            [float(s) for s, b in zip(same, to_base, strict=True) if b]
        ),
        "outcomes": _counts(a.outcome or "none" for a in arm),
        "request_errors": sum(a.error is not None for a in arm),
        "changed_examples": changed[:10],
        "routes": [
            {
                "prompt": p.prompt,
                "relation": p.relation,
                "module": a.module,
                "outcome": a.outcome,
                "same": s,
            }
            for p, a, s in zip(prompts, arm, same, strict=True)
        ],
    }


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _prefers_new(client: EvalClient, edit: Edit, old: str, request: dict) -> bool | None:
    """True when the arm gives the new target a higher log-probability than the base
    model's own answer; None when undefined (no own answer, the same answer, or a token
    straddling the boundary)."""
    if not old or old.lower() == edit.target.lower():
        return None
    scores = [
        client.continuation_logprob(edit.prompt, edit.prompt, candidate, **request)
        for candidate in (edit.target, old)
    ]
    if scores[0] is None or scores[1] is None:
        return None
    return scores[0] > scores[1]


# ------------------------------------------------------------------------- run
def counterfact_eval(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    asked = questions(run)
    facts, prompts = [e.sentence for e in asked.edits], [e.prompt for e in asked.edits]
    arms = run.flags["arms"].split(",")
    with ThreadPoolExecutor(1) as background:
        # The base model's answers do not depend on the modules: asked while they train.
        base_future = background.submit(base_arm, run, client, asked, "base" in arms)
        ingest = ingest_batches(run, client, facts)
        base, base_row = base_future.result()
    others = [a for a in arms if a != "base"]
    replies = ask_arms(run, client, prompts, facts, run.flags["max_tokens"], arms=others)
    rows = [score_arm(run, client, arm, r, asked, base) for arm, r in replies.items()]
    rows = ([base_row] if base_row else []) + rows
    own = base["own"]
    same = sum(o.lower() == e.target.lower() for o, e in zip(own, asked.edits, strict=True))
    results = {
        "file": f"counterfact_edit_{run.flags['file']}.csv",
        "ingest": ingest,
        "arms": rows,
        "base_already_says_new": same,
        "paraphrase_examples": [
            {"edit": e.sentence, "question": p}
            for e, p in zip(asked.edits, asked.paraphrases, strict=True)
        ][:5],
        "locality_examples": [vars(p) for p in asked.locality[:5]],
    }
    return {"results": results, "report": report(results), "figures": {"counterfact": figure(rows)}}


def base_arm(
    run: EvalRun, client: EvalClient, asked: Questions, scored: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The base model's answers, and its own row of scores when the base arm is asked."""
    base = ask_base(run, client, asked)
    if not scored:
        return base, None
    return base, score_arm(run, client, "base", base["replies"], asked, base)


def report(results: dict[str, Any]) -> str:
    arms, ingest = results["arms"], results["ingest"]
    lines = [
        f"{results['file']}: {ingest['facts']} edits in {ingest['batches']} batches, "
        f"{len(ingest['modules'])} modules, POST -> every job finished in "
        f"{ingest['post_to_published_seconds']} s "
        f"({sum(j['status'] == 'published' for j in ingest['jobs'])} of "
        f"{len(ingest['jobs'])} jobs published).",
        "",
        table(
            ["arm", "edits", "efficacy (logprob new > base's own)", "scored",
             "greedy contains new", "paraphrase contains new",
             "paraphrase never trained: contains new", "locality: same as base",
             "locality: routed to base"],
            [[a["arm"], a["questions"], a["efficacy"], a["efficacy_scored"],
              a["contains_target"], a["generalization"],
              f"{_share(a['generalization_unseen'])} of {a['generalization_unseen_asked']}",
              a.get("locality", {}).get("same_as_base"),
              a.get("locality", {}).get("routed_to_base")] for a in arms],
        ),
    ]  # fmt: skip
    for arm in arms:
        local = arm.get("locality")
        if local:
            lines.append(
                f"\n{arm['arm']} locality: {local['prompts']} prompts; "
                f"{local['routed_to_a_module']} routed to a module, of which "
                f"{_share(local['same_when_routed_to_a_module'])} answered as base; "
                f"outcomes {local['outcomes']}."
            )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def figure(arms: list[dict[str, Any]]) -> Any:
    """Grouped bars: each metric per arm."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    metrics_shown = {
        "efficacy": lambda a: a["efficacy"],
        "contains new": lambda a: a["contains_target"],
        "paraphrase": lambda a: a["generalization"],
        "locality": lambda a: a.get("locality", {}).get("same_as_base"),
    }
    figure, axes = pyplot.subplots(figsize=(6, 3))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        values = [get(arm) or 0.0 for get in metrics_shown.values()]
        axes.bar([x + i * width for x in range(len(values))], values, width, label=arm["arm"])
    axes.set_xticks([x + width * (len(arms) - 1) / 2 for x in range(len(metrics_shown))])
    axes.set_xticklabels(list(metrics_shown))
    axes.set_ylim(0, 1.02)
    axes.set_title("CounterFact")
    axes.legend(fontsize="small")
    return figure
