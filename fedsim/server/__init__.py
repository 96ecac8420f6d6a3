"""The ServerApp (``fedsim.server.app:app``), its round loop, recorder and checkpoints."""

from __future__ import annotations

import importlib
from typing import Any

# What ``fedsim.server`` (one module before it became this package) named, for outside
# code: each now lives in one of the package's modules.
_MOVED_OUT = {
    "RoundRecorder": "fedsim.server.recorder",
    "build_callbacks": "fedsim.server.recorder",
    "check_finite": "fedsim.server.recorder",
    "rng_kept": "fedsim.server.recorder",
    "save_arrays": "fedsim.server.recorder",
    "Checkpointer": "fedsim.server.checkpoint",
    "build_strategy": "fedsim.compose.strategy",
    "strategy_defaults": "fedsim.compose.strategy",
    "main": "fedsim.server.app",
    "wait_for_nodes": "fedsim.server.app",
    "SHARING_FILE": "fedsim.server.app",
    "LABEL_NOISE_FILE": "fedsim.server.app",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_OUT:
        return getattr(importlib.import_module(_MOVED_OUT[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
