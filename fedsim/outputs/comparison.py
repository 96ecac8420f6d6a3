"""Comparison of variants x seeds: a table (CSV and Markdown) and plots.

Each variant's final accuracy is its mean over seeds with its standard deviation and
the half-width of its 95% confidence interval (Student's t with n - 1 degrees of
freedom, ``t·s/√n``; None with one run). Given a baseline variant
(``output.baseline``), every other variant also gets the mean paired difference to it
and the two-sided p-value of a paired t-test over the seeds both ran
(``scipy.stats.ttest_rel``; None with fewer than two pairs or no spread). Rounds to
``output.target_accuracy`` come with their standard deviation over the runs that
reached it and the count of runs that never did (``never_reached``).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.outputs.summary import DIVERGED

COLUMNS = (
    "variant",
    "runs",
    "final_acc_mean",
    "final_acc_std",
    "final_acc_ci95",
    "delta_acc_vs_baseline",
    "p_paired",
    "best_acc_mean",
    "rounds_to_target_mean",
    "rounds_to_target_std",
    "virtual_time_to_target_mean_s",
    "reached_target",
    "never_reached",
    "bytes_up_mean",
)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def ci95_half_width(values: Sequence[float]) -> float | None:
    """Half-width of the t-based 95% confidence interval of the mean (None below 2)."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def _stdev(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.stdev(vals) if len(vals) > 1 else None


def paired_test(
    variant: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]
) -> tuple[float | None, float | None]:
    """Mean paired difference of final accuracy (variant - baseline) and its p-value.

    Runs are paired by seed; seeds only one side ran are left out.
    """
    base = {s["seed"]: s["final_eval_accuracy"] for s in baseline}
    pairs = [
        (s["final_eval_accuracy"], base[s["seed"]])
        for s in variant
        if s.get("final_eval_accuracy") is not None and base.get(s["seed"]) is not None
    ]
    if not pairs:
        return None, None
    diffs = [a - b for a, b in pairs]
    delta = statistics.fmean(diffs)
    if len(pairs) < 2 or statistics.stdev(diffs) == 0:
        return delta, None
    from scipy.stats import ttest_rel

    p = float(ttest_rel([a for a, _ in pairs], [b for _, b in pairs]).pvalue)
    return delta, p


def comparison_rows(
    groups: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str | None = None
) -> list[dict[str, Any]]:
    """One row per variant, aggregating its runs' summaries over seeds.

    Raises
    ------
    ValueError
        If ``baseline`` is not one of the variants.
    """
    if baseline is not None and baseline not in groups:
        raise ValueError(f"baseline '{baseline}' is not a variant; variants: {sorted(groups)}")
    rows = []
    for name, summaries in groups.items():
        finals = [
            s["final_eval_accuracy"] for s in summaries if s["final_eval_accuracy"] is not None
        ]
        delta = p = None
        if baseline is not None and name != baseline:
            delta, p = paired_test(summaries, groups[baseline])
        rows.append(
            {
                "variant": name,
                "runs": len(summaries),
                "final_acc_mean": _mean(finals),
                # One seed has no spread to report: null, never a made-up 0.
                "final_acc_std": statistics.stdev(finals) if len(finals) > 1 else None,
                "final_acc_ci95": ci95_half_width(finals),
                "delta_acc_vs_baseline": delta,
                "p_paired": p,
                "best_acc_mean": _mean([s["best_eval_accuracy"] for s in summaries]),
                "rounds_to_target_mean": _mean([s["rounds_to_target"] for s in summaries]),
                "rounds_to_target_std": _stdev([s["rounds_to_target"] for s in summaries]),
                "virtual_time_to_target_mean_s": _mean(
                    [s["virtual_time_to_target_s"] for s in summaries]
                ),
                "reached_target": sum(s["rounds_to_target"] is not None for s in summaries),
                "never_reached": sum(s["rounds_to_target"] is None for s in summaries),
                "bytes_up_mean": _mean([s.get("bytes_up") for s in summaries]),
            }
        )
        diverged = sum(s.get("status") == DIVERGED for s in summaries)
        if diverged:  # their final accuracy is NaN: left out of the mean, counted here
            rows[-1]["diverged_runs"] = diverged
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


def format_cell(value: Any, column: str = "") -> str:
    """A table cell: ``-`` for missing, 4 decimals for small floats, 1 for large.

    Byte counts are whole numbers with thousands separators (``1,234,567``).
    """
    if value is None:
        return "-"
    if "bytes" in column and isinstance(value, int | float) and math.isfinite(value):
        return f"{round(value):,}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def display(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells for a printed table: final accuracy as ``mean ± 95% CI``.

    Columns that are None in every row (no baseline, no target) are left out.
    """
    hidden = ("final_acc_std", "final_acc_ci95")
    cols = [c for c in columns(rows) if c not in hidden and any(r.get(c) is not None for r in rows)]
    headers = ["final_acc (mean ± 95% CI)" if c == "final_acc_mean" else c for c in cols]
    cells = []
    for r in rows:
        line = []
        for c in cols:
            spread = r.get("final_acc_ci95")
            if c == "final_acc_mean" and r.get(c) is not None and spread is not None:
                line.append(f"{format_cell(r[c])} ± {format_cell(spread)}")
            else:  # one seed: the mean alone (no ± from a single run)
                line.append(format_cell(r.get(c), c))
        cells.append(line)
    return headers, cells


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render comparison rows as a Markdown table."""
    headers, cells = display(rows)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines) + "\n"


def write_comparison_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Write comparison rows as CSV at full precision (every column some row has)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows))
        writer.writeheader()
        writer.writerows(rows)


def write_comparison(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``comparison.csv`` and ``comparison.md``."""
    csv_path, md_path = out_dir / "comparison.csv", out_dir / "comparison.md"
    write_comparison_csv(rows, csv_path)
    md_path.write_text(markdown_table(rows), encoding="utf-8")
    return csv_path, md_path
