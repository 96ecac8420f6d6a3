"""fedsim's SGD takes torch.optim.SGD's steps bit for bit."""

from __future__ import annotations

import pytest
import torch

from fedsim.client.optimizers import SGD


@pytest.mark.parametrize(
    ("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.5, 1e-3)]
)
def test_same_parameters_as_torch_sgd(momentum: float, weight_decay: float) -> None:
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_ours = SGD(ours, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    opt_theirs = torch.optim.SGD(theirs, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step in range(6):
        opt_ours.zero_grad()
        opt_theirs.zero_grad()
        grads = [torch.randn_like(p) for p in ours]
        for params in (ours, theirs):
            params[0].grad = grads[0].clone()
            # The bias has no gradient every third step: both must skip it (and keep
            # its momentum buffer as it was).
            params[1].grad = None if step % 3 == 2 else grads[1].clone()
        opt_ours.step()
        opt_theirs.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a, b)


def test_zero_grad_to_zeros() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    SGD([p], lr=0.1).zero_grad(set_to_none=False)
    assert p.grad is not None and torch.equal(p.grad, torch.zeros(2))
