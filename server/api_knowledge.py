"""Knowledge API: facts in, jobs to follow, modules to list. Sync handlers run in a pool;
embedding and storing facts runs in the ingest pool (server/limits.py), apart from it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from loramem.documents import split_document
from loramem.engine import max_lora_rank, unserved_lora_shape
from loramem.errors import InvalidRequest, NotFound
from loramem.knobs import PartialTrainingKnobs
from loramem.names import module_id, module_name, public_served_name
from loramem.registry import Registry
from loramem.registry.jobs import JobStatus
from loramem.registry.limits import TenantQuotas
from loramem.settings import Settings
from router.embedder import to_bytes
from server.deps import (
    FollowerDep,
    IngestDep,
    ReaderDep,
    RegistryDep,
    SettingsDep,
    WriterDep,
)
from server.limits import IngestPool
from server.protocol import (
    ErrorResponse,
    FactIn,
    FactOut,
    JobOut,
    ModuleOut,
    PostDocumentRequest,
    PostFactsRequest,
    PostFactsResponse,
    PutFactRequest,
)

api = APIRouter(tags=["knowledge"])


@api.post("/facts", status_code=status.HTTP_202_ACCEPTED, response_model=PostFactsResponse)
async def post_facts(
    body: PostFactsRequest,
    caller: WriterDep,
    settings: SettingsDep,
    registry: RegistryDep,
    ingest: IngestDep,
) -> PostFactsResponse:
    facts = body.normalized()
    if not facts:
        raise InvalidRequest("facts must hold at least one fact", param="facts")
    if len(facts) > settings.max_facts_per_request:
        raise InvalidRequest(
            f"at most {settings.max_facts_per_request} facts per request", param="facts"
        )
    for position, fact in enumerate(facts):
        _check_text(fact.text, settings.max_fact_chars, f"facts.{position}")
    return await ingest.run(
        _store, facts, body.module, body.training, caller.tenant, settings, registry, ingest
    )


@api.post("/documents", status_code=status.HTTP_202_ACCEPTED, response_model=PostFactsResponse)
async def post_document(
    body: PostDocumentRequest,
    caller: WriterDep,
    settings: SettingsDep,
    registry: RegistryDep,
    ingest: IngestDep,
) -> PostFactsResponse:
    """A free-text document, stored as one fact per sentence."""
    _check_text(body.text, settings.max_document_chars, "text")
    sentences = split_document(body.text, settings.max_fact_chars)
    if len(sentences) > settings.max_facts_per_request:
        raise InvalidRequest(
            f"the document has {len(sentences)} sentences; at most "
            f"{settings.max_facts_per_request} per request",
            param="text",
        )
    facts = [FactIn(text=s) for s in sentences]
    return await ingest.run(
        _store, facts, body.module, body.training, caller.tenant, settings, registry, ingest
    )


def _store(
    facts: list[FactIn],
    module: str | None,
    training: PartialTrainingKnobs | None,
    tenant: str,
    settings: Settings,
    registry: Registry,
    ingest: IngestPool,
) -> PostFactsResponse:
    """`module`: a name in the tenant's namespace (None packs the facts)."""
    overrides = training.model_dump(exclude_none=True) if training else {}
    _check_servable(overrides, settings)
    with ingest.timed("embed"):
        vectors = ingest.embedder.embed([f.text for f in facts])
    with ingest.timed("store"):
        job, fact_ids = registry.facts.add(
            tenant,
            [f.text for f in facts],
            [f.id for f in facts],
            [to_bytes(v) for v in vectors],
            module=module_id(tenant, module) if module else None,
            training=overrides,
            quotas=TenantQuotas(
                settings.quota_facts,
                settings.quota_modules,
                settings.quota_open_jobs,
                settings.quota_adapter_bytes,
            ),
        )
    return _accepted(job.id, fact_ids, job.module)


def _accepted(job_id: str, fact_ids: list[str], module: str) -> PostFactsResponse:
    return PostFactsResponse(job_id=job_id, fact_ids=fact_ids, module=module_name(module))


def _check_servable(overrides: dict[str, Any], settings: Settings) -> None:
    """Refuse a module the engines could not load or serve whole: vLLM caps ranks and
    (LORAMEM_ENGINE_LORA_MODULES) the layers carrying LoRA at start-up."""
    if not overrides:
        return  # the settings' own knobs: the engines were started for them
    # Tighter than TrainingKnobs' own bounds, which the settings share: a request may not
    # ask for a loss it never reaches (0: every job runs to max_steps) or a longer job.
    if overrides.get("target_loss", settings.min_target_loss) < settings.min_target_loss:
        raise InvalidRequest(
            f"training.target_loss must be at least {settings.min_target_loss} "
            "(LORAMEM_MIN_TARGET_LOSS)",
            param="training.target_loss",
        )
    if overrides.get("max_steps", 0) > settings.max_job_steps:
        raise InvalidRequest(
            f"training.max_steps must be at most {settings.max_job_steps} (LORAMEM_MAX_JOB_STEPS)",
            param="training.max_steps",
        )
    knobs = settings.training.with_overrides(overrides)
    if why := unserved_lora_shape(settings, knobs.targets, knobs.top_layers):
        raise InvalidRequest(f"{why} (LORAMEM_ENGINE_LORA_MODULES)", param="training")
    rank, variant, served, limit = (
        knobs.rank,
        knobs.variant,
        knobs.served_rank,
        max_lora_rank(settings),
    )
    if served > limit:
        raise InvalidRequest(
            f"a {variant} module of rank {rank} is served at rank {served}, over the "
            f"engines' limit of {limit} (LORAMEM_ENGINE_MAX_LORA_RANK)",
            param="training.rank",
        )


def _check_text(text: str, max_chars: int, param: str) -> None:
    if not text.strip():
        raise InvalidRequest(f"{param} is empty", param=param)
    if len(text) > max_chars:
        raise InvalidRequest(f"{param} is over {max_chars} characters", param=param)


@api.put("/facts/{fact_id}", status_code=status.HTTP_202_ACCEPTED, response_model=PostFactsResponse)
async def put_fact(
    fact_id: str,
    body: PutFactRequest,
    caller: WriterDep,
    settings: SettingsDep,
    registry: RegistryDep,
    ingest: IngestDep,
) -> PostFactsResponse:
    _check_text(body.text, settings.max_fact_chars, "text")

    def replace() -> PostFactsResponse:
        with ingest.timed("embed"):
            vector = ingest.embedder.embed([body.text])[0]
        with ingest.timed("store"):
            job = registry.facts.replace(caller.tenant, fact_id, body.text, to_bytes(vector))
        return _accepted(job.id, [fact_id], job.module)

    return await ingest.run(replace)


@api.delete(
    "/facts/{fact_id}", status_code=status.HTTP_202_ACCEPTED, response_model=PostFactsResponse
)
def delete_fact(fact_id: str, caller: WriterDep, registry: RegistryDep) -> PostFactsResponse:
    job = registry.facts.delete(caller.tenant, fact_id)
    return _accepted(job.id, [fact_id], job.module)


@api.get("/facts", response_model=list[FactOut])
def list_facts(caller: ReaderDep, registry: RegistryDep) -> list[FactOut]:
    return [
        FactOut(id=f.id, text=f.text, module=module_name(f.module))
        for f in registry.facts.of_tenant(caller.tenant)
    ]


@api.get("/jobs", response_model=list[JobOut])
def list_jobs(caller: ReaderDep, registry: RegistryDep) -> list[JobOut]:
    """The caller's jobs that are still queued or running, oldest first."""
    return [JobOut(**job.public()) for job in registry.jobs.open_of_tenant(caller.tenant)]


@api.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, caller: ReaderDep, registry: RegistryDep, follower: FollowerDep) -> JobOut:
    """A published job is told once this gateway routes with its version (a few ms after
    the registry has it), so a question asked next is answered by it."""
    job = registry.jobs.get(job_id)
    if job.tenant != caller.tenant:
        raise NotFound(f"job not found: {job_id}")
    if job.status is JobStatus.PUBLISHED and job.version:
        follower.wait_routed(job.module, job.version)
    return JobOut(**job.public())


@api.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        404: {"model": ErrorResponse, "description": "no such job of this tenant"},
        409: {"model": ErrorResponse, "description": "finished, or an edit or delete job"},
    },
)
def cancel_job(job_id: str, caller: WriterDep, registry: RegistryDep) -> JobOut:
    """Cancel an unfinished add or merge job: a queued one never runs, a running one stops
    at its next step and publishes nothing. Its facts stay stored; the module's next job
    learns them (`progress.unlearned_fact_ids` lists those no version knows yet)."""
    return JobOut(**registry.jobs.cancel(job_id, caller.tenant).public())


@api.get("/modules", response_model=list[ModuleOut])
def list_modules(caller: ReaderDep, registry: RegistryDep) -> list[ModuleOut]:
    return [
        ModuleOut(
            name=module_name(m.name),
            active_version=m.active_version or None,
            served_name=public_served_name(m.active_name) if m.active_name else None,
            fact_count=m.fact_count,
            recall=_recall(registry, m.name, m.active_version),
        )
        for m in registry.modules.of_tenant(caller.tenant)
    ]


def _recall(registry: Registry, module: str, version: int) -> float | None:
    if not version:
        return None
    try:
        return registry.modules.version(module, version).recall
    except NotFound:  # replaced between the two reads; the next listing has it
        return None
