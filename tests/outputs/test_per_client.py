"""Per-client evaluation rows and their summary (mean, 10th percentile, worst)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsim.outputs.per_client import append_rows, client_scores, keep_rounds, summarize_clients


def test_scores_skip_clients_without_test_examples_and_summarize() -> None:
    """Accuracies 1, 0.5, 0 (client 2 has no test examples): mean 0.5, worst 0, and the
    10th percentile by linear interpolation 0 + 0.2 * (0.5 - 0) = 0.1."""
    losses = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    correct = np.array([1.0, 1.0, 0.0, 0.0, 1.0])
    parts = [np.array([0, 1]), np.array([2, 4]), np.array([], dtype=np.int64), np.array([3])]
    scores = client_scores(losses, correct, parts)
    assert [s[0] for s in scores] == [0, 1, 3]
    summary = summarize_clients(scores)
    assert summary["client_accuracy_mean"] == pytest.approx(0.5)
    assert summary["client_accuracy_worst"] == 0.0
    assert summary["client_accuracy_p10"] == pytest.approx(0.1)
    assert summary["clients_evaluated"] == 3


def test_resume_keeps_the_rows_up_to_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "per_client_eval.csv"
    for r in range(4):
        append_rows(path, r, [(0, 3, 0.5, 0.25), (1, 2, 0.4, 0.5)])
    keep_rounds(path, 1)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("round,client") and [x.split(",")[0] for x in lines[1:]] == [
        "0", "0", "1", "1",
    ]  # fmt: skip
