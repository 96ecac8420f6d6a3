"""FedCurv: the O(|θ|) penalty, the Fisher estimate, λ=0 = FedAvg, the extra upload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedsim
from fedsim.algorithms.fedcurv.client import curvature_penalty, empirical_fisher


def _direct(
    theta: dict[str, torch.Tensor], fishers: list, thetas: list, lam: float
) -> torch.Tensor:  # type: ignore[type-arg]
    """λ Σ_j Σ F_j (θ - θ_j)², written out over the other clients j."""
    return lam * sum(
        (f[n] * (theta[n] - t[n]) ** 2).sum()
        for f, t in zip(fishers, thetas, strict=True)
        for n in theta
    )


def test_penalty_equals_the_pairwise_sum_and_its_gradient() -> None:
    """Server sums U, V, W over all clients minus the client's own terms (float64)."""
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 4), "b": (4,)}
    clients = 5
    fishers = [
        {n: torch.rand(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
        for _ in range(clients)
    ]
    thetas = [
        {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
        for _ in range(clients)
    ]
    me = 2
    others = {}
    for n in shapes:
        u_all = sum(f[n] for f in fishers)
        v_all = sum(f[n] * t[n] for f, t in zip(fishers, thetas, strict=True))
        w_all = sum(f[n] * t[n] ** 2 for f, t in zip(fishers, thetas, strict=True))
        f, t = fishers[me][n], thetas[me][n]
        others[n] = (u_all - f, v_all - f * t, w_all - f * t * t)
    theta = {
        n: torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
        for n, s in shapes.items()
    }
    fast = curvature_penalty(theta, others, 0.7)
    rest = [j for j in range(clients) if j != me]
    slow = _direct(theta, [fishers[j] for j in rest], [thetas[j] for j in rest], 0.7)
    assert abs(float(fast) - float(slow)) < 1e-10
    g_fast = torch.autograd.grad(fast, list(theta.values()))
    g_slow = torch.autograd.grad(slow, list(theta.values()))
    for a, b in zip(g_fast, g_slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert float(fast) >= 0
    # All θ_j equal θ: the penalty vanishes.
    same = {n: (sum(f[n] for f in fishers) - fishers[me][n],) for n in shapes}
    equal = {n: (a, a * theta[n].detach(), a * theta[n].detach() ** 2) for n, (a,) in same.items()}
    assert abs(float(curvature_penalty(theta, equal, 0.7))) < 1e-10


def test_empirical_fisher_of_a_logistic_model_is_the_closed_form() -> None:
    """For p = σ(wᵀx) and per-example BCE, ∂ℓ/∂w = (p - y)x, so F = (1/m) Σ (y - p)² x²."""
    torch.manual_seed(0)
    m, d = 40, 6
    x = torch.randn(m, d, dtype=torch.float64)
    y = torch.randint(0, 2, (m,)).to(torch.float64)
    model = nn.Linear(d, 1, bias=False).to(torch.float64)

    def bce(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out.squeeze(-1), t, reduction="none")

    fisher = empirical_fisher(model, bce, x, y)["weight"][0]
    p = torch.sigmoid(x @ model.weight.detach()[0])
    closed = ((y - p) ** 2).unsqueeze(1).mul(x**2).mean(0)
    torch.testing.assert_close(fisher, closed, rtol=1e-12, atol=1e-14)


def _final(result: Any) -> dict[str, np.ndarray]:
    with np.load(result.run_dir / "final_arrays.npz") as f:
        return {k: f[k] for k in f.files}


def test_lambda_zero_is_fedavg_bit_for_bit(tiny: dict[str, Any], tmp_path: Path) -> None:
    tiny["rounds"] = 3
    tiny["data"]["partitioner"] = {"name": "pathological", "classes_per_client": 2}
    tiny["strategy"] = {"name": "fedcurv", "params": {"curv_lambda": 0.0}}
    curv = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    tiny["strategy"] = {"name": "fedavg"}
    avg = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    for k, v in _final(avg).items():
        assert np.array_equal(_final(curv)[k], v), k
    assert [r["eval_loss"] for r in curv.metrics] == [r["eval_loss"] for r in avg.metrics]


def test_extra_upload_and_a_penalty_that_acts(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Replies carry θ, F and F⊙θ: about three times FedAvg's upload; λ > 0 changes θ."""
    tiny["rounds"] = 3
    tiny["strategy"] = {"name": "fedcurv", "params": {"curv_lambda": 10.0}}
    curv = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "c")
    tiny["strategy"] = {"name": "fedavg"}
    avg = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    ratio = curv.summary["bytes_up"] / avg.summary["bytes_up"]
    assert 2.9 < ratio < 3.1
    # Round 1 has no sums yet (only two config entries more); then θ + U, V, W.
    assert curv.metrics[1]["bytes_down"] < 1.01 * avg.metrics[1]["bytes_down"]
    assert 3.9 < curv.metrics[2]["bytes_down"] / avg.metrics[2]["bytes_down"] < 4.1
    assert any(not np.array_equal(_final(curv)[k], v) for k, v in _final(avg).items())


@pytest.mark.parametrize("bad", [{"curv_lambda": -1.0}, {"fisher": "exact"}])
def test_bad_parameters_are_scenario_errors(
    tiny: dict[str, Any], tmp_path: Path, bad: dict
) -> None:  # type: ignore[type-arg]
    tiny["strategy"] = {"name": "fedcurv", "params": bad}
    with pytest.raises(fedsim.ScenarioError, match=r"strategy\.params"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path)


@pytest.mark.slow
def test_shipped_comparison_orders_the_variants(tmp_path: Path) -> None:
    """scenarios/fedcurv_digits.yaml's 3 variants at the shipped lr, seeds 0-2 (~1 min).

    The tuned, 5-seed comparison is benchmarks/run_comparison.py's (docs/strategies.md).
    """
    root = Path(__file__).parents[2]
    scenario = fedsim.load_scenario(
        root / "scenarios" / "fedcurv_digits.yaml",
        ["output.plots=false", "tuning=null", "seeds=[0, 1, 2]"],
    )
    result = fedsim.run_experiment(scenario, tmp_path)
    rows = {r["variant"]: r for r in result.table}
    assert rows["fedcurv"]["best_acc_mean"] >= rows["fedavg"]["best_acc_mean"]
    assert all(
        r["rounds_to_target_mean"] is not None or r["reached_target"] == 0 for r in rows.values()
    )


def _shipped_fedcurv_run(tmp_path: Path, overrides: list[str]) -> Any:
    """One FedCurv run of scenarios/fedcurv_digits.yaml (no variants, no tuning)."""
    base = ["output.plots=false", "tuning=null", "seeds=null", "variants={}"]
    path = Path(__file__).parents[2] / "scenarios" / "fedcurv_digits.yaml"
    scenario = fedsim.load_scenario(path, [*base, "strategy.name=fedcurv", *overrides])
    return fedsim.run(scenario, tmp_path)


@pytest.mark.slow
def test_a_far_too_large_lambda_stalls_training(tmp_path: Path) -> None:
    """λ = 1000 on the shipped scenario (seed 0) diverges in round 2.

    Every later reply is refused as non-finite, so the model stalls at its round-1 state
    (before replies were checked, a NaN model scored 0.072).
    """
    overrides = ["strategy.params.curv_lambda=1000", "engine.max_failure_fraction=null"]
    result = _shipped_fedcurv_run(tmp_path, overrides)  # no failure cap: let it stall
    assert result.summary["final_eval_accuracy"] < 0.2
    assert result.summary["failures"] > 0


def test_batch_fisher_is_the_squared_mean_gradient_of_the_last_batch() -> None:
    """OpenFL's estimate, kept for comparison: (∇ mean loss of the last batch)²."""
    from fedsim.algorithms.fedcurv.client import batch_fisher

    torch.manual_seed(1)
    model = nn.Linear(5, 3).to(torch.float64)
    x, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))

    def ce(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none")

    got = batch_fisher(model, ce, x, y, batch=8)
    ce(model(x[-8:]), y[-8:]).mean().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad.pow(2))


# ------------------------------------------------------ partial participation


class _Grid:
    """Just enough of a Grid for FedAvg's sampling: five connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _reply(msg: Any, arrays: Any, n: int) -> Any:
    from flwr.app import Message, MetricRecord, RecordDict

    metrics = MetricRecord({"num-examples": n})
    reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
    return reply


def test_penalty_under_partial_participation_counts_only_the_clients_in_the_sums() -> None:
    """Sampled, not-sampled, straggling and dropped-out clients, three rounds (float64).

    Round 1: nodes 1-4 are sent the model; 1, 2 reply; 3 trains but straggles (its reply
    is never aggregated); 4 drops out (never runs). Round 2: every node gets the sums of
    round 1, which hold 1 and 2 only; each client's penalty must be
    λ Σ_{j ∈ {1,2}, j ≠ s} Σ F_j (θ − θ_j)², computed here directly from what 1 and 2
    sent. Round 3: only node 3 replies, so the sums are round 2's... of node 3 alone, and
    a client that trained in round 1 but not 2 (node 1) subtracts nothing.
    """
    import random

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

    from fedsim.algorithms.fedcurv.client import CurvatureStep
    from fedsim.algorithms.fedcurv.server import FedCurv
    from fedsim.array_codec import encode_record
    from fedsim.client.steps import StepInputs, TrainResult
    from fedsim.data.node_data import NodeData
    from fedsim.engine.flower_compat import set_task_identity

    set_task_identity(1)
    random.seed(0)
    torch.manual_seed(0)
    lam = 0.7
    nodes = [1, 2, 3, 4, 5]
    strategy = FedCurv(curv_lambda=lam, fraction_train=1.0, min_available_nodes=4)
    states = {n: Context(0, n, {}, RecordDict(), {}).state for n in nodes}
    base = nn.Linear(3, 2).to(torch.float64)
    data = {n: (torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,))) for n in nodes}
    sent: dict[int, dict[str, dict[str, torch.Tensor]]] = {}  # round -> node -> F, θ

    def client_round(msg: Any, node: int, r: int) -> tuple[Any, CurvatureStep]:
        """Run the step at node; 'train' to a random θ_j; return its reply and the step."""
        model = nn.Linear(3, 2).to(torch.float64)
        record = msg.content.array_records["arrays"]
        own = set(model.state_dict())
        model.load_state_dict(
            {k: torch.from_numpy(v.numpy()) for k, v in record.items() if k in own}
        )
        extras = {k: v.numpy() for k, v in record.items() if k not in own}
        config = dict(msg.content.config_records["config"])
        step = CurvatureStep(StepInputs(config, model, extras, states[node], node_id=node))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        x, y = data[node]
        reply = step.reply(model, NodeData(x.numpy(), y.numpy(), 2), TrainResult(0.0, 12, 1))
        terms = {k: v for k, v in reply.arrays.items() if k.startswith("curv.")}
        arrays = encode_record(model.state_dict())
        for k, v in terms.items():
            arrays[k] = Array(np.ascontiguousarray(v))
        sent.setdefault(r, {})[node] = {
            "F": {n: torch.from_numpy(terms[f"curv.F.{n}"]) for n, _ in model.named_parameters()},
            "theta": {n: p.detach().clone() for n, p in model.named_parameters()},
        }
        return _reply(msg, arrays, len(y)), step

    def direct(theta: dict[str, torch.Tensor], members: list[tuple[int, int]], me: int) -> float:
        """λ Σ_{(r, j) in the sums, j ≠ me} Σ F_j (θ − θ_j)²."""
        total = torch.zeros((), dtype=torch.float64)
        for r, j in members:
            if j == me:
                continue
            f, t = sent[r][j]["F"], sent[r][j]["theta"]
            total = total + sum((f[n] * (theta[n] - t[n]) ** 2).sum() for n in theta)
        return lam * float(total)

    def check(step: CurvatureStep, node: int, members: list[tuple[int, int]]) -> None:
        model = nn.Linear(3, 2).to(torch.float64)
        theta = {n: p for n, p in model.named_parameters()}
        expected = direct({n: p.detach() for n, p in theta.items()}, members, node)
        got = step.penalty(theta)
        got_value = 0.0 if got is None else float(got.detach())
        assert abs(got_value - expected) <= 1e-10 * max(1.0, abs(expected)), (
            node,
            got_value,
            expected,
        )
        assert got_value >= 0.0

    arrays = ArrayRecord(base.state_dict())
    grid = _Grid(nodes[:4])
    # Round 1: nodes 1-4 sampled.
    msgs = {
        m.metadata.dst_node_id: m for m in strategy.configure_train(1, arrays, ConfigRecord(), grid)
    }
    assert sorted(msgs) == [1, 2, 3, 4]
    r1 = {n: client_round(msgs[n], n, 1)[0] for n in (1, 2, 3)}  # node 4 drops out
    arrays, _ = strategy.aggregate_train(1, [r1[1], r1[2]])  # node 3 straggles
    assert strategy.members == ["1", "2"]
    # Round 2: everyone (node 5 was never sampled before).
    grid.nodes = nodes
    msgs = {
        m.metadata.dst_node_id: m for m in strategy.configure_train(2, arrays, ConfigRecord(), grid)
    }
    r2 = {}
    for n in nodes:
        reply, step = client_round(msgs[n], n, 2)
        check(step, n, [(1, 1), (1, 2)])
        r2[n] = reply
    # Node 3's round-2 reply is the only one that arrives.
    arrays, _ = strategy.aggregate_train(2, [r2[3]])
    assert strategy.members == ["3"] and strategy.sums_round == 2
    # Round 3: an all-failed round keeps round 2's sums.
    msgs = {
        m.metadata.dst_node_id: m for m in strategy.configure_train(3, arrays, ConfigRecord(), grid)
    }
    strategy.aggregate_train(3, [])
    assert strategy.sums_round == 2
    msgs = {
        m.metadata.dst_node_id: m for m in strategy.configure_train(4, arrays, ConfigRecord(), grid)
    }
    for n in nodes:
        _, step = client_round(msgs[n], n, 4)
        check(step, n, [(2, 3)])
        # Terms older than the sums' round are forgotten; round 2's and 4's are kept.
        kept = sorted(
            int(k.split(".")[-1]) for k in states[n].array_records if k.startswith("curv-own.")
        )
        assert kept == [2, 4], (n, kept)


def test_a_member_without_its_terms_fails_rather_than_guessing() -> None:
    from flwr.app import RecordDict

    from fedsim import wire
    from fedsim.algorithms.fedcurv.client import own_terms_in_sums

    config = {wire.CURV_SUMS_ROUND: 3, wire.CURV_MEMBERS: ["7"]}
    assert len(own_terms_in_sums(RecordDict(), config, node_id=8)) == 0
    with pytest.raises(ValueError, match="round 3"):
        own_terms_in_sums(RecordDict(), config, node_id=7)


@pytest.mark.slow
def test_partial_participation_with_a_large_lambda_stays_finite(tmp_path: Path) -> None:
    """λ = 8, fraction_train 0.3, seed 1 on the shipped scenario (went NaN at round 7)."""
    overrides = ["seed=1", "strategy.params.curv_lambda=8", "strategy.params.fraction_train=0.3"]
    result = _shipped_fedcurv_run(tmp_path, overrides)
    losses = [r["eval_loss"] for r in result.metrics]
    assert all(np.isfinite(losses))
    assert result.summary["final_eval_accuracy"] >= 0.5
