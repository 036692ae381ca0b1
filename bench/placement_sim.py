"""Placement at scale, by simulation: the gateway's real placement and routing code
(server/engines.py `EnginePool`, server/placement.py) driven by a synthetic workload,
with no engine.

    .venv/bin/python -m bench.placement_sim --plot docs/results/placement_sim.png
    .venv/bin/python -m bench.placement_sim --scenario small  # 40 modules, 2 engines

Scenarios: "large" is 10,000 tenants, 100,000 modules and 16 engines (32 and 256 slots);
"small" is 40 modules on 2 engines (8 and 24 slots); "hot" the same with every request
for a hot set of 16 of them. Small scenarios add placement sized to the slots.

Requests arrive as a Poisson stream; each names a module version drawn from a Zipf law
over the modules (exponent 1.0; module i belongs to tenant i mod the tenant count). For every
request the simulation does what `EngineForwarder.forward` does: record its demand, ask
the pool for its candidates, send it to the first. An engine is a least-recently-used
cache of --slots adapters (vLLM's CPU adapter cache, `max_cpu_loras`): a request for an
adapter it does not hold waits for a load (--load-s) and evicts the least recently used
one. A request then occupies its engine for --service-s (the pool's in-flight count,
which picks among replicas and triggers spill-over). The first --warmup of the requests
fill the caches and are not counted.

Printed per setting: adapter-cache hit rate, loads per second per engine (mean and
busiest), extra latency from loads (mean per request, and the share of requests that
waited for one), and how unevenly requests fall on engines (busiest / mean). With
--plot, hit rate and extra latency per setting go to a PNG.
"""

from __future__ import annotations

import argparse
import heapq
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from server.engines import EnginePool
from server.placement import DemandMeter, ReplicaPolicy


@dataclass(frozen=True)
class Workload:
    tenants: int
    modules: int
    engines: int
    slots: int
    zipf: float
    rate_per_s: float
    service_s: float
    load_s: float
    requests: int
    warmup: float
    seed: int
    hot: int = 0  # > 0: requests uniform over this many modules instead of Zipf


@dataclass(frozen=True)
class Setting:
    label: str
    rate_per_replica: float  # inf: one engine per version
    max_replicas: int = 0
    affinity: bool = True  # False: the least busy of all engines (no placement)
    spill_in_flight: int = 8
    sized: bool = False  # placement sized to the engines' slots (LORAMEM_PLACEMENT_SLOTS)


@dataclass
class Result:
    setting: Setting
    hit_rate: float
    loads_per_s_mean: float
    loads_per_s_max: float
    extra_ms_mean: float
    waited_share: float
    skew: float


class AdapterCache:
    """One engine's adapter slots, least recently used out first."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.held: OrderedDict[str, None] = OrderedDict()

    def use(self, name: str) -> bool:
        """True on a hit; on a miss the adapter is loaded, evicting the oldest."""
        if name in self.held:
            self.held.move_to_end(name)
            return True
        self.held[name] = None
        if len(self.held) > self.slots:
            self.held.popitem(last=False)
        return False


def draw_requests(load: Workload) -> tuple[list[str], np.ndarray]:
    """The requests' module versions (Zipf by module rank) and arrival times (Poisson)."""
    rng = np.random.default_rng(load.seed)
    weights = 1.0 / np.arange(1, load.modules + 1) ** load.zipf
    if load.hot:
        weights = (np.arange(load.modules) < load.hot).astype(float)
    order = rng.permutation(load.modules)  # popularity is not the module id
    picks = order[rng.choice(load.modules, size=load.requests, p=weights / weights.sum())]
    names = [f"t{i % load.tenants}-m{i}@v1" for i in range(load.modules)]
    arrivals = np.cumsum(rng.exponential(1.0 / load.rate_per_s, size=load.requests))
    return [names[i] for i in picks], arrivals


def simulate(load: Workload, setting: Setting, requests: list[str], at: np.ndarray) -> Result:
    urls = [f"http://engine-{i}:8100" for i in range(load.engines)]
    policy = ReplicaPolicy(setting.rate_per_replica, setting.max_replicas)
    pool = EnginePool(
        urls,
        setting.spill_in_flight,
        policy,
        DemandMeter(half_life_s=60.0),
        slots=load.slots if setting.sized else 0,
    )
    rebalanced_at = 0.0
    for url in urls:
        pool.mark(url, True)
    caches = {url: AdapterCache(load.slots) for url in urls}
    running: list[tuple[float, str]] = []  # (finishes at, engine)
    counted = Counter[str]()
    misses = Counter[str]()
    start = int(load.warmup * len(requests))
    for i, (name, now) in enumerate(zip(requests, at.tolist(), strict=True)):
        while running and running[0][0] <= now:
            pool.in_flight[heapq.heappop(running)[1]] -= 1
        pool.demand.record(name, now)  # what EngineForwarder.forward records
        if now - rebalanced_at >= RECONCILE_S:
            pool.rebalance(now)  # what every reconciler pass does
            rebalanced_at = now
        if setting.affinity:
            engine = pool.candidates(name, now)[0]
        else:
            engine = min(urls, key=lambda url: pool.in_flight[url])
        hit = caches[engine].use(name)
        pool.in_flight[engine] += 1
        heapq.heappush(running, (now + load.service_s + (0 if hit else load.load_s), engine))
        if i >= start:
            counted[engine] += 1
            misses[engine] += 0 if hit else 1
    seconds = float(at[-1] - at[start])
    measured = len(requests) - start
    total_misses = sum(misses.values())
    loads_per_s = [misses[url] / seconds for url in urls]
    return Result(
        setting=setting,
        hit_rate=1 - total_misses / measured,
        loads_per_s_mean=sum(loads_per_s) / len(urls),
        loads_per_s_max=max(loads_per_s),
        extra_ms_mean=1000 * load.load_s * total_misses / measured,
        waited_share=total_misses / measured,
        skew=max(counted[url] for url in urls) / (measured / len(urls)),
    )


LARGE = Workload(  # issue 13: 10,000 tenants, 100,000 modules, 16 engines
    tenants=10_000,
    modules=100_000,
    engines=16,
    slots=32,  # vLLM's CPU adapter cache as loramem starts it (engine_max_cpu_loras)
    zipf=1.0,
    rate_per_s=320.0,
    service_s=1.0,
    load_s=0.2,  # POST /v1/load_lora_adapter on the CPU engine (docs/RESULTS.md)
    requests=300_000,
    warmup=0.3,
    seed=7,
)
SMALL = Workload(  # issue 16: 40 modules on two engines of 8 CPU slots each
    tenants=40,
    modules=40,
    engines=2,
    slots=8,
    zipf=1.0,
    rate_per_s=20.0,
    service_s=1.0,
    load_s=0.2,
    requests=40_000,
    warmup=0.25,
    seed=7,
)
RECONCILE_S = 2.0  # the reconciler's pass while anything changes
# Each scenario at its slot count, and with enough slots for what placement puts on an
# engine (small: about 20 of 40; large: a GPU engine's larger cache).
SCENARIOS = {
    "large": [LARGE, replace(LARGE, slots=256)],
    "small": [SMALL, replace(SMALL, slots=24)],
    "hot": [replace(SMALL, hot=16)],  # a hot set of 16 of the 40: what 2 x 8 slots hold
}

SETTINGS = [
    Setting("no placement (least busy engine)", float("inf"), affinity=False),
    Setting("placement, 1 engine per version", float("inf"), max_replicas=1),
    Setting("placement, +1 engine per 8 req/s", 8.0),
    Setting("placement, +1 engine per 2 req/s", 2.0),
]
# Rebuilding the slot table every pass sorts every version's demand: small scenarios only.
SIZED = Setting("placement sized to the slots, 1 engine per version", float("inf"), 1, sized=True)


def table(load: Workload, results: list[Result]) -> str:
    lines = [
        f"{load.tenants} tenants, {load.modules} modules, "
        f"{f'hot set of {load.hot}' if load.hot else f'Zipf {load.zipf}'}, "
        f"{load.engines} engines x {load.slots} slots, {load.rate_per_s:g} req/s, "
        f"load {load.load_s:g} s, service {load.service_s:g} s, "
        f"{load.requests} requests ({load.warmup:.0%} warm-up not counted)",
        "",
        "| setting | hit rate | loads/s per engine (mean / busiest) "
        "| extra latency from loads (mean) | requests that waited for a load "
        "| busiest engine / mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.setting.label} | {r.hit_rate:.3f} "
            f"| {r.loads_per_s_mean:.2f} / {r.loads_per_s_max:.2f} "
            f"| {r.extra_ms_mean:.1f} ms | {r.waited_share:.1%} | {r.skew:.2f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[Result]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(results)
    for k, (scenario, rows) in enumerate(results.items()):
        xs = [i + k * width for i in range(len(rows))]
        axes[0].bar(xs, [r.hit_rate for r in rows], width, label=scenario)
        axes[1].bar(xs, [r.extra_ms_mean for r in rows], width, label=scenario)
    labels = [r.setting.label.replace(", ", ",\n").replace(" (", "\n(") for r in rows]
    titles = ["adapter-cache hit rate", "extra latency from loads (ms)"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=8, loc="upper left" if ax is axes[0] else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "both"], default="both")
    parser.add_argument("--requests", type=int, help="override the scenario's request count")
    parser.add_argument("--plot", type=Path, help="write hit rate and extra latency as a PNG")
    args = parser.parse_args()
    names = list(SCENARIOS) if args.scenario == "both" else [args.scenario]
    results: dict[str, list[Result]] = {}
    for name in names:
        for load in SCENARIOS[name]:
            if args.requests:
                load = replace(load, requests=args.requests)
            requests, at = draw_requests(load)
            label = f"{name}, {load.slots} slots"
            settings = SETTINGS if name == "large" else [*SETTINGS, SIZED]
            results[label] = [simulate(load, setting, requests, at) for setting in settings]
            print(f"\n## {label}\n\n{table(load, results[label])}", flush=True)
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
