"""A strategy's sampling shares checked where the user wrote them.

Flower's strategies sample ``max(int(fraction_train * N), min_train_nodes)`` of the
``N`` connected nodes and wait, polling once a second, until that many are connected.
In a simulation the population is fixed, so a share above 1 waits forever; a
``fraction_train`` of 0 silently skips training (Flower returns no messages), and a
negative one trains ``min_train_nodes`` clients. Each is an error of the scenario.
(The node minimums are checked by :func:`fedsim.compose.components.check_population`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedsim.errors import Problem

FRACTIONS = ("fraction_train", "fraction_evaluate")
# Strategies whose round trains: a share of 0 means no training at all.
MUST_TRAIN = "fraction_train"


def fraction_problems(values: Mapping[str, Any], key: str = "strategy.params") -> list[Problem]:
    """Shares outside [0, 1], and a ``fraction_train`` of 0, among ``values``."""
    problems: list[Problem] = []
    for name in FRACTIONS:
        value = values.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # absent, or a type error the strategy's annotation reports
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            problems.append(
                Problem(f"{key}.{name}", f"must lie in [0, 1] (a share of the nodes), got {value}")
            )
        elif name == MUST_TRAIN and value == 0.0:
            problems.append(
                Problem(f"{key}.{name}", "is 0: no client would ever train; use a share in (0, 1]")
            )
    return problems
