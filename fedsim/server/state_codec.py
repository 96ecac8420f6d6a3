"""Run state as JSON plus named arrays: a checkpoint format that cannot execute code.

A pickle runs whatever its bytes name, so a crafted ``checkpoint.pkl`` executes its
payload the moment it is loaded. Here state is a JSON tree whose objects are all
tagged nodes from one closed table (:data:`CODECS`), and whose arrays are kept apart as
``.npy`` members read with ``allow_pickle=False``. Decoding builds only the types in
that table: plain Python containers and scalars, numpy arrays and scalars, torch
tensors, Flower's ``Array``/``ArrayRecord``/``ConfigRecord``/``MetricRecord``/
``RecordDict``, and the dataclasses registered in :data:`STATE_TYPES` (fedsim's own).

Every JSON object in an encoded tree has exactly one key, its tag (``{"$tuple": [...]}``);
JSON arrays are Python lists and JSON scalars are themselves, so a tree is never
ambiguous. Floats round-trip exactly (``repr``); non-finite ones are tagged, keeping
the JSON strict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.errors import FedsimError
from fedsim.registry import Registry

Arrays = dict[str, np.ndarray]
Json = Any  # what json.dumps accepts


class StateCodecError(FedsimError):
    """A value cannot be encoded, or an encoded tree is not one this module wrote."""


# Dataclasses a checkpoint may hold, by name: the only classes decoding instantiates
# besides the fixed ones of CODECS.
STATE_TYPES: Registry[type] = Registry("checkpoint state types")


def register_state_type(name: str) -> Callable[[type], type]:
    """Allow the dataclass it decorates (fedsim's own) to be saved in and read from state."""

    def decorator(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls!r} is not a dataclass")
        STATE_TYPES.add(name, cls)
        return cls

    return decorator


class Encoder:
    """Turns values into a JSON tree, collecting their arrays in :attr:`arrays`."""

    def __init__(self) -> None:
        self.arrays: Arrays = {}
        self._names: dict[type, str] = {cls: name for name, cls in _state_types()}

    def array_ref(self, value: np.ndarray, where: str = "state") -> str:
        """Store ``value`` and return the name it is stored under."""
        if value.dtype.hasobject:
            raise StateCodecError(f"{where}: an object array would need pickle")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = value
        return name

    def encode(self, value: Any, where: str = "state") -> Json:
        """Return the JSON tree of ``value`` (``where`` names it in errors)."""
        # Exact types: numpy's float64 subclasses float and must come back as float64.
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$float": repr(value)}
        if type(value) is list:
            return [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        for codec in CODECS.values():
            if codec.accepts(value):
                return {f"${codec.tag}": codec.encode(self, value, where)}
        name = self._names.get(type(value))
        if name is not None:
            fields = {
                f.name: self.encode(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)
            }
            return {"$dataclass": [name, fields]}
        raise StateCodecError(f"{where}: cannot checkpoint a value of type {type(value).__name__}")


class Decoder:
    """Rebuilds values from a JSON tree and the arrays it refers to."""

    def __init__(self, arrays: Arrays) -> None:
        self.arrays = arrays

    def array(self, ref: Json) -> np.ndarray:
        """The stored array called ``ref``."""
        if not isinstance(ref, str) or ref not in self.arrays:
            raise StateCodecError(f"refers to a missing array {ref!r}")
        return self.arrays[ref]

    def decode(self, tree: Json) -> Any:
        """Return the value ``tree`` encodes."""
        if tree is None or isinstance(tree, bool | int | float | str):
            return tree
        if isinstance(tree, list):
            return [self.decode(v) for v in tree]
        if not isinstance(tree, dict) or len(tree) != 1:
            raise StateCodecError(f"unexpected entry {str(tree)[:60]}")
        ((tag, body),) = tree.items()
        if tag == "$float":
            return float(_checked(body, str))
        if tag == "$dataclass":
            name, fields = _checked(body, list)
            try:
                cls = STATE_TYPES.get(str(name))
            except FedsimError:
                raise StateCodecError(f"unknown state type {name!r}") from None
            values = {str(k): self.decode(v) for k, v in _checked(fields, dict).items()}
            try:
                return cls(**values)
            except TypeError as exc:
                raise StateCodecError(f"{name}: {exc}") from None
        codec = CODECS.get(tag[1:]) if tag.startswith("$") else None
        if codec is None:
            raise StateCodecError(f"unknown entry type {tag!r}")
        return codec.decode(self, body)


@dataclass(frozen=True)
class Codec:
    """How one kind of value is written and read back."""

    tag: str
    accepts: Callable[[Any], bool]
    encode: Callable[[Encoder, Any, str], Json]
    decode: Callable[[Decoder, Json], Any]


def _checked(value: Any, kind: type) -> Any:
    if not isinstance(value, kind):
        raise StateCodecError(f"expected {kind.__name__}, found {type(value).__name__}")
    return value


def _state_types() -> list[tuple[str, type]]:
    return [(name, STATE_TYPES.get(name)) for name in STATE_TYPES.names()]


def _pairs(enc: Encoder, items: Any, where: str) -> Json:
    return [[enc.encode(k, where), enc.encode(v, f"{where}[{k!r}]")] for k, v in items]


def _unpairs(dec: Decoder, body: Json) -> list[tuple[Any, Any]]:
    out = []
    for pair in _checked(body, list):
        if not isinstance(pair, list) or len(pair) != 2:
            raise StateCodecError("expected [key, value] pairs")
        out.append((dec.decode(pair[0]), dec.decode(pair[1])))
    return out


def _encode_flower_array(enc: Encoder, value: Array, where: str) -> Json:
    # Flower's own fields, so any serialisation type (not only numpy's) comes back as is.
    data = np.frombuffer(value.data, dtype=np.uint8)
    return [value.dtype, list(value.shape), value.stype, enc.array_ref(data)]


def _decode_flower_array(dec: Decoder, body: Json) -> Array:
    dtype, shape, stype, ref = _checked(body, list)
    data = dec.array(ref)
    if data.dtype != np.uint8 or data.ndim != 1:
        raise StateCodecError("an Array's data must be a byte vector")
    return Array(
        dtype=str(dtype), shape=tuple(int(s) for s in shape), stype=str(stype), data=data.tobytes()
    )


def _record_codec(tag: str, cls: type) -> Codec:
    """Flower records: their items in order, values through the codec."""
    return Codec(
        tag,
        lambda v: type(v) is cls,
        lambda enc, v, where: _pairs(enc, v.items(), where),
        lambda dec, body: cls(dict(_unpairs(dec, body))),
    )


def _ndarray(dec: Decoder, body: Json) -> np.ndarray:
    return dec.array(body).copy()  # writable and detached from the archive


CODECS: dict[str, Codec] = {
    c.tag: c
    for c in (
        Codec(
            "tuple",
            lambda v: type(v) is tuple,
            lambda enc, v, where: [enc.encode(x, f"{where}[{i}]") for i, x in enumerate(v)],
            lambda dec, body: tuple(dec.decode(x) for x in _checked(body, list)),
        ),
        Codec(
            "dict",
            lambda v: type(v) is dict,
            lambda enc, v, where: _pairs(enc, v.items(), where),
            lambda dec, body: dict(_unpairs(dec, body)),
        ),
        Codec(
            "ndarray",
            lambda v: isinstance(v, np.ndarray),
            lambda enc, v, where: enc.array_ref(np.asarray(v), where),
            _ndarray,
        ),
        Codec(  # a numpy scalar keeps its dtype as a 0-d array
            "npscalar",
            lambda v: isinstance(v, np.generic),
            lambda enc, v, where: enc.array_ref(np.asarray(v)),
            lambda dec, body: dec.array(body)[()],
        ),
        Codec(
            "tensor",
            lambda v: isinstance(v, torch.Tensor),
            lambda enc, v, where: enc.array_ref(v.detach().cpu().numpy().copy()),
            lambda dec, body: torch.from_numpy(_ndarray(dec, body)),
        ),
        Codec(
            "bytes",
            lambda v: type(v) is bytes,
            lambda enc, v, where: enc.array_ref(np.frombuffer(v, dtype=np.uint8)),
            lambda dec, body: dec.array(body).tobytes(),
        ),
        Codec("array", lambda v: type(v) is Array, _encode_flower_array, _decode_flower_array),
        _record_codec("arrayrecord", ArrayRecord),
        _record_codec("configrecord", ConfigRecord),
        _record_codec("metricrecord", MetricRecord),
        _record_codec("recorddict", RecordDict),
    )
}


def encode(value: Any, where: str = "state") -> tuple[Json, Arrays]:
    """Return ``(tree, arrays)`` for ``value``; :func:`decode` inverts it."""
    encoder = Encoder()
    return encoder.encode(value, where), encoder.arrays


def decode(tree: Json, arrays: Arrays) -> Any:
    """Rebuild the value :func:`encode` was given."""
    return Decoder(arrays).decode(tree)
