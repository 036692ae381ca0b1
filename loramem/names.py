"""Names: fresh ids, and the engine-side name of a module version."""

from __future__ import annotations

import re
import uuid

# "<module>@v<N>": module names never contain "@" (server/protocol.py MODULE_PATTERN).
_SERVED = re.compile(r"^(?P<module>[^@]+)@v(?P<version>[0-9]+)$")
# The forms the system names modules with: packed "m-<id>" (registry/facts.py), split
# "<module>-s<6 hex>" (registry/facts.py) and merged "mx-<hash>" (registry/merges.py). A
# tenant may not make a module of such a name, or it could squat one the system makes next.
_RESERVED_MODULE = re.compile(r"^mx?-|-s[0-9a-f]{6}$")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def is_reserved_module_name(name: str) -> bool:
    """Whether a module name has one of the forms the system names its own modules with."""
    return _RESERVED_MODULE.search(name) is not None


def served_name(module: str, version: int) -> str:
    """The immutable engine-side name of one module version."""
    return f"{module}@v{version}"


def parse_served_name(name: str) -> tuple[str, int] | None:
    """(module, version) of a served name; None for anything else (the base model)."""
    match = _SERVED.match(name)
    return (match["module"], int(match["version"])) if match else None
