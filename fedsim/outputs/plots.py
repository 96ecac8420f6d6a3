"""Plots of one run and of a comparison: accuracy and loss vs round, virtual time or bytes.

Curves over several seeds are the mean with a ±1 standard-deviation band, and the
legend says how many seeds each holds. Round axes have integer ticks; the target
accuracy is a dotted line; the loss panel shows the clients' training loss (dashed)
beside the test loss; federated evaluation (``fed-eval/eval-accuracy``), when it ran,
is dashed on the accuracy panel. Files go out in every ``output.plot_formats``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedsim import wire
from fedsim.outputs.callbacks import Callback, Record, RunInfo
from fedsim.outputs.metrics_log import FED_EVAL_PREFIX
from fedsim.outputs.per_client import PER_CLIENT_FILE

_AXES = {"round": "round", "virtual_time_s": "virtual time (s)"}
# Axes that are not a record's field but the running sum of one (uplink bytes so far).
_CUMULATIVE = {"cumulative_bytes_up": ("bytes_up", "uplink bytes so far")}


@dataclass(frozen=True)
class Panel:
    """One figure: a main metric, and a companion drawn dashed in the same colour."""

    metric: str
    label: str
    file: str
    companion: str | None = None
    companion_label: str = ""
    # The main line's legend entry in a one-run figure (the label when empty).
    alone: str = ""


PANELS = (
    Panel(
        "eval_accuracy",
        "test accuracy",
        "accuracy",
        f"{FED_EVAL_PREFIX}{wire.EVAL_ACCURACY}",
        "federated eval",
    ),
    Panel("eval_loss", "loss", "loss", "train_loss", "train loss", alone="test loss"),
)


def metric_panel(metric: str) -> Panel:
    """A panel for any record field (``fedsim report --metric``)."""
    for panel in PANELS:
        if panel.metric == metric:
            return panel
    return Panel(metric, metric, metric.replace("/", "_"))


def _series(records: Sequence[Record], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    if x in _CUMULATIVE:
        field = _CUMULATIVE[x][0]
        sums = np.cumsum([r.get(field) or 0 for r in records])
        records = [{**r, x: float(total)} for r, total in zip(records, sums, strict=True)]
    pts = [
        (r[x], r[y])
        for r in records
        if isinstance(r.get(x), int | float) and isinstance(r.get(y), int | float)
    ]
    if not pts:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*pts, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _draw(
    ax: Axes,
    runs: Sequence[Sequence[Record]],
    x: str,
    y: str,
    label: str,
    *,
    color: Any = None,
    dashed: bool = False,
) -> Any:
    """Mean over runs with a ±1 std band; returns the line's colour (None: no data)."""
    curves = [c for c in (_series(r, x, y) for r in runs) if len(c[0])]
    if not curves:
        return None
    n = min(len(c[0]) for c in curves)
    xs = np.mean([c[0][:n] for c in curves], axis=0)
    ys = np.stack([c[1][:n] for c in curves])
    mean = ys.mean(axis=0)
    (line,) = ax.plot(xs, mean, "--" if dashed else "-", label=label, color=color)
    if len(curves) > 1:
        std = ys.std(axis=0, ddof=1)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    return line.get_color()


def _legend_name(name: str, runs: Sequence[Sequence[Record]]) -> str:
    seeds = len(runs)
    return f"{name} (n={seeds} seed{'s' if seeds != 1 else ''})" if seeds > 1 else name


def _save(fig: Figure, out_dir: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)
    return paths


def plot_comparison(
    groups: Mapping[str, Sequence[Sequence[Record]]],
    out_dir: Path,
    title: str,
    prefix: str = "comparison_",
    x_axes: Sequence[str] = tuple(_AXES),
    *,
    target: float | None = None,
    formats: Sequence[str] = ("png",),
    panels: Sequence[Panel] = PANELS,
) -> list[Path]:
    """One curve per group (mean ± std over its runs) per panel and x axis.

    ``x_axes`` picks the panels: ``round``, ``virtual_time_s``, ``cumulative_bytes_up``
    (uplink bytes sent so far), or several. ``target`` draws the target accuracy.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for panel in panels:
        fig, axes = plt.subplots(
            1, len(x_axes), figsize=(5.5 * len(x_axes), 4), constrained_layout=True, squeeze=False
        )
        for ax, x in zip(axes[0], x_axes, strict=True):
            for name, runs in groups.items():
                alone = not (len(groups) > 1 or prefix)
                legend = (panel.alone or panel.label) if alone else _legend_name(name, runs)
                color = _draw(ax, runs, x, panel.metric, legend)
                if panel.companion is not None:
                    # Dashed, in the line's colour: alone, the legend names it by itself.
                    companion = (
                        panel.companion_label if alone else f"{legend}, {panel.companion_label}"
                    )
                    _draw(ax, runs, x, panel.companion, companion, color=color, dashed=True)
            if target is not None and panel.metric == "eval_accuracy":
                ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
            if x == "round":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(_AXES[x] if x in _AXES else _CUMULATIVE[x][1])
            ax.set_ylabel(panel.label)
            ax.grid(alpha=0.3)
        if axes[0][0].get_legend_handles_labels()[0]:
            axes[0][0].legend(fontsize=8)
        fig.suptitle(title)
        written += _save(fig, out_dir, f"{prefix}{panel.file}", formats)
    return written


def plot_run(
    records: Sequence[Record],
    out_dir: Path,
    title: str,
    *,
    target: float | None = None,
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """Write ``accuracy.*`` and ``loss.*`` (each vs round and vs virtual time)."""
    return plot_comparison(
        {title: [records]}, out_dir, title, prefix="", target=target, formats=formats
    )


def plot_client_accuracy(
    per_client_csv: Path, out_dir: Path, title: str, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """``client_accuracy.*``: the clients' accuracies, one box per evaluated round."""
    rounds: dict[int, list[float]] = {}
    with per_client_csv.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rounds.setdefault(int(row["round"]), []).append(float(row["accuracy"]))
    if not rounds:
        return []
    keys = sorted(rounds)
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * len(keys)), 4), constrained_layout=True)
    ax.boxplot([rounds[k] for k in keys], positions=keys, widths=0.6, manage_ticks=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy on the client's own test split")
    ax.set_title(f"{title}: per-client accuracy ({len(rounds[keys[-1]])} clients)")
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, "client_accuracy", formats)


class PlotsCallback(Callback):
    """``plots/``: the run's figures, drawn when the run ends (``output.plots``)."""

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        from fedsim.config.expand import run_label

        out = run.run_dir / "plots"
        output = run.scenario.output
        title = f"{run.scenario.name} ({run_label(run.scenario)})"
        plot_run(records, out, title, target=output.target_accuracy, formats=output.plot_formats)
        per_client = run.run_dir / PER_CLIENT_FILE
        if per_client.is_file():
            plot_client_accuracy(per_client, out, title, output.plot_formats)
