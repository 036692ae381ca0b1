"""The publisher: the one way a job's outcome becomes what the gateways serve.

For a new version the order matters: validate, take the next version number, write it
locally, make it servable, then publish (record, switch, announce, finish the job in one
transaction), so that a version is servable before anyone can be routed to it. With the
engines' resolver on (`engine_resolver`) a version is servable once its blobs are in
Redis, which the publish transaction writes: each engine fetches it on its first request
for it, so nothing is pushed. Without it, the version is loaded into every engine first.

A served name must never name other weights than it first did, or an engine that has it
loaded would go on serving the old ones. The served name carries the digest of the
version's checksum (loramem/names.py), so other weights always get another name, even
under a number handed out again. Version numbers come from Redis, which may be restored
from an older snapshot; so that the numbers users see still only grow where anything
remembers them, the number taken is also above every version of the module seen outside
Redis: this host's adapter folders (with a record that outlives their sweeping) and the
engines' loaded adapters. An engine that still answers "already loaded" for the new name
(the same weights under it) makes the publisher take the next number.
"""

from __future__ import annotations

import logging

from loramem.adapter_store import RECIPE_FILE, AdapterRef, checksum, validate_adapter_config
from loramem.engine import EngineClient, max_lora_rank
from loramem.errors import EngineUnavailable, LockLost, NameTaken
from loramem.names import version_of
from loramem.queue import ModuleLock
from loramem.registry.jobs import Job, JobCancelled
from loramem.registry.modules import Fence, Fold, FoldChanged, VersionInfo
from trainer.context import TrainerContext
from trainer.outcomes import Artifact, Covered, JobRefused, Outcome, Retirement

log = logging.getLogger("loramem.trainer")

NAME_TRIES = 3  # numbers to try when engines already hold the new name (a race)


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
        ref = self.lay_out(artifact.module, files)
        info = VersionInfo(
            module=artifact.module,
            version=ref.version,
            tenant=job.tenant,
            fact_ids=artifact.fact_ids,
            recall=artifact.recall,
            checksum=checksum(files),
            recipe=artifact.recipe,
            merged_from=artifact.sources,
        )
        fold = Fold(job.tenant, artifact.folded) if artifact.folded else None
        try:
            registry.modules.publish(info, files, job_id=job.id, fence=fence, fold=fold)
        except (JobCancelled, LockLost, FoldChanged) as exc:  # never published: take back
            if not self.ctx.settings.engine_resolver:  # else no engine could have fetched it
                self.unload_everywhere(ref.name)
            self.ctx.store.remove_local(ref.module, ref.version)
            if isinstance(exc, FoldChanged):  # the deltas serve on; a later one folds them
                raise JobRefused(f"not consolidated: {exc}") from exc
            raise
        log.info("published %s (recall %.3f)", ref.name, artifact.recall)
        return ref

    def lay_out(self, module: str, files: dict[str, bytes]) -> AdapterRef:
        """A new version under a name nobody has seen, written here and (resolver off)
        loaded into the engines."""
        at_least = self.unseen_floor(module)
        for _ in range(NAME_TRIES):
            version = self.ctx.registry.modules.next_version(module, at_least)
            ref = self.ctx.store.write_local(module, version, files)
            if self.ctx.settings.engine_resolver:
                return ref  # engines fetch it on demand; unseen_floor asked what they hold
            try:
                self.load_everywhere(ref)
                return ref
            except NameTaken as exc:
                log.error("%s; taking a higher version number", exc)
                self.ctx.store.remove_local(module, version)
                at_least = version + 1
        raise NameTaken(f"no unused version name for {module} after {NAME_TRIES} tries")

    def unseen_floor(self, module: str) -> int:
        """One above every version of `module` this host wrote or a reachable engine has
        loaded."""
        seen = [self.ctx.store.highest_local(module)]
        for engine in self.engines:
            try:
                names = engine.loaded_models()
            except EngineUnavailable:  # down: it restarts empty, knowing no name
                continue
            seen += [p[1] for n in names if (p := version_of(n)) and p[0] == module]
        return 1 + max(seen)

    def unload_everywhere(self, name: str, engines: list[EngineClient] | None = None) -> None:
        for engine in self.engines if engines is None else engines:
            try:
                engine.unload_adapter(name)
            except EngineUnavailable as exc:  # it cannot serve the name: nobody routes there
                log.warning("could not unload %s: %s", name, exc)

    def load_everywhere(self, ref: AdapterRef) -> None:
        """Load a new version into every reachable engine; one that is down gets it from
        the gateway's reconciler when it is back. No engine at all: the job is retried
        later. An engine that already has the name: taken back from the others (and
        NameTaken)."""
        loaded = []
        for engine in self.engines:
            try:
                engine.load_adapter(ref, fresh=True)
                loaded.append(engine)
            except NameTaken:
                self.unload_everywhere(ref.name, loaded)
                raise
            except EngineUnavailable as exc:
                log.warning("could not load %s: %s", ref.name, exc)
        if not loaded:
            raise EngineUnavailable(f"no engine could load {ref.name}")
