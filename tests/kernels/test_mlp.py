"""The analytic MLP gradient equals autograd's, and applies only to plain MLPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.algorithms.fedaws.client import PositiveOnlyStep
from fedsim.client.loop import default_gradient, plain_gradient, train_local
from fedsim.client.steps import LocalStep, ProximalStep, StepInputs
from fedsim.config.schema import ClientConfig
from fedsim.kernels import mlp_cross_entropy_grad, mlp_linears
from fedsim.models import build_model


def _autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    losses = F.cross_entropy(model(x), y, reduction="none")
    losses.mean().backward()
    return losses.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("hidden", [[], [16], [32, 8]])
def test_same_losses_and_gradients_as_autograd(hidden: list[int]) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": hidden}, (1, 8, 8), 10)
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    want_losses, want = _autograd(model, x, y)
    model.zero_grad(set_to_none=True)
    linears = mlp_linears(model)
    assert linears is not None and len(linears) == len(hidden) + 1
    losses = mlp_cross_entropy_grad(linears, x, y)
    assert not losses.requires_grad
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-6)
    got = {n: p.grad for n, p in model.named_parameters()}
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


def test_no_bias_and_frozen_parameters() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3))
    model[2].bias.requires_grad_(False)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    _, want = _autograd(model, x, y)
    model.zero_grad(set_to_none=True)
    mlp_cross_entropy_grad(mlp_linears(model) or [], x, y)
    assert model[2].bias.grad is None
    torch.testing.assert_close(model[0].weight.grad, want["0.weight"])
    torch.testing.assert_close(model[2].weight.grad, want["2.weight"])


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),  # no ReLU between
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()),  # ends in a ReLU
        nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)),
        nn.Sequential(nn.Sequential(nn.Linear(4, 2))),
        nn.Linear(4, 2),
    ],
    ids=["dropout", "tanh", "no-relu", "relu-last", "batchnorm", "late-flatten", "nested", "bare"],
)
def test_other_models_are_not_plain_mlps(model: nn.Module) -> None:
    assert mlp_linears(model) is None


def test_default_gradient_picks_the_kernel_only_for_the_plain_loss() -> None:
    mlp = build_model("mlp", {"hidden": [8]}, (4,), 3)
    plain = LocalStep(StepInputs({}, mlp))
    assert default_gradient(mlp, plain) is not plain_gradient
    cnn = build_model("cnn", {}, (1, 8, 8), 10)
    assert default_gradient(cnn, plain) is plain_gradient
    # A step with its own data loss (FedAwS's positive-label loss) keeps autograd.
    assert PositiveOnlyStep.data_loss is not LocalStep.data_loss
    assert default_gradient(mlp, object.__new__(PositiveOnlyStep)) is plain_gradient


@pytest.mark.parametrize("proximal", [False, True])
def test_training_with_the_kernel_matches_autograd(proximal: bool) -> None:
    """Whole local training (with FedProx's autograd penalty added on top)."""
    torch.manual_seed(2)
    start = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
    x = torch.randn(64, 1, 8, 8).numpy()
    y = torch.randint(0, 10, (64,)).numpy()
    cfg = ClientConfig(local_steps=6, batch_size=16)
    trained = []
    for use_kernel in (True, False):
        model = build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10)
        model.load_state_dict(start.state_dict())
        config = {"proximal-mu": 0.5} if proximal else {}
        step = (ProximalStep if proximal else LocalStep)(StepInputs(config, model))
        gradient = default_gradient(model, step) if use_kernel else plain_gradient
        assert (gradient is plain_gradient) != use_kernel
        result = train_local(model, x, y, cfg, step, torch.Generator().manual_seed(0), gradient)
        trained.append((result.mean_loss, model.state_dict()))
    (loss_k, weights_k), (loss_a, weights_a) = trained
    assert loss_k == pytest.approx(loss_a, rel=1e-5)
    for name in weights_a:
        torch.testing.assert_close(weights_k[name], weights_a[name], rtol=1e-5, atol=1e-6)
