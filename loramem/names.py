"""Names: fresh ids, and the engine-side name of a module version."""

from __future__ import annotations

import re
import uuid

# "<module>@v<N>": module names never contain "@" (server/protocol.py MODULE_PATTERN).
_SERVED = re.compile(r"^(?P<module>[^@]+)@v(?P<version>[0-9]+)$")


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def served_name(module: str, version: int) -> str:
    """The immutable engine-side name of one module version."""
    return f"{module}@v{version}"


def parse_served_name(name: str) -> tuple[str, int] | None:
    """(module, version) of a served name; None for anything else (the base model)."""
    match = _SERVED.match(name)
    return (match["module"], int(match["version"])) if match else None
