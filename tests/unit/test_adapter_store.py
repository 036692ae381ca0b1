"""The local adapter folders: concurrent writers of one version (the gateway's on-demand
loads run on several threads) each end with the complete folder."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from loramem.adapter_store import ADAPTER_FILES, AdapterStore, read_files
from loramem.registry import Registry

FILES = {name: bytes([i]) * 1_000_000 for i, name in enumerate(ADAPTER_FILES)}


def test_concurrent_writes_of_one_version_all_leave_the_complete_folder(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path, cast(Registry, None))  # writing needs no registry
    writers = 8
    for version in range(1, 21):
        start = threading.Barrier(writers)

        def write(_: int, version: int = version, start: threading.Barrier = start) -> Path:
            start.wait()
            return store.write_local("t~m", version, FILES).path

        with ThreadPoolExecutor(writers) as pool:
            paths = set(pool.map(write, range(writers)))
        assert paths == {store.folder("t~m", version)}
        assert read_files(store.folder("t~m", version)) == FILES
    assert sorted(p.name for p in (tmp_path / "t~m").iterdir() if p.is_dir()) == sorted(
        f"v{v}" for v in range(1, 21)
    )  # no staging folder left behind
