"""The robust-aggregation table of docs/strategies.md: every strategy over the attack suite.

Takes ``scenarios/robust_digits.yaml`` as the base and runs, for FedAvg, FedMedian,
FedTrimmedAvg, Krum (told the true number of attackers) and median-of-means, the
attack-free setting and every attack of the suite at 10, 20 and 30% attackers, on the
evaluation seeds; then writes one compact result file (final accuracy per seed, mean
± 95% t-interval, and the drop against the same strategy attack-free, paired by seed)::

    nice -n 10 python benchmarks/robust_suite.py --jobs 2 --out runs/robust-suite \\
        --results benchmarks/results/robust_suite.json

Each strategy's learning rate is first tuned attack-free on its own seeds
(``--tuning-seeds``, grid ``--lrs``; :mod:`fedsim.tuning`'s rules: the best final
accuracy, a diverged point never chosen), and every run of that strategy, attacked or
not, uses it (``--no-tuning``: the scenario's lr for all). ``--rounds``, ``--seeds``,
``--strategies``, ``--attacks`` and ``--fractions`` shrink it (CI runs a 1-round,
1-seed version through :func:`suite_scenario` and :func:`results`).
``benchmarks/strategies_doc.py`` turns the result file into the docs' table. Runs that
finished are read back, so the same command resumes an interrupted suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from fedsim.compose import load_scenario
from fedsim.config.expand import expand, run_label
from fedsim.config.schema import Scenario
from fedsim.experiment import execute_runs
from fedsim.outputs.comparison import ci95_half_width
from fedsim.runner import RunResult
from fedsim.tuning import finished, run_or_reuse, tune

BASE = Path(__file__).parents[1] / "scenarios" / "robust_digits.yaml"
STRATEGIES: dict[str, Any] = {
    "fedavg": {"name": "fedavg"},
    "fedmedian": {"name": "fedmedian"},
    "fedtrimmedavg": {"name": "fedtrimmedavg"},
    "krum": {"name": "krum"},  # num_malicious_nodes: the true count, set per fraction
    "mom": {"name": "median-of-means", "params": {"blocks": 15}},
}
ATTACKS: dict[str, Any] = {
    "sign-flip": {"name": "sign-flip"},
    "negscale100": {"name": "scale", "factor": -100.0},  # reversed scaling (x -100)
    "gaussian": {"name": "gaussian"},
    "alie": {"name": "alie"},
    "ipm": {"name": "ipm", "epsilon": 0.1},
    "label-flip": {"name": "label-flip"},
}
FRACTIONS = (0.1, 0.2, 0.3)


def suite_scenario(
    strategies: list[str],
    attacks: list[str],
    fractions: list[float],
    seeds: list[int],
    rounds: int | None = None,
    lrs: dict[str, float] | None = None,
) -> Scenario:
    """The base scenario with one variant per strategy x (attack-free | attack x fraction).

    ``lrs``: each strategy's tuned learning rate (the scenario's where absent).
    """
    base = load_scenario(BASE)
    clients = base.data.num_clients
    variants: dict[str, dict[str, Any]] = {}
    # Setting-major order, the middle fraction first: an interrupted suite has whole rows
    # of the table, every attack at one fraction before any at the others.
    middle = sorted(fractions, key=lambda f: abs(f - sorted(fractions)[len(fractions) // 2]))
    settings = [("none", 0.0)] + [(a, f) for f in middle for a in attacks]
    for attack, fraction in settings:
        for name in strategies:
            strategy = json.loads(json.dumps(STRATEGIES[name]))
            if name == "krum":
                strategy["params"] = {"num_malicious_nodes": round(fraction * clients)}
            override: dict[str, Any] = {"strategy": strategy, "system.attackers.fraction": fraction}
            if lrs and name in lrs:
                override["client.optimizer.lr"] = lrs[name]
            if attack != "none":
                override["system.attackers.attack"] = ATTACKS[attack]
            variants[f"{name}-{attack}-{round(100 * fraction)}"] = override
    update: dict[str, Any] = {"variants": {}, "seeds": seeds}
    raw = base.model_dump(mode="json", exclude={"variants", "variant"})
    raw.update(update)
    raw["variants"] = variants
    raw["output"]["plots"] = False
    if rounds is not None:
        raw["rounds"] = rounds
    return load_scenario(raw)


def tuned_lrs(
    strategies: list[str],
    tuning_seeds: list[int],
    lrs: list[float],
    out: Path,
    jobs: int,
    rounds: int | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each strategy's lr tuned attack-free on ``tuning_seeds``, and the tuning record."""
    clean = suite_scenario(strategies, [], [], [0], rounds)
    raw = clean.model_dump(mode="json", exclude={"variant"})
    raw["tuning"] = {"seeds": tuning_seeds, "grid": {"client.optimizer.lr": lrs}}
    tunable = load_scenario(raw)
    _, choices = tune(tunable, out, lambda r, t: execute_runs(r, t, jobs, None, stops_diverge=True))
    chosen = {
        v.split("-", 1)[0]: float(p.settings["client.optimizer.lr"]) for v, p in choices.items()
    }
    record = json.loads((out / "tuning.json").read_text(encoding="utf-8"))
    return chosen, record


def run_suite(scenario: Scenario, out: Path, jobs: int) -> list[RunResult]:
    """Every run of the suite into ``out/<variant>-seed<k>``; finished ones are read back."""
    runs = expand(scenario)
    targets = [out / run_label(r) for r in runs]
    outcomes = run_or_reuse(runs, targets, lambda r, t: execute_runs(r, t, jobs, None))
    diverged = [r.variant for r, o in zip(runs, outcomes, strict=True) if isinstance(o, str)]
    if diverged:
        raise RuntimeError(f"runs diverged: {diverged}")
    return [o for o in outcomes if isinstance(o, RunResult)]


def finished_runs(scenario: Scenario, out: Path) -> list[RunResult]:
    """The runs of the suite that finished so far, read back (none is started)."""
    every = expand(scenario)
    done = {run_label(r) for r in every if finished(out / run_label(r), r)}
    # Whole variants only: a table cell is every seed or nothing.
    whole = {
        r.variant
        for r in every
        if all(run_label(o) in done for o in every if o.variant == r.variant)
    }
    runs = [r for r in every if r.variant in whole]
    targets = [out / run_label(r) for r in runs]
    outcomes = run_or_reuse(runs, targets, lambda r, t: [])
    return [o for o in outcomes if isinstance(o, RunResult)]


def results(runs: list[RunResult]) -> dict[str, Any]:
    """Per variant: seeds' final accuracies, mean ± 95% CI, and the paired drop."""
    finals: dict[str, dict[int, float]] = {}
    for run in runs:
        acc = run.summary["final_eval_accuracy"]
        finals.setdefault(run.scenario.variant or "", {})[run.scenario.seed] = acc
    rows: dict[str, Any] = {}
    for variant, by_seed in finals.items():
        strategy = variant.split("-", 1)[0]
        clean = finals[f"{strategy}-none-0"]
        values = [by_seed[s] for s in sorted(by_seed)]
        drops = [clean[s] - by_seed[s] for s in sorted(by_seed) if s in clean]
        rows[variant] = {
            "final_acc": {str(s): by_seed[s] for s in sorted(by_seed)},
            "mean": statistics.fmean(values),
            "ci95": ci95_half_width(values),
            "drop_mean": statistics.fmean(drops) if drops else None,
            "drop_ci95": ci95_half_width(drops),
        }
    return {"seeds": sorted({s for v in finals.values() for s in v}), "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--tuning-seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--no-tuning", action="store_true", help="the scenario's lr for all")
    parser.add_argument(
        "--collect", action="store_true", help="write the results of the runs finished so far"
    )
    args = parser.parse_args()
    lrs: dict[str, float] | None = None
    tuning: dict[str, Any] | None = None
    if not args.no_tuning:
        lrs, tuning = tuned_lrs(
            args.strategies,
            args.tuning_seeds,
            args.lrs,
            args.out / "tuning",
            args.jobs,
            args.rounds,
        )
    scenario = suite_scenario(
        args.strategies, args.attacks, args.fractions, args.seeds, args.rounds, lrs
    )
    if args.collect:
        runs = finished_runs(scenario, args.out)
    else:
        runs = run_suite(scenario, args.out, args.jobs)
    payload: dict[str, Any] = {"command": "benchmarks/robust_suite.py", "rounds": scenario.rounds}
    payload.update(results(runs))
    payload["lrs"] = lrs
    payload["tuning"] = tuning
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
