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
from tests.conftest import block_data


def _skewed() -> FederatedData:
    """Ten generated clients of unequal size (client k owns 30 + 3k examples)."""
    return block_data([30 + 3 * k for k in range(10)], 4, 2)  # type: ignore[no-any-return]


def _encoded(data: FederatedData, grads: np.ndarray, c: float, d: int, p: float) -> np.ndarray:
    """e_k for every client from fixed per-example gradients ``grads`` (|D|, dim)."""
    plan = make_plan(data, c, d, seed=3)
    rows = []
    for k in range(data.num_clients):
        idx, holders = plan.held(k)
        rows.append((1.0 / (holders * (1.0 - p))) @ grads[idx])
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
    scale = 1.0 / len(data.y)  # the unbiased decoder with every client sampled
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
    decoded = encoded.sum(0) / len(data.y)
    np.testing.assert_allclose(decoded, grads.mean(0), rtol=1e-12, atol=1e-14)


def _agc(tiny: dict[str, Any], c: float | None = None, d: int = 1, **params: Any) -> dict[str, Any]:
    tiny["rounds"] = 1
    tiny["strategy"] = {"name": "agc", "params": {"server_lr": 0.1, "seed": 5, **params}}
    if c is not None:
        tiny["data"]["sharing"] = {"c": c, "d": d}
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


@pytest.mark.parametrize("params", [{"p": 1.0}, {"decoder": "median"}, {"server_lr": 0.0}])
def test_invalid_params_name_the_problem(
    params: dict[str, Any], tiny: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(ScenarioError, match=r"strategy\.params"):
        fedsim.run(fedsim.load_scenario(_agc(tiny, **params)), tmp_path)


@pytest.mark.parametrize(("sharing", "key"), [({"c": 1.5}, "c"), ({"d": 0}, "d")])
def test_invalid_sharing_names_the_key(
    sharing: dict[str, Any], key: str, tiny: dict[str, Any]
) -> None:
    tiny["data"]["sharing"] = sharing
    with pytest.raises(ScenarioError, match=rf"data\.sharing\.{key}"):
        fedsim.load_scenario(_agc(tiny))


def _full_gradient_and_codes(
    data: FederatedData, c: float, d: int, p: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per-example gradients: their mean over D and every client's code e_k."""
    grads = np.random.default_rng(4).normal(size=(len(data.y), 3)) + 1.0
    return grads.mean(0), _encoded(data, grads, c, d, p)


class _Nodes:
    """A grid that only lists nodes (FedAvg's sampling asks for nothing else)."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


@pytest.mark.parametrize("draws", [3000])
def test_decoder_is_unbiased_for_a_sampled_cohort(draws: int) -> None:
    """fraction_train 0.5 and Bernoulli(0.3) stragglers through the strategy's own
    sampling: the mean decoded gradient over many rounds is the full gradient (1%).

    The server steps θ ← θ − lr·ĝ with no momentum from θ = 0 every round, so the
    decoded gradient of a round is −θ'/lr; each reply carries the fixed code e_k.
    """
    import random

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedsim.algorithms.agc.server import ApproxGradientCoding
    from fedsim.engine.flower_compat import set_task_identity

    set_task_identity(1)
    random.seed(0)
    data = _skewed()
    full, codes = _full_gradient_and_codes(data, 0.2, 3, 0.3)
    strategy = ApproxGradientCoding(
        p=0.3, server_lr=1.0, seed=2, fraction_train=0.5, min_available_nodes=10
    )
    strategy.num_examples = len(data.y)
    nodes = list(range(100, 110))
    zero = ArrayRecord({"w": Array(np.zeros(3))})
    total = np.zeros(3)
    for r in range(1, draws + 1):
        sent = list(strategy.configure_train(r, zero, ConfigRecord(), _Nodes(nodes)))
        replies = []
        for msg in sent:
            k = msg.metadata.dst_node_id - 100
            content = RecordDict(
                {
                    "arrays": ArrayRecord({"agc.grad.w": Array(codes[k])}),
                    "metrics": MetricRecord({"num-examples": 1.0}),
                }
            )
            reply = Message(content, reply_to=msg)
            replies.append(reply)
        arrays, _ = strategy.aggregate_train(r, replies)
        if arrays is not None:  # None: every sampled client straggled, ĝ = 0
            total -= arrays["w"].numpy()
    mean = total / draws
    assert np.linalg.norm(mean - full) <= 0.01 * np.linalg.norm(full)
    # The decoder without the cohort correction would be half of it.
    assert np.linalg.norm(mean / 2 - full) > 0.4 * np.linalg.norm(full)


def test_coded_examples_reach_a_device_through_its_data_file(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """Written partitions hold what each node holds after the offline phase; a node
    reading its file gets the same data (and holder counts) as the simulated node."""
    from fedsim.data.node_data import node_data, write_partitions

    scenario = fedsim.load_scenario(_agc(tiny, c=0.3, d=3))
    paths = write_partitions(scenario.data, scenario.seed, tmp_path)
    for k, path in enumerate(paths):
        simulated = node_data(scenario.data, scenario.seed, k, None)
        device = node_data(scenario.data, scenario.seed, k, str(path))
        np.testing.assert_array_equal(simulated.x, device.x)
        np.testing.assert_array_equal(simulated.y, device.y)
        assert simulated.holders is not None and device.holders is not None
        np.testing.assert_array_equal(simulated.holders, device.holders)
        assert (simulated.holders == 3).sum() > 0


def test_per_client_decoder_corrects_clients_that_are_late_at_their_own_rates() -> None:
    """Deadline-like straggling: client k is on time with its own probability π_k (no
    Bernoulli draw by the strategy, p = 0). The unbiased decoder then estimates
    Σ π_k e_k / |D|; per-client divides each reply by the on-time rate it has seen."""
    import random

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedsim.algorithms.agc.server import ApproxGradientCoding
    from fedsim.engine.flower_compat import set_task_identity

    set_task_identity(1)
    random.seed(0)
    data = _skewed()
    full, codes = _full_gradient_and_codes(data, 0.2, 3, 0.0)
    on_time = np.linspace(0.3, 0.95, 10)
    rng = np.random.default_rng(8)
    means = {}
    for decoder in ("unbiased", "per-client"):
        strategy = ApproxGradientCoding(
            p=0.0, decoder=decoder, draw_stragglers=False, server_lr=1.0, min_available_nodes=10
        )
        strategy.num_examples = len(data.y)
        zero = ArrayRecord({"w": Array(np.zeros(3))})
        total, rounds = np.zeros(3), 3000
        for r in range(1, rounds + 1):
            replies = []
            for msg in strategy.configure_train(
                r, zero, ConfigRecord(), _Nodes(list(range(100, 110)))
            ):
                k = msg.metadata.dst_node_id - 100
                if rng.random() < on_time[k]:
                    content = RecordDict(
                        {
                            "arrays": ArrayRecord({"agc.grad.w": Array(codes[k])}),
                            "metrics": MetricRecord({"num-examples": 1.0}),
                        }
                    )
                    replies.append(Message(content, reply_to=msg))
            arrays, _ = strategy.aggregate_train(r, replies)
            if arrays is not None:
                total -= arrays["w"].numpy()
        means[decoder] = total / rounds
    error = {d: np.linalg.norm(m - full) / np.linalg.norm(full) for d, m in means.items()}
    assert error["per-client"] < 0.02
    assert error["unbiased"] > 0.2  # about the mean on-time rate's shortfall
