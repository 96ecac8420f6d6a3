"""DP-SGD in the client: every mode computes the same clipped sum; ε matches Opacus."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from opacus.accountants import RDPAccountant

import fedsim
from fedsim.client.dp import CLIPPERS, PrivateGradient
from fedsim.config.schema import DPConfig
from fedsim.data.federated import federated_data
from fedsim.kernels.oracle import clipped_sum_of, per_example_grads_loop
from fedsim.models import build_model
from tests.conftest import same_final_arrays, strip_wall_clock

ROOT = Path(__file__).parents[2]


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@pytest.mark.parametrize("mode", sorted(CLIPPERS.names()))
def test_every_mode_gives_the_same_clipped_sum(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4, 8], "hidden": 16}, (1, 8, 8), 10)
    x, y = torch.randn(12, 1, 8, 8) * 3, torch.randint(0, 10, (12,))
    ref = per_example_grads_loop(model, ce, x, y)
    expected = clipped_sum_of(ref, 0.5)
    clip = CLIPPERS.get(mode)(model)
    losses = clip(model, ce, x, y, 0.5)
    assert losses.shape == (12,)
    torch.testing.assert_close(losses, ce(model(x), y).detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6)


def test_noise_has_the_documented_scale() -> None:
    """Zero data gradient: the update is N(0, (σC)²)/B per coordinate."""
    model = torch.nn.Linear(200, 50)
    cfg = DPConfig(noise_multiplier=2.0, max_grad_norm=0.5)
    grad = PrivateGradient(
        cfg, model, expected_batch=4.0, generator=torch.Generator().manual_seed(0)
    )
    grad(model, ce, torch.zeros(0, 200), torch.zeros(0, dtype=torch.long))  # empty Poisson draw
    noise = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4.0, rel=0.03)


def test_noise_is_one_flat_draw_of_the_client_generator_sliced_in_parameter_order() -> None:
    """What every device adds: ``σC·randn(P)`` from the client's generator, split by
    parameter order, plus the clipped sum, over the expected batch (by hand below)."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    cfg = DPConfig(noise_multiplier=1.5, max_grad_norm=0.3)
    expected = clipped_sum_of(per_example_grads_loop(model, ce, x, y), 0.3)
    PrivateGradient(cfg, model, 2.5, torch.Generator().manual_seed(11))(model, ce, x, y)
    draw = torch.randn(3 * 4 + 3 + 2 * 3 + 2, generator=torch.Generator().manual_seed(11))
    start = 0
    for name, p in model.named_parameters():
        noise = draw[start : start + p.numel()].view(p.shape)
        start += p.numel()
        by_hand = (expected[name] + 1.5 * 0.3 * noise) / 2.5
        torch.testing.assert_close(p.grad, by_hand, rtol=1e-5, atol=1e-7, msg=name)


def test_large_bound_without_noise_is_plain_sgd() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    ce(model(x), y).mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=1e6)
    PrivateGradient(cfg, model, 8.0, torch.Generator())(model, ce, x, y)
    for p, g in zip(model.parameters(), plain, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_epsilon_of_the_shipped_scenario_equals_opacus_by_hand(tmp_path: Path) -> None:
    """Every client trains every round (fraction_train 1, no faults): client k runs
    ceil(n_k / B) Poisson steps at rate B / n_k per round; ε is the largest over k."""
    scenario = fedsim.load_scenario(ROOT / "scenarios" / "dp_digits.yaml", ["output.plots=false"])
    result = fedsim.run(scenario, tmp_path)
    dp, b = scenario.client.dp, scenario.client.batch_size
    assert dp is not None and scenario.strategy.params["fraction_train"] == 1.0
    data = federated_data(scenario.data, scenario.seed)
    by_hand = []
    for part in data.parts:
        n = len(part)
        acc = RDPAccountant()
        acc.history = [(dp.noise_multiplier, b / n, math.ceil(n / b) * scenario.rounds)]
        by_hand.append(acc.get_epsilon(dp.delta))
    assert result.summary["epsilon"] == pytest.approx(max(by_hand), abs=1e-6)
    per_round = [r["epsilon"] for r in result.metrics if r["epsilon"] is not None]
    assert per_round == sorted(per_round)  # privacy spent only grows
    assert result.summary["final_eval_accuracy"] > 0.5  # learns despite the noise


def test_dp_runs_are_deterministic(tiny: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    tiny["client"]["dp"] = {"noise_multiplier": 1.0, "max_grad_norm": 1.0}
    a = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    b = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "b")
    assert strip_wall_clock(a.metrics) == strip_wall_clock(b.metrics)
    assert same_final_arrays(a.run_dir, b.run_dir)


def test_fixed_size_batches_are_accounted_by_dp_accounting(
    tiny: dict,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """sampling: fixed is sampling without replacement: dp-accounting's RDP bound,
    replace-one relation, clipped-sum sensitivity 2C (noise multiplier σ/2), composed
    over every client's steps; the run's ε is the largest over clients."""
    from dp_accounting import dp_event
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    from fedsim.client.dp import ALPHAS

    tiny["rounds"] = 2
    tiny["client"]["dp"] = {"noise_multiplier": 1.3, "max_grad_norm": 1.0, "sampling": "fixed"}
    scenario = fedsim.load_scenario(tiny)
    result = fedsim.run(scenario, tmp_path)
    dp, b = scenario.client.dp, scenario.client.batch_size
    assert dp is not None
    by_library = []
    for part in federated_data(scenario.data, scenario.seed).parts:
        n = len(part)
        accountant = RdpAccountant(list(ALPHAS), NeighboringRelation.REPLACE_ONE)
        step = dp_event.SampledWithoutReplacementDpEvent(
            n, min(b, n), dp_event.GaussianDpEvent(dp.noise_multiplier / 2)
        )
        accountant.compose(dp_event.SelfComposedDpEvent(step, math.ceil(n / b) * 2))
        by_library.append(accountant.get_epsilon(dp.delta))
    assert result.summary["epsilon"] == pytest.approx(max(by_library), rel=1e-9)


def test_fixed_size_dp_batches_are_independent_uniform_subsets() -> None:
    """Each batch: exactly B distinct examples, drawn afresh (not an epoch's partition)."""
    from fedsim.client.loop import batches
    from fedsim.config.schema import ClientConfig

    cfg = ClientConfig(batch_size=5, dp=DPConfig(sampling="fixed"))
    drawn = list(batches(20, cfg, 400, torch.Generator().manual_seed(0)))
    assert all(len(set(idx.tolist())) == 5 for idx in drawn)
    # In a reshuffled epoch the 4 batches of 5 cover all 20 examples exactly once.
    epochs = [torch.cat(drawn[i : i + 4]) for i in range(0, 400, 4)]
    assert any(len(set(e.tolist())) < 20 for e in epochs)
    counts = torch.bincount(torch.cat(drawn), minlength=20).float()
    assert counts.min() > 0.7 * counts.mean()  # every example about equally often


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_name", ["cnn", "lstm", "structured-lstm"])
def test_a_fast_dp_step_on_cuda_never_waits_for_the_host(model_name: str) -> None:
    """Clipping (the LSTM's whole recurrence in cuDNN; a structurally dropped input where
    the rule says dense, not gathered) and noise (one pinned copy) of a DP step on CUDA:
    torch's sync debug mode turns any host synchronisation into an error naming the op.
    The gradient is checked against the oracle after the step."""
    from fedsim.kernels import LSTM, StructuredDropoutLSTM

    torch.manual_seed(3)
    if model_name == "cnn":
        model = build_model("cnn", {"channels": [4, 8], "hidden": 16}, (1, 8, 8), 10)
        x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    else:
        masks = (torch.rand(2, 9, 12) >= 0.5).cuda()  # fixed, so the oracle sees the same

        class Clf(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                structured = model_name == "structured-lstm"
                self.lstm = StructuredDropoutLSTM(6, 12, 2, 0.5) if structured else LSTM(6, 12, 2)
                self.head = torch.nn.Linear(12, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                given = masks if isinstance(self.lstm, StructuredDropoutLSTM) else None
                return self.head(self.lstm(x, masks=given)[0][:, -1])

        model = Clf()
        x, y = torch.randn(16, 9, 6), torch.randint(0, 10, (16,))
    model, x, y = model.cuda(), x.cuda(), y.cuda()
    expected = clipped_sum_of(per_example_grads_loop(model, ce, x, y), 0.5)
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=0.5)
    grad = PrivateGradient(cfg, model, 16.0, torch.Generator().manual_seed(0))
    grad(model, ce, x, y)  # warm-up: cuDNN plans, the caching allocators
    noisy = PrivateGradient(
        cfg.model_copy(update={"noise_multiplier": 1.0}), model, 16.0, torch.Generator()
    )
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        noisy(model, ce, x, y)
        grad(model, ce, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name] / 16.0, rtol=1e-4, atol=1e-6)
