"""Message keys of lasgd: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# LASGD: block messages are "train.<LASGD_ACTION>"; the worker merges x <- a*x + b with
# a = LASGD_SCALE from the config and b the message's ArrayRecord (none: keep computing).
LASGD_ACTION: Final = "lasgd"
LASGD_SCALE: Final = "lasgd-scale"
