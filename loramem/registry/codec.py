"""How values cross into and out of Redis hashes."""

from __future__ import annotations

import json
from typing import Any


def decode(value: Any) -> str:
    """Redis replies are bytes; keys and fields are read back as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def encode(value: Any) -> Any:
    """Containers are stored as JSON; scalars as Redis stores them."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value
