"""Names: fresh ids, module ids, and the engine-side and public names of a module version.

A module version has two names. Its version name, `<module>@v<N>`, is what the registry
records and (with the module's name for its id) what its tenant sees and sends. Its
served name, the one engines know, also carries its adapter's checksum:
`<module id>@v<N>.<12 hex of the sha256>`. Version numbers come from Redis, which may be
restored from an older snapshot and hand a number out again; other weights then still get
another served name, so an engine that kept the old weights loaded never serves them
under a name routed to the new ones (docs/ARCHITECTURE.md, "Version names are never
reused"). Everything that builds or parses names does it here.

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
from typing import NamedTuple

from loramem import keys

_SEP = "~"
# Hex digits of the checksum in a served name: 48 bits, so two versions given one number
# by a restored Redis share a served name only by a 1 in 2^48 chance.
DIGEST_HEX = 12
_HEX = re.compile(rf"^[0-9a-f]{{{DIGEST_HEX},}}$")
# "<module id>@v<N>" and "<module id>@v<N>.<digest>": module ids never contain "@".
_VERSION = re.compile(r"^(?P<module>[^@]+)@v(?P<version>[0-9]+)$")
_SERVED = re.compile(
    rf"^(?P<module>[^@]+)@v(?P<version>[0-9]+)\.(?P<digest>[0-9a-f]{{{DIGEST_HEX}}})$"
)
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


_MADE_AS = re.compile(r"-([sd])[0-9a-f]{6}$")


def made_as(name: str) -> str:
    """How the system made a module, from its name: "delta" (new facts of an add, until
    consolidation folds them into their module), "split" (half a module's facts, moved
    below the gate) or "module" (packed, named or merged)."""
    match = _MADE_AS.search(name)
    if match is None:
        return "module"
    return "delta" if match.group(1) == "d" else "split"


def is_reserved_module_name(name: str) -> bool:
    """Whether a module name has one of the forms the system names its own modules with."""
    return _RESERVED_MODULE.search(name) is not None


class ServedName(NamedTuple):
    module: str  # the module's id
    version: int
    digest: str  # the first DIGEST_HEX hex digits of the version's checksum


def version_name(module: str, version: int) -> str:
    """`<module>@v<N>`: a version in the registry's records (`module` an id), or as its
    tenant names it (`module` a name)."""
    return f"{module}@v{version}"


def parse_version_name(name: str) -> tuple[str, int] | None:
    """(module, version) of a version name; None for anything else."""
    match = _VERSION.match(name)
    return (match["module"], int(match["version"])) if match else None


def served_name(module: str, version: int, checksum: str) -> str:
    """The engine-side name of one module version (`module` is its id, `checksum` its
    adapter's sha256 in hex): other weights always get another name."""
    if not _HEX.match(checksum):  # else a name nothing parses back, shown with its id
        raise ValueError(f"not a sha256 checksum: {checksum!r}")
    return f"{module}@v{version}.{checksum[:DIGEST_HEX]}"


def parse_served_name(name: str) -> ServedName | None:
    """The parts of an engine-side name; None for anything else (the base model, or a
    version name without its digest)."""
    match = _SERVED.match(name)
    return ServedName(match["module"], int(match["version"]), match["digest"]) if match else None


def names_checksum(parsed: ServedName, checksum: str) -> bool:
    """Whether a served name's digest is that of the version whose checksum is given."""
    return len(checksum) >= DIGEST_HEX and checksum[:DIGEST_HEX] == parsed.digest


def version_of(name: str) -> tuple[str, int] | None:
    """(module, version) of a served name or a version name (an engine may still hold a
    name from before served names carried digests); None for anything else."""
    parsed = parse_served_name(name)
    return (parsed.module, parsed.version) if parsed else parse_version_name(name)


def without_digest(name: str) -> str:
    """A served name as its version name (`<module id>@v<N>`); any other name as it is."""
    parsed = parse_served_name(name)
    return version_name(parsed.module, parsed.version) if parsed else name


def public_served_name(name: str) -> str:
    """What the module version's tenant is shown for an engine-side (or version) name:
    "<name>@v<N>" (a name that is not a module version, the base model's, is shown as it
    is)."""
    parsed = version_of(name)
    return version_name(module_name(parsed[0]), parsed[1]) if parsed else name
