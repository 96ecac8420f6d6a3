"""client.loss: each loss against its closed form on hand-made logits, and in training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.client.losses import (
    build_loss,
    cross_entropy,
    entropy_regularised,
    label_smoothing,
    logit_adjusted,
)
from fedsim.config.schema import ClientConfig
from fedsim.label_prior import log_prior

# Two examples, three classes; targets 0 and 2.
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
TARGETS = torch.tensor([0, 2])


def _log_softmax(row: list[float]) -> list[float]:
    """Hand-computed log-softmax: z_c - log(sum exp z)."""
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def _rows() -> list[tuple[list[float], int]]:
    return [(r, int(t)) for r, t in zip(LOGITS.tolist(), TARGETS.tolist(), strict=True)]


def test_cross_entropy_closed_form() -> None:
    expected = [-_log_softmax(r)[t] for r, t in _rows()]
    assert torch.allclose(
        cross_entropy(LOGITS, TARGETS), torch.tensor(expected).double(), atol=1e-6
    )


def test_logit_adjusted_closed_form_and_tau_zero() -> None:
    """-log softmax(z + tau log pi)_y with pi = (0.5, 0.3, 0.2), tau = 1.5."""
    prior = [0.5, 0.3, 0.2]
    tau = 1.5
    expected = [
        -_log_softmax([z + tau * math.log(p) for z, p in zip(r, prior, strict=True)])[t]
        for r, t in _rows()
    ]
    counts = np.array([50, 30, 20])
    got = logit_adjusted(log_prior(counts, 3), tau)(LOGITS, TARGETS)
    assert torch.allclose(got, torch.tensor(expected).double(), atol=1e-6)
    # tau = 0 is the plain cross-entropy exactly (the same function, so the fast kernel).
    assert logit_adjusted(log_prior(counts, 3), 0.0) is cross_entropy


def test_label_smoothing_closed_form() -> None:
    """(1 - eps) * CE + eps * mean_c(-log p_c)."""
    eps = 0.3
    expected = [
        (1 - eps) * -_log_softmax(r)[t] + eps * sum(-v for v in _log_softmax(r)) / 3
        for r, t in _rows()
    ]
    got = label_smoothing(eps)(LOGITS, TARGETS)
    assert torch.allclose(got, torch.tensor(expected).double(), atol=1e-6)


def test_entropy_regularised_closed_form() -> None:
    """CE - beta * H(p), H(p) = -sum p log p."""
    beta = 0.7
    expected = []
    for r, t in _rows():
        log_p = _log_softmax(r)
        entropy = -sum(math.exp(v) * v for v in log_p)
        expected.append(-log_p[t] - beta * entropy)
    got = entropy_regularised(beta)(LOGITS, TARGETS)
    assert torch.allclose(got, torch.tensor(expected).double(), atol=1e-6)


def test_label_smoothing_gradient_approaches_uniform_target_gradient() -> None:
    """d/dz of LS is p - ((1-eps) onehot + eps/C): at eps -> 1 it is p - 1/C."""
    z = LOGITS.clone().requires_grad_(True)
    label_smoothing(1.0 - 1e-7)(z, TARGETS).sum().backward()
    assert z.grad is not None
    uniform = torch.softmax(LOGITS, dim=1) - 1.0 / 3
    assert torch.allclose(z.grad, uniform, atol=1e-6)
    far = torch.softmax(LOGITS, dim=1) - torch.nn.functional.one_hot(TARGETS, 3)
    assert not torch.allclose(z.grad, far, atol=1e-2)


def test_sequence_targets_are_a_per_example_mean() -> None:
    """(B, C, T) logits: each example's loss is the mean of its tokens' losses."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 3, 4), torch.randint(0, 3, (2, 4))
    prior = log_prior(np.array([5, 3, 2]), 3)
    for fn in (label_smoothing(0.2), entropy_regularised(0.3), logit_adjusted(prior, 1.0)):
        got = fn(logits, targets)
        per_token = torch.stack(
            [fn(logits[:, :, t], targets[:, t]) for t in range(4)], dim=1
        )  # (B, T) from the 2-D form
        assert torch.allclose(got, per_token.mean(1), atol=1e-6)


def test_build_loss_own_and_global_prior() -> None:
    """prior own counts the node's labels; global uses the counts its data carries."""
    y = np.array([0, 0, 0, 1])  # own prior (0.75, 0.25, 0 -> MIN_PRIOR)
    own = build_loss(ClientConfig(loss={"name": "logit_adjusted", "tau": 1.0}).loss, y, 3)
    expected = logit_adjusted(log_prior(np.array([3, 1, 0]), 3), 1.0)(LOGITS, TARGETS)
    assert torch.allclose(own(LOGITS, TARGETS), expected)
    cfg = ClientConfig(loss={"name": "logit_adjusted", "prior": "global"}).loss
    glob = build_loss(cfg, y, 3, np.array([1, 1, 1]))  # uniform prior: a constant shift
    assert torch.allclose(glob(LOGITS, TARGETS), cross_entropy(LOGITS, TARGETS), atol=1e-6)
    with pytest.raises(ValueError, match=r"client\.loss\.prior"):
        build_loss(cfg, y, 3, None)
    assert build_loss(ClientConfig().loss, y, 3) is cross_entropy


@pytest.mark.parametrize(
    "loss",
    [
        {"name": "logit_adjusted", "tau": 1.0},
        {"name": "label_smoothing", "epsilon": 0.2},
        {"name": "entropy_regularised", "beta": 0.5},
    ],
)
def test_every_loss_clips_per_example_under_dp(loss: dict[str, object]) -> None:
    """DP-SGD's fast clipped sum with each loss equals the per-example loop (the oracle)."""
    from fedsim.client.dp import PrivateGradient
    from fedsim.config.schema import DPConfig
    from fedsim.models import build_model

    torch.manual_seed(0)
    x, y = torch.randn(12, 6), torch.randint(0, 4, (12,))
    fn = build_loss(ClientConfig(loss=loss).loss, y.numpy(), 4)
    grads = []
    for mode in ("fast", "naive"):
        model = build_model("mlp", {"hidden": [5]}, (6,), 4)
        torch.manual_seed(1)
        model.load_state_dict(build_model("mlp", {"hidden": [5]}, (6,), 4).state_dict())
        dp = DPConfig(noise_multiplier=0.0, max_grad_norm=0.1, mode=mode)  # clipping bites
        PrivateGradient(dp, model, 12.0, torch.Generator())(model, fn, x, y)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))  # type: ignore[union-attr]
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_squared_error_closed_form() -> None:
    """(f(x) - y)² / 2 for one output per example."""
    from fedsim.client.losses import squared_error

    out = torch.tensor([[1.5], [-0.5]], dtype=torch.float64)
    y = torch.tensor([0.5, 1.0])
    assert torch.allclose(squared_error(out, y), torch.tensor([0.5, 1.125]).double())


def test_every_loss_section_has_a_registered_loss() -> None:
    from typing import get_args

    from fedsim.client.losses import LOSSES
    from fedsim.config.schema import LossConfig

    sections = get_args(get_args(LossConfig)[0])
    assert {cls.model_fields["name"].default for cls in sections} == set(LOSSES.names())
