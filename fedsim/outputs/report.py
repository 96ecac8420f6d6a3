"""``fedsim report``: overlay finished runs, compare them in one table, write PNG and CSV.

Any run directories can be compared (different scenarios, engines, strategies): each
is one curve and one row, labelled by its directory name. The table's numbers come
from :func:`fedsim.outputs.summary.summarize`, the plots from
:func:`fedsim.outputs.plots.plot_comparison`, so a report agrees with each run's own
``summary.json`` and plots.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.errors import RunDirectoryError
from fedsim.outputs.metrics_log import Record, read_metrics
from fedsim.outputs.plots import plot_comparison
from fedsim.outputs.summary import summarize

# x-axis choices of `fedsim report --x` -> the metrics.jsonl field they plot against.
X_AXES = {
    "round": "round",
    "virtual_time": "virtual_time_s",
    "bytes_up": "cumulative_bytes_up",
}

COLUMNS = (
    "run",
    "final_eval_accuracy",
    "best_eval_accuracy",
    "final_eval_loss",
    "rounds",
    "virtual_time_s",
    "target_accuracy",
    "rounds_to_target",
    "virtual_time_to_target_s",
)


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` produced.

    The table rows, the files written, and warnings about what it read (a log that
    ends in a partial record).
    """

    rows: list[dict[str, Any]]
    csv_path: Path
    plots: list[Path]
    warnings: list[str] = field(default_factory=list)


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Directory names, or the paths as given where two names collide."""
    names = [p.name or str(p) for p in run_dirs]
    return [
        name if names.count(name) == 1 else str(path)
        for name, path in zip(names, run_dirs, strict=True)
    ]


def _records(run_dir: Path, warnings: list[str]) -> list[Record]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no metrics.jsonl)")
    # A run still going, or killed while writing, may end in a partial line: report
    # what is complete and say so.
    return read_metrics(run_dir, warnings)


def _target(run_dir: Path, records: list[Record], target: float | None) -> float | None:
    """The target to score against: the one given, else the run's own scenario's."""
    if target is not None:
        return target
    from fedsim.scenario_loading import load_scenario

    resolved = run_dir / "scenario.resolved.yaml"
    return load_scenario(resolved).output.target_accuracy if resolved.is_file() else None


def write_report(
    run_dirs: Sequence[Path], out_dir: Path, *, x: str = "round", target: float | None = None
) -> Report:
    """Compare runs: ``report.csv`` and ``report_accuracy.png`` / ``report_loss.png``.

    Parameters
    ----------
    run_dirs : sequence of Path
        Run directories (each with a ``metrics.jsonl``).
    out_dir : Path
        Where the CSV and PNGs go (created if needed).
    x : {"round", "virtual_time"}
        The x axis of the plots.
    target : float, optional
        Accuracy for the "to target" columns (default: each run's
        ``output.target_accuracy``).
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, got '{x}'")
    labels = _labels(run_dirs)
    warnings: list[str] = []
    runs = {label: _records(path, warnings) for label, path in zip(labels, run_dirs, strict=True)}
    rows = []
    for (label, records), path in zip(runs.items(), run_dirs, strict=True):
        summary = summarize(
            records, variant=None, seed=0, target_accuracy=_target(path, records, target)
        )
        rows.append({"run": label, **{c: summary[c] for c in COLUMNS[1:]}})
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "report.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plots = plot_comparison(
        {label: [records] for label, records in runs.items()},
        out_dir,
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
        prefix="report_",
        x_axes=(X_AXES[x],),
    )
    return Report(rows, csv_path, plots, warnings)
