"""A reply's model update ``u = w - g`` against the arrays ``g`` it was sent, and back.

Shared by the attackers on the node (:mod:`fedsim.clients.attacks`) and the colluding
attackers simulated on the server (:mod:`fedsim.strategies.collusion`), so both read
and write an update by the same rule: float arrays with a same-shape reference only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from numpy.typing import NDArray

from fedsim.array_codec import decode, encode

Update = dict[str, NDArray[Any]]


def update_of(record: ArrayRecord, references: Update) -> Update:
    """``u = w - g`` for each float array ``w`` of ``record`` with a same-shape reference g."""
    update: Update = {}
    for key, array in record.items():
        value, reference = decode(array), references.get(key)
        if value.dtype.kind == "f" and reference is not None and reference.shape == value.shape:
            update[key] = value - reference
    return update


def replace_update(record: ArrayRecord, references: Update, update: Update) -> None:
    """Set, in place, the array of each of ``update``'s keys in ``record`` to ``g + u'``."""
    for key, u in update.items():
        record[key] = encode(np.ascontiguousarray((references[key] + u).astype(u.dtype)))
