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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import UserConfig

from fedsim import wire
from fedsim.compose import compose, load_scenario
from fedsim.compose.data_checks import data_problems
from fedsim.config.schema import Scenario
from fedsim.config.sources import to_yaml
from fedsim.data.federated import federated_data
from fedsim.data.partitioners import coverage_problem
from fedsim.engine.registry import ENGINES, Engine
from fedsim.errors import (
    FedsimWarning,
    Problem,
    RunDirectoryError,
    ScenarioError,
    UnknownNameError,
)
from fedsim.failure_watch import TrainingStopped
from fedsim.file_names import short_name
from fedsim.flower_log import flower_log
from fedsim.models import build_model
from fedsim.outputs.callbacks import Callback, attached
from fedsim.outputs.metrics_log import Record, listening, read_metrics
from fedsim.outputs.per_client import NO_CLIENT_TESTS
from fedsim.outputs.provenance import write_provenance
from fedsim.outputs.summary import summarize
from fedsim.process_note import current as process_note
from fedsim.resume_rules import check_resume
from fedsim.run_config import scenario_digest
from fedsim.run_directory import CRASH_FILE, FAILED_FILE, claim, is_crashed, mark_crashed
from fedsim.run_files import entry_names, record_manifest, refuse_links, write_text
from fedsim.run_lock import RunLock
from fedsim.server.checkpoint import checkpoint_path, load_checkpoint

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


def default_out_dir(scenario: Scenario) -> Path:
    """``output.dir`` or ``runs/<name>-<timestamp>`` (never an existing directory)."""
    if scenario.output.dir:
        return Path(scenario.output.dir)
    base = Path("runs") / f"{short_name(scenario.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, k = base, 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def _write_resolved(run_dir: Path, scenario: Scenario) -> None:
    """Write ``scenario.resolved.yaml`` whole or not at all (temporary file, rename)."""
    path = run_dir / RESOLVED
    tmp = path.with_name(f".{path.name}.tmp")
    write_text(tmp, to_yaml(scenario))
    tmp.replace(path)


@contextmanager
def progress_display(total_rounds: int | None, progress: bool | None) -> Iterator[Any]:
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
    """Fail before any training (and any run directory) on what ``validate`` refuses.

    Every check of ``fedsim validate`` (:func:`fedsim.compose.compose`, done once per
    scenario in this process), then those that need the data: it can be had, and the
    model can take it.
    """
    composition = compose(scenario)
    try:
        ENGINES.get(scenario.engine.name)
    except UnknownNameError as exc:
        raise ScenarioError([Problem("engine.name", f"unknown engine: {exc}")]) from None
    if getattr(scenario.engine, "ray_address", None) is None:  # a cluster has its own devices
        from fedsim.training_device import check_devices

        check_devices(scenario.engine.device)
    if scenario.system.trace is not None:
        from fedsim.engine.device_trace import load_trace

        load_trace(scenario.system.trace.path)  # a malformed trace fails before any training
    from fedsim.engine.devices import sample_population  # every engine keeps the clock

    sample_population(scenario.system, scenario.data.num_clients, scenario.seed)
    data = federated_data(scenario.data, scenario.seed)
    data_checked = data_problems(scenario, composition.chain, data)
    if data_checked:
        raise ScenarioError(data_checked)
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
        from fedsim.client.dp import check_model

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
        with attached(callbacks), flower_log(verbose), progress_display(scenario.rounds, progress):
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
        refuse_links(run_dir)
        if is_crashed(run_dir) and not checkpoint_path(run_dir).is_file():
            # Killed before its first checkpoint was complete: round 0 is its checkpoint.
            return _restart(run_dir, overrides, verbose, progress)
        checkpoint = load_checkpoint(run_dir)  # fail before any work: nothing to resume
        scenario = load_scenario(run_dir / RESOLVED, overrides)
        try:
            check_resume(
                checkpoint.scenario, scenario.model_dump(mode="json"), checkpoint.server_round
            )
        except ScenarioError as exc:
            raise exc.with_source(str(run_dir / RESOLVED)) from None
        if checkpoint.server_round >= scenario.rounds and (run_dir / "summary.json").exists():
            raise RunDirectoryError(
                f"{run_dir} holds a finished run (all {scenario.rounds} rounds); nothing to "
                f"resume: --set rounds=N (N > {scenario.rounds}) runs it on"
            )
        preflight(scenario)
        if overrides:
            _write_resolved(run_dir, scenario)
        with flower_log(verbose), progress_display(None, progress):
            return _execute(scenario, run_dir, resume=True)


def _restart(
    run_dir: Path, overrides: Sequence[str], verbose: bool | None, progress: bool | None
) -> RunResult:
    """Run a crashed run that has no checkpoint again from the start, in its directory.

    Called with the directory's lock held; the result is the run an uninterrupted one
    would have given (same scenario, same seed).
    """
    scenario = load_scenario(run_dir / RESOLVED, overrides)
    preflight(scenario)
    warnings.warn(
        f"{run_dir}: the run stopped before its first checkpoint was complete; "
        "it starts again from round 0",
        FedsimWarning,
        stacklevel=3,
    )
    claim(run_dir, overwrite=True)
    _write_resolved(run_dir, scenario)
    with flower_log(verbose), progress_display(scenario.rounds, progress):
        return _execute(scenario, run_dir, resume=False)


def _execute(
    scenario: Scenario, run_dir: Path, *, resume: bool, engine: Engine | None = None
) -> RunResult:
    """Run the engine on a prepared run directory, then write the summary.

    A run that raises (or is interrupted) leaves a ``CRASHED`` marker, so the next run
    into the directory replaces it (:mod:`fedsim.run_directory`).
    """
    before = entry_names(run_dir)
    note = process_note()  # `fedsim run`'s supervisor marks this directory if we die
    if note is not None:
        note.set_run_dir(run_dir)
    try:
        return _execute_recorded(scenario, run_dir, resume=resume, engine=engine)
    finally:  # whatever the run wrote (a callback's files too) is the run's to replace
        record_manifest(run_dir, before - {RESOLVED})
        if note is not None:
            note.set_run_dir(None)


def _execute_recorded(
    scenario: Scenario, run_dir: Path, *, resume: bool, engine: Engine | None
) -> RunResult:
    """:func:`_execute` without the manifest."""
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
        mark_crashed(run_dir, exc, failed=isinstance(exc, TrainingStopped))
        raise
    (run_dir / CRASH_FILE).unlink(missing_ok=True)  # a resumed crash that now finished
    (run_dir / FAILED_FILE).unlink(missing_ok=True)
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
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(scenario, run_dir, records, summary)
