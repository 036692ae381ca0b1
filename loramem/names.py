"""Names: fresh ids, module ids, and the engine-side and public names of a module version.

Module names are per tenant: tenant A's `notes` and tenant B's `notes` are two modules.
Below the HTTP surface (registry, trainer, router, engines, metrics) a module is known by
its id, `<tenant>~<name>`, unique across tenants; the gateway shows a tenant only its own
names (`module_name`, `public_served_name`), so no answer names another tenant's module.
Neither a tenant (registry/apikeys.py TENANT) nor a module name (server/protocol.py
MODULE_PATTERN) may contain "~" or "@", so an id splits back into tenant and name.
"""

from __future__ import annotations

import re
import uuid

from loramem import keys

_SEP = "~"
# "<module id>@v<N>": module ids never contain "@".
_SERVED = re.compile(r"^(?P<module>[^@]+)@v(?P<version>[0-9]+)$")
# The forms the system names modules with: packed "m-<id>" (registry/facts.py), split
# "<module>-s<6 hex>" and delta "<module>-d<6 hex>" (registry/facts.py) and merged
# "mx-<hash>" (registry/merges.py). A tenant may not make a module of such a name, or it
# could squat one the system makes next.
_RESERVED_MODULE = re.compile(r"^mx?-|-[sd][0-9a-f]{6}$")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def new_job_id(tenant: str) -> str:
    """A job id that starts with its tenant's bucket (loramem/keys.py), so that the job's
    record shares its tenant's hash slot and `GET /jobs/{id}` finds it from the id alone."""
    return keys.bucket(tenant) + uuid.uuid4().hex[:14]


def module_id(tenant: str, name: str) -> str:
    """The id of `tenant`'s module `name`: what everything below the HTTP surface uses."""
    return f"{tenant}{_SEP}{name}"


def delta_id(module: str) -> str:
    """A fresh delta module of `module` (its id): new facts that train alone until
    consolidation folds them into `module`."""
    tenant, _sep, name = module.rpartition(_SEP)
    return module_id(tenant, f"{name[:37]}-d{new_id()[:6]}")


def module_name(module: str) -> str:
    """A module's name in its tenant's namespace, from its id."""
    return module.rpartition(_SEP)[2]


def is_module_of(tenant: str, module: str) -> bool:
    """Whether module id `module` is in `tenant`'s namespace."""
    owner, sep, name = module.rpartition(_SEP)
    return bool(sep) and owner == tenant and bool(name)


def is_reserved_module_name(name: str) -> bool:
    """Whether a module name has one of the forms the system names its own modules with."""
    return _RESERVED_MODULE.search(name) is not None


def served_name(module: str, version: int) -> str:
    """The immutable engine-side name of one module version (`module` is its id)."""
    return f"{module}@v{version}"


def parse_served_name(name: str) -> tuple[str, int] | None:
    """(module, version) of a served name; None for anything else (the base model)."""
    match = _SERVED.match(name)
    return (match["module"], int(match["version"])) if match else None


def public_served_name(name: str) -> str:
    """What the module version's tenant is shown for an engine-side name: "<name>@v<N>"
    (a name that is not a module version, the base model's, is shown as it is)."""
    parsed = parse_served_name(name)
    return served_name(module_name(parsed[0]), parsed[1]) if parsed else name
