"""The LASGD figure of docs/strategies.md: accuracy against simulated time, from the results.

Reads a result file that ``benchmarks/run_comparison.py`` wrote with curves for a LASGD
scenario and draws, for each device condition (transient stragglers, persistently slow
devices) and each scoring (the workers' averaged model, each worker's own model), test
accuracy against virtual time for every method (mean over the evaluation seeds, shaded
min-max), with the target accuracy dashed: where a curve crosses it is the method's time
to target (the tables beside the figure give it per seed)::

    nice -n 10 python benchmarks/run_comparison.py scenarios/lasgd_digits.yaml \\
        --out runs/lasgd --results benchmarks/results/lasgd_digits.json \\
        --field gen_accuracy_l1 --curve eval_accuracy --curve gen_accuracy_l1
    python benchmarks/lasgd_figure.py benchmarks/results/lasgd_digits.json \\
        --out docs/img/lasgd_digits.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

CONDITIONS = {"transient": "transient stragglers", "slow": "persistently slow devices"}
SCORES = {"eval_accuracy": "averaged model", "gen_accuracy_l1": "workers' own models"}
METHODS = ("lasgd", "allreduce-sgd", "local-sgd", "gossip")


def main() -> None:
    """Draw one panel per (device condition, scoring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("lasgd_digits.png"))
    args = parser.parse_args()
    result = json.loads(args.results.read_text(encoding="utf-8"))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True, sharey=True)
    for row, (condition, title) in zip(axes, CONDITIONS.items(), strict=True):
        for ax, (metric, scoring) in zip(row, SCORES.items(), strict=True):
            for method in METHODS:
                curves = list(result["variants"][f"{method}-{condition}"]["curves"].values())
                xs = np.array(curves[0]["time_s"], dtype=float)
                ys = np.array([[np.nan if v is None else v for v in c[metric]] for c in curves])
                line = ax.plot(xs, np.nanmean(ys, axis=0), label=method)[0]
                low, high = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
                ax.fill_between(xs, low, high, alpha=0.15, color=line.get_color())
            ax.axhline(result["target_accuracy"], color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("virtual time (s)")
            ax.set_ylabel("test accuracy")
            ax.set_title(f"{title}: {scoring}")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(f"{result['scenario']} (mean over seeds, shaded min-max; dashed: target)")
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
