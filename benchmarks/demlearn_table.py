"""The DemLearn comparison table of docs/strategies.md, generated from the runs.

Reads the run directory ``fedsim run`` wrote for a DemLearn scenario (variants
``demlearn``, ``demlearn-p``, ``fedavg-ft`` x seeds) and prints one markdown row per
method with the last round's generalisation and specialisation, mean and 95% confidence
interval over seeds (Student's t)::

    OMP_NUM_THREADS=1 fedsim run scenarios/demlearn_digits.yaml --out runs/demlearn-digits
    python benchmarks/demlearn_table.py runs/demlearn-digits

FedAvg and FedAvg + local fine-tuning come from the one-level tree (``fedavg-ft``, which
is FedAvg exactly): FedAvg's model for every client is the global one (the root);
FedAvg + fine-tuning's is the global model after the client's local epochs of the last
round (the agents' own models).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from fedsim.outputs.metrics_log import read_metrics

# method -> (variant, generalisation field, specialisation field, worst-client field)
METHODS = {
    "FedAvg": ("fedavg-ft", "eval_accuracy", "spec_global_accuracy_mean", None),
    "FedAvg + fine-tuning": (
        "fedavg-ft",
        "gen_accuracy_l0",
        "spec_accuracy_mean",
        "spec_accuracy_worst",
    ),
    "DemLearn": ("demlearn", "gen_accuracy_l0", "spec_accuracy_mean", "spec_accuracy_worst"),
    "DemLearn-P": ("demlearn-p", "gen_accuracy_l0", "spec_accuracy_mean", "spec_accuracy_worst"),
}
ROOTS = {"DemLearn root": "demlearn", "DemLearn-P root": "demlearn-p"}


def last_records(out_dir: Path) -> dict[str, list[dict[str, object]]]:
    """variant -> the last metrics record of each of its seeds' runs."""
    found: dict[str, list[dict[str, object]]] = {}
    for run_dir in sorted(p for p in out_dir.iterdir() if (p / "summary.json").is_file()):
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        found.setdefault(summary["variant"], []).append(dict(read_metrics(run_dir)[-1]))
    return found


def ci(values: list[float]) -> str:
    """``mean ± half-width`` of the 95% t interval."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2:
        return f"{a.mean():.3f}"
    half = stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return f"{a.mean():.3f} ± {half:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the scenario's run directory")
    args = parser.parse_args()
    runs = last_records(args.runs)
    seeds = min(len(v) for v in runs.values())
    print(f"{seeds} seeds, round {runs['fedavg-ft'][0]['round']}, mean ± 95% CI\n")
    print(
        "| method | generalisation: its models on the central test set | "
        "specialisation: each client's model on its own data | worst client |"
    )
    print("|---|---|---|---|")
    for method, (variant, gen, spec, worst) in METHODS.items():
        recs = runs[variant]
        cells = [ci([float(r[gen]) for r in recs]), ci([float(r[spec]) for r in recs])]  # type: ignore[arg-type]
        cells.append("" if worst is None else ci([float(r[worst]) for r in recs]))  # type: ignore[arg-type]
        print(f"| {method} | " + " | ".join(cells) + " |")
    for method, variant in ROOTS.items():
        recs = runs[variant]
        gen = ci([float(r["eval_accuracy"]) for r in recs])  # type: ignore[arg-type]
        spec = ci([float(r["spec_global_accuracy_mean"]) for r in recs])  # type: ignore[arg-type]
        print(f"| {method} (global model) | {gen} | {spec} | |")


if __name__ == "__main__":
    main()
