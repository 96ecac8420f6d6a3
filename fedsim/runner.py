"""Run scenarios: one run directory per concrete run, a comparison for variants x seeds.

This is the Python API behind ``fedsim run``::

    import fedsim
    result = fedsim.run(fedsim.load_scenario("scenarios/quickstart.yaml"))
    print(result.summary["final_eval_accuracy"], result.run_dir)
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import UserConfig

from fedsim import wire
from fedsim.checkpoint import load_checkpoint
from fedsim.data.federated import federated_data
from fedsim.data.partitioners import coverage_problem
from fedsim.engine.registry import ENGINES, Engine
from fedsim.errors import (
    DivergedError,
    FedsimWarning,
    Problem,
    RunDirectoryError,
    ScenarioError,
    UnknownNameError,
)
from fedsim.flower_log import flower_log
from fedsim.models import build_model
from fedsim.outputs.callbacks import Callback, attached
from fedsim.outputs.comparison import comparison_rows, write_comparison
from fedsim.outputs.metrics_log import Record, listening, read_metrics
from fedsim.outputs.per_client import NO_CLIENT_TESTS
from fedsim.outputs.plots import plot_comparison
from fedsim.outputs.provenance import write_provenance
from fedsim.outputs.summary import summarize
from fedsim.resume_rules import check_resume
from fedsim.run_config import scenario_digest
from fedsim.run_directory import CRASH_FILE, claim, mark_crashed
from fedsim.run_lock import RunLock
from fedsim.scenario import ENGINE_SECTIONS, Scenario
from fedsim.scenario_loading import expand, load_scenario, run_label, to_yaml

RESOLVED = "scenario.resolved.yaml"


@dataclass(frozen=True)
class RunResult:
    """One finished run.

    Attributes
    ----------
    scenario : Scenario
        The concrete scenario that ran.
    run_dir : Path
        Its run directory.
    metrics : list of dict
        The records of ``metrics.jsonl``.
    summary : dict
        The content of ``summary.json``.
    """

    scenario: Scenario
    run_dir: Path
    metrics: list[Record]
    summary: dict[str, Any]


@dataclass(frozen=True)
class ExperimentResult:
    """All runs of a scenario (variants x seeds) and their comparison table."""

    out_dir: Path
    runs: list[RunResult]
    table: list[dict[str, Any]] = field(default_factory=list)


def default_out_dir(scenario: Scenario) -> Path:
    """``output.dir`` or ``runs/<name>-<timestamp>`` (never an existing directory)."""
    if scenario.output.dir:
        return Path(scenario.output.dir)
    base = Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def _write_resolved(run_dir: Path, scenario: Scenario) -> None:
    """Write ``scenario.resolved.yaml`` whole or not at all (temporary file, rename)."""
    path = run_dir / RESOLVED
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_yaml(scenario), encoding="utf-8")
    tmp.replace(path)


@contextmanager
def _display(total_rounds: int | None, progress: bool | None) -> Iterator[Any]:
    """A progress bar over the records written in the block (default: in notebooks).

    Yields the bar (its ``run_started`` names each run) or None.
    """
    from fedsim.outputs.progress import RoundProgress, in_notebook

    if not (in_notebook() if progress is None else progress):
        yield None
        return
    with RoundProgress(total_rounds) as bar, listening(bar.on_record):
        yield bar


def preflight(scenario: Scenario) -> None:
    """Fail before any training if the data cannot be had or the model cannot take it."""
    try:
        ENGINES.get(scenario.engine.name)
    except UnknownNameError as exc:
        raise ScenarioError([Problem("engine.name", f"unknown engine: {exc}")]) from None
    if scenario.output.checkpoint_every is not None:
        _check_resumable(scenario)
    if getattr(scenario.engine, "ray_address", None) is None:  # a cluster has its own devices
        from fedsim.training_device import check_devices

        check_devices(scenario.engine.device)
    if scenario.system.trace is not None:
        if scenario.engine.name != "inprocess":
            raise ScenarioError(
                [Problem("system.trace", "needs engine 'inprocess' (the others have no clock)")]
            )
        from fedsim.engine.device_trace import load_trace

        load_trace(scenario.system.trace.path)  # a malformed trace fails before any training
    data = federated_data(scenario.data, scenario.seed)
    if scenario.output.per_client_eval and data.test_parts is None:
        raise ScenarioError(
            [Problem("output.per_client_eval", f"needs per-client test data {NO_CLIENT_TESTS}")]
        )
    model = build_model(
        scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
    )
    import torch

    try:  # a forward pass on two examples catches shape and dtype mismatches
        with torch.no_grad():
            model.eval()(torch.from_numpy(data.x[:2]))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScenarioError(
            [Problem("model.name", f"'{scenario.model.name}' cannot read this data: {first}")]
        ) from None
    if scenario.client.dp is not None:
        from fedsim.clients.dp import check_model

        try:
            check_model(scenario.client.dp, model)
        except (TypeError, ValueError) as exc:
            raise ScenarioError([Problem("client.dp.mode", str(exc))]) from None


def _warn_uncovered(scenario: Scenario) -> None:
    """Warn (every run) when the split gives some class to no client.

    ``fedsim validate --strict`` makes it an error.
    """
    data = federated_data(scenario.data, scenario.seed)
    uncovered = coverage_problem(scenario.data.partitioner, data.y, data.parts, scenario.seed)
    if uncovered is not None:
        warnings.warn(str(uncovered), FedsimWarning, stacklevel=3)


def _check_resumable(scenario: Scenario) -> None:
    """Checkpoints need an engine that can save its nodes and Flower's round loop."""
    problems = []
    if not scenario.engine.resumable:
        able = [c.model_fields["name"].default for c in ENGINE_SECTIONS if c.resumable]
        problems.append(
            Problem(
                "output.checkpoint_every",
                f"engine '{scenario.engine.name}' cannot checkpoint its nodes' state; "
                f"engines that can: {', '.join(sorted(able))}",
            )
        )
    from fedsim.rounds import uses_flower_loop_class
    from fedsim.strategies import STRATEGIES

    try:
        cls = STRATEGIES.get(scenario.strategy.name)
    except UnknownNameError:
        cls = None  # reported when the strategy is built
    if cls is not None and not uses_flower_loop_class(cls):
        problems.append(
            Problem(
                "output.checkpoint_every",
                f"strategy '{scenario.strategy.name}' runs its own loop (overrides start) "
                "and cannot be checkpointed",
            )
        )
    if problems:
        raise ScenarioError(problems)


def run(
    scenario: Scenario,
    out_dir: str | Path | None = None,
    engine: Engine | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    verbose: bool | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Run one concrete scenario and write its run directory.

    Parameters
    ----------
    scenario : Scenario
        A scenario without ``variants``/``seeds``/``sweep`` (see :func:`run_experiment`).
    out_dir : path, optional
        The run directory (default :func:`default_out_dir`).
    engine : Engine, optional
        Runs the apps instead of the scenario's ``engine.name`` (``fedsim deploy run``
        passes a :class:`fedsim.deploy.submission.DeploymentEngine`).
    callbacks : sequence of Callback
        Called like those of ``output.callbacks`` (after them). The objects live in
        this process, so only the in-process engine's ServerApp can call them.
    verbose : bool, optional
        Show Flower's own log (default: only if ``FEDSIM_VERBOSE=1``; ``fedsim -v``).
    progress : bool, optional
        Show a progress bar (default: in a Jupyter notebook only).

    Raises
    ------
    ValueError
        If ``callbacks`` are given for another engine.
    """
    if not scenario.is_expanded:
        raise ValueError("this scenario declares variants/seeds/sweep: use fedsim.run_experiment")
    if callbacks and (engine is not None or scenario.engine.name != "inprocess"):
        raise ValueError(
            "callback objects run in this process: only engine 'inprocess' can call them "
            "(name them in output.callbacks for the other engines)"
        )
    preflight(scenario)
    _warn_uncovered(scenario)
    run_dir = Path(out_dir) if out_dir is not None else default_out_dir(scenario)
    # The lock comes first: checking that the directory is unused and claiming it must
    # be one step, or two runs started together both pass the check.
    with RunLock(run_dir):
        notice = claim(run_dir, overwrite=scenario.output.overwrite)
        if notice is not None:
            warnings.warn(notice, FedsimWarning, stacklevel=2)
        _write_resolved(run_dir, scenario)
        with attached(callbacks), flower_log(verbose), _display(scenario.rounds, progress):
            return _execute(scenario, run_dir, resume=False, engine=engine)


def resume(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    *,
    verbose: bool | None = None,
    progress: bool | None = None,
) -> RunResult:
    """Continue a run from the last checkpoint in its run directory.

    The run must have been started with ``output.checkpoint_every``; the metrics of
    the rounds after the checkpoint are cut and rerun, so the finished run directory
    equals that of an uninterrupted run (apart from wall-clock times).

    Parameters
    ----------
    run_dir : path
        The run directory.
    overrides : sequence of str
        ``dotted.key=value`` changes to its scenario; only those
        :data:`fedsim.resume_rules.MAY_CHANGE` allows (``rounds=40``: run on).
    verbose, progress : bool, optional
        As for :func:`run`.

    Raises
    ------
    ScenarioError
        If the scenario (as resolved in the run directory, with ``overrides``) differs
        from the checkpoint's in any other key, or has fewer rounds than it has run.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RESOLVED).is_file():
        raise RunDirectoryError(f"{run_dir} is not a run directory (no {RESOLVED})")
    with RunLock(run_dir):
        checkpoint = load_checkpoint(run_dir)  # fail before any work: nothing to resume
        scenario = load_scenario(run_dir / RESOLVED, overrides)
        try:
            check_resume(
                checkpoint.scenario, scenario.model_dump(mode="json"), checkpoint.server_round
            )
        except ScenarioError as exc:
            raise exc.with_source(str(run_dir / RESOLVED)) from None
        preflight(scenario)
        if overrides:
            _write_resolved(run_dir, scenario)
        with flower_log(verbose), _display(None, progress):
            return _execute(scenario, run_dir, resume=True)


def _execute(
    scenario: Scenario, run_dir: Path, *, resume: bool, engine: Engine | None = None
) -> RunResult:
    """Run the engine on a prepared run directory, then write the summary.

    A run that raises (or is interrupted) leaves a ``CRASHED`` marker, so the next run
    into the directory replaces it (:mod:`fedsim.run_directory`).
    """
    resolved = run_dir / RESOLVED
    digest = scenario_digest(resolved.read_bytes())
    run_config: UserConfig = {
        wire.RUN_SCENARIO: str(resolved.resolve()),
        # The apps read the scenario with this digest only (never a file rewritten since).
        wire.RUN_SCENARIO_SHA256: digest,
        wire.RUN_DIR: str(run_dir.resolve()),
        wire.RUN_RESUME: resume,
    }
    write_provenance(run_dir, digest, resumed=resume)

    try:
        (engine or ENGINES.get(scenario.engine.name))(scenario, run_config)
    except BaseException as exc:
        mark_crashed(run_dir, exc)
        raise
    (run_dir / CRASH_FILE).unlink(missing_ok=True)  # a resumed crash that now finished
    records = read_metrics(run_dir)
    summary = summarize(
        records,
        variant=scenario.variant,
        seed=scenario.seed,
        target_accuracy=scenario.output.target_accuracy,
    )
    sharing = run_dir / "sharing.json"  # written by strategies with an offline phase
    if sharing.exists():
        summary.update(json.loads(sharing.read_text(encoding="utf-8")))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return RunResult(scenario, run_dir, records, summary)


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
    with _display(sum(r.rounds for r in runs), progress) as bar:
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
    runs: Sequence[Scenario], targets: Sequence[Path], jobs: int, verbose: bool | None
) -> list[RunResult | DivergedError]:
    """Run each scenario into its target, ``jobs`` at once.

    A diverged run's :class:`DivergedError` is returned in its place; any other error
    is raised.
    """
    if jobs > 1 and len(runs) > 1:
        return _run_parallel(runs, targets, jobs, [], verbose, job=_run_or_diverged)  # type: ignore[return-value]
    return [_run_or_diverged(r, t, verbose, None) for r, t in zip(runs, targets, strict=True)]


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

    from fedsim.engine.executor import main_module_hidden, process_context
    from fedsim.outputs.metrics_log import replay

    context = process_context(["fedsim.runner", "fedsim.clients.app", "fedsim.server"])
    results: list[RunResult | None] = [None] * len(runs)
    environ = dict(os.environ)  # a forkserver's children inherit its older environment
    with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=context) as pool:
        with main_module_hidden():  # the job processes start here (see its docstring)
            futures = {
                pool.submit(job or _run_in_job, concrete, target, verbose, environ): i
                for i, (concrete, target) in enumerate(zip(runs, targets, strict=True))
            }
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()  # a run's error is raised here, as with jobs=1
            for started in on_run_start:
                started(i, len(runs), runs[i])
            if isinstance(results[i], RunResult):
                replay(results[i].metrics)  # type: ignore[union-attr]  # set just above
    return results  # type: ignore[return-value]  # every slot is filled above


def _run_in_job(
    scenario: Scenario, run_dir: Path, verbose: bool | None, environ: dict[str, str]
) -> RunResult:
    """One run of a parallel comparison, in a job process."""
    import os

    os.environ.clear()
    os.environ.update(environ)
    return run(scenario, run_dir, verbose=verbose, progress=False)
