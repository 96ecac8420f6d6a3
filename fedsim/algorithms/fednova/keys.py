"""Message keys of fednova: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "fednova"
# Client -> server metric: the local SGD steps the client took this round (tau_i, the
# norm of its vector a_i for plain SGD).
FEDNOVA_STEPS: Final = "fednova-steps"
