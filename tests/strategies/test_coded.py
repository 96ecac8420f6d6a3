"""AGC: unbiased decoding and its variance, and the strategy end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fedsim
from fedsim.data.federated import FederatedData, federated_data
from fedsim.data.sharing import make_plan
from fedsim.errors import ScenarioError
from fedsim.models import build_model
from fedsim.strategies.coded import DECODERS
from tests.conftest import block_data


def _skewed() -> FederatedData:
    """Ten generated clients of unequal size (client k owns 30 + 3k examples)."""
    return block_data([30 + 3 * k for k in range(10)], 4, 2)  # type: ignore[no-any-return]


def _encoded(data: FederatedData, grads: np.ndarray, c: float, d: int, p: float) -> np.ndarray:
    """e_k for every client from fixed per-example gradients ``grads`` (|D|, dim)."""
    plan = make_plan(data, c, d, seed=3)
    rows = []
    for k in range(data.num_clients):
        idx, w = plan.held(k, p)
        rows.append(w @ grads[idx])
    return np.stack(rows)  # (K, dim)


@pytest.mark.parametrize(("c", "d"), [(0.0, 1), (0.2, 3), (0.5, 4)])
def test_decoded_gradient_is_unbiased_with_the_predicted_variance(c: float, d: int) -> None:
    """Σ_k B_k e_k / |D| with B_k ~ Bernoulli(1−p) independent over 2·10⁵ draws.

    Mean: Σ_k (1−p) e_k / |D| = Σ_x g(x) / |D| since each private example carries
    1/(1−p) and each non-private one d·1/(d(1−p)). Variance (trace of the covariance):
    Σ_k p(1−p)‖e_k‖² / |D|² = (p/(1−p)) Σ_k ‖(1−p) e_k‖² / |D|².
    """
    p, draws = 0.3, 200_000
    data = _skewed()
    rng = np.random.default_rng(11)
    grads = rng.normal(size=(len(data.y), 5)) + rng.normal(size=5)  # fixed g(x), nonzero mean
    encoded = _encoded(data, grads, c, d, p)
    scale = DECODERS["unbiased"](0.0, len(data.y), p)
    replied = rng.random((draws, data.num_clients)) >= p  # (T, K)
    decoded = (replied @ encoded) * scale  # (T, dim)
    full = grads.sum(0) / len(data.y)
    stderr = decoded.std(0, ddof=1) / np.sqrt(draws)
    assert np.all(np.abs(decoded.mean(0) - full) <= 4 * stderr)
    predicted = p / (1 - p) * ((1 - p) * encoded) ** 2 / len(data.y) ** 2
    assert decoded.var(0, ddof=1).sum() == pytest.approx(predicted.sum(), rel=0.03)


@pytest.mark.parametrize(("c", "d"), [(0.0, 1), (0.3, 3), (1.0, 10)])
def test_p_zero_decodes_the_exact_full_gradient(c: float, d: int) -> None:
    data = _skewed()
    grads = np.random.default_rng(1).normal(size=(len(data.y), 3))
    encoded = _encoded(data, grads, c, d, 0.0)
    decoded = encoded.sum(0) * DECODERS["unbiased"](0.0, len(data.y), 0.0)
    np.testing.assert_allclose(decoded, grads.mean(0), rtol=1e-12, atol=1e-14)


def _agc(tiny: dict[str, Any], **params: Any) -> dict[str, Any]:
    tiny["rounds"] = 1
    tiny["strategy"] = {"name": "agc", "params": {"server_lr": 0.1, "seed": 5, **params}}
    return tiny


def _reference_step(tiny: dict[str, Any], clients: list[int], divisor: float) -> dict[str, Any]:
    """θ0 − lr · Σ_{k∈clients} Σ_{x∈D_k} ∇ℓ(x) / divisor, by plain autograd on θ0."""
    scenario = fedsim.load_scenario(tiny)
    data = federated_data(scenario.data, scenario.seed)
    torch.manual_seed(scenario.seed)  # the ServerApp builds its initial model right after
    model = build_model("mlp", {"hidden": [16]}, data.input_shape, data.num_classes)
    idx = np.concatenate([data.parts[k] for k in clients])
    x, y = torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx])
    grads = torch.autograd.grad(
        F.cross_entropy(model(x), y, reduction="sum") / divisor, list(model.parameters())
    )
    return {
        n: (p - 0.1 * g).detach().numpy()
        for (n, p), g in zip(model.named_parameters(), grads, strict=True)
    }


def test_one_round_without_stragglers_is_a_full_gradient_step(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """p = 0 and sharing on: Σ e_k / |D| is the full-batch gradient of the mean loss."""
    scenario = fedsim.load_scenario(_agc(tiny, c=0.3, d=3, p=0.0))
    result = fedsim.run(scenario, tmp_path)
    data = federated_data(scenario.data, scenario.seed)
    final = np.load(tmp_path / "final_arrays.npz")
    for name, value in _reference_step(tiny, [0, 1, 2, 3], len(data.y)).items():
        np.testing.assert_allclose(final[name], value, rtol=1e-4, atol=1e-6)
    nonprivate = sum(round(0.3 * len(part)) for part in data.parts)
    sharing = json.loads((tmp_path / "sharing.json").read_text())
    assert sharing["offline_transfer_samples"] == 2 * nonprivate
    assert result.summary["offline_transfer_samples"] == 2 * nonprivate
    assert result.summary["offline_transfer_bytes"] == 2 * nonprivate * (64 * 4 + 8)
    assert result.metrics[-1]["participants"] == 4


@pytest.mark.parametrize("decoder", ["unbiased", "ignore-stragglers"])
def test_stragglers_are_dropped_and_decoded(
    decoder: str, tiny: dict[str, Any], tmp_path: Path
) -> None:
    """c = 0, p = 0.5: the responders are the nodes whose seeded draw is ≥ p.

    unbiased divides their gradient sum by (1−p)|D| (the 1/(1−p) is in e_k);
    ignore-stragglers by the responders' own example count.
    """
    p = 0.5
    scenario = _agc(tiny, c=0.0, d=1, p=p, decoder=decoder)
    result = fedsim.run(fedsim.load_scenario(scenario), tmp_path)
    responders = [k for k in range(4) if np.random.default_rng([5, 1, 1000 + k]).random() >= p]
    assert 0 < len(responders) < 4  # the seed gives a round with stragglers
    assert result.metrics[-1]["participants"] == len(responders)
    data = federated_data(result.scenario.data, result.scenario.seed)
    own = sum(len(data.parts[k]) for k in responders)
    divisor = (1 - p) * len(data.y) if decoder == "unbiased" else own
    final = np.load(tmp_path / "final_arrays.npz")
    for name, value in _reference_step(scenario, responders, divisor).items():
        np.testing.assert_allclose(final[name], value, rtol=1e-4, atol=1e-6)


def test_d_larger_than_the_population_is_a_scenario_error(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ScenarioError, match=r"d must be in \[1, 4\]"):
        fedsim.run(fedsim.load_scenario(_agc(tiny, c=0.1, d=5)), tmp_path)


@pytest.mark.parametrize(
    "params", [{"c": 1.5}, {"d": 0}, {"p": 1.0}, {"decoder": "median"}, {"server_lr": 0.0}]
)
def test_invalid_params_name_the_problem(
    params: dict[str, Any], tiny: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ScenarioError, match=r"strategy\.params"):
        fedsim.run(fedsim.load_scenario(_agc(tiny, **params)), tmp_path)
