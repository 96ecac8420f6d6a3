"""A train-config key that nothing on the client reads is a warning, once per run.

A strategy that sends ``proximal_mu`` instead of ``proximal-mu``, or a key meant for a
step it did not select, would otherwise train as if the key were not there. The
ClientApp reads a few keys itself (:data:`APP_KEYS`); the selected step declares the
others it reads in :attr:`~fedsim.client.steps.LocalStep.reads`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

from fedsim import wire
from fedsim.client.steps import STEPS, LocalStep
from fedsim.errors import FedsimWarning

# Keys the ClientApp, its mods or the engine read whatever the step.
APP_KEYS = frozenset(
    {
        wire.SERVER_ROUND,
        wire.LOCAL_STEP,
        wire.LABEL_FLIP,
        wire.LOCAL_COMPUTE,
        wire.LASGD_SCALE,
    }
)

_warned: set[tuple[Hashable, str]] = set()  # (run, key): each warned of once per run


def unread_keys(step: type[LocalStep], config: Mapping[str, Any]) -> list[str]:
    """Return the keys of ``config`` that neither the ClientApp nor ``step`` reads."""
    return sorted(k for k in config if k not in APP_KEYS and k not in step.reads)


def step_name(step: type[LocalStep]) -> str:
    """The name ``step`` is registered under (its class name if none)."""
    return next((n for n in STEPS.names() if STEPS.get(n) is step), step.__name__)


def warn_unread(run: Hashable, step: type[LocalStep], config: Mapping[str, Any]) -> None:
    """Warn (a :class:`~fedsim.errors.FedsimWarning`) of each unread key once per ``run``."""
    fresh = [k for k in unread_keys(step, config) if (run, k) not in _warned]
    if not fresh:
        return
    _warned.update((run, k) for k in fresh)
    warnings.warn(
        f"the train config carries {', '.join(repr(k) for k in fresh)}, which local step "
        f"'{step_name(step)}' does not read (it reads: "
        f"{', '.join(sorted(step.reads)) or 'nothing but the model'})",
        FedsimWarning,
        stacklevel=2,
    )
