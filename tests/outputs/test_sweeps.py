"""Sweeps expand a grid into variants; the comparison has mean ± std and a paired test."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.config.expand import expand, sweep_grid
from fedsim.outputs.comparison import comparison_rows, paired_test


def test_sweep_grid_names_every_combination_in_order() -> None:
    grid = sweep_grid({"client.optimizer.lr": [0.05, 0.1], "strategy.name": ["fedavg", "fedprox"]})
    assert [label for label, _ in grid] == [
        "lr-0.05_name-fedavg",
        "lr-0.05_name-fedprox",
        "lr-0.1_name-fedavg",
        "lr-0.1_name-fedprox",
    ]
    assert grid[1][1] == {"client.optimizer.lr": 0.05, "strategy.name": "fedprox"}


def test_sweep_crosses_variants_and_seeds(tiny: dict[str, Any]) -> None:
    tiny["sweep"] = {"client.optimizer.lr": [0.05, 0.2]}
    tiny["variants"] = {"a": {}, "b": {"rounds": 3}}
    tiny["seeds"] = [1, 2]
    runs = expand(fedsim.load_scenario(tiny))
    assert [(r.variant, r.seed, r.client.optimizer.lr, r.rounds) for r in runs] == [
        ("a_lr-0.05", 1, 0.05, 2),
        ("a_lr-0.05", 2, 0.05, 2),
        ("a_lr-0.2", 1, 0.2, 2),
        ("a_lr-0.2", 2, 0.2, 2),
        ("b_lr-0.05", 1, 0.05, 3),
        ("b_lr-0.05", 2, 0.05, 3),
        ("b_lr-0.2", 1, 0.2, 3),
        ("b_lr-0.2", 2, 0.2, 3),
    ]


def test_a_bad_sweep_value_names_its_key(tiny: dict[str, Any]) -> None:
    tiny["sweep"] = {"client.optimizer.lr": [0.1, -1]}
    with pytest.raises(fedsim.ScenarioError, match=r"sweep\.client\.optimizer\.lr"):
        fedsim.load_scenario(tiny)


def _summaries(accs: dict[int, float]) -> list[dict[str, Any]]:
    return [
        {
            "seed": s,
            "final_eval_accuracy": a,
            "best_eval_accuracy": a,
            "rounds_to_target": None,
            "virtual_time_to_target_s": None,
        }
        for s, a in accs.items()
    ]


def test_paired_test_against_closed_form_t_distributions() -> None:
    """Student's t with 1 and 2 degrees of freedom has closed-form tails.

    d = variant - baseline per seed, t = mean(d) / (sd(d) / sqrt(n)); two-sided p:
    df=1 (Cauchy): 1 - 2 atan(|t|) / pi; df=2: 1 - |t| / sqrt(t^2 + 2).
    """
    base = _summaries({0: 0.50, 1: 0.60, 2: 0.55})
    var = _summaries({0: 0.58, 1: 0.63, 2: 0.61, 9: 0.99})  # seed 9 has no pair
    d = [0.08, 0.03, 0.06]
    t = statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(3))
    delta, p = paired_test(var, base)
    assert delta == pytest.approx(statistics.fmean(d))
    assert p == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2))
    delta, p = paired_test(var[:2], base)
    t = statistics.fmean(d[:2]) / (statistics.stdev(d[:2]) / math.sqrt(2))
    assert p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
    assert paired_test(var[:1], base)[1] is None  # one pair: no test
    rows = comparison_rows({"base": base, "new": var}, baseline="base")
    assert rows[0]["p_paired"] is None and rows[1]["delta_acc_vs_baseline"] is not None
    with pytest.raises(ValueError, match="baseline 'nope'"):
        comparison_rows({"base": base}, baseline="nope")


def test_two_keys_two_values_two_seeds_make_eight_runs_and_one_table(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["rounds"] = 1
    tiny["seeds"] = [0, 1]
    tiny["data"]["num_clients"] = 2
    tiny["sweep"] = {"client.optimizer.lr": [0.05, 0.2]}
    tiny["output"]["baseline"] = "lr-0.05_local_epochs-1"
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", str(path), "--sweep", "client.local_epochs=1,2", "--out", str(out), "-q"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(runs) == 8 and "lr-0.2_local_epochs-2-seed1" in runs
    with (out / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == [
        "lr-0.05_local_epochs-1",
        "lr-0.05_local_epochs-2",
        "lr-0.2_local_epochs-1",
        "lr-0.2_local_epochs-2",
    ]
    assert all(r["runs"] == "2" for r in rows)
    assert rows[0]["p_paired"] == "" and rows[0]["delta_acc_vs_baseline"] == ""
    assert all(r["delta_acc_vs_baseline"] != "" for r in rows[1:])
    # Printed as a table with mean ± std, not raw markdown.
    assert "±" in result.output and "final_acc (mean ± std)" in result.output
    assert "|---|" not in result.output


def test_a_baseline_that_is_no_variant_is_a_validation_error(tiny: dict[str, Any]) -> None:
    tiny["sweep"] = {"client.optimizer.lr": [0.05, 0.2]}
    tiny["output"]["baseline"] = "lr-0.1"
    with pytest.raises(
        fedsim.ScenarioError,
        match=r"output\.baseline: 'lr-0\.1' is not a variant; variants: lr-0\.05, lr-0\.2",
    ):
        fedsim.load_scenario(tiny)
    tiny["output"]["baseline"] = "lr-0.2"
    assert fedsim.load_scenario(tiny).output.baseline == "lr-0.2"
