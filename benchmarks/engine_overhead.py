"""Engine overhead: the same ServerApp/ClientApp on ``inprocess`` and ``ray``, and a plain loop.

Workload (issue 10): a tiny MLP, 64 examples per client, 5 local steps, 100 clients,
every client trains in each of 5 rounds (FedAvg, ``min_available_nodes`` = 100 on
both engines). In one process, side by side:

- pure compute: the very same client updates (fedsim's ClientApp called on each node's
  train message and Context) in a plain loop, 100 per round, 5 rounds;
- ``inprocess``: ``fedsim.run`` on the in-process engine;
- ``ray``: ``fedsim.run`` on Flower's Ray simulation engine (a private SuperLink,
  ``flwr run``, Ray, its actors: all of its start-up counts).

End-to-end times are those of ``fedsim.run`` with the process's data caches cleared
first (so each engine loads its data as a fresh process would). Steady-state time per
update is the fastest round after the first (from ``metrics.jsonl``'s ``wall_time_s``)
divided by 100: on a shared machine other load only ever adds time, and the fastest
round is the least disturbed; the same statistic for the pure loop and both engines.
The in-process overhead is the median, over in-process runs, of the run's time minus
the mean of the pure loops run just before and just after it (pure loops and
in-process runs alternate); Ray's is its time minus the median pure time. Ray's figures
are those of its fastest run. Both the pure loop and the in-process engine run their
rounds under the collector settings the engine runs its rounds with
(:func:`fedsim.engine.collector.rounds_collector`: frozen, fewer young collections).

Usage::

    python benchmarks/engine_overhead.py [--repeats 40] [--ray-repeats 2] [--threads 1]

Then the same with ``engine.batch_clients: 100`` (issue 29): each batched in-process run
against the stacked compute alone (``train_together`` on the round's 100 train messages
in a plain loop, no engine), alternated the same way; the engine's own cost per client
update is the difference of the steady rounds over 100. It counts everything a round
does besides training: the strategy's messages and aggregation, planning and settling
the dispatch, reply checks, the clock, telemetry and the round's record.

The plain loops get the run config ``fedsim.run`` gives its nodes, the scenario pinned
by its SHA-256 (issue 29; before, they got the path alone, so every client call read and
hashed the scenario file again, which no engine run does: the references were slower
than the engine's clients by that much, and the engine's measured cost smaller).

The last line printed is ``engine_us_per_update_batched: X`` (that cost, in µs);
``speedup_vs_flower_ray: X`` (ray end to end / inprocess end to end) comes before it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

import fedsim
from fedsim import wire
from fedsim.config.schema import Scenario
from fedsim.config.sources import to_yaml
from fedsim.data import federated
from fedsim.engine.collector import rounds_collector
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.inprocess_grid import node_contexts
from fedsim.models import build_model
from fedsim.outputs.metrics_log import read_metrics
from fedsim.run_config import _cache as scenario_cache
from fedsim.run_config import scenario_digest

CLIENTS, ROUNDS = 100, 5

WORKLOAD: dict[str, Any] = {
    "name": "engine-overhead",
    "seed": 0,
    "rounds": ROUNDS,
    # 8,000 samples: the package's 80/20 split leaves 6,400 = 100 clients x 64.
    "data": {"dataset": {"name": "mnist1d", "num_samples": 8000}, "num_clients": CLIENTS},
    "model": {"name": "mlp", "params": {"hidden": [32]}},
    "client": {"local_steps": 5, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
    "strategy": {"name": "fedavg", "params": {"fraction_train": 1.0}},
    # Central evaluation only after the last round: the rounds measure the engines.
    "output": {"plots": False, "evaluate_every": 1000},
}


# One core for the clients on both engines: in-process runs them one after another,
# Ray gets one CPU and one 1-CPU actor (Flower's default, 2-CPU actors on this 2-core
# machine, also gives one actor at a time).
RAY_ENGINE: dict[str, Any] = {
    "name": "ray",
    "num_cpus": 1,
    "client_resources": {"num_cpus": 1},
    "object_store_mb": 256,
}


def clear_process_caches() -> None:
    """Forget loaded data and scenarios, as a fresh process would not have them."""
    federated._federated.cache_clear()
    federated._dataset.cache_clear()
    scenario_cache.clear()


def round_seconds(run_dir: Path) -> list[float]:
    """Wall seconds of each round (1..N) from metrics.jsonl."""
    wall = [r["wall_time_s"] for r in read_metrics(run_dir)]
    return [b - a for a, b in itertools.pairwise(wall)]


def engine_run(scenario: Scenario, out: Path) -> tuple[float, float]:
    """End-to-end seconds of one run and its fastest round after the first."""
    total, rounds = engine_rounds(scenario, out)
    return total, min(rounds[1:])


def engine_rounds(scenario: Scenario, out: Path) -> tuple[float, list[float]]:
    """End-to-end seconds of one run (process caches cleared first) and of each round."""
    clear_process_caches()
    start = time.perf_counter()
    fedsim.run(scenario, out)
    total = time.perf_counter() - start
    return total, round_seconds(out)


def pure_compute(scenario: Scenario, work: Path) -> float:
    """Seconds of the fastest round after the first of the same updates in a plain loop."""
    return min(pure_rounds(scenario, work)[1:])


def pure_rounds(scenario: Scenario, work: Path, stacked: bool = False) -> list[float]:
    """Seconds of each round of the same updates in a plain loop of ClientApp calls.

    ``stacked``: the round's messages trained together by one ``train_together`` call
    (what ``engine.batch_clients`` computes), no engine around it.
    """
    from fedsim.client.app import app as client_app
    from fedsim.client.stacked import train_together

    work.mkdir(parents=True, exist_ok=True)
    resolved = work / "scenario.resolved.yaml"
    text = to_yaml(scenario)
    resolved.write_text(text, encoding="utf-8")
    # The run config fedsim.run gives its nodes: the scenario pinned by its digest, so a
    # client looks it up by that digest instead of reading the file (as in the engine).
    run_config = {
        wire.RUN_SCENARIO: str(resolved),
        wire.RUN_SCENARIO_SHA256: scenario_digest(text),
        wire.RUN_DIR: str(work),
    }
    set_task_identity(1)
    contexts = node_contexts(CLIENTS, run_config)
    data = federated.federated_data(scenario.data, scenario.seed)
    model = build_model(scenario.model.name, scenario.model.params, data.input_shape, 10)
    arrays = ArrayRecord(model.state_dict())
    rounds = []
    for server_round in range(1, ROUNDS + 1):
        messages = [
            Message(
                RecordDict(
                    {
                        wire.ARRAYS: arrays,
                        wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: server_round}),
                    }
                ),
                node,
                "train",
            )
            for node in contexts
        ]
        with rounds_collector():  # the collector as the in-process engine sets it
            start = time.perf_counter()
            if stacked:
                train_together([(m, contexts[m.metadata.dst_node_id]) for m in messages], CLIENTS)
            else:
                for message in messages:
                    client_app(message, contexts[message.metadata.dst_node_id])
            rounds.append(time.perf_counter() - start)
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=40, help="in-process runs (between pure loops)"
    )
    parser.add_argument("--ray-repeats", type=int, default=2, help="ray runs (fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (Ray actors: 1)")
    parser.add_argument(
        "--batched-repeats", type=int, default=10, help="batch_clients runs (between stacks)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.ERROR)  # as the fedsim CLI does
    base = fedsim.load_scenario(WORKLOAD)
    ray = fedsim.load_scenario({**WORKLOAD, "engine": RAY_ENGINE})
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        root = Path(tmp)
        federated.federated_data(base.data, base.seed)  # generate MNIST-1D once (cached)
        # Pure loops and in-process runs alternate (p0 i0 p1 i1 ... p_n): each in-process
        # run is compared with the mean of the pure loops just before and just after it,
        # so a steady drift of a shared machine's speed cancels.
        pure = [pure_compute(base, root / "pure0")]
        inproc, overhead = [], []
        for k in range(args.repeats):
            total, steady = engine_run(base, root / f"inprocess{k}")
            pure.append(pure_compute(base, root / f"pure{k + 1}"))
            inproc.append(total)
            overhead.append((steady - (pure[k] + pure[k + 1]) / 2) / CLIENTS)
        batched = fedsim.load_scenario(
            {**WORKLOAD, "engine": {"name": "inprocess", "batch_clients": CLIENTS}}
        )
        stacks = [min(pure_rounds(base, root / "stack0", stacked=True)[1:])]
        batched_overhead = []
        for k in range(args.batched_repeats):
            _, steady = engine_run(batched, root / f"batched{k}")
            stacks.append(min(pure_rounds(base, root / f"stack{k + 1}", stacked=True)[1:]))
            batched_overhead.append((steady - (stacks[k] + stacks[k + 1]) / 2) / CLIENTS)
        # The fastest of the Ray runs: the comparison errs in Flower's favour.
        ray_total, ray_round = min(
            (engine_run(ray, root / f"ray{k}") for k in range(args.ray_repeats)),
            default=(math.nan, math.nan),  # --ray-repeats 0: no Ray figures
        )
    pure_update = statistics.median(pure) / CLIENTS
    inproc_total = statistics.median(inproc)
    ours = statistics.median(overhead)
    flower = ray_round / CLIENTS - pure_update
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {CLIENTS} clients x {ROUNDS} "
        f"rounds, mlp [32], 64 examples, 5 local steps of batch 32; {args.repeats} in-process "
        f"runs between {args.repeats + 1} pure loops (medians), fastest of {args.ray_repeats} "
        f"ray runs; steady state: fastest round after the first"
    )
    print(f"pure_compute_per_update_ms: {pure_update * 1e3:.3f}")
    print(f"pure_compute_total_s: {pure_update * CLIENTS * ROUNDS:.2f}")
    print(f"inprocess_end_to_end_s: {inproc_total:.2f}")
    print(f"ray_end_to_end_s: {ray_total:.2f}")
    print(f"inprocess_steady_overhead_per_update_ms: {ours * 1e3:.3f}")
    print(f"ray_steady_overhead_per_update_ms: {flower * 1e3:.3f}")
    print(f"overhead_fraction: {ours / pure_update:.3f}")
    print(f"steady_overhead_ratio: {flower / ours:.1f}")
    print(f"speedup_vs_flower_ray: {ray_total / inproc_total:.1f}")
    print(f"stacked_compute_per_update_ms: {statistics.median(stacks) / CLIENTS * 1e3:.3f}")
    print(f"engine_us_per_update_batched: {statistics.median(batched_overhead) * 1e6:.1f}")


if __name__ == "__main__":
    main()
