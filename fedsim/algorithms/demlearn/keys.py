"""Message keys of demlearn: its server and client halves import these, never each other."""

from __future__ import annotations

from typing import Final

# The local step DemLearn's clients run (plain training that also says who they are).
STEP: Final = "demlearn"
# Client -> server metric: the node's partition id, so that the server can score each
# client's own model on that client's own test data.
PARTITION: Final = "demlearn-partition"
# Why client.dp is refused (the spec's dp_refusal).
DP_REFUSAL: Final = (
    "its specialisation report scores each agent's model on that agent's own test data "
    "or label mix, outside DP-SGD"
)
