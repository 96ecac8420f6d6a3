"""Plots of one run and of a comparison: accuracy and loss vs round, virtual time or bytes.

Curves over several seeds are the mean with a shaded 95% confidence band of the mean
(Student's t, as the comparison table's ``final_acc_ci95``), the band named in the
legend and each curve's seed count beside its name. Each curve has its own (colour,
marker) pair: a qualitative palette of 10 colours, then the same colours with a marker,
so that up to 80 curves stay apart; dashes are kept for a curve's companion (the clients'
training loss beside the test loss, federated evaluation beside the centralised one),
which is why the styles are markers and not dash patterns. The legend stands outside
the axes, to the right, so it never covers the data. Round axes have integer ticks; the
target accuracy is a dotted line. Files go out in every ``output.plot_formats``.
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
from matplotlib.colors import TABLEAU_COLORS
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from fedsim import wire
from fedsim.outputs.callbacks import Callback, Record, RunInfo
from fedsim.outputs.metrics_log import FED_EVAL_PREFIX
from fedsim.outputs.per_client import PER_CLIENT_FILE

# Qualitative: 10 colours told apart without an order (matplotlib's tab10).
PALETTE = tuple(TABLEAU_COLORS)  # tab:blue, tab:orange, ...
# Beyond 10 curves the colours come round again with a marker: (colour, marker) pairs
# stay distinct for len(PALETTE) * len(MARKERS) curves.
MARKERS = ("", "o", "s", "^", "D", "v", "P", "X")
# Markers on at most this many points per curve, so long runs are not a smear.
_MARKS_PER_CURVE = 12

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


def curve_style(index: int) -> tuple[Any, str]:
    """The (colour, marker) of the ``index``-th curve of a figure (deterministic).

    Curves ``0..9`` take the palette's colours without a marker, ``10..19`` the same
    colours with circles, and so on; after ``len(PALETTE) * len(MARKERS)`` curves the
    pairs repeat.
    """
    return PALETTE[index % len(PALETTE)], MARKERS[(index // len(PALETTE)) % len(MARKERS)]


def _ci95(ys: np.ndarray) -> np.ndarray:
    """Half-width of the t-based 95% CI of the mean over axis 0 (rows are seeds)."""
    from scipy.stats import t

    n = ys.shape[0]
    half: np.ndarray = float(t.ppf(0.975, n - 1)) * ys.std(axis=0, ddof=1) / np.sqrt(n)
    return half


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
    marker: str = "",
    dashed: bool = False,
) -> None:
    """Mean over runs with a 95% CI band (two runs or more); nothing without data."""
    curves = [c for c in (_series(r, x, y) for r in runs) if len(c[0])]
    if not curves:
        return
    n = min(len(c[0]) for c in curves)
    xs = np.mean([c[0][:n] for c in curves], axis=0)
    ys = np.stack([c[1][:n] for c in curves])
    mean = ys.mean(axis=0)
    ax.plot(
        xs,
        mean,
        "--" if dashed else "-",
        label=label,
        color=color,
        marker=marker or None,
        markevery=max(1, n // _MARKS_PER_CURVE),
        markersize=4,
    )
    if len(curves) > 1:
        half = _ci95(ys)
        ax.fill_between(xs, mean - half, mean + half, alpha=0.2, color=color)


def _band_label(groups: Mapping[str, Sequence[Sequence[Record]]]) -> str | None:
    """The legend entry of the shaded bands (None when no curve has two seeds)."""
    seeds = {len(runs) for runs in groups.values() if len(runs) > 1}
    if not seeds:
        return None
    if len(seeds) == 1:
        return f"shaded: 95% CI of the mean over {seeds.pop()} seeds"
    return "shaded: 95% CI of the mean over each curve's seeds"


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
    """One curve per group (mean and 95% CI over its runs) per panel and x axis.

    ``x_axes`` picks the panels: ``round``, ``virtual_time_s``, ``cumulative_bytes_up``
    (uplink bytes sent so far), or several. ``target`` draws the target accuracy.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for panel in panels:
        alone = not (len(groups) > 1 or prefix)
        fig = comparison_figure(groups, panel, title, x_axes, alone=alone, target=target)
        written += _save(fig, out_dir, f"{prefix}{panel.file}", formats)
    return written


def comparison_figure(
    groups: Mapping[str, Sequence[Sequence[Record]]],
    panel: Panel,
    title: str,
    x_axes: Sequence[str] = tuple(_AXES),
    *,
    alone: bool = False,
    target: float | None = None,
) -> Figure:
    """One panel's figure: a curve per group in its :func:`curve_style`, one axes per x.

    ``alone`` (one run's own figure) names the lines by the panel, not by the group;
    ``target`` draws the target accuracy on an accuracy panel. The legend is the
    figure's, outside the axes.
    """
    fig, axes = plt.subplots(
        1, len(x_axes), figsize=(5.5 * len(x_axes), 4), layout="constrained", squeeze=False
    )
    for ax, x in zip(axes[0], x_axes, strict=True):
        for index, (name, runs) in enumerate(groups.items()):
            legend = (panel.alone or panel.label) if alone else _legend_name(name, runs)
            color, marker = curve_style(index)
            _draw(ax, runs, x, panel.metric, legend, color=color, marker=marker)
            if panel.companion is not None:
                # Dashed, in the line's style: alone, the legend names it by itself.
                companion = panel.companion_label if alone else f"{legend}, {panel.companion_label}"
                _draw(
                    ax, runs, x, panel.companion, companion, color=color, marker=marker, dashed=True
                )
        if x == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(_AXES[x] if x in _AXES else _CUMULATIVE[x][1])
        ax.set_ylabel(panel.label)
        ax.grid(alpha=0.3)
        if target is not None and panel.metric == "eval_accuracy":
            ax.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    fig.suptitle(title)
    _legend(fig, _band_label(groups))
    return fig


def _legend(fig: Figure, band: str | None) -> None:
    """One legend for the figure, outside the axes on the right (never over the data)."""
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if band is not None:
        handles.append(Patch(color="grey", alpha=0.2))
        labels.append(band)
    if handles:
        # Room for the legend: the axes keep their width beside it.
        fig.set_figwidth(fig.get_figwidth() + 2.5 * (1 + len(labels) // 25))
        # "outside" places it in the constrained layout's margin, beside the axes.
        fig.legend(
            handles, labels, loc="outside right upper", fontsize=8, ncols=1 + len(labels) // 25
        )


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

    draws_random = False  # figures only: no hook draws from the global generators

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        from fedsim.config.expand import run_label

        out = run.run_dir / "plots"
        output = run.scenario.output
        title = f"{run.scenario.name} ({run_label(run.scenario)})"
        plot_run(records, out, title, target=output.target_accuracy, formats=output.plot_formats)
        per_client = run.run_dir / PER_CLIENT_FILE
        if per_client.is_file():
            plot_client_accuracy(per_client, out, title, output.plot_formats)
