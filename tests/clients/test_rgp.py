"""RGP (client.dp.mode: rgp) against independent references: autograd through an explicit
``W = L R + W̃`` reparametrization, a per-example loop, and Opacus's accountant."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from flwr.app import RecordDict
from opacus.accountants import RDPAccountant
from torch import nn

import fedsim
from fedsim.client.rgp import HISTORY, RGPGradient, clipped_carrier_sums
from fedsim.config.client import DPConfig
from fedsim.data.federated import federated_data
from fedsim.kernels.capture import backprop_per_example
from fedsim.kernels.rgp import carrier_grads, carriers, layer_inputs, reconstruct


def _model(norm: bool = False) -> nn.Sequential:
    """Conv2d (2 -> 3, 3x3, padding 1) on 4x4 images, then a Linear 48 -> 5, in float64."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(2, 3, 3, padding=1)]
    if norm:
        layers.append(nn.GroupNorm(1, 3))  # not reparametrized: fast clipping's kernel
    layers += [nn.Tanh(), nn.Flatten(), nn.Linear(48, 5)]
    return nn.Sequential(*layers).double()


def _batch(b: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 2, 4, 4, generator=g, dtype=torch.float64), torch.arange(b) % 5


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _bases(model: nn.Sequential, rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    out = {}
    for path in ("0", str(len(model) - 1)):
        w = model.get_submodule(path).weight
        shape = (w.shape[0], w[0].numel())
        out[path] = carriers(None, shape, rank, 1, g, torch.float64)
    return out


def _reparam_losses(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, factors: dict[str, Any]
) -> torch.Tensor:
    """The model's per-example losses with each weight written as ``L R + (W - L R)``."""
    h = x
    for path, layer in model.named_children():
        if path in factors:
            left, right = factors[path]
            w = layer.weight
            w_tilde = (w.reshape(w.shape[0], -1) - left @ right).detach()
            weight = (left @ right + w_tilde).reshape(w.shape)
            if isinstance(layer, nn.Conv2d):
                h = F.conv2d(h, weight, factors["bias." + path], padding=1)
            else:
                h = F.linear(h, weight, factors["bias." + path])
        else:
            h = layer(h)
    return ce(h, y)


def _autograd_per_example(
    model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, bases: dict[str, Any]
) -> list[dict[str, torch.Tensor]]:
    """Example by example, autograd's gradients of L, R, the biases (and GroupNorm)."""
    out = []
    for i in range(len(y)):
        leaves: dict[str, torch.Tensor] = {}
        factors: dict[str, Any] = {}
        for path, (left, right) in bases.items():
            leaves["L" + path] = left.clone().requires_grad_(True)
            leaves["R" + path] = right.clone().requires_grad_(True)
            leaves["b" + path] = (
                model.get_submodule(path).bias.detach().clone().requires_grad_(True)
            )
            factors[path] = (leaves["L" + path], leaves["R" + path])
            factors["bias." + path] = leaves["b" + path]
        others = {n: p for n, p in model.named_parameters() if n.split(".")[0] not in bases}
        loss = _reparam_losses(model, x[i : i + 1], y[i : i + 1], factors).sum()
        names = [*leaves, *others]
        grads = torch.autograd.grad(loss, [*leaves.values(), *others.values()])
        out.append(dict(zip(names, grads, strict=True)))
    return out


def test_per_example_carrier_gradients_equal_autograds_of_l_and_r() -> None:
    """From the captured inputs and output gradients, ∂L_i and ∂R_i of a Conv2d and a
    Linear equal autograd's per-example gradients of L and R through W = L R + W̃."""
    model, (x, y) = _model(), _batch()
    bases = _bases(model, rank=2)
    layers, records, _ = backprop_per_example(model, ce, x, y)
    by_loop = _autograd_per_example(model, x, y, bases)
    for path, module, _ in layers:
        left, right = bases[path]
        gl, gr = carrier_grads(*layer_inputs(module, records[path]), left, right)
        for i, ref in enumerate(by_loop):
            torch.testing.assert_close(gl[i], ref["L" + path], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(gr[i], ref["R" + path], rtol=1e-10, atol=1e-12)


def test_clipped_sum_equals_a_per_example_loop() -> None:
    """Each example's vector (carriers, biases, GroupNorm) is clipped jointly to C."""
    model, (x, y) = _model(norm=True), _batch()
    bases = {"0": _bases(model, 2)["0"], "4": _bases(model, 2)["4"]}
    c = 0.05
    sums = clipped_carrier_sums(model, ce, x, y, c, bases)
    expected: dict[str, torch.Tensor] = {}
    for ref in _autograd_per_example(model, x, y, bases):
        norm = torch.sqrt(sum(g.pow(2).sum() for g in ref.values()))  # type: ignore[arg-type]
        factor = min(1.0, c / (float(norm) + 1e-6))
        assert factor < 1.0  # the bound really clips
        for k, g in ref.items():
            expected[k] = expected.get(k, torch.zeros_like(g)) + factor * g
    for path in bases:
        torch.testing.assert_close(sums.left[path], expected["L" + path], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(sums.right[path], expected["R" + path], rtol=1e-9, atol=1e-12)
        bias = model.get_submodule(path).bias.grad
        torch.testing.assert_close(bias, expected["b" + path], rtol=1e-9, atol=1e-12)
    for name in ("1.weight", "1.bias"):
        torch.testing.assert_close(
            model.get_parameter(name).grad, expected[name], rtol=1e-9, atol=1e-12
        )


def _full_gradient(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    model.zero_grad()
    ce(model(x), y).sum().backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}  # type: ignore[union-attr]
    model.zero_grad()
    return out


def test_reconstruction_is_the_projected_gradient_at_any_rank() -> None:
    """No clipping: ∂L R + L ∂R − L Lᵀ ∂L R = P_L G + G P_R − P_L G P_R (G by autograd)."""
    model, (x, y) = _model(), _batch()
    bases = _bases(model, rank=2)
    full = _full_gradient(model, x, y)
    sums = clipped_carrier_sums(model, ce, x, y, 1e12, bases)
    for path, (left, right) in bases.items():
        g = full[f"{path}.weight"].reshape(left.shape[0], -1)
        pl, pr = left @ left.T, right.T @ right
        projected = pl @ g + g @ pr - pl @ g @ pr
        rebuilt = reconstruct(sums.left[path], sums.right[path], left, right)
        torch.testing.assert_close(rebuilt, projected, rtol=0, atol=1e-10)


def test_full_rank_without_noise_or_clipping_is_the_full_gradient() -> None:
    """At r = min(p, d) the whole RGP step (carriers from history, noise 0, C huge) puts
    autograd's gradient in every .grad (float64, 1e-10), and keeps its history."""
    model, (x, y) = _model(), _batch()
    full = _full_gradient(model, x, y)
    state = RecordDict()
    cfg = DPConfig(mode="rgp", noise_multiplier=0.0, max_grad_norm=1e12, rank=64)
    gradient = RGPGradient(cfg, model, 1.0, torch.Generator().manual_seed(0), state)
    for _ in range(2):  # the second step's carriers come from the first step's update
        gradient(model, ce, x, y)
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.grad, full[name], rtol=0, atol=1e-10)
    assert set(state[HISTORY].keys()) == {"0", "3"}


def test_noise_goes_on_the_carriers_only() -> None:
    """With σ > 0 and clipping, a low-rank layer's update stays in the carriers' span:
    (I − P_L) ΔW (I − P_R) = 0, whatever the noise."""
    model, (x, y) = _model(), _batch()
    cfg = DPConfig(mode="rgp", noise_multiplier=1.0, max_grad_norm=0.1, rank=1)
    gradient = RGPGradient(cfg, model, 6.0, torch.Generator().manual_seed(0), RecordDict())
    bases = gradient.bases()
    gradient.generator.manual_seed(0)
    gradient(model, ce, x, y)
    left, right = bases["3"]
    w = model.get_parameter("3.weight").grad
    assert w is not None
    outside = (
        (torch.eye(5, dtype=w.dtype) - left @ left.T)
        @ w
        @ (torch.eye(48, dtype=w.dtype) - right.T @ right)
    )
    assert float(outside.abs().max()) < 1e-10
    assert float(w.abs().max()) > 0


def test_rgp_is_accounted_as_opacus_does(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Every client trains every round: client k runs ceil(n_k / B) Poisson steps at rate
    B / n_k per round; the run's ε is the largest over k, as Opacus computes it."""
    tiny["client"]["dp"] = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "mode": "rgp", "rank": 4}
    scenario = fedsim.load_scenario(tiny)
    result = fedsim.run(scenario, tmp_path / "a")
    dp, b = scenario.client.dp, scenario.client.batch_size
    assert dp is not None
    by_hand = []
    for part in federated_data(scenario.data, scenario.seed).parts:
        n = len(part)
        acc = RDPAccountant()
        acc.history = [(dp.noise_multiplier, b / n, math.ceil(n / b) * scenario.rounds)]
        by_hand.append(acc.get_epsilon(dp.delta))
    assert result.summary["epsilon"] == pytest.approx(max(by_hand), abs=1e-6)


def test_models_without_linear_or_conv_layers_are_refused(tiny: dict[str, Any]) -> None:
    from fedsim.client.dp import check_model

    with pytest.raises(ValueError, match="'rgp' found no Linear or Conv layer"):
        check_model(DPConfig(mode="rgp"), nn.Sequential(nn.Flatten(), nn.LayerNorm(4)))


def test_rgp_keys_under_another_mode_are_refused(tiny: dict[str, Any]) -> None:
    tiny["client"]["dp"] = {"mode": "fast", "rank": 4}
    with pytest.raises(fedsim.ScenarioError, match=r"client\.dp: .*rank: read by mode 'rgp' only"):
        fedsim.load_scenario(tiny)


@pytest.mark.parametrize(
    ("strategy", "loss", "model", "sampling"),
    [
        ({"name": "fedprox", "params": {"proximal_mu": 0.1}}, "label_smoothing", "cnn", "poisson"),
        ({"name": "scaffold", "params": {"option": "II"}}, "logit_adjusted", "mlp", "fixed"),
    ],
)
def test_rgp_trains_under_every_kind_of_step_and_loss(
    tiny: dict[str, Any],
    tmp_path: Path,
    strategy: dict[str, Any],
    loss: str,
    model: str,
    sampling: str,
) -> None:
    """RGP is the gradient of the one loop: a penalty (FedProx), a gradient correction
    (SCAFFOLD), the losses, a CNN's Conv2d layers and fixed-size batches all train to a
    finite model with ε spent (steps DP refuses, e.g. FedCurv's, are refused for rgp too)."""
    tiny["rounds"] = 1
    tiny["strategy"] = strategy
    # logit_adjusted's prior from public counts: DP refuses one from the private labels.
    tiny["client"]["loss"] = {
        "name": loss,
        **({"prior": "global"} if loss == "logit_adjusted" else {}),
    }
    tiny["client"]["dp"] = {"mode": "rgp", "rank": 2, "sampling": sampling}
    tiny["model"] = {"name": model} if model == "cnn" else tiny["model"]
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert result.summary["epsilon"] is not None and result.summary["epsilon"] > 0
    assert result.metrics[-1]["eval_loss"] is not None
    assert math.isfinite(result.metrics[-1]["eval_loss"])
