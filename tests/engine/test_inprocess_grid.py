"""The in-process grid: copies, failures, deadlines, dropouts, virtual-time ordering."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim import wire
from fedsim.config.schema import SystemConfig
from fedsim.engine.clock import VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.inprocess_grid import NODE_ID_OFFSET, InProcessGrid, node_contexts


def _grid(client, n: int = 4, speeds=None, **system) -> InProcessGrid:  # type: ignore[no-untyped-def]
    set_task_identity(1)
    contexts = node_contexts(n, {})
    speeds = speeds or [1.0] * n
    devices = {nid: DeviceProfile(s, 1e6, 1e6) for nid, s in zip(contexts, speeds, strict=True)}
    cfg = SystemConfig(latency_s=0.0, seconds_per_sample=1.0, **system)
    return InProcessGrid(client, contexts, devices, VirtualClock(cfg, 0), cfg.deadline_s)


def _reply(msg: Message, samples: int = 10, **extra: float) -> Message:
    metrics = MetricRecord(
        {wire.NUM_EXAMPLES: samples, wire.TRAIN_SAMPLES: samples, wire.TRAIN_LOSS: 1.0, **extra}
    )
    return Message(RecordDict({"arrays": ArrayRecord(), "metrics": metrics}), reply_to=msg)


def _messages(grid: InProcessGrid, content: RecordDict | None = None) -> list[Message]:
    content = content or RecordDict({"config": ConfigRecord({"x": 1})})
    return [Message(content, nid, "train") for nid in grid.get_node_ids()]


def test_clients_get_private_copies_of_shared_content() -> None:
    seen: list[tuple[int, list[int], list[str], list[float]]] = []

    def greedy(msg: Message, ctx: Context) -> Message:
        cfg, arrays, metrics = (msg.content[k] for k in ("config", "arrays", "metrics"))
        seen.append((int(cfg["x"]), list(cfg["ids"]), sorted(arrays), list(metrics["m"])))
        # A client scribbling on everything it received.
        cfg["x"] = 99
        cfg["ids"].append(7)  # type: ignore[union-attr]
        metrics["m"].append(2.0)  # type: ignore[union-attr]
        arrays["extra"] = Array(np.zeros(2))
        del arrays["w"]
        return _reply(msg)

    grid = _grid(greedy)
    shared = RecordDict(
        {
            "config": ConfigRecord({"x": 1, "ids": [1, 2]}),
            "arrays": ArrayRecord({"w": Array(np.ones(3))}),
            "metrics": MetricRecord({"m": [1.0]}),
        }
    )
    grid.send_and_receive(_messages(grid, shared))
    assert seen == [(1, [1, 2], ["w"], [1.0])] * 4
    assert shared["config"]["x"] == 1 and shared["config"]["ids"] == [1, 2]
    assert list(shared["arrays"]) == ["w"] and shared["metrics"]["m"] == [1.0]


def test_raising_client_is_a_counted_failure_and_the_round_goes_on() -> None:
    def flaky(msg: Message, ctx: Context) -> Message:
        if int(ctx.node_config[wire.PARTITION_ID]) % 2:
            raise RuntimeError("sensor unplugged")
        return _reply(msg)

    grid = _grid(flaky)
    replies = grid.send_and_receive(_messages(grid))
    assert len(replies) == 4
    assert sum(r.has_error() for r in replies) == 2
    assert (
        "RuntimeError: sensor unplugged"
        in replies[[r.has_error() for r in replies].index(True)].error.reason
    )
    stats = grid.telemetry.pop()
    assert (stats.failures, stats.participants) == (2, 2)


def test_deadline_turns_slow_replies_into_stragglers() -> None:
    """Work 10 samples x 1 s / speed: speeds 1, 2, 0.5, 10 -> 10, 5, 20, 1 s; deadline 12 s."""
    grid = _grid(lambda m, c: _reply(m), speeds=[1.0, 2.0, 0.5, 10.0], deadline_s=12.0)
    replies = grid.send_and_receive(_messages(grid))
    assert len(replies) == 3
    # Arrival order: 1 s, 5 s, 10 s (bytes are ~0 at 1e6 Mbit/s).
    order = [r.metadata.src_node_id - NODE_ID_OFFSET for r in replies]
    assert order == [3, 1, 0]
    assert grid.virtual_time_s == 12.0  # the round waited for the deadline
    assert grid.telemetry.pop().stragglers == 1


def test_without_deadline_the_round_lasts_as_long_as_the_slowest() -> None:
    grid = _grid(lambda m, c: _reply(m), speeds=[1.0, 2.0, 0.5, 10.0])
    grid.send_and_receive(_messages(grid))
    assert np.isclose(grid.virtual_time_s, 20.0, atol=1e-3)


def test_dropouts_never_reply() -> None:
    grid = _grid(lambda m, c: _reply(m), n=50, dropout_prob=0.5)
    replies = grid.send_and_receive(_messages(grid))
    stats = grid.telemetry.pop()
    assert stats.dropouts + len(replies) == 50
    assert 10 < stats.dropouts < 40


def test_push_pull_hands_out_replies_in_virtual_time_order() -> None:
    grid = _grid(lambda m, c: _reply(m), speeds=[1.0, 4.0, 0.5, 2.0])
    ids = list(grid.push_messages(_messages(grid)))
    arrivals = []
    while ids:
        replies = list(grid.pull_messages(ids))
        assert len(replies) == 1
        arrivals.append((grid.virtual_time_s, replies[0].metadata.src_node_id - NODE_ID_OFFSET))
        ids.remove(replies[0].metadata.reply_to_message_id)
    assert [n for _, n in arrivals] == [1, 3, 0, 2]
    assert np.allclose([t for t, _ in arrivals], [2.5, 5.0, 10.0, 20.0], atol=1e-3)


def test_pull_until_never_passes_its_time() -> None:
    """Replies at 2.5, 5, 10, 20 s: polling until 4 s gets the first, then nothing with
    the clock at 4 s; until 12 s gets the next (at 5 s) and leaves the clock there."""
    grid = _grid(lambda m, c: _reply(m), speeds=[1.0, 4.0, 0.5, 2.0])
    ids = list(grid.push_messages(_messages(grid)))
    assert len(grid.pull_messages_until(ids, 4.0)) == 1
    assert grid.virtual_time_s == pytest.approx(2.5, abs=1e-3)
    assert grid.pull_messages_until(ids, 4.0) == []
    assert grid.virtual_time_s == 4.0
    (reply,) = grid.pull_messages_until(ids, 12.0)
    assert reply.metadata.src_node_id - NODE_ID_OFFSET == 3
    assert grid.virtual_time_s == pytest.approx(5.0, abs=1e-3)


def test_a_local_compute_message_is_timed_by_its_compute_alone() -> None:
    """``local-compute``: no latency, no transfer, no bytes counted; 10 samples at 1 s
    each on a speed-2 device is 5 s. Without the flag the 0.5 s latency both ways and
    the transfers are added."""
    model = ArrayRecord({"w": Array(np.ones(250_000, np.float32))})  # 1 MB: 8 s at 1 Mbit/s

    def client(msg: Message, ctx: Context) -> Message:
        reply = _reply(msg)
        reply.content["arrays"] = model
        return reply

    for local, expected in ((True, 5.0), (False, 5.0 + 2 * 0.5 + 8.0 + 8.0)):
        set_task_identity(1)
        contexts = node_contexts(1, {})
        cfg = SystemConfig(latency_s=0.5, seconds_per_sample=1.0)
        devices = {nid: DeviceProfile(2.0, 1.0, 1.0) for nid in contexts}
        grid = InProcessGrid(client, contexts, devices, VirtualClock(cfg, 0))
        config = ConfigRecord({wire.LOCAL_COMPUTE: local})
        content = RecordDict({"config": config, "arrays": model})
        ids = grid.push_messages(_messages(grid, content))
        grid.pull_messages(ids)
        assert grid.virtual_time_s == pytest.approx(expected, rel=1e-3), local
        stats = grid.telemetry.pop()
        assert (stats.bytes_up == 0) == local and (stats.bytes_down == 0) == local
        assert stats.participants == 1
    assert grid.device(next(iter(contexts))).speed == 2.0 and grid.latency_s == 0.5


def test_contexts_persist_across_rounds() -> None:
    def counting(msg: Message, ctx: Context) -> Message:
        rec = ctx.state.config_records.get("count", ConfigRecord({"n": 0}))
        rec["n"] = int(rec["n"]) + 1
        ctx.state["count"] = rec
        return _reply(msg, calls=float(rec["n"]))

    grid = _grid(counting)
    for _ in range(3):
        replies = grid.send_and_receive(_messages(grid))
    assert [r.content["metrics"]["calls"] for r in replies] == [3.0] * 4


def test_a_large_population_builds_contexts_only_for_nodes_it_uses() -> None:
    """10,000 nodes, 100 sent a message: 100 Contexts exist, each with its partition keys."""
    states: dict[int, int] = {}

    def counting(msg: Message, ctx: Context) -> Message:
        ctx.state["seen"] = ConfigRecord({"n": int(ctx.node_config[wire.PARTITION_ID])})
        states[ctx.node_id] = int(ctx.node_config[wire.NUM_PARTITIONS])
        return _reply(msg)

    n = 10_000
    grid = _grid(counting, n=n)
    assert len(grid.get_node_ids()) == n
    chosen = grid.get_node_ids()[::100]
    grid.send_and_receive([Message(RecordDict(), nid, "train") for nid in chosen])
    contexts = grid.contexts
    assert hasattr(contexts, "built") and sorted(contexts.built) == chosen
    assert set(states.values()) == {n}
    # A checkpoint carries only the nodes that keep something.
    assert sorted(grid.engine_state()["node_states"]) == chosen
    assert contexts[chosen[3]].state["seen"]["n"] == chosen[3] - NODE_ID_OFFSET


def test_observed_grid_counts_what_the_in_process_grid_counts() -> None:
    """Wrapped around the in-process grid (which counts for itself), the wrapper must agree."""
    from fedsim.engine.observed_grid import ObservedGrid

    def flaky(msg: Message, ctx: Context) -> Message:
        if int(ctx.node_config[wire.PARTITION_ID]) == 1:
            raise RuntimeError("broken")
        return _reply(msg, samples=10 + int(ctx.node_config[wire.PARTITION_ID]))

    inner = _grid(flaky)
    outer = ObservedGrid(inner)
    shared = RecordDict({"arrays": ArrayRecord([np.ones(3, dtype=np.float32)])})
    replies = list(outer.send_and_receive(_messages(inner, shared)))
    assert len(replies) == 4 and list(outer.get_node_ids()) == inner.get_node_ids()
    mine, theirs = outer.telemetry.pop(), inner.telemetry.pop()
    assert mine == theirs
    assert (mine.participants, mine.failures, mine.train_examples) == (3, 1, 10 + 12 + 13)
    assert mine.bytes_down == 4 * shared["arrays"].count_bytes() and mine.bytes_up > 0
