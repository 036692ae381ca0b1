"""The real engine with loramem's CPU LoRA fix: a base request that shares engine steps
with module requests is answered by the base model, not by the last slot's module, and
with six modules in the same steps each module request is answered by its own module."""

from __future__ import annotations

from pathlib import Path

from evaluation import engine_rows
from loramem.settings import Settings


def test_a_base_request_next_to_module_requests_gets_no_adapter(tmp_path: Path) -> None:
    modules = 6  # six modules and a base request in the same steps: one grouped product
    settings = Settings(engine_port=18300, engine_max_loras=modules, engine_max_cpu_loras=modules)
    rows = engine_rows.check(settings, tmp_path)
    # Each module changes the answer, so borrowing one would show.
    assert len({rows.alone, *rows.modules.values()}) == 1 + len(rows.modules), rows
    assert rows.mixed == [rows.alone] * len(rows.mixed), rows
    assert len(rows.mixed_modules) == modules and rows.modules_kept, rows
