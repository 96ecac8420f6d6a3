"""Run one shipped comparison (tuned, if it declares ``tuning:``) and keep a small result file.

The result file is what docs/strategies.md's tables are generated from
(``benchmarks/strategies_doc.py``): per variant, the chosen settings, the final test
accuracy (or, for least squares, the final test loss) per evaluation seed, rounds to
target per seed, the figures some claims need beyond those (``extra_metrics``), and the
tuning table::

    nice -n 10 python benchmarks/run_comparison.py scenarios/scaffold_digits.yaml \\
        --out runs/scaffold --results benchmarks/results/scaffold_digits.json --jobs 2

``--set KEY=VALUE`` overrides the scenario as ``fedsim run --set`` does (CI shrinks a
comparison with ``rounds=1`` and one seed this way). ``--field NAME`` (repeatable) also
keeps each run's last-record value of a ``metrics.jsonl`` field (DemLearn's
``spec_accuracy_mean``, DP's ``epsilon``, ...), and ``--curve NAME`` keeps that field at
every evaluation, with the round and ``virtual_time_s`` (LASGD's time-to-target curves).
A finished run is read back, not run again, so adding a field to an existing comparison
costs nothing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.compose import load_scenario
from fedsim.experiment import ExperimentResult, run_experiment


def extra_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A run's figures beyond accuracy and loss that a section's claims need.

    The worst class's final test recall (``output.class_recall``: the label-skew losses)
    and every final diagnostic (FedAwS's ``embedding_mean_cosine``), each kept only
    where the run reports it.
    """
    found = {"final_recall_min": summary.get("final_eval_recall_min")}
    found.update({f"final_{k}": v for k, v in (summary.get("diagnostics") or {}).items()})
    return {k: v for k, v in found.items() if v is not None}


def result_file(
    experiment: ExperimentResult,
    scenario_path: str,
    fields: Sequence[str] = (),
    curves: Sequence[str] = (),
) -> dict[str, Any]:
    """The compact record of one comparison's reported runs (and its tuning).

    ``fields``: last-record values kept per seed under ``final``; ``curves``: fields
    kept at every evaluated record under ``curves`` (with ``round`` and ``time_s``).
    """
    variants: dict[str, Any] = {}
    for run in experiment.runs:
        empty: dict[str, Any] = {"final_acc": {}, "final_loss": {}, "rounds_to_target": {}}
        entry = variants.setdefault(run.scenario.variant or "base", empty)
        seed = str(run.scenario.seed)
        entry["final_acc"][seed] = run.summary.get("final_eval_accuracy")
        entry["final_loss"][seed] = run.summary.get("final_eval_loss")
        entry["rounds_to_target"][seed] = run.summary.get("rounds_to_target")
        for key, value in extra_metrics(run.summary).items():
            entry.setdefault(key, {})[seed] = value
        for name in fields:
            entry.setdefault("final", {}).setdefault(name, {})[seed] = run.metrics[-1].get(name)
        if curves:
            evaluated = [r for r in run.metrics if r.get("eval_loss") is not None]
            curve = {"round": [r["round"] for r in evaluated]}
            curve["time_s"] = [r.get("virtual_time_s") for r in evaluated]
            curve.update({name: [r.get(name) for r in evaluated] for name in curves})
            entry.setdefault("curves", {})[seed] = curve
    tuning_path = experiment.out_dir / "tuning.json"
    tuning = json.loads(tuning_path.read_text(encoding="utf-8")) if tuning_path.exists() else None
    if tuning is not None:
        for name, settings in tuning["chosen"].items():
            variants.setdefault(name, {})["tuned"] = settings
    first = experiment.runs[0].scenario if experiment.runs else None
    payload = {
        "scenario": scenario_path,
        "rounds": None if first is None else first.rounds,
        "variants": variants,
        "tuning": tuning,
    }
    if curves and first is not None:  # what the curves' time to target is measured against
        payload["target_accuracy"] = first.output.target_accuracy
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--field", dest="fields", action="append", default=[])
    parser.add_argument("--curve", dest="curves", action="append", default=[])
    args = parser.parse_args()
    scenario = load_scenario(args.scenario, [*args.overrides, "output.plots=false"])
    experiment = run_experiment(scenario, args.out, jobs=args.jobs, progress=False)
    payload = result_file(experiment, args.scenario, args.fields, args.curves)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
