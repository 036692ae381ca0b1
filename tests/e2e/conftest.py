"""The real system, started once per session for the e2e tests that ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.support import System, run_system


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    yield from run_system(tmp_path_factory)
