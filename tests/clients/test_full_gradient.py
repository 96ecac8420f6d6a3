"""The one full-data-gradient pass (SCAFFOLD option I, AGC, FedCurv's Fisher) against
per-example gradients taken one backward pass at a time."""

from __future__ import annotations

import torch
from torch import nn

import fedsim
from fedsim.client.losses import cross_entropy
from fedsim.kernels.oracle import per_example_grads_loop


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    return model, torch.randn(11, 4), torch.randint(0, 3, (11,))


def test_weighted_sum_equals_per_example_reference_in_any_batch_order() -> None:
    model, x, y = _model_and_data()
    weights = torch.rand(11) + 0.5
    reference = per_example_grads_loop(model, cross_entropy, x, y)
    order = [torch.tensor([7, 2, 9]), torch.tensor([0, 1, 3, 4, 5]), torch.tensor([6, 8, 10])]
    result = fedsim.full_data_gradient(model, cross_entropy, x, y, 4, order=order, weights=weights)
    for name, g in reference.items():
        torch.testing.assert_close(result.sums[name], torch.tensordot(weights, g, dims=1))
    assert result.examples == 11
    assert result.loss_sum is not None
    assert abs(result.loss_sum - float(cross_entropy(model(x), y).sum())) < 1e-5
    assert all(p.grad is None for p in model.parameters())  # leaves no .grad behind


def test_mean_and_squared_sum_match_the_reference() -> None:
    model, x, y = _model_and_data()
    reference = per_example_grads_loop(model, cross_entropy, x, y)
    mean = fedsim.full_data_gradient(model, cross_entropy, x, y, 3).mean()
    fisher = fedsim.full_data_gradient(model, cross_entropy, x, y, 4, squared=True)
    assert fisher.loss_sum is None
    for name, g in reference.items():
        torch.testing.assert_close(mean[name], g.mean(0))
        torch.testing.assert_close(fisher.mean()[name], g.pow(2).mean(0))


def test_a_frozen_or_unreached_parameter_sums_to_zeros() -> None:
    model, x, y = _model_and_data()
    model[0].bias.requires_grad_(False)
    result = fedsim.full_data_gradient(model, cross_entropy, x, y, 5)
    assert torch.equal(result.sums["0.bias"], torch.zeros(5))
    assert result.sums["2.weight"].abs().sum() > 0
