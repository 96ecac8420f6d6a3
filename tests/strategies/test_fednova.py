"""FedNova: updates normalised by local steps; FedAvg when every client takes as many."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

import fedsim
from fedsim import wire
from fedsim.algorithms.fedavg.server import FedAvg
from fedsim.algorithms.fednova import keys
from fedsim.algorithms.fednova.server import FedNova
from fedsim.engine.flower_compat import set_task_identity

SHAPES = {"w": (3, 2), "b": (3,)}


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity(1)


def _reply(arrays: dict[str, np.ndarray], n: int, steps: int) -> Message:
    metrics = {wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: 0.5, keys.FEDNOVA_STEPS: float(steps)}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    instruction = Message(RecordDict(), 1000 + n, "train")
    content = RecordDict({wire.ARRAYS: record, wire.METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=instruction)


def _models(rng: np.random.Generator, k: int) -> list[dict[str, np.ndarray]]:
    return [
        {name: rng.normal(size=s).astype(np.float64) for name, s in SHAPES.items()}
        for _ in range(k)
    ]


def _aggregate(
    strategy: FedAvg, x: dict[str, np.ndarray], replies: list[Message]
) -> dict[str, np.ndarray]:
    strategy._sent = ArrayRecord({k: Array(v) for k, v in x.items()})  # as configure_train
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return {k: v.numpy() for k, v in arrays.items()}


def test_normalised_update_matches_the_paper() -> None:
    rng = np.random.default_rng(0)
    (x,) = _models(rng, 1)
    ys = _models(rng, 4)
    sizes, steps = [10, 40, 25, 5], [4, 16, 10, 2]
    ours = _aggregate(
        FedNova(weighted_by_key=wire.NUM_EXAMPLES),
        x,
        [_reply(y, n, t) for y, n, t in zip(ys, sizes, steps, strict=True)],
    )
    # Wang et al. (2020), Eq. (6) with a_i = tau_i: x - tau_eff * sum_i p_i (x - y_i) / tau_i.
    p = np.array(sizes, float) / sum(sizes)
    tau_eff = float(p @ np.array(steps, float))
    for name in SHAPES:
        d = sum(pi * (x[name] - y[name]) / t for pi, y, t in zip(p, ys, steps, strict=True))
        np.testing.assert_allclose(ours[name], x[name] - tau_eff * d, rtol=1e-12, atol=1e-12)


def test_equal_local_steps_give_fedavg() -> None:
    rng = np.random.default_rng(1)
    (x,) = _models(rng, 1)
    ys = _models(rng, 3)
    replies = [_reply(y, n, 7) for y, n in zip(ys, [12, 30, 8], strict=True)]
    nova = _aggregate(FedNova(weighted_by_key=wire.NUM_EXAMPLES), x, replies)
    avg = _aggregate(FedAvg(weighted_by_key=wire.NUM_EXAMPLES), x, replies)
    for name in SHAPES:
        np.testing.assert_allclose(nova[name], avg[name], rtol=1e-12, atol=1e-12)


def test_unequal_local_steps_differ_from_fedavg() -> None:
    rng = np.random.default_rng(2)
    (x,) = _models(rng, 1)
    ys = _models(rng, 2)
    replies = [_reply(ys[0], 10, 2), _reply(ys[1], 10, 20)]
    nova = _aggregate(FedNova(weighted_by_key=wire.NUM_EXAMPLES), x, replies)
    avg = _aggregate(FedAvg(weighted_by_key=wire.NUM_EXAMPLES), x, replies)
    assert not np.allclose(nova["w"], avg["w"])


def _tiny(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "fednova-tiny",
        "rounds": 2,
        "data": {"dataset": "digits", "num_clients": 4, "partitioner": {"name": "iid"}},
        "model": {"name": "mlp", "params": {"hidden": [8]}},
        "client": {"local_epochs": 1, "batch_size": 32},
        "strategy": {"name": "fednova"},
        "output": {"plots": False},
    }
    raw.update(overrides)
    return raw


def test_clients_report_their_steps(tmp_path: Path) -> None:
    result = fedsim.run(fedsim.load_scenario(_tiny()), tmp_path / "run")
    steps = [r["train/fednova-steps"] for r in result.metrics if r["round"] > 0]
    assert steps and all(s > 0 for s in steps)  # ceil(n_i / 32) steps, averaged by n_i


def test_momentum_is_refused_before_training() -> None:
    raw = _tiny(client={"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}})
    with pytest.raises(fedsim.ScenarioError, match=r"client\.optimizer\.momentum"):
        fedsim.load_scenario(raw)
