"""DemLearn's wire keys, shared by its strategy and its client step (defined once).

The strategy (:mod:`fedsim.strategies.demlearn`) and the client step
(:mod:`fedsim.clients.demlearn`) never import each other; both import these.
"""

from __future__ import annotations

from typing import Final

# The local step DemLearn's clients run (plain training that also says who they are).
STEP: Final = "demlearn"
# Client -> server metric: the node's partition id, so that the server can score each
# client's own model on that client's own test data.
PARTITION: Final = "demlearn-partition"
