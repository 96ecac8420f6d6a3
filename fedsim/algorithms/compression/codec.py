"""Coding whole messages for one direction of the link (``compression.uplink|downlink``).

Shared by the server's compression wrapper (:mod:`fedsim.algorithms.compression.server`) and
the client's mod (:mod:`fedsim.algorithms.compression.client`), which never import
each other. A message's every :class:`~flwr.app.ArrayRecord` is coded array by array
with :mod:`fedsim.rounding`; where the other side holds a
reference array of the same name and shape (the client the model it received, the
server the model it sent that node), the difference to it is coded instead, so the grid
spans an update, not the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, RecordDict
from numpy.typing import NDArray

from fedsim.array_codec import decode, encode
from fedsim.config.schema import LinkCompression
from fedsim.rounding import (
    codable,
    decode_rounded,
    encode_rounded,
    is_rounded,
)

References = Mapping[str, NDArray[Any]]


def code_record(
    record: ArrayRecord,
    cfg: LinkCompression,
    rng: np.random.Generator,
    references: References | None = None,
) -> ArrayRecord:
    """``record`` with every codable array rounded (relative where a reference fits)."""
    if cfg.method == "none":
        return record
    out = ArrayRecord()
    for key, array in record.items():
        value = decode(array)
        reference = (references or {}).get(key)
        relative = reference is not None and reference.shape == value.shape and codable(reference)
        target = value - reference if relative else value
        if codable(value) and codable(target):
            out[key] = encode_rounded(target, cfg.bits, cfg.method, rng, relative=relative)
        else:
            out[key] = array
    return out


def decode_record(record: ArrayRecord, references: References | None = None) -> ArrayRecord:
    """``record`` with every coded array decoded (plus its reference if it is relative).

    Raises
    ------
    ValueError
        If a relative array arrives without a reference of its shape.
    """
    if not any(is_rounded(a) for a in record.values()):
        return record
    out = ArrayRecord()
    for key, array in record.items():
        if not is_rounded(array):
            out[key] = array
            continue
        value, relative = decode_rounded(array)
        if relative:
            reference = (references or {}).get(key)
            if reference is None or reference.shape != value.shape:
                raise ValueError(f"coded update '{key}' arrived without its reference")
            value = (reference + value).astype(value.dtype)
        out[key] = encode(np.ascontiguousarray(value))
    return out


def map_records(content: RecordDict, fn: Callable[[ArrayRecord], ArrayRecord]) -> RecordDict:
    """A new RecordDict with ``fn`` applied to each ArrayRecord (other records shared)."""
    out = RecordDict()
    for name, record in content.items():
        out[name] = fn(record) if isinstance(record, ArrayRecord) else record
    return out


def plain_arrays(content: RecordDict) -> dict[str, NDArray[Any]]:
    """Every array of ``content``'s ArrayRecords by name (the references of a message)."""
    return {
        key: decode(array)
        for record in content.values()
        if isinstance(record, ArrayRecord)
        for key, array in record.items()
        if not is_rounded(array)
    }
