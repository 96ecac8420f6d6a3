"""Old module names that still import: the modules moved, their names did not die.

Scenarios, resolved YAMLs in existing run directories and outside code name modules by
their pre-``algorithms/`` paths (``fedsim.clients.app:app``, ``fedsim.scenario``,
``fedsim.strategies.fedcurv``). Rather than a shim file per old path, one table maps
each old name to the module that now holds the code, and a finder on ``sys.meta_path``
hands out *that same module object* under the old name: one module, one registry, and a
monkeypatch through either name patches both. fedsim's own code imports the new names
(``tests/test_moved_names.py`` checks that every old name still imports).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Final

MOVED: Final[dict[str, str]] = {
    "fedsim.strategies.fedavg": "fedsim.algorithms.fedavg.server",
    "fedsim.strategies.scaffold": "fedsim.algorithms.scaffold.server",
    "fedsim.clients.scaffold": "fedsim.algorithms.scaffold.client",
    "fedsim.strategies.fedcurv": "fedsim.algorithms.fedcurv.server",
    "fedsim.clients.curvature": "fedsim.algorithms.fedcurv.client",
    "fedsim.strategies.fedaws": "fedsim.algorithms.fedaws.server",
    "fedsim.strategies.spreadout": "fedsim.algorithms.fedaws.spreadout",
    "fedsim.clients.positive": "fedsim.algorithms.fedaws.client",
    "fedsim.strategies.coded": "fedsim.algorithms.agc.server",
    "fedsim.clients.coded": "fedsim.algorithms.agc.client",
    "fedsim.strategies.ldpc": "fedsim.algorithms.ldpc.server",
    "fedsim.clients.moments": "fedsim.algorithms.ldpc.client",
    "fedsim.strategies.lasgd": "fedsim.algorithms.lasgd.server",
    "fedsim.strategies.decentralised": "fedsim.algorithms.lasgd.communication",
    "fedsim.clients.lasgd": "fedsim.algorithms.lasgd.client",
    "fedsim.strategies.median_of_means": "fedsim.algorithms.median_of_means.server",
    "fedsim.strategies.compression": "fedsim.algorithms.compression.server",
    "fedsim.clients.link_mod": "fedsim.algorithms.compression.client",
    "fedsim.link_coding": "fedsim.algorithms.compression.codec",
    "fedsim.clients": "fedsim.client",
    "fedsim.clients.app": "fedsim.client.app",
    "fedsim.clients.attacks": "fedsim.client.attacks",
    "fedsim.clients.batched": "fedsim.client.stacked",
    "fedsim.clients.dp": "fedsim.client.dp",
    "fedsim.clients.losses": "fedsim.client.losses",
    "fedsim.clients.low_precision": "fedsim.client.low_precision",
    "fedsim.clients.model_cache": "fedsim.client.model_cache",
    "fedsim.clients.optimizers": "fedsim.client.optimizers",
    "fedsim.clients.steps": "fedsim.client.steps",
    "fedsim.clients.training": "fedsim.client.loop",
    "fedsim.clients.unread_keys": "fedsim.client.unread_keys",
    "fedsim.rounds": "fedsim.server.loop",
    "fedsim.checkpoint": "fedsim.server.checkpoint",
    "fedsim.state_codec": "fedsim.server.state_codec",
    "fedsim.scenario": "fedsim.config.schema",
    "fedsim.scenario_loading": "fedsim.config.sources",
    "fedsim.combinations": "fedsim.config.rules",
    "fedsim.param_types": "fedsim.config.param_types",
    "fedsim.import_paths": "fedsim.config.import_paths",
    "fedsim.plugins": "fedsim.config.plugins",
    "fedsim.bounded_yaml": "fedsim.config.bounded_yaml",
    "fedsim.engine.inprocess": "fedsim.engine.inprocess_grid",
    "fedsim.engine.inprocess_engine": "fedsim.engine.inprocess_run",
}
# Everything else under the old package name moved to the same name under the new one.
MOVED_PACKAGES: Final[dict[str, str]] = {"fedsim.clients.": "fedsim.client."}


def new_name(old: str) -> str | None:
    """Return the module that holds what ``old`` named, or None if ``old`` did not move."""
    if old in MOVED:
        return MOVED[old]
    for prefix, target in MOVED_PACKAGES.items():
        if old.startswith(prefix):
            return target + old[len(prefix) :]
    return None


class _Alias(importlib.abc.Loader):
    """Loads an old name as the already-imported module of its new name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.module: ModuleType | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self.module = importlib.import_module(self.target)
        self._spec = self.module.__spec__
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the module: give it its own back,
        # so the module still knows its real name (importlib.reload, resources).
        module.__spec__ = self._spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        is_package = new in {t.rstrip(".") for t in MOVED_PACKAGES.values()}
        return importlib.machinery.ModuleSpec(fullname, _Alias(new), is_package=is_package)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
