"""``client.weights``: the model stays on its fixed-point grid; randomized rounding keeps
an update smaller than a step in expectation, deterministic rounding erases it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from torch import nn

from fedsim import wire
from fedsim.array_codec import encode_record
from fedsim.client.low_precision import FixedPointWeights
from fedsim.config.schema import LowPrecisionWeights
from fedsim.engine.flower_compat import set_task_identity
from fedsim.models import build_model
from tests.conftest import write_yaml

STEP = 2.0**-6


def _on_grid(values: np.ndarray, bits: int) -> bool:
    k = values.astype(np.float64) / STEP
    return bool(
        (k == np.round(k)).all() and k.min() >= -(2 ** (bits - 1)) and k.max() < 2 ** (bits - 1)
    )


def test_projection_lands_on_the_grid_and_clips_to_its_range() -> None:
    layer = nn.Linear(5, 3)
    with torch.no_grad():
        layer.weight[0, 0] = 100.0  # beyond 127 steps: clipped to the largest point
    rounding = FixedPointWeights(LowPrecisionWeights(bits=8, step=STEP), np.random.default_rng(0))
    rounding(layer)
    assert _on_grid(layer.weight.detach().numpy(), 8) and _on_grid(layer.bias.detach().numpy(), 8)
    assert float(layer.weight[0, 0].detach()) == 127 * STEP
    assert rounding.model_bytes(layer) == 18  # 18 parameters at 8 bits


def test_randomized_rounding_keeps_a_small_update_deterministic_erases_it() -> None:
    """w = 3 steps plus an update of 0.3 steps: RR's mean is 3.3 steps, DR gives 3 steps."""
    outcomes = {}
    for method in ("randomized-rounding", "deterministic-rounding"):
        cfg = LowPrecisionWeights(bits=8, step=STEP, rounding=method)
        rounding = FixedPointWeights(cfg, np.random.default_rng(1))
        layer = nn.Linear(100, 100, bias=False)
        with torch.no_grad():
            layer.weight.fill_(3.3 * STEP)
        rounding(layer)
        outcomes[method] = layer.weight.detach().numpy().astype(np.float64) / STEP
    assert abs(outcomes["randomized-rounding"].mean() - 3.3) < 0.01  # σ of the mean ≈ 0.005
    assert (outcomes["deterministic-rounding"] == 3.0).all()


def test_the_client_replies_with_a_model_on_the_grid(tmp_path: Path, tiny: dict[str, Any]) -> None:
    from fedsim.client import app as client_app

    set_task_identity(1)
    tiny["client"]["weights"] = {"bits": 10, "step": STEP}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    ctx = Context(
        1,
        1000,
        {wire.PARTITION_ID: 0, wire.NUM_PARTITIONS: 4},
        RecordDict(),
        {wire.RUN_SCENARIO: str(path)},
    )
    model = build_model("mlp", tiny["model"]["params"], (64,), 10)
    content = RecordDict(
        {
            wire.ARRAYS: encode_record(model.state_dict()),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
        }
    )
    reply = client_app.app(Message(content, 1000, "train"), ctx)
    assert not reply.has_error()
    for array in reply.content[wire.ARRAYS].values():
        assert _on_grid(array.numpy(), 10)
    count = sum(p.numel() for p in model.parameters())
    assert reply.content[wire.METRICS][wire.MODEL_BYTES] == int(np.ceil(10 * count / 8))
