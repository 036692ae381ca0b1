"""Job handlers: each kind of job turns into an outcome for the publisher.

train    an "add", "edit" or "delete" job: train the module on all its facts, gate it
retire   no facts are left: the module stops serving
covered  an earlier job already trained every fact this one sees
split    below the gate: half the facts move to a new module with a job of its own
consolidate  retrain a module with its deltas' facts (warm); the publish retires the deltas
merge    combine published modules (trainer/merge.py)
"""

from __future__ import annotations

import time

from loramem.names import module_name
from loramem.registry.facts import Fact
from loramem.registry.jobs import Job, JobStatus
from trainer.context import TrainerContext
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
    try:
        measured = run.train_until_gate(facts, warm=True)
        if measured < knobs.recall_gate:
            raise GateFailed(f"recall {measured:.3f} is below the gate {knobs.recall_gate:.2f}")
        run.progress.update(phase="publishing", train_seconds=run.seconds())
        ctx.registry.jobs.transition(job.id, JobStatus.PUBLISHING, progress=run.progress)
        folded = {d: {f.id: f.text for f in held} for d, held in deltas.items()}
        ids = [f.id for f in facts]
        return Artifact(
            job.module, run.servable_files(), run.recipe(), ids, measured, folded=folded
        )
    finally:
        run.close()


def train(ctx: TrainerContext, job: Job) -> Outcome:
    if job.kind == "add":
        # Batches posted right behind this one join it rather than queue a retrain of
        # the module for just after; their own jobs then find them already covered.
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
            measured = run.train_until_gate(facts, warm)
            if measured >= knobs.recall_gate:
                break
            if len(facts) < 2 or not ctx.settings.gate_split:
                raise GateFailed(
                    f"recall {measured:.3f} is below the gate {knobs.recall_gate:.2f} "
                    f"after {run.done_steps} steps (loss {run.last_loss:.4f})"
                )
            facts, warm = split(ctx, job, facts, run), False
        run.progress.update(phase="publishing", train_seconds=run.seconds())
        ctx.registry.jobs.transition(job.id, JobStatus.PUBLISHING, progress=run.progress)
        files = run.servable_files()
        return Artifact(job.module, files, run.recipe(), [f.id for f in facts], measured)
    finally:
        run.close()


def covering_version(ctx: TrainerContext, job: Job, facts: list[Fact]) -> int | None:
    """The active version, when it was trained on every fact this "add" job sees."""
    modules = ctx.registry.modules
    active = modules.get(job.module).active_version
    if job.kind != "add" or not active or job.training:
        return None
    trained = set(modules.version(job.module, active).fact_ids)
    return active if {f.id for f in facts} <= trained else None


def split(ctx: TrainerContext, job: Job, facts: list[Fact], run: TrainingRun) -> list[Fact]:
    """Too much for one module: move half of the facts to a new module (its own job);
    the facts kept are trained again, from scratch."""
    keep, move = facts[: len(facts) // 2], facts[len(facts) // 2 :]
    moved = ctx.registry.facts.split(job.module, job.tenant, [f.id for f in move], job.training)
    run.progress.setdefault("split_into", []).append(module_name(moved.module))  # shown
    return keep
