"""The summary says what the last round says (issue #33, items 1 and 4).

A final round that evaluates to NaN, or not at all, leaves no final accuracy (never an
older round's), marks the run diverged and makes ``fedsim run`` exit non-zero; best
and final name their rounds; regression runs (no accuracy) end with exit 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fedsim.cli.main import app
from fedsim.cli.summary_line import DIVERGED_EXIT, summary_line
from fedsim.outputs.comparison import comparison_rows, display
from fedsim.outputs.summary import summarize
from tests.conftest import write_yaml

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def _records(*evals: tuple[float | None, str | None]) -> list[dict[str, Any]]:
    """Round records 0.. with the given (accuracy, eval_status) pairs."""
    out = []
    for r, (acc, status) in enumerate(evals):
        record: dict[str, Any] = {"round": r, "eval_accuracy": acc, "eval_loss": acc}
        if status is not None:
            record["eval_status"] = status
        out.append(record)
    return out


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    return summarize(records, variant=None, seed=0, target_accuracy=None)


def test_a_nan_final_round_has_no_final_accuracy() -> None:
    s = _summary(_records((0.1, None), (0.6, None), (None, "non-finite")))
    assert s["status"] == "diverged" and s["final_eval_status"] == "non-finite"
    assert s["final_eval_accuracy"] is None and s["final_eval_loss"] is None
    # Best is kept, and names its round, so it cannot pass for the final one.
    assert (s["best_eval_accuracy"], s["best_eval_round"]) == (0.6, 1)
    assert "diverged" in summary_line(s) and "NaN" in summary_line(s)


def test_a_final_round_without_evaluation_is_missing_not_an_older_one() -> None:
    s = _summary(_records((0.1, None), (0.6, None), (None, None)))
    assert (s["status"], s["final_eval_status"], s["final_eval_accuracy"]) == (
        "diverged",
        "missing",
        None,
    )


def test_a_clean_run_is_completed_with_its_last_round() -> None:
    s = _summary(_records((0.1, None), (0.7, None), (0.6, None)))
    assert (s["status"], s["final_eval_accuracy"], s["best_eval_round"]) == ("completed", 0.6, 1)


def test_comparison_counts_diverged_runs() -> None:
    ok = _summary(_records((0.5, None)))
    bad = _summary(_records((0.5, None), (None, "non-finite")))
    rows = comparison_rows({"a": [ok, bad]})
    assert rows[0]["final_acc_mean"] == 0.5 and rows[0]["diverged_runs"] == 1
    headers, cells = display(rows)
    assert cells[0][headers.index("diverged_runs")] == "1"


def test_cli_run_whose_final_round_is_nan_exits_diverged(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedsim.server.evaluation as evaluation

    real = evaluation.evaluate_model
    calls: list[int] = []

    def nan_in_the_last_round(*args: Any, **kwargs: Any) -> tuple[float, float]:
        calls.append(1)
        if len(calls) <= tiny["rounds"]:  # rounds 0 .. rounds-1 are honest
            return real(*args, **kwargs)  # type: ignore[no-any-return]
        return math.nan, math.nan

    monkeypatch.setattr(evaluation, "evaluate_model", nan_in_the_last_round)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["run", str(write_yaml(tmp_path / "s.yaml", tiny)), "--out", str(out), "-q"]
    )
    assert result.exit_code == DIVERGED_EXIT, result.output
    assert "the final round (round 2) evaluates to NaN" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_eval_accuracy"] is None and summary["status"] == "diverged"
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval_status"] == "non-finite" and last["eval_accuracy"] is None


@pytest.mark.parametrize(
    "overrides",
    [
        # The shipped scenario without its variants, seeds and tuning: one regression run.
        ["rounds=2", "seeds=null", "variants={}", "tuning=null"],
        # with its variants (untuned: tests/test_strategies_doc.py runs its tuning)
        ["rounds=2", "seeds=[0]", "data.dataset.num_samples=400", "tuning=null"],
    ],
    ids=["one-run", "variants"],
)
def test_shipped_regression_run_exits_zero(overrides: list[str], tmp_path: Path) -> None:
    args = ["run", str(SCENARIOS / "ldpc_regression.yaml"), "--out", str(tmp_path / "o"), "-q"]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    if "variants={}" in overrides:
        assert "final loss" in result.output
