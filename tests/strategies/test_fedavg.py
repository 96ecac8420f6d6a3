"""fedsim's ``fedavg`` aggregates exactly as Flower's FedAvg, and falls back to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.exception import InconsistentMessageReplies

from fedsim import wire
from fedsim.algorithms.fedavg.server import FedAvg
from fedsim.array_codec import decoding_arrays, row_arrays
from fedsim.engine.flower_compat import set_task_identity
from fedsim.reply_chunk import ChunkRows, ReplyChunk, chunk_rows
from fedsim.strategies import STRATEGIES

SHAPES = {"1.weight": (6, 4), "1.bias": (6,), "3.weight": (3, 6), "3.bias": (3,)}


def _reply(rng: np.random.Generator, n: int, decoding: bool, **overrides: Any) -> Message:
    arrays = ArrayRecord(
        {k: Array(rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items()}
    )
    if decoding:
        decoding_arrays(arrays)  # as the in-process engine hands them over
    metrics = {
        wire.NUM_EXAMPLES: n,
        wire.TRAIN_LOSS: float(rng.random()),
        "per-class": [float(v) for v in rng.random(3)],
        **overrides,
    }
    instruction = Message(RecordDict(), 1000 + n, "train")
    return Message(
        RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)}), reply_to=instruction
    )


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity(1)


@pytest.mark.parametrize("decoding", [False, True])
def test_bit_identical_to_flowers_fedavg(decoding: bool) -> None:
    rng = np.random.default_rng(0)
    replies = [_reply(rng, int(n), decoding) for n in rng.integers(1, 200, 50)]
    failed = Message(Error(2, "boom"), reply_to=Message(RecordDict(), 999, "train"))
    replies.insert(7, failed)  # error replies are left out by both
    ours = FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)
    flowers = flwr_strategies.FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)
    assert ours[0] is not None and flowers[0] is not None
    assert list(ours[0]) == list(flowers[0])
    for key in SHAPES:
        assert ours[0][key].data == flowers[0][key].data
    assert ours[1] == flowers[1]


def test_registered_as_fedavg() -> None:
    assert STRATEGIES.get("fedavg") is FedAvg
    assert issubclass(FedAvg, flwr_strategies.FedAvg)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda r: r.content[wire.ARRAYS].pop("1.bias"),  # keys differ
        lambda r: r.content[wire.METRICS].pop(wire.NUM_EXAMPLES),  # weight missing
        lambda r: r.content.__setitem__("more", MetricRecord({"x": 1.0})),  # two metric records
    ],
    ids=["array-keys", "no-weight", "two-metric-records"],
)
def test_inconsistent_replies_raise_flowers_error(spoil: Any) -> None:
    rng = np.random.default_rng(1)
    replies = [_reply(rng, 10 + k, False) for k in range(4)]
    spoil(replies[2])
    with pytest.raises(InconsistentMessageReplies) as flowers:
        flwr_strategies.FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)
    with pytest.raises(InconsistentMessageReplies) as ours:
        FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)
    assert str(ours.value) == str(flowers.value)


def test_custom_metric_aggregation_is_flowers_path() -> None:
    rng = np.random.default_rng(2)
    replies = [_reply(rng, 10 + k, False) for k in range(3)]
    calls: list[int] = []

    def count(records: list[RecordDict], key: str) -> MetricRecord:
        calls.append(len(records))
        return MetricRecord({"n": len(records)})

    arrays, metrics = FedAvg(train_metrics_aggr_fn=count).aggregate_train(1, replies)
    assert calls == [3] and metrics == MetricRecord({"n": 3}) and arrays is not None


def test_no_valid_replies() -> None:
    failed = Message(Error(2, "boom"), reply_to=Message(RecordDict(), 999, "train"))
    assert FedAvg().aggregate_train(1, [failed]) == (None, None)
    assert FedAvg().aggregate_train(1, []) == (None, None)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(), (1,), (2,), (5, 3)])
def test_bit_identical_for_every_shape_and_float(dtype: Any, shape: tuple[int, ...]) -> None:
    """One stacked sum per key adds in reply order, as Flower's running sum (scalars and
    one-element arrays included, which numpy would otherwise sum pairwise)."""
    rng = np.random.default_rng(1)
    replies = []
    for n in rng.integers(1, 200, 40):
        value = (rng.normal(size=shape) * 10 ** rng.uniform(-3, 3)).astype(dtype)
        arrays = ArrayRecord({"w": Array(np.asarray(value))})
        metrics = MetricRecord({wire.NUM_EXAMPLES: int(n)})
        instruction = Message(RecordDict(), 1000 + int(n), "train")
        content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics})
        replies.append(Message(content, reply_to=instruction))
    ours = FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)[0]
    flowers = flwr_strategies.FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)[
        0
    ]
    assert ours is not None and flowers is not None
    assert ours["w"].data == flowers["w"].data


def _chunk(rng: np.random.Generator, rows: int) -> ReplyChunk:
    """A stacked chunk's replies as the in-process engine holds them (rows of columns)."""
    values = {k: rng.normal(size=(rows, *s)).astype(np.float32) for k, s in SHAPES.items()}
    for value in values.values():
        value.flags.writeable = False
    cells = {k: row_arrays(v) for k, v in values.items()}
    counts = rng.integers(1, 200, rows)
    metric_rows = [
        {wire.NUM_EXAMPLES: int(n), wire.TRAIN_LOSS: float(v), "per-class": [1.0, float(v)]}
        for n, v in zip(counts, rng.random(rows), strict=True)
    ]
    replies = [
        Message(
            RecordDict(
                {
                    wire.ARRAYS: ArrayRecord({k: cells[k][r] for k in SHAPES}),
                    wire.METRICS: MetricRecord(metric_rows[r]),
                }
            ),
            reply_to=Message(RecordDict(), 1000 + r, "train"),
        )
        for r in range(rows)
    ]
    columns = {wire.NUM_EXAMPLES: counts}
    return ReplyChunk(tuple(range(rows)), replies, values, columns, 0, metric_rows)


def test_chunk_rows_are_summed_from_the_columns_to_flowers_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replies that are rows of one chunk (in arrival order): the columns' sum, Flower's bits."""
    from fedsim.algorithms.fedavg import server

    chunk = _chunk(np.random.default_rng(3), 30)
    order = np.random.default_rng(4).permutation(30).tolist()[:25]  # five missed the deadline
    replies = chunk_rows(
        [chunk.replies[k] for k in order], {id(r): (chunk, k) for k, r in enumerate(chunk.replies)}
    )
    assert isinstance(replies, ChunkRows) and replies.positions == order
    flowers = flwr_strategies.FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(
        1, list(replies)
    )
    used: list[int] = []
    original = server.chunk_aggregate
    monkeypatch.setattr(server, "chunk_aggregate", lambda *a: used.append(1) or original(*a))
    ours = FedAvg(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)
    assert used and ours[0] is not None and flowers[0] is not None
    for key in SHAPES:
        assert ours[0][key].data == flowers[0][key].data
    assert ours[1] == flowers[1]


def test_a_subclass_that_changes_chunk_rows_gets_the_changed_sum() -> None:
    """A strategy's own aggregate_train may change the replies first: no column is read."""

    class Halved(FedAvg):
        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            for reply in replies:
                record = reply.content[wire.ARRAYS]
                record["1.bias"] = Array(record["1.bias"].numpy() / 2)
            return super().aggregate_train(server_round, replies)

    chunk = _chunk(np.random.default_rng(5), 8)
    rows = {id(r): (chunk, k) for k, r in enumerate(chunk.replies)}
    replies = chunk_rows(list(chunk.replies), rows)
    assert isinstance(replies, ChunkRows)
    ours = Halved(weighted_by_key=wire.NUM_EXAMPLES).aggregate_train(1, replies)[0]
    assert ours is not None
    factors = chunk.metrics[wire.NUM_EXAMPLES] / chunk.metrics[wire.NUM_EXAMPLES].sum()
    want = (chunk.arrays["1.bias"] / 2 * factors[:, None].astype(np.float32)).sum(0)
    np.testing.assert_allclose(ours["1.bias"].numpy(), want, rtol=1e-5)
    # Replies from two chunks, or some not from a chunk, are a plain list.
    other = _chunk(np.random.default_rng(6), 2)
    rows.update({id(r): (other, k) for k, r in enumerate(other.replies)})
    assert type(chunk_rows([chunk.replies[0], other.replies[0]], rows)) is list
    assert (
        type(chunk_rows([chunk.replies[0], _reply(np.random.default_rng(0), 3, True)], rows))
        is list
    )
