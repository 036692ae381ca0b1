"""Adapter identity, storage and validation.

Identity is an immutable AdapterRef. The registry resolves names to versions. Residency
(which engine has what loaded) is vLLM's business. Files live in Redis as blobs (the whole
memory is in Redis) and are materialised into a local folder, adapters/<module>/v<N>/,
because an engine loads adapters from a local path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from loramem.errors import InvalidRequest
from loramem.names import public_served_name, served_name, version_name
from loramem.registry import Registry

# recipe.json: how the version was made (loramem/knobs.py VersionRecipe); the publisher
# (trainer/publisher.py) is its only writer.
RECIPE_FILE = "recipe.json"
# In adapters/<module>/: the highest version number written on this host (highest_local).
HIGHEST_FILE = ".highest"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", RECIPE_FILE)
# Guards this process's check-then-replace steps on the folders (versions, the record).
_SWAP = threading.Lock()


@dataclass(frozen=True)
class AdapterRef:
    module: str
    version: int
    path: Path
    checksum: str  # of its files (checksum()): part of the name engines know it by

    @property
    def name(self) -> str:
        return served_name(self.module, self.version, self.checksum)


def checksum(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    return digest.hexdigest()


def read_files(folder: Path) -> dict[str, bytes]:
    return {
        name: (folder / name).read_bytes() for name in ADAPTER_FILES if (folder / name).exists()
    }


def validate_adapter_config(files: dict[str, bytes], max_rank: int) -> None:
    """Refuse an adapter the engine would reject, before asking it to load anything."""
    try:
        config = json.loads(files["adapter_config.json"])
    except (KeyError, ValueError) as exc:
        raise InvalidRequest(f"adapter has no valid adapter_config.json: {exc}") from exc
    if config.get("peft_type") != "LORA":
        raise InvalidRequest(f"adapter peft_type is {config.get('peft_type')}, expected LORA")
    if int(config.get("r", 0)) > max_rank:
        raise InvalidRequest(f"adapter rank {config.get('r')} exceeds the engine max {max_rank}")
    if "adapter_model.safetensors" not in files:
        raise InvalidRequest("adapter has no adapter_model.safetensors")


class AdapterStore:
    def __init__(self, root: Path, registry: Registry) -> None:
        self.root = root
        self.registry = registry

    def folder(self, module: str, version: int) -> Path:
        return self.root / module / f"v{version}"

    def write_local(self, module: str, version: int, files: dict[str, bytes]) -> AdapterRef:
        target = self.folder(module, version)
        self._raise_highest(module, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A staging folder of its own: several threads (the gateway's on-demand loads) or
        # processes may write one version at once and must not rename each other's.
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        try:
            for name, data in files.items():
                (staging / name).write_bytes(data)
            with _SWAP:  # never remove a complete folder another thread just put in place
                if not (target.exists() and read_files(target) == files):
                    shutil.rmtree(target, ignore_errors=True)
                    staging.rename(target)  # a version folder is complete or absent
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return AdapterRef(module, version, target, checksum(files))

    def remove_local(self, module: str, version: int) -> bool:
        """Delete this host's folder of a version that is no longer served."""
        target = self.folder(module, version)
        if not target.exists():
            return False
        shutil.rmtree(target, ignore_errors=True)
        return True

    def highest_local(self, module: str) -> int:
        """The highest version of `module` this host ever wrote, its folder swept or not
        (0: none). Kept outside Redis, so a Redis restored from an older snapshot cannot
        make a publisher reuse a number this host has seen."""
        marker = self.root / module / HIGHEST_FILE
        written = int(marker.read_text()) if marker.is_file() else 0
        folders = [v for m, v in self.local_versions() if m == module]
        return max([written, *folders])

    def _raise_highest(self, module: str, version: int) -> None:
        marker = self.root / module / HIGHEST_FILE
        marker.parent.mkdir(parents=True, exist_ok=True)
        with _SWAP:  # read, compare and replace as one step among this process's threads
            if version <= self.highest_local(module):
                return
            # A file of its own to write, as another process may raise the record at once.
            handle, partial = tempfile.mkstemp(prefix=HIGHEST_FILE + ".partial-", dir=marker.parent)
            with os.fdopen(handle, "w") as out:
                out.write(str(version))
            os.replace(partial, marker)  # whole or absent

    def local_versions(self) -> list[tuple[str, int]]:
        """(module, version) of every complete version folder on this host."""
        if not self.root.is_dir():
            return []
        return [
            (folder.parent.name, int(folder.name[1:]))
            for folder in self.root.glob("*/v*")
            if folder.is_dir() and folder.name[1:].isdigit()
        ]

    def materialize(self, module: str, version: int) -> AdapterRef:
        """A local folder for this version, fetched from Redis when this host lacks it."""
        target = self.folder(module, version)
        expected = self.registry.modules.version(module, version).checksum
        if target.exists() and checksum(read_files(target)) == expected:
            return AdapterRef(module, version, target, expected)
        files = self.registry.modules.version_files(module, version)
        if checksum(files) != expected:
            shown = public_served_name(version_name(module, version))  # a client may see it
            raise InvalidRequest(f"stored files of {shown} are corrupt")
        return self.write_local(module, version, files)
