"""Experiments: every variant x sweep point x seed of a scenario, run and compared."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config.expand import expand, run_label
from fedsim.config.schema import Scenario
from fedsim.errors import DivergedError
from fedsim.failure_watch import TrainingStopped
from fedsim.outputs.callbacks import Callback
from fedsim.outputs.comparison import comparison_rows, write_comparison
from fedsim.outputs.plots import plot_comparison
from fedsim.runner import RunResult, default_out_dir, preflight, progress_display, run


class JobProcessDied(TrainingStopped):
    """A ``--jobs`` process ended abruptly: the comparison stops (the CLI exits 1)."""


@dataclass(frozen=True)
class ExperimentResult:
    """All runs of a scenario (variants x seeds) and their comparison table."""

    out_dir: Path
    runs: list[RunResult]
    table: list[dict[str, Any]] = field(default_factory=list)


def run_experiment(
    scenario: Scenario,
    out_dir: str | Path | None = None,
    on_run_start: Callable[[int, int, Scenario], None] | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    verbose: bool | None = None,
    progress: bool | None = None,
    jobs: int = 1,
) -> ExperimentResult:
    """Run every variant x sweep point x seed of a scenario and compare them.

    A scenario with a single run writes its run directory at ``out_dir`` itself;
    otherwise ``out_dir`` holds one ``<variant>-seed<k>`` directory per run plus
    ``comparison.csv``, ``comparison.md`` and the ``comparison_*`` plots.
    ``callbacks``, ``verbose`` and ``progress`` are as for :func:`run` (one progress
    bar over every run's rounds).

    With ``jobs`` above 1, that many runs go at once, each in a process of its own
    (``fedsim run --jobs N``); every run is the run it would be alone, so the results
    and the comparison do not depend on ``jobs``. ``on_run_start`` is then called as
    each run finishes, and the progress bar sees its records then. Callback objects
    live in this process, so they need ``jobs=1`` (``output.callbacks`` run anywhere).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    root = Path(out_dir) if out_dir is not None else default_out_dir(scenario)
    if scenario.tuning is not None:  # tune each variant first (fedsim.tuning)
        from fedsim.tuning import run_tuned

        return run_tuned(scenario, root, jobs=jobs, verbose=verbose)
    runs = expand(scenario)
    for r in runs:  # fail fast on every run's data/model before the first one trains
        preflight(r)
    if jobs > 1 and callbacks:
        raise ValueError("callback objects run in this process: use jobs=1 with them")
    targets = [root if len(runs) == 1 else root / run_label(r) for r in runs]
    with progress_display(sum(r.rounds for r in runs), progress) as bar:
        if jobs > 1 and len(runs) > 1:
            bar_start = None if bar is None else bar.run_started
            starts = [f for f in (on_run_start, bar_start) if f is not None]
            results = _run_parallel(runs, targets, jobs, starts, verbose)
        else:
            results = []
            for i, (concrete, target) in enumerate(zip(runs, targets, strict=True)):
                if on_run_start is not None:
                    on_run_start(i, len(runs), concrete)
                if bar is not None:
                    bar.run_started(i, len(runs), concrete)
                results.append(
                    run(concrete, target, callbacks=callbacks, verbose=verbose, progress=False)
                )
    if len(runs) == 1:
        return ExperimentResult(root, results)
    return ExperimentResult(root, results, compare(scenario, results, root))


def compare(scenario: Scenario, results: Sequence[RunResult], root: Path) -> list[dict[str, Any]]:
    """Write the comparison table and plots of ``results`` (grouped by variant) in ``root``."""
    groups: dict[str, list[RunResult]] = {}
    for res in results:
        groups.setdefault(res.scenario.variant or "base", []).append(res)
    baseline = scenario.output.baseline  # checked against the variants by validation
    rows = comparison_rows({k: [r.summary for r in v] for k, v in groups.items()}, baseline)
    write_comparison(rows, root)
    plot_comparison(
        {k: [r.metrics for r in v] for k, v in groups.items()},
        root,
        scenario.name,
        target=scenario.output.target_accuracy,
        formats=scenario.output.plot_formats,
    )
    return rows


def execute_runs(
    runs: Sequence[Scenario],
    targets: Sequence[Path],
    jobs: int,
    verbose: bool | None,
    *,
    stops_diverge: bool = False,
) -> list[RunResult | DivergedError]:
    """Run each scenario into its target, ``jobs`` at once.

    A diverged run's :class:`DivergedError` is returned in its place; any other error
    is raised. With ``stops_diverge`` (tuning: a grid point whose clients' replies are
    all refused, e.g. as implausibly large, is a setting that diverged) a run whose
    training stopped counts as diverged too.
    """
    job = _run_or_stopped if stops_diverge else _run_or_diverged
    if jobs > 1 and len(runs) > 1:
        return _run_parallel(runs, targets, jobs, [], verbose, job=job)  # type: ignore[return-value]
    return [job(r, t, verbose, None) for r, t in zip(runs, targets, strict=True)]


def _run_or_stopped(
    scenario: Scenario, run_dir: Path, verbose: bool | None, environ: dict[str, str] | None
) -> RunResult | DivergedError:
    """:func:`_run_or_diverged`, with a run whose training stopped counted as diverged."""
    try:
        return _run_or_diverged(scenario, run_dir, verbose, environ)
    except TrainingStopped as exc:
        return DivergedError(str(exc))


def _run_or_diverged(
    scenario: Scenario, run_dir: Path, verbose: bool | None, environ: dict[str, str] | None
) -> RunResult | DivergedError:
    """One run, or the :class:`DivergedError` it raised (a job of :func:`execute_runs`)."""
    try:
        if environ is not None:
            return _run_in_job(scenario, run_dir, verbose, environ)
        return run(scenario, run_dir, verbose=verbose, progress=False)
    except DivergedError as exc:
        return exc


def _run_parallel(
    runs: Sequence[Scenario],
    targets: Sequence[Path],
    jobs: int,
    on_run_start: Sequence[Callable[[int, int, Scenario], None]],
    verbose: bool | None,
    job: Callable[..., Any] | None = None,
) -> list[RunResult]:
    """Run ``runs`` in ``jobs`` processes; return their results in the order of ``runs``.

    ``job(scenario, run_dir, verbose, environ)`` runs one (default :func:`_run_in_job`).
    """
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from fedsim.config.import_paths import plugin_pythonpath
    from fedsim.engine.workers import main_module_hidden, process_context
    from fedsim.outputs.metrics_log import replay

    context = process_context(
        ["fedsim.experiment", "fedsim.runner", "fedsim.client.app", "fedsim.server.app"]
    )
    results: list[RunResult | None] = [None] * len(runs)
    environ = dict(os.environ)  # a forkserver's children inherit its older environment
    # The job processes import the runs' plugins and import-path modules from where this
    # process found them (the working directory, which `fedsim` put on sys.path, included).
    # Variants share the scenario's plugins; one run's import-path names may differ.
    paths = [plugin_pythonpath(r) for r in runs]
    environ["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys(p for path in paths for p in path.split(os.pathsep) if p)
    )
    with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=context) as pool:
        with main_module_hidden():  # the job processes start here (see its docstring)
            futures = {
                pool.submit(job or _run_in_job, concrete, target, verbose, environ): i
                for i, (concrete, target) in enumerate(zip(runs, targets, strict=True))
            }
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()  # a run's error is raised here, as with jobs=1
            except BrokenProcessPool:
                raise JobProcessDied(
                    f"the job process of run {targets[i]} ended without a word (a client "
                    "that kills its process, or the out-of-memory killer), and the "
                    "comparison stopped; `fedsim run` of that run alone names the node"
                ) from None
            for started in on_run_start:
                started(i, len(runs), runs[i])
            if isinstance(results[i], RunResult):
                replay(results[i].metrics)  # type: ignore[union-attr]  # set just above
    return results  # type: ignore[return-value]  # every slot is filled above


def _run_in_job(
    scenario: Scenario, run_dir: Path, verbose: bool | None, environ: dict[str, str]
) -> RunResult:
    """One run of a parallel comparison, in a job process (its plugins imported first)."""
    import os
    import sys

    from fedsim.config.plugins import import_plugins

    os.environ.clear()
    os.environ.update(environ)
    for root in reversed(environ.get("PYTHONPATH", "").split(os.pathsep)):
        if root and root not in sys.path:
            sys.path.insert(0, root)
    import_plugins(scenario.plugins)
    return run(scenario, run_dir, verbose=verbose, progress=False)
