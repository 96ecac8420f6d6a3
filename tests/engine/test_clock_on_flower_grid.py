"""The virtual clock on Flower's grid: a run equals the in-process run, round by round.

Flower's runtimes (Ray, a deployment) hand the ServerApp a grid whose nodes have random
ids and which delivers every reply. ``_FlowerLikeGrid`` is such a grid, in this process:
random node ids listed out of partition order, message ids assigned on sending, the
content copied as a transport would. Through it the ServerApp must draw the same fates,
sample the same partitions, cut the same stragglers and reach the same virtual time and
model as the in-process engine, because both run the one code path of
:mod:`fedsim.engine.delivery`. The Ray engine itself is tested the same way in
``tests/engine/test_ray_engine.py`` (slow).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

import fedsim
from fedsim import wire
from fedsim.apps import load_apps
from fedsim.config.sources import to_yaml
from fedsim.engine.flower_compat import assign_message_id, set_task_identity
from fedsim.outputs.metrics_log import read_metrics
from fedsim.submission_policy import SubmissionPolicy
from tests.conftest import strip_wall_clock
from tests.engine.stub_grid import StubGrid


class _FlowerLikeGrid(StubGrid):
    """Nodes with random ids; every message answered by fedsim's ClientApp."""

    def __init__(self, num_nodes: int, run_config: dict[str, Any]) -> None:
        rng = np.random.default_rng(7)
        ids = [int(i) for i in rng.choice(10**9, num_nodes, replace=False) + 10**6]
        self.contexts = {
            node: Context(
                1,
                node,
                {wire.PARTITION_ID: k, wire.NUM_PARTITIONS: num_nodes},
                RecordDict(),
                dict(run_config),
            )
            for k, node in enumerate(ids)
        }
        self.client_app = load_apps()[1]
        self.ids = itertools.count()
        self.sent_types: list[str] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)  # by id: not the partitions' order

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for message in messages:
            assign_message_id(message, f"m{next(self.ids)}")
            self.sent_types.append(message.metadata.message_type)
            node = message.metadata.dst_node_id
            delivered = Message(  # type: ignore[call-overload]  # a transport's copy
                content=copy.deepcopy(message.content), metadata=copy.copy(message.metadata)
            )
            replies.append(self.client_app(delivered, self.contexts[node]))
        return replies


def _scenario(tiny: dict[str, Any]) -> dict[str, Any]:
    """8 clients, half sampled per round, with every fate the clock draws.

    A 1 s deadline cuts some replies in round 1, 2 and 4 (seen in the in-process run).
    """
    tiny["rounds"] = 4
    tiny["data"]["num_clients"] = 8
    tiny["strategy"]["params"] = {"fraction_train": 0.5, "fraction_evaluate": 0.5}
    tiny["system"].update(
        {"straggle_prob": 0.3, "dropout_prob": 0.1, "failure_prob": 0.1, "deadline_s": 1.0}
    )
    return tiny


def test_a_flower_grid_run_equals_the_inprocess_run(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same stragglers, dropouts, failures, virtual time, metrics and final model."""
    scenario = fedsim.load_scenario(_scenario(tiny))
    in_process = fedsim.run(scenario, tmp_path / "inprocess")
    assert sum(r["stragglers"] for r in in_process.metrics) > 0  # the test needs some
    assert sum(r["dropouts"] for r in in_process.metrics) > 0
    assert sum(r["failures"] for r in in_process.metrics) > 0

    for key, value in SubmissionPolicy.everything().environ().items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "flower"
    run_dir.mkdir()
    resolved = run_dir / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario))
    # As the ray engine does: the ClientApp trains on one torch thread, as in-process.
    run_config = {
        wire.RUN_SCENARIO: str(resolved),
        wire.RUN_DIR: str(run_dir),
        wire.RUN_TORCH_THREADS: 1,
    }
    set_task_identity(1)
    grid = _FlowerLikeGrid(8, run_config)
    threads = torch.get_num_threads()
    try:
        load_apps()[0](grid, Context(1, 1, {}, RecordDict(), run_config))
    finally:
        torch.set_num_threads(threads)

    flower = strip_wall_clock(read_metrics(run_dir))
    assert flower == strip_wall_clock(in_process.metrics)  # every field, every round
    a, b = np.load(run_dir / "final_arrays.npz"), np.load(in_process.run_dir / "final_arrays.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])  # same replies in the same order
    # The nodes were asked their partitions once; dropouts and injected failures (the
    # only failures here) never left: 4 rounds x (4 train + 4 evaluate) were asked for.
    assert grid.sent_types.count(wire.QUERY_PARTITION) == 8
    lost = sum(r["dropouts"] + r["failures"] for r in in_process.metrics)
    assert len(grid.sent_types) - 8 == 4 * 8 - lost


def test_ray_takes_the_round_clock_and_refuses_what_it_cannot_honour(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Stragglers, dropouts and a deadline validate on ray; for a strategy that runs its
    own loop they are refused, one line naming the key (Flower's grid keeps the clock
    for Flower's rounds only). A device trace stays refused on ray (an older rule)."""
    from types import SimpleNamespace

    from flwr.serverapp.strategy import FedAvg

    from fedsim.compose import compose
    from fedsim.config.rules import RULES

    tiny["engine"] = {"name": "ray"}
    tiny["system"].update({"straggle_prob": 0.3, "deadline_s": 2.0, "dropout_prob": 0.1})
    scenario = fedsim.load_scenario(tiny)
    compose(scenario)  # no problem

    class OwnLoop(FedAvg):
        def start(self, *args: Any, **kwargs: Any) -> Any:  # a loop of its own
            raise NotImplementedError

    link = SimpleNamespace(strategy_cls=OwnLoop, spec=SimpleNamespace(needs=()), name="own")
    (problem,) = RULES.get("engine-needs")(scenario, [link])
    assert problem.key == "system.deadline_s"
    assert "runs its own loop" in problem.message and "engine 'inprocess'" in problem.message
    tiny["engine"] = {"name": "inprocess"}
    assert RULES.get("engine-needs")(fedsim.load_scenario(tiny), [link]) == []


class _Answering(StubGrid):
    """Nodes that answer ``query.partition`` with the given partitions (None: silent)."""

    def __init__(self, partitions: dict[int, int | None]) -> None:
        self.partitions = partitions
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.partitions)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        from flwr.app import MetricRecord

        replies = []
        for i, message in enumerate(messages):
            assign_message_id(message, f"q{i}")
            node = message.metadata.dst_node_id
            self.asked.append(node)
            partition = self.partitions[node]
            if partition is not None:
                metrics = MetricRecord({wire.PARTITION_ID: partition})
                reply = Message(RecordDict({wire.METRICS: metrics}), reply_to=message)
                replies.append(reply)
        return replies


def test_nodes_are_listed_in_partition_order_and_asked_once() -> None:
    from fedsim.engine.node_partitions import NodePartitions

    set_task_identity(1)
    grid = _Answering({50: 2, 7: 0, 31: 1})
    partitions = NodePartitions(grid, timeout_s=1.0)
    assert partitions.in_partition_order([50, 7, 31]) == [7, 31, 50]
    assert partitions.in_partition_order([31, 50]) == [31, 50]
    assert sorted(grid.asked) == [7, 31, 50]  # once each
    assert partitions.clock_id(50) == 1002  # partition 2's in-process node id


def test_a_silent_node_and_a_shared_partition_are_one_line_each() -> None:
    from fedsim.engine.node_partitions import NodePartitions, PartitionUnknown

    set_task_identity(1)
    with pytest.raises(PartitionUnknown, match=r"node 8 did not say its partition-id within 1 s"):
        NodePartitions(_Answering({7: 0, 8: None}), timeout_s=1.0).learn([7, 8])
    with pytest.raises(PartitionUnknown, match=r"nodes 7 and 9 both hold partition-id 0"):
        NodePartitions(_Answering({7: 0, 9: 0}), timeout_s=1.0).learn([7, 9])
