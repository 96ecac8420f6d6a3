"""Engine scaling: one by one, clients trained together, worker processes, and Flower's Ray.

Tiny-MLP workload of ``benchmarks/engine_overhead.py`` (100 clients x 5 local steps of
batch 32 x 5 rounds, FedAvg with every client in each round), side by side in one
process, contenders alternated after one warm-up run of each:

- ``sequential``: the plain loop of ClientApp calls (pure compute, as engine_overhead
  measures it);
- ``inprocess``: ``fedsim.run`` on the in-process engine as it runs by default;
- ``batched``: the same with ``engine.batch_clients: 100`` (the round's clients trained
  together, :mod:`fedsim.client.stacked`);
- ``ray``: ``fedsim.run`` on Flower's Ray simulation engine (one CPU, one 1-CPU actor),
  the fastest of ``--ray-repeats`` runs (errs in Flower's favour).

A run's round time is its fastest round after the first (other load on a shared machine
only ever adds time; engine_overhead's statistic); each figure is the median over
``--repeats`` runs. ``batched_speedup_vs_sequential`` is the sequential
loop's round time over the batched engine's; ``speedup_vs_flower_ray`` is Ray's end to
end time over the best fedsim mode's (median end to end, caches cleared first as in a
fresh process). The workers section (``engine.workers``, a compute-bound CNN) comes from
``benchmarks/engine_scaling_workers.py`` when that module is there.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/engine_scaling.py [--repeats 7] [--ray-repeats 1]

The last line printed is ``speedup_vs_flower_ray: X``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from engine_overhead import CLIENTS, RAY_ENGINE, WORKLOAD, engine_rounds, pure_rounds

import fedsim
from fedsim.data import federated

# Environment variables that set the allocator or the thread pools.
SETTINGS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "LD_PRELOAD",
    "MALLOC_ARENA_MAX",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_CONF",
)


def settings_line() -> str:
    """torch's version and thread counts, and the allocator/thread environment."""
    env = ", ".join(f"{k}={os.environ[k]}" for k in SETTINGS if k in os.environ)
    return (
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{torch.get_num_interop_threads()} interop; env: {env or 'none set'} "
        "(glibc malloc defaults unless LD_PRELOAD/MALLOC_* say otherwise)"
    )


def workers_lines() -> list[str]:
    """The workers section's lines, if ``engine_scaling_workers.py`` is there."""
    try:
        module = importlib.import_module("engine_scaling_workers")
    except ModuleNotFoundError as exc:
        if exc.name != "engine_scaling_workers":
            raise
        return []
    lines: list[str] = module.workers_section()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each contender")
    parser.add_argument("--ray-repeats", type=int, default=1, help="ray runs (fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-ray", action="store_true", help="skip Flower's Ray engine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.ERROR)
    base = fedsim.load_scenario(WORKLOAD)
    batched = fedsim.load_scenario(
        {**WORKLOAD, "engine": {"name": "inprocess", "batch_clients": CLIENTS}}
    )
    ray = fedsim.load_scenario({**WORKLOAD, "engine": RAY_ENGINE})
    print(settings_line())
    rounds: dict[str, list[float]] = {"sequential": [], "inprocess": [], "batched": []}
    totals: dict[str, list[float]] = {"inprocess": [], "batched": []}
    with tempfile.TemporaryDirectory(prefix="engine-scaling-") as tmp:
        root = Path(tmp)
        federated.federated_data(base.data, base.seed)  # MNIST-1D generated once (cached)

        def sequential(out: Path) -> tuple[float | None, list[float]]:
            return None, pure_rounds(base, out)

        def engine(scenario: Any) -> Callable[[Path], tuple[float | None, list[float]]]:
            return lambda out: engine_rounds(scenario, out)

        contenders = {
            "sequential": sequential,
            "inprocess": engine(base),
            "batched": engine(batched),
        }
        for k in range(args.repeats + 1):  # the first pass warms up
            for name, contender in contenders.items():
                total, per_round = contender(root / f"{name}{k}")
                if k == 0:
                    continue
                rounds[name].append(min(per_round[1:]))
                if total is not None:
                    totals[name].append(total)
        ray_total = None
        if not args.no_ray:
            ray_total = min(
                engine_rounds(ray, root / f"ray{k}")[0] for k in range(args.ray_repeats)
            )
    round_s = {name: statistics.median(values) for name, values in rounds.items()}
    total_s = {name: statistics.median(values) for name, values in totals.items()}
    print(
        f"{CLIENTS} clients x 5 local steps of batch 32 x 5 rounds, mlp [32]; medians of "
        f"{args.repeats} alternated runs after one warm-up run each; round = a run's fastest "
        f"round after the first"
    )
    for name, seconds in round_s.items():
        print(f"{name}_round_ms: {seconds * 1e3:.1f} ({seconds / CLIENTS * 1e3:.3f} ms per update)")
    for name, seconds in total_s.items():
        print(f"{name}_end_to_end_s: {seconds:.2f}")
    print(f"inprocess_speedup_vs_sequential: {round_s['sequential'] / round_s['inprocess']:.2f}")
    print(f"batched_speedup_vs_sequential: {round_s['sequential'] / round_s['batched']:.2f}")
    for line in workers_lines():
        print(line)
    if ray_total is not None:
        best = min(total_s, key=lambda name: total_s[name])
        print(f"ray_end_to_end_s: {ray_total:.2f} (best fedsim mode: {best})")
        print(f"speedup_vs_flower_ray: {ray_total / total_s[best]:.1f}")


if __name__ == "__main__":
    main()
