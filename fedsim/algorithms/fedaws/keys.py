"""Message keys of fedaws: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step its clients run (its spec's steps, the step the client half registers).
STEP: Final = "positive-only"
# FedAwS: the class a client holds and the one class-embedding row it may see (never
# the whole matrix). Config: the class, the positive margin, whether to train the row;
# array key (both directions): the row.
FEDAWS_CLASS: Final = "fedaws-class"
FEDAWS_POSITIVE_MARGIN: Final = "fedaws-positive-margin"
FEDAWS_TRAIN_ROW: Final = "fedaws-train-row"
FEDAWS_ROW: Final = "fedaws.row"
# Query actions (message type "query.<action>").
QUERY_LABELS: Final = "labels"  # reply metrics: LABELS, the distinct labels the node holds
LABELS: Final = "labels"  # reply to a labels query: list of ints

# Why it cannot run under client.dp: its step refuses with it, its spec declares it.
DP_REFUSAL: Final = (
    "fedaws asks every client for the labels it holds (query.labels), a release "
    "DP-SGD does not cover"
)
