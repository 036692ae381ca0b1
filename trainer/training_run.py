"""One job's training: rounds of training and the recall gate, with progress."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loramem.adapter_store import read_files
from loramem.knobs import TrainingKnobs, VersionRecipe
from loramem.registry.facts import Fact
from loramem.registry.jobs import Job, JobCancelled, JobStatus
from trainer import train as training
from trainer import variants
from trainer.context import TrainerContext
from trainer.gate import GateResult, Verdict, judge
from trainer.outcomes import JobYielded

# How often a run that may yield looks for a user's job waiting behind it: a few Redis
# reads, against steps of about a second on CPU.
YIELD_CHECK_S = 2.0


class TrainingRun:
    def __init__(self, ctx: TrainerContext, job: Job, knobs: TrainingKnobs) -> None:
        self.ctx, self.job, self.knobs = ctx, job, knobs
        self.jobs = ctx.registry.jobs
        self.done_steps = 0  # across rounds and splits, so progress only moves forward
        self.last_loss = float("inf")
        self.started = time.perf_counter()
        # Set for background work: True when it should stop for a job waiting behind it.
        self.should_yield: Callable[[], bool] | None = None
        self._next_yield_check_s = 0.0
        self._step_started_s = time.monotonic()
        self.peft_model: Any = None
        # PiSSA's initial adapter, which publishing converts against (trainer/variants.py).
        self.initial = tempfile.TemporaryDirectory(prefix="loramem-init-")
        # A gate of 0 (experiments) publishes what one round reaches: no extra rounds.
        extra = ctx.settings.gate_extra_rounds if knobs.recall_gate > 0 else 0
        self.rounds = 1 + extra
        self.progress: dict[str, Any] = {
            # Where a job's facts came from, when another job moved them here: shown.
            **{k: job.progress[k] for k in ("moved_from",) if k in job.progress},
            "phase": "training",
            "step": 0,
            "total_steps": knobs.max_steps * (1 + extra),
        }

    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)

    def pause_for_answers(self, limit_s: float | None = None) -> None:
        """Let an engine on this host finish its answers first (trainer/answer_pause.py)."""
        if self.ctx.answer_pause is not None:
            waited = self.ctx.answer_pause.wait(limit_s)
            if waited:
                self.ctx.metrics.answer_pause_seconds.inc(waited)

    def on_step(self, step: int, _total: int, loss: float) -> None:
        step_s = time.monotonic() - self._step_started_s
        self.ctx.metrics.steps.inc()
        self.progress.update(step=self.done_steps + step, loss=round(loss, 5))
        if not self.jobs.set_progress(self.job.id, self.progress):  # cancelled: stop here
            raise JobCancelled(self.job.id, "cancelled", "training")
        if self.should_yield is not None and time.monotonic() >= self._next_yield_check_s:
            self._next_yield_check_s = time.monotonic() + YIELD_CHECK_S
            if self.should_yield():
                raise JobYielded(f"{self.job.id} yielded at step {self.progress['step']}")
        self.pause_for_answers(limit_s=step_s)  # at most as long as the step: half the time
        self._step_started_s = time.monotonic()

    def train_until_gate(self, facts: list[Fact], warm: bool) -> GateResult:
        """Train on `facts` in rounds until the gate's verdict is other than "train on"
        (trainer/gate.py); return the last round's recall check."""
        knobs, metrics = self.knobs, self.ctx.metrics
        qas = [self.ctx.generator.fact_data(f.id, f.text, knobs.questions_per_fact) for f in facts]
        self.progress.update(facts=len(facts), phase="training")
        self.jobs.transition(self.job.id, JobStatus.TRAINING, progress=self.progress)
        # A user's question often lands right after the write that started this job.
        self.pause_for_answers()
        base, tokenizer = training.load_base(self.ctx.model_path)
        self.peft_model = training.make_peft_model(base, knobs)
        if knobs.variant == "pissa":
            variants.save_initial(self.peft_model, Path(self.initial.name))
        if warm and knobs.variant == "lora":  # other variants publish a different shape
            self.progress["warm_start"] = self._warm_start()
        examples = training.build_examples(tokenizer, qas, knobs.data_format)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        first = training.first_trained_layer(base, knobs)
        prefix = training.FrozenPrefix(self.peft_model, examples, first, pad_id)
        round_knobs = knobs
        for round_number in range(self.rounds):
            if round_number:  # below the gate: train on, towards a lower loss
                self.jobs.transition(self.job.id, JobStatus.TRAINING, progress=self.progress)
                lower = round_knobs.target_loss / 4
                round_knobs = round_knobs.model_copy(update={"target_loss": lower})
            self._step_started_s = time.monotonic()
            with metrics.phase_seconds.labels("training").time():
                result = training.train(self.peft_model, prefix, round_knobs, self.on_step)
            self.done_steps += result.steps
            self.last_loss = result.loss
            self.progress.update(phase="validating", step=self.done_steps)
            self.jobs.transition(self.job.id, JobStatus.VALIDATING, progress=self.progress)
            with metrics.phase_seconds.labels("validating").time():
                measured, answers = training.recall(self.peft_model, tokenizer, qas)
            missed = tuple(
                qa.fact_id
                for qa, answer in zip(qas, answers, strict=True)
                if not training.is_hit(qa, answer)
            )
            # A few facts missed move out rather than hold every other fact for more rounds;
            # merely above the gate with more missed, the extra rounds are cheap next to
            # serving a module that misses facts, so use them.
            verdict = judge(
                len(missed),
                len(qas),
                self.rounds - round_number - 1,
                knobs.recall_gate,
                self.ctx.settings.gate_move_out_fraction,
            )
            self.progress.update(recall=round(measured, 4))
            self.jobs.set_progress(self.job.id, self.progress)
            if verdict is not Verdict.TRAIN_ON:
                return GateResult(measured, missed, verdict)
        raise AssertionError("the last round's verdict is never train_on")  # judge(): 0 left

    def _warm_start(self) -> int | None:
        """Start an "add" job from the module's active version when it was trained with
        the same knobs on the same base model (so its weights have the same shape)."""
        modules = self.ctx.registry.modules
        active = modules.get(self.job.module).active_version
        if not active:
            return None
        if modules.version(self.job.module, active).recipe != self.recipe():
            return None
        files = modules.version_files(self.job.module, active)
        training.warm_start(self.peft_model, files["adapter_model.safetensors"])
        return active

    def recipe(self) -> VersionRecipe:
        knobs = self.knobs
        return VersionRecipe(
            made_by="trained" if knobs.variant == "lora" else "converted",
            base_model=self.ctx.settings.base_model,
            rank=knobs.served_rank,
            training=knobs,
        )

    def servable_files(self) -> dict[str, bytes]:
        """The trained adapter as the plain LoRA files vLLM loads."""
        with tempfile.TemporaryDirectory() as scratch:
            variants.save_servable(
                self.peft_model,
                Path(scratch),
                self.knobs,
                self.ctx.model_path,
                Path(self.initial.name),
            )
            return read_files(Path(scratch))

    def close(self) -> None:
        self.initial.cleanup()
