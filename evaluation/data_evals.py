"""The paper's data sets through the system, against baselines from the same data.

Arms: `base` (the base model alone), `icl` (every fact in the prompt, while they fit the
engine's context), `rag` (mode rag: retrieved facts in context, base model), `lora` (mode
lora, model=auto: the routed module), `hybrid` (mode hybrid, model=auto) and `auto`
(model=auto naming no mode: the gateway's LORAMEM_ANSWER_MODE, or LORAMEM_DOCUMENT_ANSWER_MODE
for a question routed to a document's sentence).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from evaluation import metrics
from evaluation.client import Answer, EvalClient
from evaluation.experiments import bars, job_summary, score_phonebook
from evaluation.judge import Judge
from evaluation.run import EvalRun, table
from loramem.datasets import QAPair, paperqa, phonebook
from loramem.documents import split_document
from router.embedder import query_embedder

ICL_INSTRUCTION = "Answer using these facts:\n"
ARMS = ("base", "icl", "rag", "lora", "hybrid", "auto")


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
    """The system's own training, but for the flags given (--recall-gate and
    --questions-per-fact: default unset)."""
    knobs = {
        "max_steps": run.flags["max_steps"],
        "recall_gate": run.flags["recall_gate"],
        "questions_per_fact": run.flags.get("questions_per_fact"),
    }
    return {k: v for k, v in knobs.items() if v is not None}


def arm_request(run: EvalRun, arm: str, facts: list[str]) -> dict[str, Any]:
    """chat() arguments of one arm: base, icl, a mode of model=auto (lora, rag, hybrid),
    or auto (no mode named: the gateway's default); "rag@0.45" asks with that context
    threshold (the request's own, not the gateway's)."""
    base = run.settings.base_name
    if arm == "base":
        return {"model": base}
    if arm == "auto":
        return {"model": "auto", "mode": None}
    if arm == "icl":
        return {"model": base, "system": ICL_INSTRUCTION + "\n".join(f"- {f}" for f in facts)}
    mode, _, threshold = arm.partition("@")
    request: dict[str, Any] = {"model": "auto", "mode": mode}
    if threshold:
        request["context_threshold"] = float(threshold)
    return request


def ask_arms(
    run: EvalRun,
    client: EvalClient,
    questions: list[str],
    facts: list[str],
    max_tokens: int,
    arms: list[str] | None = None,
) -> dict[str, list[Answer]]:
    """Every arm's answers (`arms`: default the run's --arms)."""
    answers: dict[str, list[Answer]] = {}
    for arm in arms if arms is not None else run.flags["arms"].split(","):
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


# -------------------------------------------------------------------- PaperQA
def paperqa_eval(run: EvalRun) -> dict[str, Any]:
    """Every paper posted as a document, then every arm asked the papers' questions; with
    --runs N the whole run repeats into a fresh tenant with the training seed + 1 each time,
    and each arm reports its mean and the spread (max - min) over the runs."""
    papers = [paperqa(run.settings.data_dir, int(n)) for n in run.flags["papers"].split(",")]
    texts = [_first_sentences(p.introduction, run.flags["sentences"]) for p in papers]
    count = run.flags["questions"]
    pairs = [qa for p in papers for qa in (p.qa[:count] if count else p.qa)]
    judge = None if run.flags["no_judge"] else Judge.from_settings(run.settings, run.gateway)
    if judge is None:
        run.skip("judge", "--no-judge: answers scored by BLEU and ROUGE-L only")
    runs: list[dict[str, Any]] = []
    for index in range(run.flags["runs"]):
        client = run.client(f"run{index}" if run.flags["runs"] > 1 else "")
        knobs = {**training(run), "seed": run.settings.training.seed + index}
        replies = [client.post_document(text, None, knobs) for text in texts]
        finished = client.wait_jobs([r["job_id"] for r in replies], desc=f"train run {index}")
        modules = client.wait_modules()
        answers = ask_arms(run, client, [q.question for q in pairs], texts, max_tokens=64)
        runs.append({
            "seed": knobs["seed"],
            "jobs": [job_summary(job) for job in finished],
            "modules": [{"module": m["name"], "facts": m["fact_count"],
                         "active_version": m["active_version"]} for m in modules],
            "arms": [_paperqa_scores(client, judge, arm, pairs, a) for arm, a in answers.items()],
        })  # fmt: skip
    arms = [_across_runs([r["arms"][i] for r in runs]) for i in range(len(runs[0]["arms"]))]
    references = _reference_answers(run, texts, pairs)
    report = table(
        ["arm", "questions", "runs", "BLEU", "BLEU spread", "ROUGE-L", "ROUGE-L spread",
         "judge 0-10", "judge parse failures"],
        [[a["arm"], a["questions"], a["runs"], a["bleu"], a["bleu_spread"], a["rouge_l"],
          a["rouge_l_spread"], a["judge_score"], a["judge_parse_failures"]] for a in arms],
    )  # fmt: skip
    report += "\n\nWhat answers that need no model would score (no engine asked):\n\n"
    report += table(
        ["reference answer", "BLEU", "ROUGE-L"],
        [[r["reference"], r["bleu"], r["rouge_l"]] for r in references],
    )
    if judge is not None:
        report += "\n\n" + judge.caveat
    per_run = [[r["arms"][i]["rouge_l"] for r in runs] for i in range(len(arms))]
    figure = bars(
        f"PaperQA, {len(runs)} run(s): mean and min-max",
        [a["arm"] for a in arms],
        [a["rouge_l"] for a in arms],
        ylabel="ROUGE-L",
        ranges=[(min(scores), max(scores)) for scores in per_run],
    )
    results = {"jobs": [j for r in runs for j in r["jobs"]], "runs": runs, "arms": arms,
               "references": references,
               "judge": judge.describe() if judge is not None else None}  # fmt: skip
    return {"results": results, "report": report, "figures": {"paperqa": figure}}


def _paperqa_scores(
    client: EvalClient, judge: Judge | None, arm: str, pairs: list[QAPair], replies: list[Answer]
) -> dict[str, Any]:
    hyps, refs = [a.text for a in replies], [q.answer for q in pairs]
    scores: list[float] = []
    failures = 0
    if judge is not None:
        verdicts = client.map(
            lambda item: judge.score(*item),
            [(q.question, q.answer, h) for q, h in zip(pairs, hyps, strict=True)],
            desc=f"judge {arm}",
        )
        scores = [v.score for v in verdicts if v is not None]
        failures = len(verdicts) - len(scores)
    return {
        "arm": arm,
        "questions": len(pairs),
        **_text_scores(hyps, refs),
        "judge_score": metrics.mean(scores),
        "judge_parse_failures": failures,
        "examples": [{"question": q.question, "reference": q.answer, "answer": a.text}
                     for q, a in list(zip(pairs, replies, strict=True))[:2]],
    }  # fmt: skip


def _reference_answers(run: EvalRun, texts: list[str], pairs: list[QAPair]) -> list[dict]:
    """Answers no model writes, scored like the arms: the question itself, the posted
    sentence nearest the question by the router's embedder (all papers' sentences, split
    as POST /documents splits them), and the sentence nearest the reference by ROUGE-L (the
    best a one-sentence quote can do)."""
    sentences = [s for text in texts for s in split_document(text, run.settings.max_fact_chars)]
    embedder = query_embedder(run.settings)
    nearest = (embedder.embed([q.question for q in pairs]) @ embedder.embed(sentences).T).argmax(1)
    answers = {
        "the question itself": [q.question for q in pairs],
        "the sentence nearest the question": [sentences[int(i)] for i in nearest],
        "the sentence nearest the reference": [_best_quote(sentences, q.answer) for q in pairs],
    }
    refs = [q.answer for q in pairs]
    return [{"reference": name, **_text_scores(hyps, refs)} for name, hyps in answers.items()]


def _best_quote(sentences: list[str], reference: str) -> str:
    return max(sentences, key=lambda sentence: metrics.rouge_l(sentence, reference))


def _text_scores(hyps: list[str], refs: list[str]) -> dict[str, Any]:
    return {
        "bleu": metrics.corpus_bleu(hyps, refs),
        "rouge_l": metrics.mean([metrics.rouge_l(h, r) for h, r in zip(hyps, refs, strict=True)]),
    }


def _across_runs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm over the runs: each score's mean, BLEU's and ROUGE-L's max - min."""
    summary: dict[str, Any] = {"arm": rows[0]["arm"], "questions": rows[0]["questions"],
                               "runs": len(rows), "examples": rows[0]["examples"]}  # fmt: skip
    for key in ("bleu", "rouge_l", "judge_score"):
        values = [r[key] for r in rows if r[key] is not None]
        summary[key] = metrics.mean(values)
        if key != "judge_score":
            summary[f"{key}_spread"] = max(values) - min(values) if values else None
    summary["judge_parse_failures"] = sum(r["judge_parse_failures"] for r in rows)
    return summary


def _first_sentences(text: str, count: int) -> str:
    """The introduction, cut to its first `count` sentences (0: all) for small runs."""
    if not count:
        return text
    return " ".join(re.split(r"(?<=[.!?])\s+", text.strip())[:count])
