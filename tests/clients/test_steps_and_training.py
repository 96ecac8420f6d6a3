"""Local steps and the single training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fedsim import wire
from fedsim.clients.steps import LocalStep, ProximalStep, StepInputs, select_step
from fedsim.clients.training import num_local_steps, train_local
from fedsim.scenario import ClientConfig


def test_step_selection() -> None:
    assert select_step({}) is LocalStep
    assert select_step({wire.PROXIMAL_MU: 0.1}) is ProximalStep  # Flower's FedProx key
    assert select_step({wire.LOCAL_STEP: "plain", wire.PROXIMAL_MU: 0.1}) is LocalStep
    with pytest.raises(ValueError, match="unknown local step"):
        select_step({wire.LOCAL_STEP: "nope"})


def test_proximal_penalty_value() -> None:
    """mu/2 * ||w - w0||^2 with w - w0 = 0.5 on all 4+1 parameters: 0.1/2 * 5 * 0.25."""
    model = nn.Linear(4, 1)
    step = ProximalStep(StepInputs({wire.PROXIMAL_MU: 0.1}, model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    penalty = step.penalty(dict(model.named_parameters()))
    assert penalty is not None
    assert float(penalty.detach()) == pytest.approx(0.05 * 5 * 0.25)


def test_number_of_steps() -> None:
    assert num_local_steps(100, ClientConfig(local_epochs=2, batch_size=32)) == 8
    assert num_local_steps(10, ClientConfig(batch_size=32)) == 1
    assert num_local_steps(100, ClientConfig(local_steps=5)) == 5


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_training_is_deterministic_given_the_generator() -> None:
    x, y = _data()
    cfg = ClientConfig(local_epochs=3, batch_size=8)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        res = train_local(
            model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(1)
        )
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert res.samples == 3 * 64 and res.steps == 24


def test_training_reduces_loss() -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    cfg = ClientConfig(local_epochs=1, batch_size=8, optimizer={"lr": 0.5})
    first = train_local(
        model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(1)
    )
    later = train_local(
        model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(2)
    )
    assert later.mean_loss < first.mean_loss
