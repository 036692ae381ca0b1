"""Fact-index snapshots on disk, so that a restarted gateway loads its tenants' indexes
instead of rebuilding them from Redis (minutes at a million facts).

One file per tenant, `<dir>/<sha256(tenant)>.npz`: an uncompressed numpy archive (read
with pickling off), written to a temporary file in the same folder, flushed, and renamed
over the previous one, so a reader finds a whole snapshot or the one before. Member
`meta` (JSON) says what the index was built with (`config`: backend and its settings,
embedding model, dim), the tenant, the module versions it covers (module -> stamp) and
the sha256 of every other member. A file whose meta does not match the running router,
or whose checksums fail, is not trusted: `read` deletes it and the caller rebuilds from
Redis. Which modules of a trusted snapshot are still current is the router's business.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("loramem.router")

FORMAT = 1  # bump when the layout of the arrays changes


@dataclass(frozen=True)
class Snapshot:
    tenant: str
    modules: dict[str, str]  # module -> stamp of the version whose facts are indexed
    arrays: dict[str, np.ndarray]  # FactIndex.state()


def path_for(directory: Path, tenant: str) -> Path:
    return directory / f"{hashlib.sha256(tenant.encode()).hexdigest()}.npz"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).data).hexdigest()


def write(
    directory: Path,
    tenant: str,
    config: dict[str, Any],
    modules: dict[str, str],
    arrays: dict[str, np.ndarray],
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "tenant": tenant,
        "config": config,
        "modules": modules,
        "sha256": {name: _digest(a) for name, a in arrays.items()},
    }
    members = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    target = path_for(directory, tenant)
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".router-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **members)  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


class SnapshotInvalid(ValueError):
    """The file is unreadable, from another configuration, or fails its checksums."""


def read(directory: Path, tenant: str, config: dict[str, Any]) -> Snapshot | None:
    """The tenant's snapshot if there is one and it can be trusted; a file that cannot
    is deleted (and logged), and None is returned as when there is no file."""
    path = path_for(directory, tenant)
    if not path.exists():
        return None
    try:
        return _read(path, tenant, config)
    except SnapshotInvalid as exc:
        log.warning("router snapshot %s not used, rebuilding from Redis: %s", path, exc)
        path.unlink(missing_ok=True)
        return None


def _read(path: Path, tenant: str, config: dict[str, Any]) -> Snapshot:
    try:
        with np.load(path, allow_pickle=False) as archive:
            members = {name: archive[name] for name in archive.files}
        meta = json.loads(members.pop("meta").tobytes())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise SnapshotInvalid(f"unreadable: {exc}") from exc
    if meta.get("format") != FORMAT or meta.get("tenant") != tenant:
        raise SnapshotInvalid("another format or tenant")
    if meta.get("config") != config:
        raise SnapshotInvalid(f"built with {meta.get('config')}, running {config}")
    sums = meta.get("sha256", {})
    if set(sums) != set(members) or any(_digest(members[n]) != s for n, s in sums.items()):
        raise SnapshotInvalid("checksum mismatch")
    return Snapshot(tenant, dict(meta["modules"]), members)
