"""Merged modules: build one from several modules of the caller's tenant, list them."""

from __future__ import annotations

from fastapi import APIRouter, status

from loramem.engine import max_lora_rank
from loramem.errors import InvalidRequest
from loramem.names import module_id, module_name, version_name
from loramem.registry.merges import merged_rank
from server.deps import ReaderDep, RegistryDep, SettingsDep, WriterDep
from server.protocol import MergeOut, PostMergeRequest, PostMergeResponse

api = APIRouter(tags=["merges"])


@api.post("/merges", status_code=status.HTTP_202_ACCEPTED, response_model=PostMergeResponse)
def post_merge(
    body: PostMergeRequest, caller: WriterDep, settings: SettingsDep, registry: RegistryDep
) -> PostMergeResponse:
    """Queue the build (once per set of source versions); `module` serves it when published."""
    if len(set(body.modules)) != len(body.modules):
        raise InvalidRequest("modules must be distinct", param="modules")
    if body.weights is not None and len(body.weights) != len(body.modules):
        raise InvalidRequest("weights must hold one weight per module", param="weights")
    combination = body.combination or settings.merge_combination
    sources = [module_id(caller.tenant, name) for name in body.modules]  # its own namespace
    # Everything is checked before anything is written: unknown modules 404.
    versions = registry.merges.source_versions(caller.tenant, sources)
    ranks = [registry.modules.version(m, v).recipe.rank for m, v in versions.items()]
    merged_rank(ranks, combination, max_lora_rank(settings))  # refuses a cat that won't fit
    job, _queued = registry.merges.request(caller.tenant, sources, combination, body.weights)
    return PostMergeResponse(job_id=job.id, module=module_name(job.module))


@api.get("/merges", response_model=list[MergeOut])
def list_merges(caller: ReaderDep, registry: RegistryDep) -> list[MergeOut]:
    out = []
    for spec in registry.merges.of_tenant(caller.tenant):
        active, name = spec.active_version, module_name(spec.name)
        built_from = registry.merges.built_from(spec)
        out.append(
            MergeOut(
                name=name,
                sources=[module_name(s) for s in spec.sources],
                combination=spec.combination,
                weights=spec.weights,
                active_version=active or None,
                served_name=version_name(name, active) if active else None,
                built_from={module_name(m): v for m, v in built_from.items()},
                current=registry.merges.is_current(spec),
            )
        )
    return out
