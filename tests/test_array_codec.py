"""The fast .npy codec: Flower's bytes exactly, numpy's values exactly, Flower's errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedsim.array_codec import DecodingArray, decode, decoding_arrays, encode, encode_record

_rng = np.random.default_rng(0)
CASES = [
    _rng.normal(size=(32, 40)).astype(np.float32),
    _rng.normal(size=(7,)),  # float64
    np.arange(10, dtype=np.int64),
    np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
    np.zeros((0, 3), np.float32),
    np.array(3.5, np.float16),  # 0-d
    np.ones((2, 3), bool),
    np.asfortranarray(_rng.normal(size=(3, 4))),  # Fortran order: Flower's own path
    _rng.normal(size=(4, 6))[:, ::2],  # not contiguous
    np.array(["ab", "c"]),
    np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]),  # structured
]


@pytest.mark.parametrize("value", CASES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_encode_is_flowers_bytes_and_decode_is_numpys_values(value: np.ndarray) -> None:
    for _ in range(2):  # the first call learns the layout, the second uses it
        ours, flowers = encode(value), Array(value)
        assert ours.data == flowers.data
        assert (ours.dtype, tuple(ours.shape), ours.stype) == (
            flowers.dtype,
            tuple(flowers.shape),
            flowers.stype,
        )
        assert ours.__dict__ == flowers.__dict__  # every attribute Flower's constructor sets
        decoded, reference = decode(flowers), flowers.numpy()
        assert decoded.dtype == reference.dtype and decoded.shape == reference.shape
        assert np.array_equal(decoded, reference)
        assert decoded.flags.writeable  # a copy, as np.load's, not a view of the bytes
        assert decoded.flags.f_contiguous == reference.flags.f_contiguous


def test_tensors_encode_as_their_numpy_arrays() -> None:
    t = torch.randn(5, 3, requires_grad=True)
    assert encode(t).data == Array(t.detach().numpy()).data
    record = encode_record({"w": t, "b": torch.zeros(3)})
    assert list(record) == ["w", "b"]
    assert np.array_equal(record["w"].numpy(), t.detach().numpy())


def test_corrupt_data_gets_numpys_error() -> None:
    good = Array(np.arange(8, dtype=np.float32))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):
        short.numpy()
    with pytest.raises(ValueError):
        decode(short)


def test_decoding_arrays_wraps_in_place() -> None:
    values = {"a": _rng.normal(size=(2, 2)), "b": np.arange(3)}
    record = ArrayRecord({k: Array(v) for k, v in values.items()})
    data_before = {k: v.data for k, v in record.items()}
    decoding_arrays(record)
    for key, value in values.items():
        assert type(record[key]) is DecodingArray
        assert record[key].data is data_before[key]  # the same bytes, not a copy
        assert np.array_equal(record[key].numpy(), value)
    assert (
        record.count_bytes() == ArrayRecord({k: Array(v) for k, v in values.items()}).count_bytes()
    )


@pytest.mark.parametrize("value", CASES[-4:], ids=lambda a: f"{a.dtype}{a.shape}")
def test_decoding_arrays_off_the_fast_path_decode_with_flowers_reader(value: np.ndarray) -> None:
    """Fortran order (a transposed weight's bytes), strings, structured dtypes: values
    the fast path leaves to Flower, through a DecodingArray's own ``numpy`` too."""
    record = ArrayRecord({"v": Array(value)})
    decoding_arrays(record)
    decoded = record["v"].numpy()
    assert decoded.dtype == value.dtype and np.array_equal(decoded, value)
