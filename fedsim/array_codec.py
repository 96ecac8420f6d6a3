"""Flower ``Array`` encoding and decoding without re-parsing ``.npy`` headers.

A Flower :class:`~flwr.app.Array` holds an array as the bytes ``np.save`` writes: a
``.npy`` header (a Python-literal dict that ``np.load`` parses with ``ast``) followed by
the raw data. For the small arrays of a simulated client that header is most of the
cost: ``Array.numpy()`` spends ~50 µs of a ~60 µs call parsing it, and every client
decodes the same few layouts again and again. Here each distinct header is parsed once
(by numpy's own reader) and remembered; data are then read with ``np.frombuffer``.

The bytes are exactly those of ``np.save`` (a test checks), so arrays encoded here are
read by ``Array.numpy()`` anywhere (a deployed server, Flower's strategies), and arrays
from anywhere are read here; anything this fast path does not cover (Fortran order,
object dtypes, other serialisation types, a header it cannot vouch for) goes through
Flower's own methods.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

from fedsim.fast_records import filled

NUMPY_STYPE = "numpy.ndarray"  # flwr's SType.NUMPY
_MAGIC_V1 = b"\x93NUMPY\x01\x00"
_PREFIX = len(_MAGIC_V1) + 2  # magic, then the header length as little-endian uint16

# header bytes -> (dtype, shape, element count); header prefix per (dtype, shape).
# Both stay small: one entry per distinct array layout a process meets.
_layouts: dict[bytes, tuple[np.dtype[Any], tuple[int, ...], int]] = {}
_headers: dict[tuple[np.dtype[Any], tuple[int, ...]], tuple[bytes, str]] = {}  # and dtype name
_EMPTY_ARRAYS = ArrayRecord()


def encode(value: NDArray[Any] | torch.Tensor) -> Array:
    """Return the :class:`~flwr.app.Array` of ``value``, byte for byte as Flower's.

    Equal to ``Array(value)`` (``np.save`` bytes) but with the header built once per
    dtype and shape.
    """
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if not arr.flags.c_contiguous or arr.dtype.hasobject:
        return Array(np.asarray(arr))
    key = (arr.dtype, arr.shape)
    known = _headers.get(key)
    if known is None:
        reference = Array(arr)
        _headers[key] = (reference.data[: len(reference.data) - arr.nbytes], reference.dtype)
        return reference
    header, dtype = known
    return _array(dtype, key[1], header + arr.tobytes())


def _array(dtype: str, shape: tuple[int, ...], data: bytes) -> Array:
    """``Array(dtype=..., shape=..., stype=NUMPY_STYPE, data=...)`` without its checks.

    The same attributes Flower's constructor sets (a test compares them); its argument
    checks cost more than encoding a small array (~13 of ~15 µs).
    """
    array = Array.__new__(Array)
    array.__dict__.update(_is_dirty=True, dtype=dtype, shape=shape, stype=NUMPY_STYPE, data=data)
    return array


def encode_record(arrays: Mapping[str, NDArray[Any] | torch.Tensor]) -> ArrayRecord:
    """Return an :class:`~flwr.app.ArrayRecord` of ``arrays`` (e.g. a ``state_dict``)."""
    return filled(_EMPTY_ARRAYS, {name: encode(value) for name, value in arrays.items()})


def decode(array: Array) -> NDArray[Any]:
    """Return ``array`` as a new (writable) numpy array, as ``array.numpy()`` does."""
    value = view(array)
    return value.copy() if not value.flags.writeable else value


def view(array: Array) -> NDArray[Any]:
    """Return ``array``'s values, read-only where they can be read without a copy.

    Raises what ``Array.numpy()`` raises for bytes it cannot read (object arrays among
    them: Flower loads without pickle).
    """
    if type(array) is RowArray:
        return array.__dict__["_values"]  # type: ignore[no-any-return]  # set with the class
    data = array.data
    if array.stype == NUMPY_STYPE and data[: len(_MAGIC_V1)] == _MAGIC_V1:
        end = _PREFIX + int.from_bytes(data[len(_MAGIC_V1) : _PREFIX], "little")
        header = data[:end]
        layout = _layouts.get(header)
        if layout is None:
            layout = _parse(header)
        if layout is not None:
            dtype, shape, count = layout
            if len(data) == end + count * dtype.itemsize:
                return np.frombuffer(data, dtype, count, end).reshape(shape)
    # Flower's own decoder, not a subclass's ``numpy`` (a DecodingArray's comes back here)
    return Array.numpy(array)


def _parse(header: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int] | None:
    """Parse a version-1 header with numpy's reader; None if the fast path must not apply."""
    try:
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(
            io.BytesIO(header[len(_MAGIC_V1) :])
        )
    except ValueError:
        return None  # let np.load raise its own error
    if fortran_order or dtype.hasobject:
        return None
    layout = (dtype, tuple(shape), math.prod(shape))
    _layouts[header] = layout
    return layout


class DecodingArray(Array):
    """An :class:`~flwr.app.Array` whose :meth:`numpy` decodes with :func:`decode`.

    The in-process engine hands replies to the server's strategy as these, so that
    Flower's strategies (which call ``.numpy()`` on every reply array) decode fast too.
    Only for in-process use: Flower names an object's class when it serialises it, and
    the other side knows no ``DecodingArray``.
    """

    def numpy(self) -> NDArray[Any]:
        """Return the array as a numpy array (see :func:`decode`)."""
        return decode(self)


class RowArray(DecodingArray):
    """A :class:`DecodingArray` that keeps the read-only values its bytes were made from.

    A stacked chunk's replies carry rows of the chunk's trained arrays
    (:mod:`fedsim.client.stacked_reply`); the server's strategy then reads each reply's
    values without parsing its bytes again (:func:`view`). Anything that sets the
    array's fields makes it a plain :class:`DecodingArray`; a copy or a pickle is one.
    """

    def __getattr__(self, name: str) -> Any:
        # Only for attributes not set: the bytes of a row from :func:`row_arrays`, made
        # when first read (the in-process strategy reads the values, never the bytes).
        if name == "data":
            return self._materialise()
        raise AttributeError(name)

    def _materialise(self) -> bytes:
        fields = self.__dict__
        data: bytes | None = fields.get("data")
        if data is None:
            values = fields["_values"]
            data = fields["data"] = _headers[(values.dtype, values.shape)][0] + values.tobytes()
        return data

    def __setattr__(self, name: str, value: Any) -> None:
        self._materialise()  # the bytes of the values it held, before they go
        object.__setattr__(self, "__class__", DecodingArray)  # its values may be stale now
        self.__dict__.pop("_values", None)
        DecodingArray.__setattr__(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_decoding_array, (self.dtype, self.shape, self.stype, self.data))


def _decoding_array(dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> Array:
    """A :class:`DecodingArray` of these fields (what a :class:`RowArray` pickles as)."""
    array = _array(dtype, shape, data)
    array.__dict__["stype"] = stype
    array.__class__ = DecodingArray
    return array


def row_array(values: NDArray[Any]) -> Array:
    """``encode(values)`` as a :class:`RowArray` keeping ``values`` (made read-only here)."""
    values = np.ascontiguousarray(values)
    if values.flags.writeable:
        values = values.copy()  # ours alone, then read-only: nobody changes them later
        values.flags.writeable = False
    array = encode(values)
    if type(array) is not Array or values.dtype.hasobject:
        return array
    object.__setattr__(array, "__class__", RowArray)  # past Array's field bookkeeping
    array.__dict__["_values"] = values
    return array


def row_arrays(stack: NDArray[Any], rows: Sequence[int] | None = None) -> list[Array]:
    """``[row_array(stack[k]) for k in rows]`` (every row by default), bytes made when read.

    A stacked chunk's replies (:mod:`fedsim.client.stacked_reply`) carry one row each of
    its trained arrays, which the in-process strategy reads as values; bytes are made
    only for what reads them (a pickle, a size, Flower's own decoding). A writable
    ``stack`` is copied row by row, as :func:`row_array` does.
    """
    picked = range(len(stack)) if rows is None else rows
    if (
        stack.ndim < 2
        or not len(stack)
        or stack.flags.writeable
        or not stack.flags.c_contiguous
        or stack.dtype.hasobject
    ):
        return [row_array(stack[k]) for k in picked]
    encode(stack[0])  # the header of this dtype and row shape, made once per process
    dtype = _headers[(stack.dtype, stack.shape[1:])][1]
    shape = stack.shape[1:]
    out: list[Array] = []
    for k in picked:
        array = RowArray.__new__(RowArray)
        # The bytes (``data``) are made from the values when first read.
        array.__dict__.update(
            _is_dirty=True, dtype=dtype, shape=shape, stype=NUMPY_STYPE, _values=stack[k]
        )
        out.append(array)
    return out


def decoding(array: Array) -> Array:
    """``array`` as a :class:`DecodingArray` (same object; see :func:`decoding_arrays`)."""
    if type(array) is Array:
        array.__class__ = DecodingArray
    return array


def decoding_arrays(record: ArrayRecord) -> None:
    """Make every plain array of ``record`` a :class:`DecodingArray`, in place.

    The arrays change class rather than being replaced: same object, same bytes, no
    copy and no re-insertion (the record's type-checked ``__setitem__`` would cost more
    than the decoding this saves). For the owner of ``record`` only (the in-process
    engine, of a reply handed to it).
    """
    for array in record.values():
        decoding(array)
