"""Central evaluation: post-hoc logit adjustment and per-class recall on hand-made logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import fedsim
from fedsim.evaluation import class_recall, evaluate_model
from fedsim.label_prior import log_prior

# The "model" is the identity: each row of X is that example's logits.
X = np.array([[2.0, 1.5, 0.0], [0.2, 0.0, 0.1], [0.0, 1.0, 0.9], [1.0, 0.0, 0.8]], np.float32)
Y = np.array([0, 2, 2, 2])


def test_recall_per_class_by_hand() -> None:
    """argmax: 0, 0, 1, 0. Class 0: 1/1; class 1: absent (None); class 2: 0/3."""
    assert class_recall(nn.Identity(), X, Y, 3) == [1.0, None, 0.0]


def test_post_hoc_adjustment_subtracts_tau_log_prior() -> None:
    """Prior (0.7, 0.2, 0.1), tau 1: shift -log p = (0.357, 1.609, 2.303).

    Adjusted rows: (2.357, 3.109, 2.303) -> 1; (0.557, 1.609, 2.403) -> 2;
    (0.357, 2.609, 3.203) -> 2; (1.357, 1.609, 3.103) -> 2: accuracy 3/4.
    """
    shift = -1.0 * log_prior(np.array([70, 20, 10]), 3)
    _, plain = evaluate_model(nn.Identity(), X, Y)
    loss, adjusted = evaluate_model(nn.Identity(), X, Y, logit_shift=shift)
    assert plain == 0.25 and adjusted == 0.75
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(X) + shift, torch.from_numpy(Y))
    assert abs(loss - float(expected)) < 1e-6
    assert class_recall(nn.Identity(), X, Y, 3, logit_shift=shift) == [0.0, None, 1.0]


def test_run_logs_recall_and_flipped_labels(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["data"]["label_noise"] = {"rate": 0.3}
    tiny["output"] = {**tiny.get("output", {}), "class_recall": True, "eval_logit_adjust": 1.0}
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path)
    last = result.metrics[-1]
    assert len(last["eval_recall"]) == 10
    assert result.summary["final_eval_recall_min"] == min(last["eval_recall"])
    flipped = json.loads((tmp_path / "label_noise.json").read_text())
    assert len(flipped) == tiny["data"]["num_clients"]
    total = sum(r["flipped"] for r in flipped)
    n = sum(r["examples"] for r in flipped)
    assert abs(total - 0.3 * n) <= 10  # round(0.3 n_c) per class: within 0.5 per class


def test_recall_counts_every_position_of_sequence_targets() -> None:
    """(B, C, T) logits: a class's recall is over all its target positions."""

    class Logits(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 1)  # (B, T, C) rows -> (B, C, T) logits

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    y = rng.integers(0, 3, (4, 5))
    hit = x.argmax(2) == y
    expected = [float(hit[y == c].mean()) for c in range(3)]
    assert class_recall(Logits(), x, y, 3) == pytest.approx(expected)
