"""Stacked replies equal each client's own for every model x step x loss x optimizer.

In float64 (each model wrapped to compute in double precision): there both paths agree
to ~1e-12, so a 1e-5 relative gap means a different algorithm, never rounding. In
float32 two correct computations can differ by more than 1e-5 where the result
cancels digits: resnet-gn's GroupNorm biases whose gradient the next GroupNorm almost
removes (1e-3 relative from float64 in either path), Adam's update of a weight whose
gradient is near its eps, SCAFFOLD's ``(x - y) / (K·lr)``. The float32 cases of
``test_batched.py`` cover the well-conditioned models.

Tiny shapes: three clients of 9, 6 and 3 examples (a natural partition), batch 4, one
epoch, so the clients take 3, 2 and 1 steps and each ends on a partial batch (1, 2 and
3 examples): uneven step counts and masked padding in every case. Each case compares
every array and metric of every reply with the ClientApp's, one client at a time.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from fedsim import wire
from fedsim.algorithms.fedcurv.client import OWN_TERMS
from fedsim.algorithms.scaffold.client import KEPT_C
from fedsim.array_codec import decode
from fedsim.client.app import app
from fedsim.client.stacked import train_together
from fedsim.compose import load_scenario
from fedsim.config.sources import to_yaml
from fedsim.engine.executor import copy_content
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.inprocess_grid import node_contexts
from fedsim.models import build_model, register_model
from tests.clients.test_batched import twin_jobs

RTOL = 1e-5
SIZES = (9, 6, 3)
ROUND = 2

MODELS: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "mlp": ({"name": "mlp", "params": {"hidden": [8]}}, (1, 8, 8)),
    "linear": ({"name": "linear", "params": {}}, (1, 8, 8)),
    "cnn": ({"name": "cnn", "params": {"channels": [2, 4], "hidden": 8}}, (1, 8, 8)),
    "cnn1d": ({"name": "cnn1d", "params": {"channels": [2, 4], "hidden": 8}}, (1, 12)),
    "femnist-cnn": ({"name": "femnist-cnn", "params": {"hidden": 8}}, (1, 28, 28)),
    "resnet-gn": (
        {"name": "resnet-gn", "params": {"widths": [4, 8], "groups": 2}},
        (1, 8, 8),
    ),
}
STEPS = ("plain", "proximal", "scaffold", "curvature")
LOSSES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"name": "cross_entropy"},
    "logit_adjusted": {"name": "logit_adjusted", "tau": 1.0, "prior": "own"},
    "label_smoothing": {"name": "label_smoothing", "epsilon": 0.1},
    "entropy_regularised": {"name": "entropy_regularised", "beta": 0.1},
}
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd-momentum-wd": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2},
    "adam": {"name": "adam", "lr": 0.01, "weight_decay": 1e-2},
}


def _npz(tmp_path: Path, shape: tuple[int, ...], regression: bool = False) -> Path:
    rng = np.random.default_rng(0)
    n = sum(SIZES)
    ids = np.repeat(np.arange(len(SIZES)), SIZES)
    y = rng.normal(size=n).astype(np.float32) if regression else rng.integers(0, 3, n)
    path = tmp_path / "data.npz"
    np.savez(
        path,
        x=rng.normal(size=(n, *shape)).astype(np.float32),
        y=y,
        client_id=ids,
        x_test=rng.normal(size=(4, *shape)).astype(np.float32),
        y_test=y[:4],
    )
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one thread (spinning OpenMP threads cost more than they compute)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Float64(nn.Module):
    """Casts the input to float64 for a float64 model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


@register_model("test-float64")
def _float64(
    input_shape: tuple[int, ...],
    num_classes: int,
    inner: str = "mlp",
    params: dict[str, Any] | None = None,
) -> nn.Module:
    """``inner`` in double precision."""
    return nn.Sequential(
        _Float64(), build_model(inner, params or {}, input_shape, num_classes).double()
    )


def _scenario(tmp_path: Path, model: str, loss: str, optimizer: str) -> Any:
    inner, shape = MODELS[model]
    spec = {"name": "test-float64", "params": {"inner": inner["name"], "params": inner["params"]}}
    regression = loss == "squared_error"
    dataset: dict[str, Any] = {"name": "npz", "path": str(_npz(tmp_path, shape, regression))}
    if regression:
        dataset["targets"] = "values"
    return load_scenario(
        {
            "name": "stacked-matrix",
            "seed": 5,
            "rounds": 1,
            "data": {
                "dataset": dataset,
                "num_clients": len(SIZES),
                "partitioner": {"name": "natural"},
            },
            "model": spec,
            "client": {
                "local_epochs": 1,
                "batch_size": 4,
                "loss": {"name": "squared_error"} if regression else LOSSES[loss],
                "optimizer": OPTIMIZERS[optimizer],
            },
        }
    )


def _jobs(
    scenario: Any, tmp_path: Path, step: str, shape: tuple[int, ...]
) -> list[tuple[Message, Context]]:
    """One train message per node, with the step's server arrays and per-node state."""
    resolved = tmp_path / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario), encoding="utf-8")
    set_task_identity(1)
    contexts = node_contexts(len(SIZES), {wire.RUN_SCENARIO: str(resolved)})
    classes = 1 if scenario.client.loss.name == "squared_error" else 3
    torch.manual_seed(0)
    model = build_model(scenario.model.name, scenario.model.params, shape, classes)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}
    rng = np.random.default_rng(1)
    config: dict[str, Any] = {wire.SERVER_ROUND: ROUND, wire.LOCAL_STEP: step}
    nodes = list(contexts)
    if step == "proximal":
        config[wire.PROXIMAL_MU] = 0.5
    if step == "scaffold":  # the server's c; one node keeps a c_i of its own
        for n, p in params.items():
            arrays[wire.SCAFFOLD_C_PREFIX + n] = 0.1 * rng.normal(size=p.shape)
        kept = {
            n: Array(0.1 * rng.normal(size=p.shape).astype(np.float32)) for n, p in params.items()
        }
        contexts[nodes[0]].state[KEPT_C] = ArrayRecord(kept)  # type: ignore[arg-type]
    if step == "curvature":  # sums of round 1 that hold node 0's own terms
        config.update(
            {wire.CURV_LAMBDA: 0.5, wire.CURV_SUMS_ROUND: 1, wire.CURV_MEMBERS: [nodes[0]]}
        )
        own = {}
        for n, p in params.items():
            f = rng.uniform(0, 1, p.shape)
            t = rng.normal(size=p.shape)
            for kind, value in (("U", 3 * f), ("V", 3 * f * t), ("W", 3 * f * t * t)):
                arrays[f"{wire.CURV_PREFIX}{kind}.{n}"] = value
            own.update({f"F.{n}": f, f"FT.{n}": f * t, f"FTT.{n}": f * t * t})
        contexts[nodes[0]].state[f"{OWN_TERMS}.1"] = ArrayRecord(
            {k: Array(v) for k, v in own.items()}  # type: ignore[arg-type]
        )
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
            ),  # type: ignore[arg-type]
            wire.CONFIG: ConfigRecord(config),
        }
    )
    return [(Message(content, node, "train"), contexts[node]) for node in nodes]


def _delivered(message: Message) -> Message:
    return Message(content=copy_content(message.content), metadata=copy.copy(message.metadata))  # type: ignore[call-overload]


def _assert_same(batched: Message, alone: Message) -> None:
    assert not alone.has_error(), alone.error
    got, want = batched.content.array_records[wire.ARRAYS], alone.content.array_records[wire.ARRAYS]
    assert list(got) == list(want)
    for key in want:
        a, b = decode(got[key]), decode(want[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert np.abs(a - b).max() <= RTOL * max(np.abs(b).max(), 1e-12), key
    m_got = batched.content.metric_records[wire.METRICS]
    m_want = alone.content.metric_records[wire.METRICS]
    assert list(m_got) == list(m_want)
    for key, value in m_want.items():
        if key != wire.DURATION_S:
            assert m_got[key] == pytest.approx(value, rel=RTOL), key


def _check(tmp_path: Path, model: str, step: str, loss: str, optimizer: str) -> None:
    scenario = _scenario(tmp_path, model, loss, optimizer)
    jobs = _jobs(scenario, tmp_path, step, MODELS[model][1])
    # Each side on its own copy of the nodes' state (SCAFFOLD and FedCurv write there).
    twins = twin_jobs(jobs)
    alone = [app(_delivered(m), c) for m, c in twins]
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=8)
    for (_, c), (_, c_alone), batched, own in zip(jobs, twins, together, alone, strict=True):
        assert batched is not None
        _assert_same(batched, own)
        assert set(c.state.array_records) == set(c_alone.state.array_records)


def _pairwise() -> list[tuple[str, str, str, str]]:
    """Cases in which every pair of values of two factors occurs (24 of the 192).

    Row (i, j) of models x steps takes loss (i + j) mod 4 and optimizer (j + (i + j) //
    4) mod 2; the assertion below checks that every pair is covered.
    """
    models, steps, losses, optimizers = list(MODELS), STEPS, list(LOSSES), list(OPTIMIZERS)
    cases = [
        (m, s, losses[(i + j) % 4], optimizers[(j + (i + j) // 4) % 2])
        for i, m in enumerate(models)
        for j, s in enumerate(steps)
    ]
    factors = (models, steps, losses, optimizers)
    for a, b in itertools.combinations(range(4), 2):
        seen = {(c[a], c[b]) for c in cases}
        assert seen == set(itertools.product(factors[a], factors[b])), (a, b)
    return cases


# CI runs the pairwise cover; FEDSIM_FULL_MATRIX=1 runs every combination (192 cases,
# a few minutes: the figure in the issue note is from such a run).
CASES = (
    list(itertools.product(MODELS, STEPS, LOSSES, OPTIMIZERS))
    if os.environ.get("FEDSIM_FULL_MATRIX")
    # The case that found the float32 1/batch weights of the stacked path (a 3-example
    # client: 1/3 is inexact in float32; a weight whose gradient nearly cancels its
    # weight decay, which Adam magnifies). It failed at 1.6e-5 before the fix.
    else [*_pairwise(), ("femnist-cnn", "plain", "label_smoothing", "adam")]
)


@pytest.mark.parametrize(("model", "step", "loss", "optimizer"), CASES)
def test_stacked_replies_equal_each_clients_own(
    model: str, step: str, loss: str, optimizer: str, tmp_path: Path
) -> None:
    _check(tmp_path, model, step, loss, optimizer)


@pytest.mark.parametrize(("step", "optimizer"), list(itertools.product(STEPS, OPTIMIZERS)))
def test_stacked_regression_replies_equal_each_clients_own(
    step: str, optimizer: str, tmp_path: Path
) -> None:
    """``squared_error`` (regression targets) on the linear model."""
    _check(tmp_path, "linear", step, "squared_error", optimizer)
