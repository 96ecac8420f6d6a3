"""User modules a scenario imports before its names are resolved (``plugins:``).

A module that registers a strategy, a local step or a model (``@fedsim.register_*``)
makes those names exist only in the process that imported it. A scenario's ``plugins``
(and ``fedsim run --import``/``fedsim validate --import``, which add to it) travel with
the resolved scenario in the run config, so every process that loads it (the ServerApp,
Ray's workers, a deployed SuperNode's ClientApp) imports them first. The module must be
importable there: the error says so otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fedsim.errors import Problem, ScenarioError


def cwd_on_path() -> None:
    """Put the working directory on ``sys.path`` (import-path names resolve from it).

    The ``fedsim`` script, unlike ``python -m``, does not; a user's ``mylab.strat:Class``
    run from the folder holding ``mylab/`` should import without ``PYTHONPATH=.``.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def import_plugins(names: Sequence[str]) -> None:
    """Import each module of ``names`` (a scenario's ``plugins``), in order.

    Raises
    ------
    ScenarioError
        One problem per module that cannot be imported, at ``plugins.<i>``.
    """
    problems = []
    for i, name in enumerate(names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a plugin's own error is the user's to see, in one line
            problems.append(
                Problem(
                    f"plugins.{i}",
                    f"cannot import module '{name}' in this process ({type(exc).__name__}: "
                    f"{exc}); it must be importable wherever the scenario runs (the "
                    "server, Ray's workers, every deployed SuperNode)",
                )
            )
    if problems:
        raise ScenarioError(problems)


def plugin_roots(names: Sequence[str]) -> list[str]:
    """The ``sys.path`` folders the (imported) modules ``names`` were found under.

    Processes the engines start (Flower's SuperLink, its simulation and Ray's workers)
    get them on ``PYTHONPATH``, with the working directory, so they import the same
    plugins whatever folder they start in.
    """
    roots = [os.getcwd()]
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # not importable here: nothing to pass on
            continue
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        depth = name.count(".") + (1 if origin.name == "__init__.py" else 0)
        root = str(origin.parents[depth])
        if root not in roots:
            roots.append(root)
    return roots


def pythonpath_with(roots: Sequence[str], current: str | None = None) -> str:
    """``PYTHONPATH`` with ``roots`` first (``current``: the inherited value)."""
    parts = list(roots) + [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(parts))


def scenario_modules(names: Sequence[str], import_specs: Sequence[str]) -> list[str]:
    """The plugin modules plus the modules of ``pkg.module:attr`` names, once each."""
    modules = list(names) + [spec.partition(":")[0] for spec in import_specs]
    return list(dict.fromkeys(modules))
