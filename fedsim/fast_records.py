"""Flower records filled without re-checking every item.

Flower's records (``ArrayRecord``, ``MetricRecord``, ``ConfigRecord``, and the
``RecordDict`` of a message's content) type-check each
key and value as it is inserted: ~10 µs an item, more than a small client's whole reply
costs to build otherwise. Where fedsim builds a record from items whose types it
guarantees (arrays it encoded itself, metrics it computed as Python numbers), it copies
an empty record with the record's own ``copy`` and fills the copy's store directly: the
result is equal to the checked one (a test compares them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord, RecordDict)


def filled(empty: R, items: Mapping[str, Any]) -> R:
    """A new record of ``empty``'s type holding ``items`` (``empty`` stays empty).

    The caller vouches that the items pass the record's checks (``str`` keys; arrays,
    numbers and lists of them, or records in a ``RecordDict``).
    """
    # What ``empty.copy()`` (``TypedDict.copy``) makes, with ``items`` as its store: the
    # same three fields, without the copy's calls (a reply builds three records).
    cls = type(empty)
    record = cls.__new__(cls)
    fields = empty.__dict__
    record.__dict__.update(
        _check_key_fn=fields["_check_key_fn"],
        _check_value_fn=fields["_check_value_fn"],
        _data=dict(items),
    )
    return record


def store(record: ArrayRecord | MetricRecord | ConfigRecord | RecordDict) -> dict[str, Any]:
    """The plain dict behind ``record``'s mapping interface, for reading only.

    Each lookup or iteration through a Flower record goes through ``TypedDict``'s
    methods (~0.3 µs a call); a server reading a hundred replies a round makes thousands.
    Nothing may be written to the dict returned: it skips the record's checks.
    """
    data: dict[str, Any] = record.__dict__["_data"]
    return data
