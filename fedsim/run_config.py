"""The scenario as ServerApp and ClientApp see it: a path or the text in Flower's run config.

Both apps receive only ``run_config["scenario"]`` (the path of the resolved YAML of one
run) or, in a deployment whose nodes share no file system with the server,
``run_config["scenario-yaml"]`` (that YAML's text), so they run unchanged in-process,
on Flower's Ray engine and under ``flower-supernode``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fedsim import wire
from fedsim.errors import Problem, ScenarioError
from fedsim.scenario import Scenario
from fedsim.scenario_loading import load_scenario

_cache: dict[str, Scenario] = {}  # by the SHA-256 of the scenario's text
_lock = threading.Lock()


def scenario_digest(text: str | bytes) -> str:
    """The SHA-256 that pins a resolved scenario's text (``run_config["scenario-sha256"]``)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def scenario_from_run_config(run_config: Mapping[str, Any]) -> Scenario:
    """Load (once per process and content) the scenario of a run config.

    A scenario given by path is pinned by ``run_config["scenario-sha256"]``: the file
    is read once, and only if its content has that digest (a file rewritten while the
    run goes on, by hand or by another run, is an error, never silently used). Without
    a digest the file is read on every call and cached by its content.
    """
    text = str(run_config.get(wire.RUN_SCENARIO_YAML) or "")
    if text:
        source = f"run config '{wire.RUN_SCENARIO_YAML}'"
        key = scenario_digest(text)
        pinned = None
    elif run_config.get(wire.RUN_SCENARIO):
        path = Path(str(run_config[wire.RUN_SCENARIO]))
        source = str(path)
        pinned = str(run_config.get(wire.RUN_SCENARIO_SHA256) or "") or None
        key = pinned or ""
    else:
        raise ScenarioError(
            [
                Problem(
                    "",
                    f"run config has neither '{wire.RUN_SCENARIO}' nor '{wire.RUN_SCENARIO_YAML}'",
                )
            ]
        )
    with _lock:
        scenario = _cache.get(key) if key else None
        if scenario is not None:
            return scenario  # the hot path: one dict lookup per client call
        if not text:
            text, key = _read_pinned(path, pinned)
            scenario = _cache.get(key)
            if scenario is not None:
                return scenario
        scenario = _load_text(text, source)
        if not scenario.is_expanded:
            raise ScenarioError(
                [Problem("", "the apps need one concrete run (no 'variants'/'seeds')")], source
            )
        _cache[key] = scenario
        return scenario


def _read_pinned(path: Path, pinned: str | None) -> tuple[str, str]:
    """The file's text and digest, checked against ``pinned`` when there is one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScenarioError([Problem("", f"cannot read the scenario: {exc}")], str(path)) from None
    digest = scenario_digest(data)
    if pinned is not None and digest != pinned:
        raise ScenarioError(
            [
                Problem(
                    "",
                    f"changed since the run started (sha256 {digest[:12]}..., the run pinned "
                    f"{pinned[:12]}...); a run directory belongs to one run",
                )
            ],
            str(path),
        )
    try:
        return data.decode("utf-8"), digest
    except UnicodeDecodeError:
        raise ScenarioError([Problem("", "not a UTF-8 text file")], str(path)) from None


def _load_text(text: str, source: str) -> Scenario:
    """Validate a scenario given as YAML text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError([Problem("", f"invalid YAML: {exc}")], source) from None
    if not isinstance(raw, dict):
        raise ScenarioError([Problem("", "the scenario must be a mapping")], source)
    try:
        return load_scenario(raw)
    except ScenarioError as exc:
        raise exc.with_source(source) from None
