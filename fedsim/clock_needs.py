"""What only an engine with a virtual clock can honour, refused elsewhere before training.

The in-process engine stamps every reply on a virtual clock: it cuts replies at
``system.deadline_s`` and draws stragglers, dropouts and injected failures. The ``ray``
engine has no such clock (Flower's Ray simulation delivers every reply), so a scenario
asking for them there would silently run without them: 0 stragglers, results that do
not match the in-process run. That is refused with one line naming the key. (Device
speeds and bandwidths only change virtual time, which such an engine reports as null.)
"""

from __future__ import annotations

from fedsim.config.schema import SystemConfig
from fedsim.errors import Problem

CLOCK_ENGINES = frozenset({"inprocess"})
_NEEDS_CLOCK = ("deadline_s", "straggle_prob", "dropout_prob", "failure_prob")


def clock_problems(system: SystemConfig, engine: str) -> list[Problem]:
    """The ``system`` keys ``engine`` cannot honour (none on an engine with a clock)."""
    if engine in CLOCK_ENGINES:
        return []
    asked = [k for k in _NEEDS_CLOCK if getattr(system, k) not in (None, 0, 0.0)]
    return [
        Problem(
            f"system.{key}",
            f"engine '{engine}' has no virtual clock, so it cannot honour it (every reply "
            "would reach the strategy); use engine 'inprocess', or remove the key",
        )
        for key in asked
    ]
