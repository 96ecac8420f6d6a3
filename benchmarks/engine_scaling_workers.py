"""Engine scaling, workers section: ``engine.workers: 1`` against ``2`` on a compute-bound client.

Workload (issue 17): the quickstart's CNN on digits, all 20 clients in every round,
2 local epochs of batch 16 (``scenarios/quickstart.yaml`` with ``fraction_train: 1``).
Two in-process grids over the same scenario, one per contender, each with one torch
thread per training process (``engine.threads_per_worker: 1``); the pool's workers are
started, and every model cache warmed, before timing. A round is one
``send_and_receive`` of the 20 train messages of the same global model; contenders
alternate round by round (``timing.interleaved_medians``), and the
figure is the ratio of median round times after warm-up. Both grids' replies are
checked equal first: the workers compute exactly what one process does.

Usage::

    python benchmarks/engine_scaling_workers.py [--repeats 10]

The last line printed is ``workers_speedup: X`` (median round time with 1 worker / with
2; the limit on 2 cores is 2). :func:`workers_section` returns the printed lines for
``benchmarks/engine_scaling.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from timing import interleaved_medians  # benchmarks/timing.py, beside this script

from fedsim import wire
from fedsim.array_codec import encode_record
from fedsim.client.app import app as client_app
from fedsim.compose import load_scenario
from fedsim.config.schema import Scenario
from fedsim.config.sources import to_yaml
from fedsim.data.federated import federated_data
from fedsim.engine.inprocess_grid import InProcessGrid
from fedsim.engine.inprocess_run import build_grid
from fedsim.models import build_model

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "strategy.params.fraction_train=1.0",  # 20 clients a round
    "system.straggle_prob=0.0",  # every reply counts: the same work in every round
    "engine.threads_per_worker=1",
]


def _scenario(workers: int) -> Scenario:
    return load_scenario(
        ROOT / "scenarios/quickstart.yaml", [*OVERRIDES, f"engine.workers={workers}"]
    )


def _grid(scenario: Scenario, run_dir: Path) -> InProcessGrid:
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_dir / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario), encoding="utf-8")
    run_config = {wire.RUN_SCENARIO: str(resolved), wire.RUN_DIR: str(run_dir)}
    return build_grid(client_app, scenario, run_config)


def _round(grid: InProcessGrid, scenario: Scenario) -> list[Message]:
    """One synchronous round: every node trains from the same initial model."""
    data = federated_data(scenario.data, scenario.seed)
    torch.manual_seed(scenario.seed)
    model = build_model(
        scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
    )
    content = RecordDict(
        {
            wire.ARRAYS: encode_record(model.state_dict()),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
        }
    )
    messages = [Message(content, node, "train") for node in grid.get_node_ids()]
    return grid.send_and_receive(messages)


def _settings() -> list[str]:
    env = {k: os.environ.get(k, "-") for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return [
        f"torch {torch.__version__}; this process: torch threads {torch.get_num_threads()}, "
        f"interop {torch.get_num_interop_threads()}; "
        + ", ".join(f"{k}={v}" for k, v in env.items()),
        "workers: torch.set_num_threads(1) each (engine.threads_per_worker); default CPU "
        f"allocator; cores seen: {os.cpu_count()}",
    ]


def workers_section(repeats: int = 10, warmup: int = 2) -> list[str]:
    """Time ``workers: 1`` against ``workers: 2``; return the lines to print."""
    one, two = _scenario(1), _scenario(2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers: 1 contender trains in this process
    with tempfile.TemporaryDirectory(prefix="fedsim-scaling-") as tmp:
        grids = {
            "workers_1": _grid(one, Path(tmp) / "one"),
            "workers_2": _grid(two, Path(tmp) / "two"),
        }
        try:
            first = {name: _round(grid, one) for name, grid in grids.items()}
            same = all(
                np.array_equal(a.content[wire.ARRAYS][k].numpy(), b.content[wire.ARRAYS][k].numpy())
                for a, b in zip(first["workers_1"], first["workers_2"], strict=True)
                for k in a.content[wire.ARRAYS]
            )
            if not same or len(first["workers_1"]) != 20:
                raise RuntimeError("workers: 2 replied differently from workers: 1")
            medians = interleaved_medians(
                {name: (lambda g=grid: _round(g, one) and None) for name, grid in grids.items()},
                repeats,
                warmup,
            )
        finally:
            for grid in grids.values():
                grid.close()
            torch.set_num_threads(threads)
    speedup = medians["workers_1"] / medians["workers_2"]
    return [
        "## workers: quickstart CNN on digits, 20 clients a round, 2 local epochs, 1 thread each",
        *_settings(),
        f"replies of workers: 2 equal those of workers: 1: {same}",
        f"round time, median of {repeats} after {warmup} warm-up: "
        f"workers 1 {medians['workers_1'] * 1e3:.1f} ms, "
        f"workers 2 {medians['workers_2'] * 1e3:.1f} ms",
        f"workers_speedup: {speedup:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    for line in workers_section(args.repeats, args.warmup):
        print(line)


if __name__ == "__main__":
    main()
