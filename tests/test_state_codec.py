"""The checkpoint codec: every kind of state comes back exactly, and nothing else decodes."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

import fedsim
from fedsim.engine.telemetry import RoundStats, Telemetry
from fedsim.server import checkpoint as checkpoint_module
from fedsim.server.checkpoint import Checkpoint, load_checkpoint
from fedsim.server.loop import uses_flower_loop_class
from fedsim.server.state_codec import StateCodecError, decode, encode
from fedsim.strategies import STRATEGIES


def same(a: Any, b: Any, where: str = "") -> None:
    """Assert ``a`` and ``b`` are equal in value *and* type, all the way down."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, Array):
        assert (a.dtype, a.shape, a.stype, a.data) == (b.dtype, b.shape, b.stype, b.data), where
    elif isinstance(a, dict | ArrayRecord | ConfigRecord | MetricRecord | RecordDict):
        assert list(a.keys()) == list(b.keys()), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{where}[{i}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def round_trip(value: Any) -> Any:
    tree, arrays = encode(value)
    text = json.dumps(tree, allow_nan=False)  # strict JSON: non-finite floats are tagged
    return decode(json.loads(text), arrays)


def test_every_supported_kind_comes_back_exactly() -> None:
    value = {
        1001: (3, [0.1, float("nan"), float("-inf")], None, True, "s"),
        "numpy": [np.float64(0.5), np.int64(7), np.arange(6, dtype=np.float32).reshape(2, 3)],
        "torch": torch.tensor([1, 2, 255], dtype=torch.uint8),
        "bytes": b"\x00\x01",
        "records": RecordDict(
            {
                "a": ArrayRecord({"w": Array(np.ones((2, 2), dtype=np.float16))}),
                "c": ConfigRecord({"noise": [1.0, 0.5], "name": "x", "blob": b"z", "on": True}),
                "m": MetricRecord({"loss": 0.25, "n": 3}),
            }
        ),
        # Flower arrays in any serialisation type come back byte for byte.
        "raw": Array(dtype="int8", shape=(3,), stype="custom.codec", data=b"abc"),
        "telemetry": Telemetry(RoundStats(participants=2, epsilon=1.5), ["ValueError: x"]),
    }
    same(round_trip(value), value)


def test_the_rng_states_round_trip() -> None:
    state = checkpoint_module.capture_rng()
    back = round_trip(state)
    same(back, state)
    checkpoint_module.restore_rng(back)  # the types the setters need


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, np.array([object()], dtype=object), lambda: None],
    ids=["object", "set", "object-array", "function"],
)
def test_what_the_codec_does_not_know_is_refused_when_saving(value: Any) -> None:
    with pytest.raises(StateCodecError, match=r"state\['x'\]"):
        encode({"x": value})


@pytest.mark.parametrize(
    "tree",
    [
        {"$reduce": ["os", "system"]},  # no tag names a callable
        {"$dataclass": ["subprocess.Popen", {}]},  # only registered fedsim dataclasses
        {"$dataclass": ["telemetry", {"not_a_field": 1}]},
        {"$ndarray": "a99"},  # an array the archive does not hold
        {"$tuple": [1], "$dict": []},  # one tag per object
    ],
)
def test_decoding_builds_only_what_the_table_names(tree: Any) -> None:
    with pytest.raises(StateCodecError):
        decode(tree, {})


# ------------------------------------------------- every resumable strategy's state


def _resumable() -> list[str]:
    return [n for n in STRATEGIES.names() if uses_flower_loop_class(STRATEGIES.get(n))]


# Scenario changes some strategies need (on top of the tiny scenario).
SETUPS: dict[str, dict[str, Any]] = {
    "fedaws": {
        "data": {"dataset": "digits", "num_clients": 10, "partitioner": "one-class"},
        "model": {"name": "cosine", "params": {"embedding_dim": 8}},
    },
    "qfedavg": {"strategy": {"params": {"client_learning_rate": 0.1}}},
    "agc": {
        "strategy": {"params": {"p": 0.25, "server_momentum": 0.5}},
        "data": {"sharing": {"c": 0.2, "d": 2}},
    },
    "fedavgm": {"strategy": {"params": {"server_momentum": 0.9}}},
    "ldpc": {  # least squares on coded moments (the strategy's check asks for both)
        "data": {
            "dataset": {"name": "regression", "num_samples": 100, "num_features": 3},
            "num_clients": 4,
            "moment_encoding": {"code": "replication"},
        },
        "model": {"name": "linear", "params": {}},
        "output": {"target_accuracy": None},
    },
}


def _scenario(tiny: dict[str, Any], name: str) -> fedsim.Scenario:
    tiny["strategy"] = {"name": name, "params": {}}
    for section, values in copy.deepcopy(SETUPS.get(name, {})).items():
        if section == "strategy":
            tiny["strategy"]["params"].update(values["params"])
        else:
            tiny[section] = {**tiny[section], **values}
    return fedsim.load_scenario(tiny)


@pytest.mark.parametrize("name", _resumable())
def test_the_attributes_of_every_resumable_strategy_round_trip(
    name: str, tiny: dict[str, Any]
) -> None:
    """Each strategy as the scenario builds it: every attribute that is not configuration
    (a function, a class) is saved and comes back equal, type for type."""
    from fedsim.compose.strategy import build_strategy

    strategy = build_strategy(_scenario(tiny, name))
    state = checkpoint_module.strategy_state(strategy)
    same(round_trip(state), state)
    rebuilt = build_strategy(_scenario(tiny, name))
    checkpoint_module.restore_strategy(rebuilt, round_trip(state))
    _same_strategy(rebuilt, strategy)


def _same_strategy(got: Any, expected: Any) -> None:
    """``vars`` equal, a wrapped strategy (a wrapper's ``strategy``) compared the same way."""
    from flwr.serverapp.strategy import Strategy

    inner = {k for k, v in vars(expected).items() if isinstance(v, Strategy)}
    same({k: v for k, v in vars(got).items() if k not in inner},
         {k: v for k, v in vars(expected).items() if k not in inner})  # fmt: skip
    for k in inner:
        _same_strategy(getattr(got, k), getattr(expected, k))


# Strategies whose state fills up as they run: server moments and momentum (FedOpt,
# FedAvgM, AGC), the curvature sums, FedAwS's W and node classes, q-FedAvg's model.
STATEFUL = ["fedadam", "fedadagrad", "fedavgm", "fedcurv", "fedaws", "agc", "qfedavg"]


@pytest.mark.parametrize("name", STATEFUL)
def test_the_checkpoint_of_a_stateful_strategy_reads_back_exactly(
    name: str, tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint read back from disk equals, type for type, the one the run saved:
    strategy attributes, every node's ``context.state`` (FedCurv's own terms; DP ledgers
    are checked by tests/test_run_directory.py's resumed DP runs), telemetry, RNG states
    and the loop's records."""
    tiny["output"]["checkpoint_every"] = 2
    saved: list[Checkpoint] = []
    original = checkpoint_module.save_checkpoint

    def keep(run_dir: Path, checkpoint: Checkpoint) -> Path:
        saved.append(copy.deepcopy(checkpoint))
        return original(run_dir, checkpoint)

    monkeypatch.setattr("fedsim.server.checkpoint.save_checkpoint", keep)
    result = fedsim.run(_scenario(tiny, name), tmp_path / "run")
    (before,) = saved
    after = load_checkpoint(result.run_dir)
    same(after, before)
    assert any(
        v is not None and not isinstance(v, int | float | str | bool)
        for v in after.strategy_state.values()
    ), "the strategy saved no state of its own"
