"""Callbacks: whatever subscribes to the round loop (metrics log, trackers, plots, yours).

A :class:`Callback` is told when a run starts, after every round (the round's
``metrics.jsonl`` record, the global arrays and the run directory) and when the run
ends. They run in the ServerApp's process, in order: fedsim's metrics log first, then
the trackers of ``output.trackers``, then the callbacks of ``output.callbacks``
(registry names or ``pkg.module:Class``), then those given to :func:`fedsim.run`
(in-process engine only: the objects live in the caller's process), then the plots.

Write one by subclassing :class:`Callback` and overriding what you need::

    @fedsim.register_callback("print-accuracy")
    class PrintAccuracy(fedsim.Callback):
        def on_round_end(self, run, server_round, record, arrays):
            print(server_round, record["eval_accuracy"])
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedsim.errors import Problem, ScenarioError, UnknownNameError
from fedsim.registry import ImportKind, Registry, is_import_path

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from fedsim.config.schema import Scenario


# One metrics.jsonl record (the same alias as fedsim.outputs.metrics_log.Record, which
# imports this module).
Record = dict[str, Any]


@dataclass(frozen=True)
class RunInfo:
    """What a callback knows about the run it follows.

    Attributes
    ----------
    run_dir : Path
        The run directory (callbacks write their files here).
    scenario : Scenario
        The concrete scenario that runs (for trackers' run names and parameters).
    resumed : bool
        Whether the run continues from a checkpoint (the records before it exist).
    """

    run_dir: Path
    scenario: Scenario
    resumed: bool = False


class Callback:
    """Base of every callback: each hook does nothing until overridden.

    ``draws_random``: whether a hook may draw from the global random generators
    (``random``, numpy's, torch's); the round loop then puts their states back after
    the hooks (a callback never changes a run). A callback that draws nothing, or keeps
    the states itself, says False and spares the round that.
    """

    draws_random: ClassVar[bool] = True

    def on_run_start(self, run: RunInfo) -> None:
        """Called once, before round 0's evaluation (or the first resumed round)."""

    def on_round_end(
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        """Called after every round (round 0: the initial model) with its record."""

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:
        """Called once after the last round with every record of the run."""


def _is_callback_class(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Callback)


CALLBACKS: Registry[type[Callback]] = Registry(
    "callbacks", importable=ImportKind("a fedsim.Callback subclass", _is_callback_class)
)
# Trackers are callbacks too; `output.trackers` names them from this registry.
TRACKERS: Registry[type[Callback]] = Registry("trackers")


def register_callback(name: str) -> Any:
    """Decorator: register a :class:`Callback` subclass for ``output.callbacks``."""
    return CALLBACKS.register(name)


class CallbackList(Callback):
    """Calls several callbacks in order (itself a callback)."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    @property
    def draws_random(self) -> bool:  # type: ignore[override]  # from its callbacks
        """Whether any of the callbacks may draw from the global random generators."""
        return any(cb.draws_random for cb in self.callbacks)

    def on_run_start(self, run: RunInfo) -> None:  # noqa: D102
        for cb in self.callbacks:
            cb.on_run_start(run)

    def on_round_end(  # noqa: D102
        self, run: RunInfo, server_round: int, record: Record, arrays: ArrayRecord
    ) -> None:
        for cb in self.callbacks:
            cb.on_round_end(run, server_round, record, arrays)

    def on_run_end(self, run: RunInfo, records: Sequence[Record]) -> None:  # noqa: D102
        for cb in self.callbacks:
            cb.on_run_end(run, records)


def _entry(entry: str | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    return str(entry["name"]), dict(entry.get("params") or {})


def build_callback(entry: str | Mapping[str, Any], key: str) -> Callback:
    """Instantiate one ``output.callbacks`` entry (a name, or ``{name, params}``)."""
    name, params = _entry(entry)
    try:
        cls = CALLBACKS.get(name)
    except UnknownNameError as exc:
        raise ScenarioError([exc.problem(key, "callback")]) from None
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ScenarioError([Problem(key, str(exc))]) from None


def build_trackers(names: Sequence[str]) -> list[Callback]:
    """Instantiate the trackers of ``output.trackers`` (importing optional libraries)."""
    import fedsim.outputs.trackers  # noqa: F401  (registers the shipped trackers)

    out = []
    for i, name in enumerate(names):
        try:
            out.append(TRACKERS.get(name)())
        except UnknownNameError as exc:
            raise ScenarioError([exc.problem(f"output.trackers.{i}", "tracker")]) from None
    return out


def output_problems(scenario: Scenario, *, imports: bool = True) -> list[Problem]:
    """Unknown tracker and callback names, and trackers whose library is missing."""
    import importlib.util

    import fedsim.outputs.trackers  # noqa: F401  (registers the shipped trackers)

    problems = []
    for i, name in enumerate(scenario.output.trackers):
        key = f"output.trackers.{i}"
        try:
            tracker = TRACKERS.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(key, "tracker"))
            continue
        needs = getattr(tracker, "requires", None)
        if needs is not None and importlib.util.find_spec(needs) is None:
            extra = getattr(tracker, "extra", needs)
            problems.append(
                Problem(key, f"'{name}' needs the {needs} package: pip install 'fedsim[{extra}]'")
            )
    problems += _baseline_problems(scenario)
    for i, entry in enumerate(scenario.output.callbacks):
        name = entry if isinstance(entry, str) else entry.name
        if not imports and is_import_path(name):
            continue
        try:
            CALLBACKS.get(name)
        except UnknownNameError as exc:
            problems.append(exc.problem(f"output.callbacks.{i}", "callback"))
    return problems


def _baseline_problems(scenario: Scenario) -> list[Problem]:
    """``output.baseline`` must name one of the variants the scenario expands into.

    A concrete run (no ``variants`` or ``sweep`` left) carries it along unchecked.
    """
    baseline = scenario.output.baseline
    if baseline is None or not (scenario.variants or scenario.sweep):
        return []
    from fedsim.config.expand import sweep_grid

    points = [label for label, _ in sweep_grid(scenario.sweep)] if scenario.sweep else [""]
    names = [
        "_".join(p for p in (v, point) if p) or "base"
        for v in (scenario.variants or {"": {}})
        for point in points
    ]
    if baseline in names:
        return []
    return [
        Problem("output.baseline", f"'{baseline}' is not a variant; variants: {', '.join(names)}")
    ]


# Callback objects handed to `fedsim.run(..., callbacks=...)`: the in-process ServerApp
# picks them up (it runs in this process; other engines' ServerApps do not).
_attached: list[Callback] = []


@contextmanager
def attached(callbacks: Sequence[Callback]) -> Iterator[None]:
    """Make ``callbacks`` part of the runs the in-process ServerApp starts in the block."""
    _attached.extend(callbacks)
    try:
        yield
    finally:
        del _attached[len(_attached) - len(callbacks) :]


def attached_callbacks() -> list[Callback]:
    """The callbacks :func:`attached` holds now."""
    return list(_attached)
