"""tuning: each variant tuned on its own seeds; diverged settings never chosen or averaged.

The expected choices are recomputed here from the tuning runs' own metrics files
(final test accuracy, mean over tuning seeds, diverged points left out), not read from
what fedsim reports.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.compose import load_scenario
from fedsim.experiment import run_experiment

LRS = [0.003, 0.3, 1e4]  # 1e4 blows the model up: diverged


def _scenario(tiny: dict[str, Any]) -> dict[str, Any]:
    tiny["seeds"] = [5, 6]  # the reported runs
    tiny["variants"] = {"sgd": {}, "adam": {"client.optimizer.name": "adam"}}
    tiny["tuning"] = {"seeds": [1], "grid": {"client.optimizer.lr": LRS}}
    tiny["output"]["baseline"] = "sgd"
    return tiny


def _independent_choice(root: Path, variant: str) -> float:
    """The lr with the best mean final accuracy among the non-diverged tuning runs."""
    best: tuple[float, float] | None = None
    for lr in LRS:
        scores = []
        for run in sorted((root / "tuning").glob(f"{variant}__lr-*-seed*")):
            resolved = (run / "scenario.resolved.yaml").read_text()
            if f"lr: {lr}" not in resolved and f"lr: {lr:g}" not in resolved:
                continue
            if not (run / "summary.json").exists():  # diverged (DivergedError)
                scores = []
                break
            records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            losses = [r["eval_loss"] for r in records]
            if not all(math.isfinite(x) for x in losses) or losses[-1] > losses[0]:
                scores = []
                break
            scores.append(records[-1]["eval_accuracy"])
        if scores and (best is None or sum(scores) / len(scores) > best[1]):
            best = (lr, sum(scores) / len(scores))
    assert best is not None
    return best[0]


def test_each_variant_gets_its_own_setting_and_a_diverged_one_never_wins(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "cmp"
    result = run_experiment(load_scenario(_scenario(tiny)), root)
    summary = json.loads((root / "summary.json").read_text())
    chosen = {v: s["client.optimizer.lr"] for v, s in summary["tuning"]["chosen"].items()}
    assert chosen == {v: _independent_choice(root, v) for v in ("sgd", "adam")}
    assert chosen["sgd"] != chosen["adam"]  # each variant its own step size
    assert 1e4 not in chosen.values()
    diverged = [p for p in summary["tuning"]["points"] if p["diverged"]]
    assert diverged and all(p["settings"]["client.optimizer.lr"] == 1e4 for p in diverged)
    assert all(p["mean"] is None and not p["chosen"] for p in diverged)  # never averaged in
    # The reported runs use the chosen lr, on the reported seeds only.
    for run in result.runs:
        assert run.scenario.seed in (5, 6)
        assert run.scenario.client.optimizer.lr == chosen[run.scenario.variant or ""]
    table = (root / "comparison.md").read_text()
    assert "diverged" in table and "Chosen settings" in table
    rows = {r["variant"]: r for r in result.table}
    assert rows["adam"]["p_paired"] is not None or rows["adam"]["delta_acc_vs_baseline"] is not None
    assert rows["sgd"]["final_acc_ci95"] is not None  # two reported seeds: a t interval


def test_an_interrupted_tuned_comparison_resumes_with_jobs(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs already finished are read back; removed ones run again (2 jobs), and the
    choices and the comparison are the same as the first time."""
    tiny["variants"] = {"sgd": {}}
    tiny["seeds"] = [5, 6]
    tiny["tuning"] = {"seeds": [1], "grid": {"client.optimizer.lr": [0.03, 0.3]}}
    scenario = load_scenario(tiny)
    root = tmp_path / "cmp"
    first = run_experiment(scenario, root)
    shutil.rmtree(root / "sgd-seed6")
    (root / "tuning" / "sgd__lr-0.03-seed1" / "summary.json").unlink()  # cut short
    ran: list[str] = []
    from fedsim import experiment

    real = experiment.execute_runs

    def counting(runs: Any, targets: Any, jobs: int, verbose: Any, **kw: Any) -> Any:
        ran.extend(t.name for t in targets)
        return real(runs, targets, jobs, verbose, **kw)

    monkeypatch.setattr(experiment, "execute_runs", counting)
    again = run_experiment(scenario, root, jobs=2)
    assert sorted(ran) == ["sgd-seed6", "sgd__lr-0.03-seed1"]
    assert again.table == first.table


def test_tuning_seeds_must_differ_from_the_reported_ones(tiny: dict[str, Any]) -> None:
    tiny["seeds"] = [1, 2]
    tiny["tuning"] = {"seeds": [2], "grid": {"client.optimizer.lr": [0.1]}}
    with pytest.raises(fedsim.ScenarioError, match=r"tuning\.seeds must differ"):
        load_scenario(tiny)


def test_validate_checks_every_tuning_point(tiny: dict[str, Any], tmp_path: Path) -> None:
    """A grid key that does not exist is refused by `fedsim validate`, naming tuning."""
    from typer.testing import CliRunner

    from fedsim.cli.main import app
    from tests.conftest import write_yaml

    tiny["seeds"] = [5]
    tiny["tuning"] = {"seeds": [1], "grid": {"client.optimizer.lrr": [0.1]}}
    result = CliRunner().invoke(app, ["validate", str(write_yaml(tmp_path / "s.yaml", tiny))])
    assert result.exit_code == 2, result.output
    assert "tuning." in result.output and "lrr" in result.output
