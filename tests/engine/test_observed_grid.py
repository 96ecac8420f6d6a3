"""ObservedGrid counts, under Flower's own grid, what the in-process grid counts itself."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode

from fedsim import wire
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.observed_grid import ObservedGrid
from fedsim.engine.telemetry import NODE_UNAVAILABLE, content_bytes
from fedsim.server.app import wait_for_nodes
from tests.engine.stub_grid import StubGrid


def test_node_unavailable_is_flowers_error_code() -> None:
    assert ErrorCode.NODE_UNAVAILABLE == NODE_UNAVAILABLE


class _Replying(StubGrid):
    """A stand-in for Flower's grid: node 10 trains, 11 is gone, 12 raises."""

    def __init__(self) -> None:
        self.polls = 0

    def get_node_ids(self) -> list[int]:
        self.polls += 1
        return [10, 11, 12][: self.polls]  # nodes connect one per poll

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        return [str(i) for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node == 10:
                metrics = MetricRecord({wire.NUM_EXAMPLES: 20, wire.TRAIN_LOSS: 0.5})
                arrays = ArrayRecord([np.ones(8, np.float32)])
                content = RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics})
                out.append(Message(content, reply_to=msg))
            else:
                code = NODE_UNAVAILABLE if node == 11 else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                out.append(Message(Error(code, "gone" if node == 11 else "boom"), reply_to=msg))
        return out


def test_replies_are_counted_as_participants_dropouts_and_failures() -> None:
    set_task_identity(1)
    grid = ObservedGrid(_Replying())
    content = RecordDict({wire.ARRAYS: ArrayRecord([np.zeros(8, np.float32)])})
    messages = [Message(content, node, "train") for node in (10, 11, 12)]
    replies = list(grid.send_and_receive(messages))
    stats = grid.telemetry.pop()
    assert len(replies) == 3
    assert (stats.participants, stats.dropouts, stats.failures) == (1, 1, 1)
    assert stats.bytes_down == 3 * content_bytes(messages[0])
    assert stats.bytes_up == content_bytes(replies[0]) > 0
    assert stats.train_loss == 0.5
    assert grid.telemetry.failure_reasons == ["boom"]


def test_the_server_waits_for_the_whole_population() -> None:
    inner = _Replying()
    wait_for_nodes(ObservedGrid(inner), 3, poll_s=0.0)
    assert inner.polls == 3


def test_replies_under_flowers_grid_are_checked_against_the_model() -> None:
    """Node 10's reply has 8 values where the model has 4: refused, counted as a failure."""
    set_task_identity(1)
    grid = ObservedGrid(_Replying())
    grid.check_replies(ArrayRecord([np.zeros(4, np.float32)]), [20, 20, 20])
    content = RecordDict({wire.ARRAYS: ArrayRecord([np.zeros(4, np.float32)])})
    messages = [Message(content, node, "train") for node in (10, 11, 12)]
    for i, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"id{i}"  # as Flower's grids do
    replies = list(grid.send_and_receive(messages))
    stats = grid.telemetry.pop()
    assert (stats.participants, stats.dropouts, stats.failures) == (0, 1, 2)
    assert replies[0].has_error() and "has shape [8], expected [4]" in replies[0].error.reason


class _Silent(_Replying):
    """Node 12 never replies within the wait."""

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        self.timeout = timeout
        return [r for r in super().send_and_receive(messages) if r.metadata.src_node_id != 12]


def test_client_timeout_bounds_the_wait_and_counts_who_did_not_reply() -> None:
    set_task_identity(1)
    inner = _Silent()
    grid = ObservedGrid(inner, client_timeout_s=2.5)
    content = RecordDict({wire.ARRAYS: ArrayRecord([np.zeros(8, np.float32)])})
    messages = [Message(content, node, "train") for node in (10, 12)]
    for i, message in enumerate(messages):
        message.metadata.__dict__["_message_id"] = f"id{i}"
    grid.send_and_receive(messages, timeout=3600)
    assert inner.timeout == 2.5
    assert grid.telemetry.pop().failures == 1
    assert grid.telemetry.failure_reasons == [
        "node 12: no reply within engine.client_timeout_s=2.5"
    ]
