"""Real PEFT training on the real base model (a few facts, a minute on 2 cores)."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest

from loramem.base_model import prepare_base_model
from loramem.datasets import phonebook
from loramem.engine import EngineClient
from loramem.names import module_id, module_name
from loramem.registry import Registry
from loramem.registry.jobs import JobStatus
from loramem.settings import Settings
from tests.recipes import NO_FILES, TRAINED
from trainer import train as training
from trainer.synth import fact_qa
from trainer.worker import Worker


@pytest.fixture(scope="module")
def model_path() -> Path:
    return prepare_base_model(Settings())  # the shared cache: converted once per machine


def test_a_trained_adapter_recalls_its_facts(model_path: Path, tmp_path: Path) -> None:
    people = phonebook(Settings().data_dir, 5, offset=200)
    qas = [fact_qa(str(i), p.fact, 2) for i, p in enumerate(people)]
    config = Settings().training.with_overrides({})
    base, tokenizer = training.load_base(model_path)
    before, _ = training.recall(base, tokenizer, qas)
    peft_model = training.make_peft_model(base, config)
    examples = training.build_examples(tokenizer, qas)
    prefix = training.FrozenPrefix(
        peft_model, examples, training.first_trained_layer(base, config), tokenizer.pad_token_id
    )
    result = training.train(peft_model, prefix, config)
    after, answers = training.recall(peft_model, tokenizer, qas)
    # Training stopped before its step cap, so every question was greedy-exact under
    # teacher forcing: generation must then reproduce every answer.
    assert result.steps < config.max_steps
    assert prefix.weak_rows(list(range(len(examples))), 8)[0] == []
    assert before <= 0.2 and after == 1.0, answers

    peft_model.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["r"] == config.rank
    assert min(saved["layers_to_transform"]) == 30 - config.top_layers


def test_a_drill_pass_repeats_the_weak_rows_and_replays_others() -> None:
    rows = training._drill([3, 7], list(range(20)), 8, random.Random(0))
    assert len(rows) == 8 and len(set(rows)) == 8  # one whole batch, no row twice
    assert {3, 7} <= set(rows)
    assert sorted(training._drill([1, 2], [0, 1, 2], 8, random.Random(0))) == [0, 1, 2]  # all


ONE_STEP_NO_GATE = {"recall_gate": 0.0, "max_steps": 1}
STUBBORN_ROUND_STEPS = 30


def _run_one_job(settings: Settings, registry: Registry) -> Worker:
    """A worker on the real base model takes one job (no engine listens)."""
    worker = Worker(settings, registry, [EngineClient(settings.engine_url)])
    assert worker.run_once()
    return worker


def test_the_gate_fails_an_undertrained_module(settings: Settings, registry: Registry) -> None:
    settings = settings.model_copy(
        update={
            "training": Settings().training.model_copy(update={"max_steps": 1}),
            "gate_extra_rounds": 0,
            "gate_split": False,
            "cache_dir": Settings().cache_dir,
        }
    )
    people = phonebook(settings.data_dir, 3, offset=300)
    job, _ids = registry.facts.add("t", [p.fact for p in people], [None] * 3, [b""] * 3)
    worker = _run_one_job(settings, registry)
    failed = registry.jobs.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and "recall" in failed.error and "gate" in failed.error
    assert failed.progress["recall"] < settings.training.recall_gate
    # Every fact missed: none can move out (nothing would be left), and the error names them.
    assert sorted(failed.progress["missed_fact_ids"]) == sorted(_ids)
    assert f"not recalled: {sorted(_ids)[0]}" in failed.error
    assert registry.modules.get(job.module).active_version == 0  # nothing was published
    assert worker.queue.pending_count() == 0  # a final failure is acknowledged


def test_below_the_gate_a_module_is_split(settings: Settings, registry: Registry) -> None:
    settings = settings.model_copy(
        update={
            "training": Settings().training.model_copy(update={"max_steps": 1}),
            "gate_extra_rounds": 0,
            "cache_dir": Settings().cache_dir,
        }
    )
    people = phonebook(settings.data_dir, 2, offset=310)
    job, ids = registry.facts.add("t", [p.fact for p in people], [None] * 2, [b""] * 2)
    worker = _run_one_job(settings, registry)
    failed = registry.jobs.get(job.id)  # one step cannot store even one fact: it still fails
    assert failed.status is JobStatus.FAILED
    [moved_name] = failed.progress["split_into"]  # as the tenant knows it
    moved_to = module_id("t", moved_name)
    assert moved_name.startswith(module_name(job.module)[:37] + "-s")
    assert {f.id for f in registry.facts.of_module(job.module, "t")} | {
        f.id for f in registry.facts.of_module(moved_to, "t")
    } == set(ids)
    assert registry.modules.get(moved_to).fact_count == 1
    follow_up = worker.queue.claim("check", block_ms=10)  # the moved half has its own job
    assert follow_up is not None and registry.jobs.get(follow_up.job_id).module == moved_to


def test_a_job_whose_facts_are_already_published_is_not_retrained(
    settings: Settings, registry: Registry
) -> None:
    from loramem.registry.modules import VersionInfo

    settings = settings.model_copy(update={"cache_dir": Settings().cache_dir})
    job, ids = registry.facts.add("t", ["The colour of X is red."], [None], [b""])
    registry.modules.publish(VersionInfo(job.module, 1, "t", ids, 1.0, NO_FILES, TRAINED), {})
    _run_one_job(settings, registry)
    done = registry.jobs.get(job.id)
    assert (done.status, done.version) == (JobStatus.PUBLISHED, 1)
    assert done.progress == {"phase": "already published"}


def test_a_per_job_gate_of_zero_publishes_after_one_round(
    settings: Settings, registry: Registry
) -> None:
    settings = settings.model_copy(update={"cache_dir": Settings().cache_dir})
    people = phonebook(settings.data_dir, 2, offset=320)
    job, _ids = registry.facts.add(
        "t", [p.fact for p in people], [None] * 2, [b""] * 2, training=ONE_STEP_NO_GATE
    )
    _run_one_job(settings, registry)
    after = registry.jobs.get(job.id)
    # Past the gate despite one step, and published: no engine needs to listen, since
    # engines fetch a version from Redis themselves (loramem/vllm_resolver.py).
    assert after.status is JobStatus.PUBLISHED
    assert after.progress["step"] == 1  # one round: no extra rounds towards full recall
    assert registry.modules.get(job.module).fact_count == 2  # not split


def test_batches_posted_back_to_back_train_in_one_job(
    settings: Settings, registry: Registry
) -> None:
    settings = settings.model_copy(update={"cache_dir": Settings().cache_dir})
    people = phonebook(settings.data_dir, 4, offset=330)
    first, _ = registry.facts.add(
        "t", [p.fact for p in people[:2]], [None] * 2, [b""] * 2, training=ONE_STEP_NO_GATE
    )
    registry.facts.add(
        "t", [p.fact for p in people[2:]], [None] * 2, [b""] * 2, module=first.module,
        training=ONE_STEP_NO_GATE,
    )  # fmt: skip
    _run_one_job(settings, registry)
    assert registry.jobs.get(first.id).progress["facts"] == 4  # the second batch joined it


def test_a_job_cancelled_while_it_trains_stops_at_the_next_step(
    settings: Settings, registry: Registry
) -> None:
    settings = settings.model_copy(update={"cache_dir": Settings().cache_dir})
    people = phonebook(settings.data_dir, 2, offset=340)
    long_run = {"recall_gate": 0.0, "max_steps": 200, "target_loss": 0.0}
    job, ids = registry.facts.add(
        "t", [p.fact for p in people], [None] * 2, [b""] * 2, training=long_run
    )

    def cancel_after_the_first_step() -> None:
        while registry.jobs.get(job.id).progress.get("step", 0) < 1:
            time.sleep(0.05)
        registry.jobs.cancel(job.id, "t")  # what DELETE /jobs/{id} does

    canceller = threading.Thread(target=cancel_after_the_first_step, daemon=True)
    canceller.start()
    _run_one_job(settings, registry)
    canceller.join(timeout=5)
    done = registry.jobs.get(job.id)
    assert done.status is JobStatus.CANCELLED
    assert done.progress["step"] < 200  # stopped, not trained to the end
    assert registry.modules.get(job.module).active_version == 0
    assert sorted(done.progress["unlearned_fact_ids"]) == sorted(ids)  # stored, reported
    assert {f.id for f in registry.facts.of_module(job.module, "t")} == set(ids)


def test_a_fact_that_does_not_stick_moves_out_and_the_others_publish_without_it(
    settings: Settings, registry: Registry
) -> None:
    """The per-fact gate (trainer/gate.py) through the real path. A batch holds a second
    number for one person: one module cannot answer both (a long random code was learnt
    within the round, so it could not force a miss), so one of the pair misses. The round
    publishes the other facts at once (no extra rounds over them) and moves the missed one
    to a module of its own, whose job trains it alone with the default budget."""
    short_round = Settings().training.model_copy(update={"max_steps": STUBBORN_ROUND_STEPS})
    short = settings.model_copy(update={"training": short_round, "cache_dir": Settings().cache_dir})
    people = phonebook(settings.data_dir, 4, offset=350)
    second_number = f"The phone number of {people[0].name} is 555-014-2387."
    texts = [p.fact for p in people] + [second_number]
    job, ids = registry.facts.add("t", texts, [None] * 5, [b""] * 5)
    worker = _run_one_job(short, registry)

    done = registry.jobs.get(job.id)
    assert done.status is JobStatus.PUBLISHED, done.error
    assert done.progress["step"] <= STUBBORN_ROUND_STEPS  # one round: nothing drilled after
    [moved] = done.progress["moved_out"]
    [missed] = moved["fact_ids"]
    assert missed in (ids[0], ids[-1]) and "not recalled" in moved["reason"]
    version = registry.modules.version(job.module, done.version or 0)
    assert sorted(version.fact_ids) == sorted(set(ids) - {missed}) and version.recall == 1.0
    own = registry.jobs.get(moved["job_id"])
    assert own.status is JobStatus.QUEUED and own.progress["moved_from"]["job_id"] == job.id
    assert registry.facts.get("t", missed).module == own.module
    assert worker.queue.pending_count() == 0  # the first job is acknowledged

    defaults = settings.model_copy(update={"cache_dir": Settings().cache_dir})
    _run_one_job(defaults, registry)  # the missed fact's own job: alone, from scratch
    alone = registry.jobs.get(own.id)
    assert alone.status is JobStatus.PUBLISHED, alone.error
    assert alone.progress["moved_from"]["module"] == module_name(job.module)
    assert registry.modules.version(own.module, alone.version or 0).fact_ids == [missed]
