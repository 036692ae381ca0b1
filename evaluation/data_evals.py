"""The paper's data sets through the system, against baselines from the same data.

Arms: `base` (the base model alone), `icl` (every fact in the prompt, while they fit the
engine's context), `rag` (mode rag: retrieved facts in context, base model), `lora` (mode
lora, model=auto: the routed module) and `hybrid` (mode hybrid, model=auto).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from evaluation import metrics
from evaluation.client import Answer, EvalClient
from evaluation.experiments import bars, job_summary, score_phonebook
from evaluation.judge import Judge
from evaluation.run import EvalRun, table
from loramem.datasets import counterfact_edits, paperqa, phonebook

ICL_INSTRUCTION = "Answer using these facts:\n"
ARMS = ("base", "icl", "rag", "lora", "hybrid")


def ingest(run: EvalRun, client: EvalClient, post: Callable[[], dict]) -> list[dict]:
    """Ingest the way a user would (no module named); wait for every module, splits too."""
    reply = post()
    (job,) = client.wait_jobs([reply["job_id"]], desc=f"train {run.experiment}")
    modules = client.wait_modules()
    return [
        job_summary(job),
        *[
            {"module": m["name"], "facts": m["fact_count"], "active_version": m["active_version"]}
            for m in modules
        ],
    ]


def training(run: EvalRun) -> dict[str, Any]:
    """The system's own training, but for the flags given (--recall-gate: default unset)."""
    knobs = {"max_steps": run.flags["max_steps"], "recall_gate": run.flags["recall_gate"]}
    return {k: v for k, v in knobs.items() if v is not None}


def arm_request(run: EvalRun, arm: str, facts: list[str]) -> dict[str, Any]:
    """chat() arguments of one arm."""
    base = run.settings.base_name
    if arm == "base":
        return {"model": base}
    if arm == "icl":
        return {"model": base, "system": ICL_INSTRUCTION + "\n".join(f"- {f}" for f in facts)}
    return {"model": "auto", "mode": "lora" if arm == "lora" else arm}


def ask_arms(
    run: EvalRun, client: EvalClient, questions: list[str], facts: list[str], max_tokens: int
) -> dict[str, list[Answer]]:
    answers: dict[str, list[Answer]] = {}
    for arm in run.flags["arms"].split(","):
        request = arm_request(run, arm, facts)
        replies = client.map(
            lambda q, r=request: client.chat(q, max_tokens=max_tokens, **r),  # type: ignore[misc]
            questions,
            desc=f"ask {arm}",
        )
        refused = [a.error for a in replies if a.error]
        if arm == "icl" and refused:
            # The engine refuses a prompt longer than its context: ICL no longer applies.
            run.skip(arm, f"{len(refused)} of {len(replies)} prompts refused: {refused[0]}")
            continue
        answers[arm] = replies
    return answers


# ------------------------------------------------------------------ PhoneBook
def phonebook_eval(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    people = phonebook(run.settings.data_dir, run.flags["count"], offset=run.flags["offset"])
    facts = [p.fact for p in people]
    jobs = ingest(run, client, lambda: client.post_facts(facts, None, training(run)))
    answers = ask_arms(run, client, [p.question for p in people], facts, max_tokens=32)
    arms = [{"arm": arm, **score_phonebook(people, a, None)} for arm, a in answers.items()]
    report = table(
        ["arm", "questions", "exact match (digits)", "strict match", "answered by a module"],
        [[a["arm"], a["questions"], a["exact_match"], a["strict_match"], a["answered_by_module"]]
         for a in arms],
    )  # fmt: skip
    figure = bars("PhoneBook", [a["arm"] for a in arms], [a["exact_match"] for a in arms])
    return {"results": {"jobs": jobs, "arms": arms}, "report": report,
            "figures": {"phonebook": figure}}  # fmt: skip


# ---------------------------------------------------------------- CounterFact
_VALUE_END = re.compile(r"[.,;:!?\n]")


def own_value(answer: str, prompt: str, words: int = 4) -> str:
    """The base model's own completion of an edit prompt: what follows the prompt in its
    answer (or its answer's opening), up to punctuation, at most `words` words."""
    text = answer.strip()
    if text.lower().startswith(prompt.lower()):
        text = text[len(prompt) :]
    return " ".join(_VALUE_END.split(text, maxsplit=1)[0].split()[:words])


def counterfact_eval(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    edits = counterfact_edits(run.settings.data_dir, run.flags["count"])
    facts = [e.sentence for e in edits]
    jobs = ingest(run, client, lambda: client.post_facts(facts, None, training(run)))
    prompts = [e.prompt for e in edits]
    # The base model's own value: its greedy continuation of the prompt in the very turn
    # the candidates are scored in (a free chat answer often opened with other words),
    # cut to as many words as the new target, so both sum comparable log-probabilities.
    base_answers = client.map(
        lambda p: client.continuation(p, p, run.settings.base_name, max_tokens=16),
        prompts,
        desc="base own",
    )
    olds = [
        own_value(a, e.prompt, words=len(e.target.split()))
        for a, e in zip(base_answers, edits, strict=True)
    ]
    answers = ask_arms(run, client, prompts, facts, max_tokens=24)
    arms: list[dict[str, Any]] = []
    for arm, replies in answers.items():
        request = arm_request(run, arm, facts)
        scored = client.map(
            lambda i, r=request: _prefers_new(client, edits[i], olds[i], r),  # type: ignore[misc]
            list(range(len(edits))),
            desc=f"score {arm}",
        )
        defined = [s for s in scored if s is not None]
        arms.append({
            "arm": arm,
            "questions": len(edits),
            "efficacy": metrics.mean([float(s) for s in defined]),
            "efficacy_scored": len(defined),  # edits where both candidates could be scored
            "contains_target": metrics.mean(
                [float(metrics.contains(a.text, e.target))
                 for a, e in zip(replies, edits, strict=True)]  # fmt: skip
            ),
            "answered_by_module": metrics.mean([float(a.module != "base") for a in replies]),
            "examples": [{"prompt": e.prompt, "target": e.target, "base_own": o, "answer": a.text}
                         for e, o, a in list(zip(edits, olds, replies, strict=True))[:3]],
        })  # fmt: skip
    report = table(
        ["arm", "edits", "efficacy (logprob new > base's own)", "scored", "greedy contains new"],
        [[a["arm"], a["questions"], a["efficacy"], a["efficacy_scored"], a["contains_target"]]
         for a in arms],
    )  # fmt: skip
    figure = bars("CounterFact efficacy", [a["arm"] for a in arms], [a["efficacy"] for a in arms])
    same = sum(o.lower() == e.target.lower() for o, e in zip(olds, edits, strict=True))
    return {"results": {"jobs": jobs, "arms": arms, "base_already_says_new": same},
            "report": report, "figures": {"counterfact": figure}}  # fmt: skip


def _prefers_new(client: EvalClient, edit: Any, old: str, request: dict) -> bool | None:
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


# -------------------------------------------------------------------- PaperQA
def paperqa_eval(run: EvalRun) -> dict[str, Any]:
    client = run.client()
    papers = [paperqa(run.settings.data_dir, int(n)) for n in run.flags["papers"].split(",")]
    texts = [_first_sentences(p.introduction, run.flags["sentences"]) for p in papers]
    jobs: list[dict] = []
    for text in texts:
        jobs += ingest(run, client, partial(client.post_document, text, None, training(run)))
    pairs = [qa for p in papers for qa in p.qa[: run.flags["questions"]]]
    answers = ask_arms(run, client, [q.question for q in pairs], texts, max_tokens=64)
    judge = Judge.from_settings(run.settings, run.gateway)
    arms: list[dict[str, Any]] = []
    for arm, replies in answers.items():
        hyps, refs = [a.text for a in replies], [q.answer for q in pairs]
        verdicts = client.map(
            lambda item: judge.score(*item),
            [(q.question, q.answer, h) for q, h in zip(pairs, hyps, strict=True)],
            desc=f"judge {arm}",
        )
        scores = [v.score for v in verdicts if v is not None]
        arms.append({
            "arm": arm,
            "questions": len(pairs),
            "bleu": metrics.corpus_bleu(hyps, refs),
            "rouge_l": metrics.mean(
                [metrics.rouge_l(h, r) for h, r in zip(hyps, refs, strict=True)]
            ),
            "judge_score": metrics.mean(scores),
            "judge_parse_failures": len(verdicts) - len(scores),
            "examples": [{"question": q.question, "reference": q.answer, "answer": a.text}
                         for q, a in list(zip(pairs, replies, strict=True))[:2]],
        })  # fmt: skip
    report = table(
        ["arm", "questions", "BLEU", "ROUGE-L", "judge 0-10", "judge parse failures"],
        [[a["arm"], a["questions"], a["bleu"], a["rouge_l"], a["judge_score"],
          a["judge_parse_failures"]] for a in arms],
    )  # fmt: skip
    report += "\n\n" + judge.caveat
    figure = bars("PaperQA ROUGE-L", [a["arm"] for a in arms], [a["rouge_l"] for a in arms])
    return {"results": {"jobs": jobs, "arms": arms, "judge": judge.describe()},
            "report": report, "figures": {"paperqa": figure}}  # fmt: skip


def _first_sentences(text: str, count: int) -> str:
    """The introduction, cut to its first `count` sentences (0: all) for small runs."""
    if not count:
        return text
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:count])
