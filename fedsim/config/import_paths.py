"""The Python import paths a scenario names: the code that loading it would run.

Strategies and models may be named ``pkg.module:attr``. Importing one runs that
module's top-level code, so a scenario file that names import paths is code, not
data. :func:`scenario_imports` finds them without importing anything: ``fedsim
validate`` lists them, ``validate --no-imports`` stops there, and a SuperLink refuses
submitted runs that name any unless its operator allowed them
(:mod:`fedsim.submission_policy`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fedsim.config.plugins import plugin_roots, pythonpath_with, scenario_modules
from fedsim.config.schema import Scenario
from fedsim.registry import IMPORT_PATH, is_import_path

# The sections whose names registries may import: the component names themselves and,
# inside their params, names of nested components (a cosine model's `backbone`).
# `output.callbacks` names callbacks the same way.
_SECTIONS = ("strategy", "model", "output")


@dataclass(frozen=True)
class ImportName:
    """One import path in a scenario: its dotted key and the ``pkg.module:attr`` text."""

    key: str
    spec: str

    def __str__(self) -> str:
        return f"{self.key}={self.spec}"


def _strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{key}.{i}")


def scenario_imports(scenario: Scenario) -> list[ImportName]:
    """Every import path ``scenario`` names (variants included), in schema order.

    Every module in ``plugins`` counts (it is imported whole). A section's ``name``
    counts whenever it holds a colon (that is what the registry would try to import); a
    string inside ``params`` counts when it has the ``pkg.module:attr`` form.
    """
    found = [ImportName(f"plugins.{i}", name) for i, name in enumerate(scenario.plugins)]
    layers: list[tuple[str, dict[str, Any]]] = [("", scenario.model_dump(mode="json"))]
    layers += [(f"variants.{v}.", dict(o)) for v, o in (scenario.variants or {}).items()]
    # A sweep's values are dotted-key settings too (`strategy.name: [fedavg, pkg:Cls]`).
    layers += [
        (f"sweep.{i}.", {key: value})
        for key, values in scenario.sweep.items()
        for i, value in enumerate(values)
    ]
    for prefix, raw in layers:
        if prefix:  # a variant's own plugins
            for i, name in enumerate(raw.get("plugins") or []):
                if ImportName(f"{prefix}plugins.{i}", str(name)) not in found:
                    found.append(ImportName(f"{prefix}plugins.{i}", str(name)))
        for key, text in _section_strings(raw):
            named = key.endswith(".name") and key.count(".") == 1
            if is_import_path(text) if named else bool(IMPORT_PATH.fullmatch(text)):
                name = ImportName(prefix + key, text)
                if name not in found:
                    found.append(name)
    return found


def _section_strings(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(dotted key, text) of the strings in the importing sections of a raw mapping.

    A variant's override may use dotted keys (``model.name: pkg:f``) or nest mappings.
    """
    for top, value in raw.items():
        section = top.split(".", 1)[0]
        if section in _SECTIONS:
            yield from _strings(value, top)


def plugin_pythonpath(scenario: Scenario) -> str:
    """``PYTHONPATH`` for processes fedsim starts: where this one found the user's code.

    The SuperLink's ServerApp, Ray's workers and ``--jobs`` processes are processes of
    their own, started elsewhere; with the working directory and the folders of the
    scenario's plugins and import-path modules on their path they import what this
    process imported.
    """
    specs = [name.spec for name in scenario_imports(scenario) if ":" in name.spec]
    modules = scenario_modules(scenario.plugins, specs)
    return pythonpath_with(plugin_roots(modules), os.environ.get("PYTHONPATH"))
