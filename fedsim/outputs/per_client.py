"""Per-client evaluation: the global model on each client's own test split.

Personalised-FL papers report the distribution over clients rather than one pooled
number: the mean, the 10th percentile and the worst client. Every evaluated round
appends one row per client to ``per_client_eval.csv`` and adds the summary to its
``metrics.jsonl`` record.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

PER_CLIENT_FILE = "per_client_eval.csv"
_HEADER = ["round", "client", "num_examples", "loss", "accuracy"]
NO_CLIENT_TESTS = (
    "(partitioner 'natural' over data with test ids: npz client_id_test, leaf, "
    "or client_id with a carved test split)"
)


def client_scores(
    losses: NDArray[np.float64], correct: NDArray[np.float64], parts: Sequence[NDArray[np.int64]]
) -> list[tuple[int, int, float, float]]:
    """``(client, examples, mean loss, accuracy)`` of every client with test examples."""
    return [
        (k, len(p), float(losses[p].mean()), float(correct[p].mean()))
        for k, p in enumerate(parts)
        if len(p)
    ]


def summarize_clients(scores: Sequence[tuple[int, int, float, float]]) -> dict[str, Any]:
    """The metrics.jsonl fields: accuracy mean, 10th percentile, worst; mean loss; count."""
    if not scores:
        return {"clients_evaluated": 0}
    acc = np.array([s[3] for s in scores])
    return {
        "client_accuracy_mean": float(acc.mean()),
        "client_accuracy_p10": float(np.percentile(acc, 10)),
        "client_accuracy_worst": float(acc.min()),
        "client_loss_mean": float(np.mean([s[2] for s in scores])),
        "clients_evaluated": len(scores),
    }


def append_rows(
    path: Path, server_round: int, scores: Sequence[tuple[int, int, float, float]]
) -> None:
    """Append one round's rows to the per-client file (writing the header first)."""
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(_HEADER)
        for k, n, loss, acc in scores:
            writer.writerow([server_round, k, n, f"{loss:.6g}", f"{acc:.6g}"])


def keep_rounds(path: Path, last_round: int) -> None:
    """Drop the rows after ``last_round`` (a resumed run reruns those rounds)."""
    if not path.exists():
        return
    with path.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)]
    kept = [rows[0], *(r for r in rows[1:] if int(r[0]) <= last_round)] if rows else []
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(kept)
