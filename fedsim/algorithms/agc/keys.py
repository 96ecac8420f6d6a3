"""Message keys of agc: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "coded-gradient"
# Approximate gradient coding (AGC): the straggle probability p the encoding weights
# assume (the sharing plan is the nodes' data); the reply's arrays are the encoded
# gradient, "<prefix><parameter name>".
AGC_P: Final = "agc-p"
AGC_GRAD_PREFIX: Final = "agc.grad."

# Why it cannot run under client.dp: its step refuses with it, its spec declares it.
DP_REFUSAL: Final = "agc clients upload a coded gradient of their data without clipping or noise"

# Reply arrays with one entry per model parameter: the encoded gradient.
REPLY_PREFIXES: Final = (AGC_GRAD_PREFIX,)
