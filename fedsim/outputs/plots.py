"""PNG plots of one run and of a comparison (accuracy and loss vs round and virtual time)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display

import matplotlib.pyplot as plt
import numpy as np

from fedsim.outputs.metrics_log import Record

_AXES = {"round": "round", "virtual_time_s": "virtual time (s)"}
# Axes that are not a record's field but the running sum of one (uplink bytes so far).
_CUMULATIVE = {"cumulative_bytes_up": ("bytes_up", "uplink bytes so far")}
_PANELS = (("eval_accuracy", "test accuracy"), ("eval_loss", "test loss"))


def _series(records: Sequence[Record], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    if x in _CUMULATIVE:
        field = _CUMULATIVE[x][0]
        sums = np.cumsum([r.get(field) or 0 for r in records])
        records = [{**r, x: float(total)} for r, total in zip(records, sums, strict=True)]
    pts = [(r[x], r[y]) for r in records if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        return np.empty(0), np.empty(0)
    xs, ys = zip(*pts, strict=True)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_run(records: Sequence[Record], out_dir: Path, title: str) -> list[Path]:
    """Write ``accuracy.png`` and ``loss.png`` (each vs round and vs virtual time)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return plot_comparison({title: [records]}, out_dir, title, prefix="")


def plot_comparison(
    groups: Mapping[str, Sequence[Sequence[Record]]],
    out_dir: Path,
    title: str,
    prefix: str = "comparison_",
    x_axes: Sequence[str] = tuple(_AXES),
) -> list[Path]:
    """One curve per group (mean over its runs, shaded min-max), vs round and virtual time.

    ``x_axes`` picks the panels: ``round``, ``virtual_time_s``, ``cumulative_bytes_up``
    (uplink bytes sent so far), or several.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for metric, label in _PANELS:
        fig, axes = plt.subplots(
            1, len(x_axes), figsize=(5.5 * len(x_axes), 4), constrained_layout=True, squeeze=False
        )
        for ax, x in zip(axes[0], x_axes, strict=True):
            xlabel = _AXES[x] if x in _AXES else _CUMULATIVE[x][1]
            for name, runs in groups.items():
                curves = [_series(r, x, metric) for r in runs]
                curves = [c for c in curves if len(c[0])]
                if not curves:
                    continue
                n = min(len(c[0]) for c in curves)
                xs = np.mean([c[0][:n] for c in curves], axis=0)
                ys = np.stack([c[1][:n] for c in curves])
                line = ax.plot(xs, ys.mean(axis=0), label=name)[0]
                if len(curves) > 1:
                    ax.fill_between(
                        xs, ys.min(axis=0), ys.max(axis=0), alpha=0.2, color=line.get_color()
                    )
            ax.set_xlabel(xlabel)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        if len(groups) > 1 or prefix:
            axes[0][0].legend(fontsize=8)
        fig.suptitle(title)
        path = out_dir / f"{prefix}{metric.removeprefix('eval_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
