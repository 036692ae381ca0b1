"""Where the engine's time goes: py-spy over the engine under base load, then module load.

    .venv/bin/python -m bench.profile_engine [--seconds 25] [--concurrency 16]

Starts the engine as loramem does (LORAMEM_* settings apply), loads one module of the
default shape (random weights, as in bench/serving.py), and for each of `base` and `lora`
drives `--concurrency` requests of 32 tokens while `py-spy record --subprocesses` samples
every engine process. Prints, per load, the share of the model step's samples in each
function (inclusive) that mentions LoRA or the base GEMM, and the lines of vLLM's CPU
LoRA ops that hold the most. Raw stacks go to $LORAMEM_CACHE_DIR/prof-<load>.txt.
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import serving
from evaluation.engine_harness import engine_process, load_adapters, make_adapters
from loramem.base_model import prepare_base_model
from loramem.settings import Settings

STEP = "execute_model"  # frames below this are the engine's model step
WATCH = ("lora", "punica", "onednn_mm", "einsum", "compute_logits", "Attention.forward")
# Where a step's adapters come from: the slot switch and the load from disk on a cache miss.
WATCH_ADAPTERS = ("_apply_adapters", "activate_adapter", "_load_adapter", "set_adapter_mapping")


def shares(raw: Path) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Inclusive share per function, and self share per line of vLLM's lora_ops.py."""
    functions: collections.Counter[str] = collections.Counter()
    op_lines: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if STEP not in stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for name in {f.split(" (")[0] for f in frames if not f.startswith("process ")}:
            functions[name] += n
        ops = [f for f in frames if "lora_ops.py" in f]
        if ops:
            op_lines[ops[-1]] += n
    return functions, op_lines, total


def profile(
    pid: int, raw: Path, seconds: int, load: Callable[[], object], watch: tuple[str, ...] = WATCH
) -> None:
    """py-spy over the engine process `pid` and its children while `load` runs (it must
    outlast `seconds`); prints the share of the model step's samples per watched function."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    record = [spy, "record", "--subprocesses", "--nonblocking", "-r", "40"]
    record += ["-d", str(seconds), "-f", "raw", "-o", str(raw), "-p", str(pid)]
    sampler = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    load()
    sampler.wait()
    functions, op_lines, total = shares(raw)
    print(f"  {total} samples in the model step (raw stacks: {raw})")
    for name, n in functions.most_common():
        if any(w in name for w in watch) and n / total >= 0.02:
            print(f"  {n / total:6.1%}  {name}")
    for frame, n in op_lines.most_common(4):
        print(f"  {n / total:6.1%}  self in {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=25)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    settings = Settings()
    model = prepare_base_model(settings)
    adapters = make_adapters(settings, model, settings.cache_dir / "bench-adapters", 1)
    with engine_process(settings, model) as (url, engine):
        names = load_adapters(url, adapters)
        for load, models in (("base", [settings.base_name]), ("lora", names)):
            serving.measure(url, load, models, args.concurrency, args.concurrency, 8)  # warm
            requests = args.concurrency * 6  # outlasts the sampling window
            print(f"\n{load}:")
            profile(
                engine.pid,
                settings.cache_dir / f"prof-{load}.txt",
                args.seconds,
                functools.partial(
                    serving.measure, url, load, models, args.concurrency, requests, 32
                ),
            )


if __name__ == "__main__":
    main()
