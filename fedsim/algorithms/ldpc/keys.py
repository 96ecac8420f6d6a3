"""Message keys of ldpc: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "moment-product"
# LDPC moment encoding: the server sends a zero MOMENT_PRODUCT array (shape: the block's
# rows) beside the model; the client replies it filled with its coded block's product
# A_j θ - c_j, and its partition id as the MOMENT_BLOCK metric (the code position).
MOMENT_PRODUCT: Final = "moment.product"
MOMENT_BLOCK: Final = "moment-block"

# Why it cannot run under client.dp: its step refuses with it, its spec declares it.
DP_REFUSAL: Final = "moment-encoded clients reply with products of every client's data moments"
