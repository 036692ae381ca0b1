"""Reproduction on the real engine: in a step that mixes requests with and without an
adapter, vLLM's CPU LoRA ops give the adapter-less ones the last slot's adapter.

    .venv/bin/python -m bench.lora_base_rows                 # with loramem's fix
    VLLM_PLUGINS= .venv/bin/python -m bench.lora_base_rows   # vLLM as shipped

Starts an engine with `--max-loras 2`, loads two modules of the default shape with large
random weights (so each one changes the greedy text), and asks one base completion alone,
then while module requests generate in the same steps. Prints every answer and whether the
base answer in a mixed step equals the base answer alone, and exits 1 when it does not.
(The check is evaluation/engine_rows.py; the cause, and the fix, are in
loramem/vllm_cpu_lora.py.)
"""

from __future__ import annotations

from pathlib import Path

from evaluation.engine_rows import check
from loramem.settings import Settings


def main() -> None:
    import tempfile

    settings = Settings(engine_port=18300, engine_max_loras=2, engine_max_cpu_loras=4)
    with tempfile.TemporaryDirectory() as folder:
        rows = check(settings, Path(folder))
    print(f"base alone: {rows.alone!r}")
    for name, answer in rows.modules.items():
        print(f"{name} alone: {answer!r}")
    for answer in rows.mixed:
        print(f"base in a mixed step: {answer!r}")
    print("base rows unaffected" if rows.same else "BASE ROWS GOT AN ADAPTER'S OUTPUT")
    raise SystemExit(0 if rows.same else 1)


if __name__ == "__main__":
    main()
