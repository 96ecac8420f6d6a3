"""Message keys of fedcurv: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "curvature"
CURV_LAMBDA: Final = "curv-lambda"  # FedCurv: penalty weight (selects the curvature step)
CURV_FISHER: Final = "curv-fisher"  # FedCurv: "empirical" | "batch" Fisher estimate
# FedCurv: the round whose replies the sums U, V, W cover, and the node ids (as strings:
# Flower's node ids are unsigned 64-bit) of the clients whose terms are in them.
CURV_SUMS_ROUND: Final = "curv-sums-round"
CURV_MEMBERS: Final = "curv-members"
# FedCurv array keys, "<prefix><kind>.<parameter name>" in the one ArrayRecord of a
# message: server -> client U, V, W (sums over other clients); client -> server F, FT.
CURV_PREFIX: Final = "curv."

# Why it cannot run under client.dp: its step refuses with it, its spec declares it.
DP_REFUSAL: Final = (
    "fedcurv clients upload the Fisher diagonal of their data (curv.F, curv.FT), "
    "which DP-SGD's clipping and noise do not cover"
)

# Reply arrays with one entry per model parameter: F and F⊙θ.
REPLY_PREFIXES: Final = (f"{CURV_PREFIX}F.", f"{CURV_PREFIX}FT.")
