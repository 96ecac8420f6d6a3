"""Per-variant tuning before a comparison's reported runs (the scenario's ``tuning:``).

A fair comparison tunes each method's step size on its own, on seeds the reported
numbers do not use. For each variant, every point of its grid (``tuning.variants[v]``,
else ``tuning.grid``) runs on every tuning seed, under ``<out>/tuning/``. A point is
*diverged* if any of its runs is (a non-finite model or loss; with ``diverged:
worse_than_start`` also a final evaluation loss above the round-0 one); its score is
never averaged in and it is never chosen. The others score the mean over tuning seeds
of the final, or best of the last ``last_k``, central-evaluation accuracy (higher is
better) or loss (lower). Each variant's best point (ties: the first in grid order) is
added to its overrides, and the reported ``seeds`` run with it, compared as usual.

``tuning.json`` and ``tuning.md`` hold every point's per-seed scores, whether it
diverged, and the choice; ``summary.json`` (the experiment's) repeats the choices and
the comparison rows. A run whose directory already holds its finished result for the
same resolved scenario is read back instead of run again, so an interrupted
experiment resumes by running the same command again; ``jobs`` runs that many at once,
as for any comparison, and the choices do not depend on it.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config.expand import expand, run_label, sweep_grid
from fedsim.config.schema import Scenario, TuningConfig
from fedsim.config.sources import to_yaml
from fedsim.errors import DivergedError, Problem, ScenarioError
from fedsim.outputs.comparison import format_cell
from fedsim.outputs.metrics_log import read_metrics
from fedsim.run_directory import RESOLVED

if TYPE_CHECKING:
    from fedsim.experiment import ExperimentResult
    from fedsim.runner import RunResult

DIVERGED_FILE = "diverged.json"  # in a tuning run's directory: why it counts as diverged
Record = dict[str, Any]


@dataclass
class Point:
    """One grid point of one variant: its settings and its runs' scores."""

    variant: str
    label: str
    settings: dict[str, Any]
    scores: dict[int, float | None] = field(default_factory=dict)  # seed -> score
    diverged: dict[int, str] = field(default_factory=dict)  # seed -> why

    @property
    def score(self) -> float | None:
        """Mean score over the tuning seeds; None if any run diverged."""
        if self.diverged or not self.scores or None in self.scores.values():
            return None
        return statistics.fmean(v for v in self.scores.values() if v is not None)


def score_of(records: Sequence[Record], cfg: TuningConfig) -> float | None:
    """The selection score of one run's metrics (None: no evaluation to score)."""
    key = "eval_accuracy" if cfg.metric == "accuracy" else "eval_loss"
    values = [float(r[key]) for r in records if r.get(key) is not None]
    if not values:
        return None
    if cfg.select == "final":
        return values[-1]
    last = values[-cfg.last_k :]
    return max(last) if cfg.metric == "accuracy" else min(last)


def divergence_of(records: Sequence[Record], cfg: TuningConfig) -> str | None:
    """Why a finished run counts as diverged, or None."""
    losses = [
        (r.get("round"), float(r["eval_loss"])) for r in records if r.get("eval_loss") is not None
    ]
    for rnd, loss in losses:
        if not math.isfinite(loss):
            return f"non-finite evaluation loss in round {rnd}"
    accuracies = [float(r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
    if any(not math.isfinite(a) for a in accuracies):
        return "non-finite evaluation accuracy"
    if cfg.diverged == "worse_than_start" and len(losses) >= 2:
        start, end = losses[0][1], losses[-1][1]
        if end > start:
            return f"final evaluation loss {end:.4g} above the start's {start:.4g}"
    return None


def tuning_scenario(scenario: Scenario) -> tuple[Scenario, dict[str, Point]]:
    """The tuning runs as one comparison (variant ``<v>__<point>``), and their points."""
    cfg = scenario.tuning
    assert cfg is not None
    variants = scenario.variants or {"base": {}}
    tuned: dict[str, dict[str, Any]] = {}
    points: dict[str, Point] = {}
    for name, override in variants.items():
        grid = cfg.variants.get(name, cfg.grid)
        for label, settings in sweep_grid(grid) if grid else [("as-written", {})]:
            key = f"{name}__{label}"
            tuned[key] = {**override, **settings}  # dotted keys apply after the variant's
            points[key] = Point(name, label, settings)
    runs = scenario.model_copy(
        update={"variants": tuned, "seeds": list(cfg.seeds), "tuning": None, "sweep": {}}
    )
    return runs, points


def tuning_runs(scenario: Scenario, *, imports: bool = True) -> list[Scenario]:
    """Every concrete tuning run; a bad grid key or value is reported under ``tuning``."""
    as_comparison, _ = tuning_scenario(scenario)
    try:
        return expand(as_comparison, imports=imports)
    except ScenarioError as exc:
        raise exc.with_prefix("tuning") from None


def chosen_scenario(scenario: Scenario, choices: dict[str, Point]) -> Scenario:
    """The scenario of the reported runs: each variant with its chosen settings."""
    variants = scenario.variants or {"base": {}}
    return scenario.model_copy(
        update={
            "variants": {n: {**o, **choices[n].settings} for n, o in variants.items()},
            "seeds": list(scenario.seeds or [scenario.seed]),
            "tuning": None,
        }
    )


def choose(points: dict[str, Point], cfg: TuningConfig) -> dict[str, Point]:
    """Each variant's best non-diverged point (ties: the first in grid order).

    Raises
    ------
    ScenarioError
        If every point of a variant diverged (or none could be scored).
    """
    best: dict[str, Point] = {}
    for point in points.values():
        score = point.score
        if score is None:
            continue
        held = best.get(point.variant)
        better = held is None or (
            score > held.score  # type: ignore[operator]  # scored when held
            if cfg.metric == "accuracy"
            else score < held.score  # type: ignore[operator]
        )
        if better:
            best[point.variant] = point
    missing = sorted({p.variant for p in points.values()} - set(best))
    if missing:
        reason = f"every setting of variant(s) {missing} diverged or had no evaluation to score"
        raise ScenarioError([Problem("tuning", reason)])
    return best


Runner = Callable[[list[Scenario], list[Path]], list[Any]]


def finished(target: Path, concrete: Scenario) -> bool:
    """Whether ``target`` holds the finished result (or divergence) of ``concrete``."""
    resolved = target / RESOLVED
    done = (target / "summary.json").exists() or (target / DIVERGED_FILE).exists()
    return done and resolved.exists() and resolved.read_text(encoding="utf-8") == to_yaml(concrete)


def run_or_reuse(
    runs: list[Scenario], targets: list[Path], execute: Runner
) -> list[RunResult | str]:
    """Each run's result, or why it diverged; runs already finished are read back.

    ``execute`` runs the rest (in parallel where the caller asks) and returns, per run,
    its :class:`~fedsim.runner.RunResult` or the :class:`DivergedError` it raised.
    """
    from fedsim.runner import RunResult

    todo = [i for i, (r, t) in enumerate(zip(runs, targets, strict=True)) if not finished(t, r)]
    for i in todo:  # an interrupted run starts again from scratch
        shutil.rmtree(targets[i], ignore_errors=True)
    outcomes = execute([runs[i] for i in todo], [targets[i] for i in todo])
    for i, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, DivergedError):
            targets[i].mkdir(parents=True, exist_ok=True)
            (targets[i] / DIVERGED_FILE).write_text(
                json.dumps({"reason": str(outcome)}) + "\n", encoding="utf-8"
            )
    results: list[RunResult | str] = []
    for run, target in zip(runs, targets, strict=True):
        if (target / DIVERGED_FILE).exists():
            reason = json.loads((target / DIVERGED_FILE).read_text(encoding="utf-8"))["reason"]
            results.append(str(reason))
        else:
            summary = json.loads((target / "summary.json").read_text(encoding="utf-8"))
            results.append(RunResult(run, target, read_metrics(target), summary))
    return results


def tune(
    scenario: Scenario, root: Path, execute: Runner
) -> tuple[dict[str, Point], dict[str, Point]]:
    """Run every variant's grid on the tuning seeds under ``root/tuning``; choose.

    Returns every point (by ``<variant>__<point>``) and each variant's chosen one.
    """
    cfg = scenario.tuning
    assert cfg is not None
    _, points = tuning_scenario(scenario)
    runs = tuning_runs(scenario)
    targets = [root / "tuning" / run_label(r) for r in runs]
    for run, outcome in zip(runs, run_or_reuse(runs, targets, execute), strict=True):
        point = points[run.variant or ""]
        reason = outcome if isinstance(outcome, str) else divergence_of(outcome.metrics, cfg)
        if reason is not None:
            point.diverged[run.seed] = reason
        else:
            point.scores[run.seed] = score_of(outcome.metrics, cfg)  # type: ignore[union-attr]
    choices = choose(points, cfg)
    write_tuning(root, points, choices, cfg)
    return points, choices


def tuning_rows(points: dict[str, Point], choices: dict[str, Point]) -> list[dict[str, Any]]:
    """One row per point: variant, settings, per-seed scores, mean, diverged, chosen."""
    return [
        {
            "variant": p.variant,
            "settings": p.settings,
            "scores": {str(k): v for k, v in p.scores.items()},
            "mean": p.score,
            "diverged": dict(p.diverged) if p.diverged else None,
            "chosen": choices.get(p.variant) is p,
        }
        for p in points.values()
    ]


def tuning_markdown(rows: list[dict[str, Any]], cfg: TuningConfig) -> str:
    """The tuning table: a diverged point shows ``diverged``, never a mean."""
    what = f"{cfg.select.replace('_', ' ')} {cfg.metric}"
    lines = [
        f"Tuning on seeds {cfg.seeds}; score: {what} (mean over tuning seeds).\n",
        "| variant | setting | score | chosen |",
        "|---|---|---|---|",
    ]
    for row in rows:
        setting = ", ".join(f"{k}={v}" for k, v in row["settings"].items()) or "as written"
        score = "diverged" if row["diverged"] else format_cell(row["mean"])
        lines.append(
            f"| {row['variant']} | {setting} | {score} | {'yes' if row['chosen'] else ''} |"
        )
    return "\n".join(lines) + "\n"


def write_tuning(
    root: Path, points: dict[str, Point], choices: dict[str, Point], cfg: TuningConfig
) -> None:
    """Write ``tuning.json`` and ``tuning.md`` in ``root``."""
    rows = tuning_rows(points, choices)
    root.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": cfg.model_dump(mode="json"),
        "chosen": {v: p.settings for v, p in choices.items()},
        "points": rows,
    }
    (root / "tuning.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (root / "tuning.md").write_text(tuning_markdown(rows, cfg), encoding="utf-8")


def run_tuned(
    scenario: Scenario, root: Path, *, jobs: int = 1, verbose: bool | None = None
) -> ExperimentResult:
    """Tune every variant, then run and compare the reported seeds with the choices.

    The reported runs go to ``root/<variant>-seed<k>`` as in any comparison; a reported
    run that diverges is counted (``diverged_runs``) and left out of the means.
    """
    from fedsim.experiment import ExperimentResult, compare, execute_runs
    from fedsim.runner import RunResult, preflight

    def execute(runs: list[Scenario], targets: list[Path], *, tuning: bool = False) -> list[Any]:
        for r in runs:  # fail fast on every run's data/model before one trains
            preflight(r)
        return execute_runs(runs, targets, jobs, verbose, stops_diverge=tuning)

    cfg = scenario.tuning
    assert cfg is not None
    points, choices = tune(scenario, root, lambda r, t: execute(r, t, tuning=True))
    reported = expand(chosen_scenario(scenario, choices))
    targets = [root / run_label(r) for r in reported]
    outcomes = run_or_reuse(reported, targets, execute)
    results = [o for o in outcomes if isinstance(o, RunResult)]
    rows = compare(scenario, results, root)
    for row in rows:
        row["tuned"] = choices[row["variant"]].settings if row["variant"] in choices else None
        row["diverged_runs"] = sum(
            isinstance(o, str) and r.variant == row["variant"]
            for o, r in zip(outcomes, reported, strict=True)
        )
    table = tuning_rows(points, choices)
    with (root / "comparison.md").open("a", encoding="utf-8") as f:
        f.write("\nChosen settings (tuned per variant):\n\n")
        for name, point in choices.items():
            text = ", ".join(f"`{k}: {v}`" for k, v in point.settings.items()) or "as written"
            f.write(f"- {name}: {text}\n")
        f.write("\n" + tuning_markdown(table, cfg))
    summary = {
        "tuning": {"chosen": {v: p.settings for v, p in choices.items()}, "points": table},
        "comparison": rows,
    }
    (root / "summary.json").write_text(
        json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8"
    )
    return ExperimentResult(root, results, rows)
