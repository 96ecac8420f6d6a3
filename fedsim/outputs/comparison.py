"""Comparison of variants x seeds: a table (CSV and Markdown) and plots."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "variant",
    "runs",
    "final_acc_mean",
    "final_acc_std",
    "best_acc_mean",
    "rounds_to_target_mean",
    "virtual_time_to_target_mean_s",
    "reached_target",
    "bytes_up_mean",
)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def comparison_rows(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant, aggregating its runs' summaries over seeds."""
    rows = []
    for name, summaries in groups.items():
        finals = [
            s["final_eval_accuracy"] for s in summaries if s["final_eval_accuracy"] is not None
        ]
        rows.append(
            {
                "variant": name,
                "runs": len(summaries),
                "final_acc_mean": _mean(finals),
                "final_acc_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "best_acc_mean": _mean([s["best_eval_accuracy"] for s in summaries]),
                "rounds_to_target_mean": _mean([s["rounds_to_target"] for s in summaries]),
                "virtual_time_to_target_mean_s": _mean(
                    [s["virtual_time_to_target_s"] for s in summaries]
                ),
                "reached_target": sum(s["rounds_to_target"] is not None for s in summaries),
                "bytes_up_mean": _mean([s.get("bytes_up") for s in summaries]),
            }
        )
        if not finals:  # regression (least squares): no accuracy, the test MSE instead
            rows[-1]["final_loss_mean"] = _mean([s.get("final_eval_loss") for s in summaries])
            rows[-1]["virtual_time_mean_s"] = _mean([s.get("virtual_time_s") for s in summaries])
        if any(s.get("final_eval_recall_min") is not None for s in summaries):
            rows[-1]["recall_min_mean"] = _mean([s.get("final_eval_recall_min") for s in summaries])
        keys = sorted({k for s in summaries for k in s.get("diagnostics") or {}})
        for key in keys:  # model diagnostics: their mean over seeds
            rows[-1][f"{key}_mean"] = _mean(
                [(s.get("diagnostics") or {}).get(key) for s in summaries]
            )
    return rows


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The fixed columns, then any diagnostic columns some row has."""
    extra = sorted({k for r in rows for k in r if k not in COLUMNS})
    return [*COLUMNS, *extra]


def format_cell(value: Any) -> str:
    """A table cell: ``-`` for missing, 4 decimals for small floats, 1 for large."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render comparison rows as a Markdown table."""
    cols = columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_comparison(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md``."""
    csv_path, md_path = out_dir / "comparison.csv", out_dir / "comparison.md"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(markdown_table(rows), encoding="utf-8")
    return csv_path, md_path
