"""One epsilon per DP run: the largest client spend, in summary.json and the final line."""

from __future__ import annotations

import copy
from pathlib import Path

from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.outputs.summary import summarize
from tests.conftest import TINY, write_yaml


def test_the_summary_holds_one_epsilon_the_largest_spend() -> None:
    """FedAvg's weighted mean of the clients' epsilon (``train/epsilon``) bounds no one's
    privacy; only the largest spend is reported."""
    records = [
        {"round": 0, "eval_loss": 1.0, "eval_accuracy": 0.1},
        {"round": 1, "eval_loss": 0.9, "eval_accuracy": 0.2, "epsilon": 17.893,
         "train/epsilon": 17.855, "train/other": 1.0},
    ]  # fmt: skip
    summary = summarize(records, variant=None, seed=0, target_accuracy=None)
    assert summary["epsilon"] == 17.893
    assert summary["strategy_metrics"] == {"train/other": 1.0}


def test_a_dp_runs_final_line_shows_epsilon(tmp_path: Path) -> None:
    scenario = copy.deepcopy(TINY)
    scenario["rounds"] = 1
    scenario["client"]["dp"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    path = write_yaml(tmp_path / "s.yaml", scenario)
    result = CliRunner().invoke(app, ["run", "-q", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    final = next(line for line in result.output.splitlines() if line.startswith("final"))
    assert ", epsilon " in final
