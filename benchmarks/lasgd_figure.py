"""The LASGD comparison of docs/strategies.md: one figure and the results tables.

Reads the run directories ``fedsim run`` wrote for the two LASGD scenarios and draws,
for each split, test accuracy and test loss against virtual time for every variant
(mean over seeds, shaded min-max); prints per variant the final test loss and accuracy
(mean ± std over seeds, and per seed) at the common simulated-time budget::

    OMP_NUM_THREADS=1 fedsim run scenarios/lasgd_digits.yaml --out runs/lasgd-iid
    OMP_NUM_THREADS=1 fedsim run scenarios/lasgd_digits_skewed.yaml --out runs/lasgd-skewed
    python benchmarks/lasgd_figure.py runs/lasgd-iid runs/lasgd-skewed \\
        --out docs/img/lasgd_digits.png
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from fedsim.outputs.metrics_log import Record, read_metrics

PANELS = (("eval_accuracy", "test accuracy"), ("eval_loss", "test loss"))


def runs_by_variant(out_dir: Path) -> dict[str, dict[int, list[Record]]]:
    """variant -> seed -> the run's metrics records."""
    groups: dict[str, dict[int, list[Record]]] = {}
    for run_dir in sorted(p for p in out_dir.iterdir() if (p / "summary.json").is_file()):
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        groups.setdefault(summary["variant"], {})[summary["seed"]] = read_metrics(run_dir)
    return groups


def table(name: str, groups: dict[str, dict[int, list[Record]]]) -> str:
    """Markdown: final loss and accuracy per variant, over seeds and per seed."""
    seeds = sorted({s for runs in groups.values() for s in runs})
    head = ["variant", "final loss", "final accuracy", *[f"seed {s}" for s in seeds]]
    lines = [f"{name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, runs in groups.items():
        last = {s: runs[s][-1] for s in seeds}
        loss = [last[s]["eval_loss"] for s in seeds]
        acc = [last[s]["eval_accuracy"] for s in seeds]
        cells = [
            variant,
            f"{statistics.fmean(loss):.3f} ± {statistics.stdev(loss):.3f}",
            f"{statistics.fmean(acc):.3f} ± {statistics.stdev(acc):.3f}",
            *[f"{a:.3f} ({v:.3f})" for a, v in zip(acc, loss, strict=True)],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    time_s = groups[next(iter(groups))][seeds[0]][-1]["virtual_time_s"]
    lines += ["", f"(at {time_s:g} simulated seconds; per seed: accuracy (loss))", ""]
    return "\n".join(lines)


def main() -> None:
    """Draw the figure and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("iid", type=Path)
    parser.add_argument("skewed", type=Path)
    parser.add_argument("--out", type=Path, default=Path("lasgd_digits.png"))
    args = parser.parse_args()
    splits = {"IID": args.iid, "label-skewed (2 shards per worker)": args.skewed}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for row, (name, out_dir) in zip(axes, splits.items(), strict=True):
        groups = runs_by_variant(out_dir)
        print(table(name, groups))
        for ax, (metric, label) in zip(row, PANELS, strict=True):
            for variant, runs in groups.items():
                curves = [[(r["virtual_time_s"], r[metric]) for r in rs] for rs in runs.values()]
                n = min(len(c) for c in curves)
                xs = np.array([p[0] for p in curves[0][:n]])
                ys = np.array([[p[1] for p in c[:n]] for c in curves])
                line = ax.plot(xs, ys.mean(axis=0), label=variant)[0]
                ax.fill_between(xs, ys.min(0), ys.max(0), alpha=0.2, color=line.get_color())
            ax.set_xlabel("virtual time (s)")
            ax.set_ylabel(label)
            ax.set_title(name)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
