"""Whole runs through the Python API: outputs, determinism, variants x seeds, faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message

import fedsim
from fedsim.errors import RunDirectoryError
from fedsim.outputs.metrics_log import WALL_CLOCK_FIELDS
from tests.conftest import run_with_client_app

REQUIRED_ROUND_KEYS = {
    "round",
    "virtual_time_s",
    "wall_time_s",
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "participants",
    "stragglers",
    "failures",
    "bytes_up",
    "bytes_down",
}
REQUIRED_SUMMARY_KEYS = {
    "variant",
    "seed",
    "final_eval_accuracy",
    "best_eval_accuracy",
    "rounds_to_target",
    "virtual_time_to_target_s",
}


def _strip_wall(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS} for r in records]


def test_run_writes_the_run_directory(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["output"]["plots"] = True
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    files = {p.name for p in result.run_dir.iterdir()}
    assert {
        "scenario.resolved.yaml",
        "metrics.jsonl",
        "summary.json",
        "plots",
        "final_arrays.npz",
    } <= files
    assert {p.name for p in (result.run_dir / "plots").iterdir()} == {"accuracy.png", "loss.png"}
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(set(r) >= REQUIRED_ROUND_KEYS for r in records)
    assert records[2]["participants"] == 4 and records[2]["bytes_up"] > 0
    assert records[2]["virtual_time_s"] > records[1]["virtual_time_s"] > 0
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert set(summary) >= REQUIRED_SUMMARY_KEYS
    assert summary["final_eval_accuracy"] == records[-1]["eval_accuracy"]
    # The resolved scenario reloads to the very same scenario.
    assert fedsim.load_scenario(result.run_dir / "scenario.resolved.yaml") == result.scenario


def test_same_seed_same_metrics(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["system"].update(straggle_prob=0.3, deadline_s=1.0, dropout_prob=0.1, failure_prob=0.1)
    tiny["strategy"]["params"]["fraction_train"] = 0.5
    tiny["rounds"] = 4
    a = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    b = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b")
    assert _strip_wall(a.metrics) == _strip_wall(b.metrics)
    wa, wb = np.load(a.run_dir / "final_arrays.npz"), np.load(b.run_dir / "final_arrays.npz")
    assert all(np.array_equal(wa[k], wb[k]) for k in wa.files)
    tiny["seed"] = 4
    c = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    assert _strip_wall(c.metrics) != _strip_wall(a.metrics)


def test_variants_and_seeds_make_one_directory_each(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["seeds"] = [0, 1]
    tiny["variants"] = {
        "fedavg": {},
        "fedprox": {"strategy": {"name": "fedprox", "params": {"proximal_mu": 0.1}}},
        "slow-lr": {"client.optimizer.lr": 0.01},
    }
    result = fedsim.run_experiment(fedsim.load_scenario(tiny), tmp_path / "cmp")
    dirs = sorted(p.name for p in result.out_dir.iterdir() if p.is_dir())
    assert dirs == [f"{v}-seed{s}" for v in ("fedavg", "fedprox", "slow-lr") for s in (0, 1)]
    for d in dirs:
        assert (result.out_dir / d / "summary.json").exists()
    assert {
        "comparison.csv",
        "comparison.md",
        "comparison_accuracy.png",
        "comparison_loss.png",
    } <= {p.name for p in result.out_dir.iterdir()}
    table = (result.out_dir / "comparison.md").read_text()
    assert "| fedprox | 2 |" in table
    assert [r["variant"] for r in result.table] == ["fedavg", "fedprox", "slow-lr"]
    prox = next(r for r in result.runs if r.scenario.variant == "fedprox")
    assert prox.scenario.strategy.params == {"fraction_train": 1.0, "proximal_mu": 0.1}


def test_injected_failures_are_counted_and_the_run_completes(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["system"]["failure_prob"] = 0.4
    tiny["rounds"] = 3
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "f")
    failures = [r["failures"] for r in result.metrics]
    assert sum(failures) > 0
    assert [r["failures"] + r["participants"] for r in result.metrics[1:]] == [4, 4, 4]
    assert result.summary["failures"] == sum(failures)
    assert result.summary["final_eval_accuracy"] is not None


def test_a_client_app_that_raises_on_some_nodes(tiny: dict[str, Any], tmp_path: Path) -> None:
    """A real exception inside the ClientApp (odd partitions) becomes a counted failure."""
    from fedsim import wire
    from fedsim.client.app import app as client_app
    from fedsim.outputs.metrics_log import read_metrics

    def flaky(msg: Message, ctx: Context) -> Message:
        if int(ctx.node_config[wire.PARTITION_ID]) % 2 == 1:
            raise ValueError("disk full")
        return client_app(msg, ctx)

    run_dir = tmp_path / "r"
    grid = run_with_client_app(fedsim.load_scenario(tiny), flaky, run_dir)
    records = read_metrics(run_dir)
    assert [r["failures"] for r in records] == [0, 2, 2]
    assert [r["participants"] for r in records] == [0, 2, 2]
    assert any("ValueError: disk full" in reason for reason in grid.telemetry.failure_reasons)


def test_run_refuses_to_overwrite(tiny: dict[str, Any], tmp_path: Path) -> None:
    fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "x")


def test_proximal_step_reaches_the_client(tiny: dict[str, Any], tmp_path: Path) -> None:
    """FedProx with a large mu (lr·mu = 0.5, still stable) pins clients to the global model: training barely moves."""
    tiny["strategy"] = {"name": "fedprox", "params": {"proximal_mu": 5.0}}
    tiny["rounds"] = 2
    prox = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "p")
    tiny["strategy"] = {"name": "fedavg"}
    plain = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "q")
    assert prox.metrics[-1]["eval_loss"] > plain.metrics[-1]["eval_loss"]
