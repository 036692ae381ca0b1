"""Knowledge API: facts in, jobs to follow, modules to list. Sync handlers run in a pool."""

from __future__ import annotations

from fastapi import APIRouter, status

from loramem.errors import InvalidRequest, NotFound
from router.embedder import to_bytes
from server.deps import RegistryDep, RouterDep, SettingsDep, TenantDep
from server.protocol import FactOut, JobOut, ModuleOut, PostFactsRequest, PostFactsResponse

api = APIRouter(tags=["knowledge"])


@api.post("/facts", status_code=status.HTTP_202_ACCEPTED, response_model=PostFactsResponse)
def post_facts(
    body: PostFactsRequest,
    tenant: TenantDep,
    settings: SettingsDep,
    registry: RegistryDep,
    router: RouterDep,
) -> PostFactsResponse:
    facts = body.normalized()
    if not facts:
        raise InvalidRequest("facts must hold at least one fact", param="facts")
    if len(facts) > settings.max_facts_per_request:
        raise InvalidRequest(
            f"at most {settings.max_facts_per_request} facts per request", param="facts"
        )
    for position, fact in enumerate(facts):
        if not fact.text.strip():
            raise InvalidRequest(f"fact {position} is empty", param=f"facts.{position}")
        if len(fact.text) > settings.max_fact_chars:
            raise InvalidRequest(
                f"fact {position} is over {settings.max_fact_chars} characters",
                param=f"facts.{position}",
            )
    vectors = router.embed([f.text for f in facts])
    job, fact_ids = registry.add_facts(
        tenant,
        [f.text for f in facts],
        [f.id for f in facts],
        [to_bytes(v) for v in vectors],
        module=body.module,
    )
    return PostFactsResponse(job_id=job.id, fact_ids=fact_ids, module=job.module)


@api.get("/facts", response_model=list[FactOut])
def list_facts(tenant: TenantDep, registry: RegistryDep) -> list[FactOut]:
    return [FactOut(id=f.id, text=f.text, module=f.module) for f in registry.list_facts(tenant)]


@api.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, tenant: TenantDep, registry: RegistryDep) -> JobOut:
    job = registry.get_job(job_id)
    if job.tenant != tenant:
        raise NotFound(f"job not found: {job_id}")
    return JobOut(**job.public())


@api.get("/modules", response_model=list[ModuleOut])
def list_modules(tenant: TenantDep, registry: RegistryDep) -> list[ModuleOut]:
    return [
        ModuleOut(
            name=m.name,
            active_version=m.active_version or None,
            served_name=m.active_name,
            fact_count=m.fact_count,
        )
        for m in registry.list_modules(tenant)
    ]
