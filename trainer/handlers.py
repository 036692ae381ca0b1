"""Job handlers: each kind of job turns into an outcome for the publisher.

train    an "add", "edit" or "delete" job: train the module on all its facts, gate it
retire   no facts are left: the module stops serving
covered  an earlier job already trained every fact this one sees
move out a few facts missed (trainer/gate.py): they move to a module of their own, with a
         job of their own; the version publishes the facts it recalls
split    below the gate: half the facts move to a new module with a job of its own
consolidate  retrain a module with its deltas' facts (warm); the publish retires the deltas;
         it yields to a user's job queued meanwhile
merge    combine published modules (trainer/merge.py)
"""

from __future__ import annotations

import time

from loramem.names import module_name
from loramem.registry.facts import Fact
from loramem.registry.jobs import BACKGROUND_KINDS, Job, JobStatus
from trainer.context import TrainerContext
from trainer.gate import GateResult, Verdict
from trainer.merge import build_merge
from trainer.outcomes import Artifact, Covered, JobRefused, Outcome, Retirement
from trainer.training_run import TrainingRun


class GateFailed(JobRefused):
    pass


def handle(ctx: TrainerContext, job: Job) -> Outcome:
    if job.kind == "merge":
        return build_merge(ctx, job)
    if job.kind == "consolidate":
        return consolidate(ctx, job)
    return train(ctx, job)


def consolidate(ctx: TrainerContext, job: Job) -> Outcome:
    """The module with the facts of its deltas that nothing else is training, warm from
    its active version, gated on them all; the publish moves the facts and retires the
    deltas in one transaction (registry/modules.py Fold). Below the gate it fails: the
    deltas go on serving their facts."""
    deltas = ctx.registry.facts.deltas_to_fold(job.module, job.tenant)
    if not deltas:
        return Covered(ctx.registry.modules.get(job.module).active_version)
    facts = ctx.registry.facts.of_module(job.module, job.tenant)
    facts += [fact for held in deltas.values() for fact in held]
    knobs = ctx.settings.training.with_overrides(job.training)
    run = TrainingRun(ctx, job, knobs)
    # A user's job queued meanwhile goes first: this one stops and is queued again when
    # the worker is idle. Past twice the deltas that make it due it runs through, so under
    # steady load deltas stay bounded.
    if ctx.settings.consolidate_yield and len(deltas) < 2 * ctx.settings.consolidate_deltas:
        run.should_yield = lambda: bool(ctx.registry.queue.waiting_kinds() - BACKGROUND_KINDS)
    try:
        gate = run.train_until_gate(facts, warm=True)
        if gate.verdict is Verdict.BELOW_GATE:
            raise GateFailed(below_gate(gate, knobs.recall_gate, run))
        if gate.verdict is Verdict.MOVE_OUT:  # the module's or a delta's: out all the same
            facts = move_out(ctx, job, facts, gate, run, sources=list(deltas))
        kept = {f.id for f in facts}
        run.progress.update(phase="publishing", train_seconds=run.seconds())
        ctx.registry.jobs.transition(job.id, JobStatus.PUBLISHING, progress=run.progress)
        # A delta whose facts all moved out is folded empty: retired like the others.
        folded = {d: {f.id: f.text for f in held if f.id in kept} for d, held in deltas.items()}
        return Artifact(
            job.module,
            run.servable_files(),
            run.recipe(),
            [f.id for f in facts],
            held_recall(gate),
            folded=folded,
        )
    finally:
        run.close()


def train(ctx: TrainerContext, job: Job) -> Outcome:
    if job.kind not in BACKGROUND_KINDS:  # a user's write: add, edit or delete
        # Writes right behind this one join it rather than queue a retrain of the module
        # for just after (an add's own job then finds it covered; an edit's still trains:
        # covering_version goes by fact id), and the first answer after it has the cores.
        coalesce_s = ctx.settings.job_coalesce_ms / 1000
        time.sleep(max(0.0, job.created_at_s + coalesce_s - time.time()))
    facts = ctx.registry.facts.of_module(job.module, job.tenant)
    if not facts:
        return Retirement()
    covering = covering_version(ctx, job, facts)
    if covering:
        return Covered(covering)
    knobs = ctx.settings.training.with_overrides(job.training)
    run = TrainingRun(ctx, job, knobs)
    try:
        warm = job.kind == "add"
        while True:
            gate = run.train_until_gate(facts, warm)
            if gate.verdict is Verdict.MOVE_OUT:
                facts = move_out(ctx, job, facts, gate, run)
                break
            if gate.verdict is Verdict.PUBLISH:
                break
            if len(facts) < 2 or not ctx.settings.gate_split:
                raise GateFailed(below_gate(gate, knobs.recall_gate, run))
            facts, warm = split(ctx, job, facts, run), False
        run.progress.update(phase="publishing", train_seconds=run.seconds())
        ctx.registry.jobs.transition(job.id, JobStatus.PUBLISHING, progress=run.progress)
        files = run.servable_files()
        return Artifact(job.module, files, run.recipe(), [f.id for f in facts], held_recall(gate))
    finally:
        run.close()


def held_recall(gate: GateResult) -> float:
    """The recall of what the version holds: every fact it holds was recalled when the
    missed ones moved out."""
    return 1.0 if gate.verdict is Verdict.MOVE_OUT else gate.recall


def below_gate(gate: GateResult, recall_gate: float, run: TrainingRun) -> str:
    """The failed job's error: the recall, the budget spent, and which facts missed (a
    job of one moved-out fact says the fact will not stick even alone)."""
    run.progress["missed_fact_ids"] = list(gate.missed)
    run.jobs.set_progress(run.job.id, run.progress)  # the failure keeps it: shown
    shown = ", ".join(gate.missed[:5]) + (" ..." if len(gate.missed) > 5 else "")
    return (
        f"recall {gate.recall:.3f} is below the gate {recall_gate:.2f} after "
        f"{run.done_steps} steps (loss {run.last_loss:.4f}); not recalled: {shown}"
    )


def covering_version(ctx: TrainerContext, job: Job, facts: list[Fact]) -> int | None:
    """The active version, when it was trained on every fact this "add" job sees."""
    modules = ctx.registry.modules
    active = modules.get(job.module).active_version
    if job.kind != "add" or not active or job.training:
        return None
    trained = set(modules.version(job.module, active).fact_ids)
    return active if {f.id for f in facts} <= trained else None


def move_out(
    ctx: TrainerContext,
    job: Job,
    facts: list[Fact],
    gate: GateResult,
    run: TrainingRun,
    sources: list[str] | None = None,
) -> list[Fact]:
    """Move the facts the gate missed to a new module, whose own job trains them alone
    (from scratch, with its own gate); return the facts kept. Shown on both jobs."""
    missed = set(gate.missed)
    reason = (
        f"not recalled after {run.done_steps} steps, while {len(facts) - len(missed)} "
        f"of {len(facts)} facts were (recall {gate.recall:.3f})"
    )
    origin = {"module": module_name(job.module), "job_id": job.id, "reason": reason}
    moved = ctx.registry.facts.split(
        job.module, job.tenant, sorted(missed), job.training, sources or (), origin
    )
    run.progress.setdefault("moved_out", []).append(
        {"module": module_name(moved.module), "job_id": moved.id, "fact_ids": sorted(missed),
         "reason": reason}
    )  # fmt: skip
    return [f for f in facts if f.id not in missed]


def split(ctx: TrainerContext, job: Job, facts: list[Fact], run: TrainingRun) -> list[Fact]:
    """Too much for one module: move half of the facts to a new module (its own job);
    the facts kept are trained again, from scratch."""
    keep, move = facts[: len(facts) // 2], facts[len(facts) // 2 :]
    moved = ctx.registry.facts.split(job.module, job.tenant, [f.id for f in move], job.training)
    run.progress.setdefault("split_into", []).append(module_name(moved.module))  # shown
    return keep
