"""Message keys of scaffold: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "scaffold"
# SCAFFOLD: the option ("I" | "II") by which clients update their control variate c_i;
# array keys "<prefix><parameter name>": server -> client the server control variate c,
# client -> server the change of the client's control variate, c_i+ - c_i (an array
# under a key the server sent, in the shape it was sent).
SCAFFOLD_OPTION: Final = "scaffold-option"
SCAFFOLD_C_PREFIX: Final = "scaffold.c."
# Per node: the latest round whose Δc_i from this node the server added to c (0: none).
# The client commits the c_i+ it computed in that round, and rolls back any other (a
# reply that missed the deadline, dropped or failed never reached c).
SCAFFOLD_CONFIRMED: Final = "scaffold-confirmed-round"
