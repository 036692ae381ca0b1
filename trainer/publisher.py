"""The publisher: the one way a job's outcome becomes what the gateways serve.

For a new version the order matters: validate, take the next version number, write it
locally, load it into the engines, then publish (record, switch, announce, finish the job
in one transaction), so that a version is servable before anyone can be routed to it.
"""

from __future__ import annotations

import logging

from loramem.adapter_store import RECIPE_FILE, AdapterRef, checksum, validate_adapter_config
from loramem.engine import EngineClient, max_lora_rank
from loramem.errors import EngineUnavailable, LockLost
from loramem.queue import ModuleLock
from loramem.registry.jobs import Job, JobCancelled
from loramem.registry.modules import Fence, VersionInfo
from trainer.context import TrainerContext
from trainer.outcomes import Artifact, Covered, Outcome, Retirement

log = logging.getLogger("loramem.trainer")


class Publisher:
    def __init__(self, ctx: TrainerContext, engines: list[EngineClient]) -> None:
        self.ctx = ctx
        self.engines = engines
        # One limit for every version: what the engines were started to accept.
        self.max_rank = max_lora_rank(ctx.settings)

    def apply(self, job: Job, outcome: Outcome, lock: ModuleLock | None = None) -> None:
        """Make the outcome served. With the worker's `lock`, the publish or retire
        transaction checks the lock is still the worker's (LockLost if not)."""
        jobs = self.ctx.registry.jobs
        fence = lock.fence if lock is not None else None
        with self.ctx.metrics.phase_seconds.labels("publishing").time():
            match outcome:
                case Artifact():
                    self.publish(job, outcome, fence)
                case Retirement():
                    jobs.skip_to_publishing(job.id, {"phase": "retiring"})
                    self.ctx.registry.modules.retire(
                        job.module, job.tenant, job_id=job.id, fence=fence
                    )
                case Covered(version):
                    jobs.skip_to_publishing(job.id, {"phase": "already published"})
                    jobs.finish(job.id, version)

    def publish(self, job: Job, artifact: Artifact, fence: Fence | None = None) -> AdapterRef:
        files = {**artifact.files, RECIPE_FILE: artifact.recipe.to_json().encode()}
        validate_adapter_config(files, max_rank=self.max_rank)
        registry = self.ctx.registry
        version = registry.modules.next_version(artifact.module)
        ref = self.ctx.store.write_local(artifact.module, version, files)
        self.load_everywhere(ref)
        info = VersionInfo(
            module=artifact.module,
            version=version,
            tenant=job.tenant,
            fact_ids=artifact.fact_ids,
            recall=artifact.recall,
            checksum=checksum(files),
            recipe=artifact.recipe,
            merged_from=artifact.sources,
        )
        try:
            registry.modules.publish(info, files, job_id=job.id, fence=fence)
        except (JobCancelled, LockLost):  # never published: take back what was laid out
            self.unload_everywhere(ref.name)
            self.ctx.store.remove_local(ref.module, ref.version)
            raise
        log.info("published %s (recall %.3f)", ref.name, artifact.recall)
        return ref

    def unload_everywhere(self, name: str) -> None:
        for engine in self.engines:
            try:
                engine.unload_adapter(name)
            except EngineUnavailable as exc:  # it cannot serve the name: nobody routes there
                log.warning("could not unload %s: %s", name, exc)

    def load_everywhere(self, ref: AdapterRef) -> None:
        """Load into every reachable engine; one that is down gets it from the gateway's
        reconciler when it is back. No engine at all: the job is retried later."""
        loaded = 0
        for engine in self.engines:
            try:
                engine.load_adapter(ref)
                loaded += 1
            except EngineUnavailable as exc:
                log.warning("could not load %s: %s", ref.name, exc)
        if not loaded:
            raise EngineUnavailable(f"no engine could load {ref.name}")
