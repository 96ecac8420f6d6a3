"""The RGP equal-ε comparison table of docs/strategies.md, generated from the runs.

Reads the run directory ``fedsim run`` wrote for ``scenarios/rgp_digits.yaml`` and prints
one markdown row per variant: final test accuracy (mean ± 95% t-interval over seeds)
and the ε every seed reported (equal across DP variants: same σ, C, sampling, steps)::

    OMP_NUM_THREADS=1 fedsim run scenarios/rgp_digits.yaml --out runs/rgp-digits
    python benchmarks/rgp_table.py runs/rgp-digits
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="the scenario's run directory")
    args = parser.parse_args()
    found: dict[str, list[tuple[float, float | None]]] = {}
    for run_dir in sorted(p for p in args.runs.iterdir() if (p / "summary.json").is_file()):
        s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        found.setdefault(s["variant"], []).append((s["final_eval_accuracy"], s.get("epsilon")))
    print("| variant | seeds | final test accuracy (mean ± 95% CI) | ε (δ = 1e-5) |")
    print("|---|---|---|---|")
    for variant, runs in found.items():
        acc = np.array([a for a, _ in runs])
        half = stats.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / math.sqrt(len(acc))
        eps = {e for _, e in runs}
        shown = "—" if eps == {None} else ", ".join(f"{e:.2f}" for e in sorted(eps))  # type: ignore[arg-type]
        print(f"| {variant} | {len(acc)} | {acc.mean():.3f} ± {half:.3f} | {shown} |")


if __name__ == "__main__":
    main()
