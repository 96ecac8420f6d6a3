"""A batched dispatch as columns: stacked replies, their checks, the clock, the copies.

With ``engine.batch_clients`` the engine reads a stacked chunk's replies through the
chunk's columns (:class:`fedsim.reply_chunk.ReplyChunk`): one reply check per array and
chunk, the clock's work and the telemetry from the metric columns. These tests hold the
columns to the replies they stand for, the chunk checks to the per-reply checks, the
columns' run to the per-reply run (worker processes send replies without columns), and
a batched round to building no message or model copy per client.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

import fedsim
from fedsim import wire
from fedsim.array_codec import (
    DecodingArray,
    RowArray,
    decode,
    encode_record,
    row_array,
    row_arrays,
    view,
)
from fedsim.client.stacked import train_chunks
from fedsim.engine import executor
from fedsim.engine.reply_check import ReplyRules, WorkBound, signature
from fedsim.engine.telemetry import content_bytes
from fedsim.reply_chunk import ReplyChunk
from tests.clients.test_batched import (
    _assert_close_records,
    _delivered,
    _jobs,
    _run,
    _scenario,
)


def _chunks(tmp_path: Path) -> tuple[list[tuple[Message, Any]], Any]:
    jobs = _jobs(_scenario(), tmp_path, {})
    return jobs, train_chunks([(_delivered(m), c) for m, c in jobs], max_batch=4)


def test_a_chunks_columns_are_its_replies_values(tmp_path: Path) -> None:
    jobs, together = _chunks(tmp_path)
    assert [len(c.jobs) for c in together.chunks] == [4, 2]  # 6 clients, chunks of 4
    covered = sorted(j for c in together.chunks for j in c.jobs)
    assert covered == list(range(len(jobs)))
    for chunk in together.chunks:
        keys = signature(chunk.replies[0])
        for row, (job, reply) in enumerate(zip(chunk.jobs, chunk.replies, strict=True)):
            assert together.replies[job] is reply
            assert reply.metadata.reply_to_message_id == jobs[job][0].metadata.message_id
            arrays = reply.content[wire.ARRAYS]
            assert list(arrays) == list(chunk.arrays)
            for key, stack in chunk.arrays.items():
                # The bytes are what np.save writes for the row: any reader gets the row.
                assert np.array_equal(arrays[key].numpy(), stack[row])
                assert np.array_equal(decode(arrays[key]), stack[row])
            metrics = reply.content[wire.METRICS]
            assert list(metrics) == list(chunk.metrics)
            for name, column in chunk.metrics.items():
                value = column[row].item()
                assert metrics[name] == value and type(metrics[name]) is type(value), name
            assert content_bytes(reply) == chunk.reply_bytes
            assert signature(reply) == keys


def _rules(model: ArrayRecord, examples: int) -> ReplyRules:
    return ReplyRules.for_model(
        model, lambda node: float(examples), 1e6, work=WorkBound(local_steps=5, batch_size=8)
    )


def _reply(sent: Message, arrays: dict[str, np.ndarray], **metrics: Any) -> Message:
    values = {wire.NUM_EXAMPLES: 40, wire.TRAIN_SAMPLES: 40, wire.DURATION_S: 0.01}
    values[wire.TRAIN_LOSS] = 0.5
    values.update(metrics)
    content = RecordDict({wire.ARRAYS: encode_record(arrays), wire.METRICS: MetricRecord(values)})
    return Message(content, reply_to=sent)


def _as_chunk(replies: list[Message]) -> ReplyChunk:
    """A test-side chunk: the columns read back from the replies themselves."""
    arrays = {
        key: np.stack([decode(r.content[wire.ARRAYS][key]) for r in replies])
        for key in replies[0].content[wire.ARRAYS]
    }
    metrics = {
        name: np.array([r.content[wire.METRICS][name] for r in replies])
        for name in replies[0].content[wire.METRICS]
    }
    jobs = tuple(range(len(replies)))
    return ReplyChunk(jobs, replies, arrays, metrics, content_bytes(replies[0]))


def test_chunk_checks_give_each_rows_own_reason() -> None:
    from fedsim.engine.flower_compat import set_task_identity

    set_task_identity(1)
    rng = np.random.default_rng(0)
    model = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(3, np.float32)}
    content = RecordDict({wire.ARRAYS: encode_record(model)})
    sent = [Message(content, 1000 + k, "train") for k in range(6)]
    for k, message in enumerate(sent):
        message.metadata.__dict__["_message_id"] = f"1-{k}"
    spoiled_w = {**model, "w": np.where(np.eye(3, 4) > 0, np.nan, model["w"]).astype(np.float32)}
    huge = {**model, "b": np.full(3, 1e12, np.float32)}
    replies = [
        _reply(sent[0], model),
        _reply(sent[1], spoiled_w),  # a NaN
        _reply(sent[2], model, **{wire.NUM_EXAMPLES: 41}),  # more than the node holds
        _reply(sent[3], huge),  # implausibly far from what was sent
        _reply(sent[4], model, **{wire.TRAIN_SAMPLES: 41}),  # more than 5 steps of 8
        _reply(sent[5], model),
    ]
    rules = _rules(encode_record(model), examples=40)
    chunk = _as_chunk(replies)
    want = [rules.problem(s, r) for s, r in zip(sent, replies, strict=True)]
    assert want[0] is None and want[5] is None and all(want[1:5])
    assert rules.chunk_problems(sent, chunk) == want
    from fedsim.engine.chunk_check import rows_within_rules

    # The good rows pass on the columns alone (the fast path is taken, not skipped).
    assert rows_within_rules(rules, sent, chunk).tolist() == [
        True,
        False,
        False,
        False,
        False,
        True,
    ]


def _busy(**engine: Any) -> Any:
    """Stragglers, dropouts, failures and a deadline, with stacked training."""
    return _scenario(
        rounds=3,
        data={"num_clients": 8},
        strategy={"name": "fedavg", "params": {"fraction_train": 0.75, "fraction_evaluate": 0}},
        system={
            "straggle_prob": 0.3,
            "dropout_prob": 0.15,
            "failure_prob": 0.15,
            "deadline_s": 3.0,
            "speed": {"distribution": "lognormal", "median": 1.0, "sigma": 0.5},
        },
        engine={"name": "inprocess", **engine},
        output={"plots": False},
    )


def test_columns_and_single_replies_keep_the_same_clock(tmp_path: Path) -> None:
    """Worker processes send stacked replies without columns: checked and clocked one by
    one. The clock, the telemetry and the model must not tell the two apart."""
    serial = _run(_busy(batch_clients=8), tmp_path / "columns")
    pooled = _run(_busy(batch_clients=8, workers=2), tmp_path / "single")
    _assert_close_records(pooled, serial)  # training in other stacks: float rounding only
    counts = ("participants", "stragglers", "dropouts", "failures", "bytes_up", "bytes_down")
    assert [[r.get(k) for k in counts] for r in pooled] == [
        [r.get(k) for k in counts] for r in serial
    ]
    assert any(r.get("stragglers") for r in serial) and any(r.get("dropouts") for r in serial)


def test_the_stack_size_changes_no_metric(tmp_path: Path) -> None:
    two = _run(_busy(batch_clients=2), tmp_path / "two")
    eight = _run(_busy(batch_clients=8), tmp_path / "eight")
    assert two == eight  # each client's stacked updates do not depend on its stack-mates


def _counted_round(tmp_path: Path, clients: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Message constructions, content copies and model decodes of a batched run."""
    from fedsim.client import stacked, stacked_reply

    counts = {"messages": 0, "copies": 0, "decodes": 0, "contents": 0}
    init, copy_content, decode_array = Message.__init__, executor.copy_content, stacked.decode
    make = stacked_reply._ChunkContents.content

    def counting_make(self: Any, row: int) -> RecordDict:
        counts["contents"] += 1
        return make(self, row)

    def counting_init(self: Message, *args: Any, **kwargs: Any) -> None:
        counts["messages"] += 1
        init(self, *args, **kwargs)

    def counting_copy(content: RecordDict) -> RecordDict:
        counts["copies"] += 1
        return copy_content(content)

    def counting_decode(array: Any) -> Any:
        counts["decodes"] += 1
        return decode_array(array)

    monkeypatch.setattr(Message, "__init__", counting_init)
    monkeypatch.setattr(executor, "copy_content", counting_copy)
    monkeypatch.setattr(stacked, "decode", counting_decode)
    monkeypatch.setattr(stacked_reply._ChunkContents, "content", counting_make)
    scenario = _scenario(
        rounds=2,
        data={"num_clients": clients, "partitioner": "iid"},
        strategy={"name": "fedavg", "params": {"fraction_evaluate": 0}},
        engine={"name": "inprocess", "batch_clients": 64},
        output={"plots": False},
    )
    fedsim.run(scenario, tmp_path / f"clients{clients}")
    monkeypatch.undo()
    return counts


def test_a_batched_round_builds_no_message_or_copy_per_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    few = _counted_round(tmp_path, 6, monkeypatch)
    many = _counted_round(tmp_path, 18, monkeypatch)
    assert few["copies"] == many["copies"] == 0  # no client's own copy of the content
    # Flower's constructor runs a fixed number of times a run, not once per client; the
    # global model is decoded once per chunk (one chunk a round here), not per client.
    assert many["messages"] == few["messages"]
    assert many["decodes"] == few["decodes"] > 0
    # FedAvg reads the chunk's columns: a reply's records are made only for the one
    # reply whose size and keys stand for the chunk's (once per round).
    assert many["contents"] == few["contents"] == 2


def test_a_row_array_reads_its_values_and_pickles_as_a_decoding_array() -> None:
    stack = np.arange(12, dtype=np.float32).reshape(3, 4)
    stack.flags.writeable = False
    array = row_array(stack[1])
    assert type(array) is RowArray and view(array) is not None
    assert np.array_equal(view(array), stack[1]) and not view(array).flags.writeable
    assert np.array_equal(array.numpy(), stack[1]) and array.numpy().flags.writeable
    copied = pickle.loads(pickle.dumps(array))
    assert type(copied) is DecodingArray and copied.data == array.data
    assert "_values" not in copied.__dict__
    array.data = encode_record({"x": np.zeros(4, np.float32)})["x"].data  # changed: no longer a row
    assert type(array) is DecodingArray and np.array_equal(view(array), np.zeros(4))


@pytest.mark.parametrize(
    "stack",
    [
        np.arange(24, dtype=np.float32).reshape(3, 2, 4),
        np.arange(6, dtype=np.float64).reshape(3, 2),
        np.arange(6, dtype=">i4").reshape(2, 3),  # big-endian
        np.zeros((2, 0, 3), np.float32),  # empty rows
    ],
    ids=lambda a: f"{a.dtype}{a.shape}",
)
@pytest.mark.parametrize("read_only", [True, False])
def test_row_arrays_are_each_rows_row_array(stack: np.ndarray, read_only: bool) -> None:
    """The chunk's rows encoded at once: the same class, fields, bytes and values."""
    stack = stack.copy()
    stack.flags.writeable = not read_only
    got = row_arrays(stack)
    want = [row_array(stack[k]) for k in range(len(stack))]
    assert len(got) == len(want) == len(stack)
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        assert type(a) is type(b) is RowArray
        assert np.array_equal(view(a), stack[k]) and not view(a).flags.writeable
        # A read-only stack's rows are handed on without a copy.
        assert np.shares_memory(view(a), stack) == (read_only and stack[k].size > 0)
        fields = ("dtype", "shape", "stype", "data", "_is_dirty")
        assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
        assert a.data == Array(np.ascontiguousarray(stack[k])).data  # Flower's bytes


def test_a_rows_bytes_are_made_when_first_read_and_kept_when_it_changes() -> None:
    """Rows of a chunk carry their values; bytes appear for what reads them."""
    stack = np.arange(12, dtype=np.float32).reshape(3, 4)
    stack.flags.writeable = False
    first, second, third = row_arrays(stack)
    assert "data" not in first.__dict__  # nothing made yet
    want = Array(stack[0].copy()).data
    assert first.data == want and first.__dict__["data"] == want  # made once, then kept
    copied = pickle.loads(pickle.dumps(second))  # a pickle carries the bytes
    assert type(copied) is DecodingArray and copied.data == Array(stack[1].copy()).data
    third.stype = third.stype  # a changed field: a plain array that keeps its bytes
    assert type(third) is DecodingArray and third.data == Array(stack[2].copy()).data
    assert np.array_equal(third.numpy(), stack[2])
    with pytest.raises(AttributeError):
        _ = first.not_a_field


def test_a_chunk_reply_makes_its_records_when_read_and_pickles_as_a_message(
    tmp_path: Path,
) -> None:
    """A chunk's reply: its records when first read, equal to the columns; a plain copy."""
    import copy

    from fedsim.client.stacked_reply import ChunkReply

    _, together = _chunks(tmp_path)
    chunk = together.chunks[0]
    key = next(iter(chunk.arrays))
    first, second = chunk.replies[1], chunk.replies[2]
    assert type(first) is ChunkReply and "_row" in first.__dict__ and first.has_content()
    record = first.content[wire.ARRAYS]
    assert "_row" not in first.__dict__ and first.content is first.content  # made once
    for key, column in chunk.arrays.items():
        assert np.array_equal(view(record[key]), column[1])
    assert dict(first.content[wire.METRICS]) == chunk.metric_rows[1]
    for twin in (pickle.loads(pickle.dumps(second)), copy.copy(second)):
        assert type(twin) is Message and twin.metadata.reply_to_message_id == (
            second.metadata.reply_to_message_id
        )
        assert np.array_equal(decode(twin.content[wire.ARRAYS][key]), chunk.arrays[key][2])
    replaced = RecordDict({wire.METRICS: MetricRecord({"x": 1.0})})
    chunk.replies[3].content = replaced  # set before it was read: the set one stays
    assert chunk.replies[3].content is replaced
