"""Key management, for admin keys: make a key for any tenant, list keys, revoke one."""

from __future__ import annotations

from fastapi import APIRouter, status

from server.deps import AdminDep, RegistryDep
from server.protocol import KeyOut, PostKeyRequest, PostKeyResponse

api = APIRouter(prefix="/admin", tags=["admin"])


@api.post("/keys", status_code=status.HTTP_201_CREATED, response_model=PostKeyResponse)
def create_key(body: PostKeyRequest, _caller: AdminDep, registry: RegistryDep) -> PostKeyResponse:
    """The reply is the only place the key ever appears."""
    key, record = registry.api_keys.create(body.tenant, body.role, body.name)
    return PostKeyResponse(key=key, **record.public())


@api.get("/keys", response_model=list[KeyOut])
def list_keys(_caller: AdminDep, registry: RegistryDep) -> list[KeyOut]:
    return [KeyOut(**record.public()) for record in registry.api_keys.all()]


@api.delete("/keys/{key_id}", response_model=KeyOut)
def revoke_key(key_id: str, _caller: AdminDep, registry: RegistryDep) -> KeyOut:
    """Takes effect on the key's next request, at every gateway."""
    return KeyOut(**registry.api_keys.revoke(key_id).public())
