"""Per-example client losses (``client.loss``), by registry name.

Each loss maps ``(logits, targets)`` to one loss per example, shape ``(B,)``: the
training loop takes the mean and DP-SGD clips per example, so every loss here works
with ``client.dp``. Logits are ``(B, C)`` with targets ``(B,)``, or ``(B, C, T)`` with
sequence targets ``(B, T)``; a sequence's loss is the mean of its per-token losses.

``logit_adjusted`` needs a label prior (Menon et al. 2021, "Long-tail learning via
logit adjustment", the loss form): ``own`` counts the labels of the node's own training
data (what it trains on, noisy labels included), ``global`` uses the counts over every
client's training labels that the node's data carries
(:attr:`fedsim.data.node_data.NodeData.global_label_counts`; a deployed device reads
them from its partition file). A class with no examples gets the prior
:data:`fedsim.label_prior.MIN_PRIOR`: its adjusted logit is very low but finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from fedsim.config.schema import (
    CrossEntropyLoss,
    EntropyRegularisedLoss,
    LabelSmoothingLoss,
    LogitAdjustedLoss,
    LossConfig,
    SquaredErrorLoss,
)
from fedsim.kernels.capture import LossFn as LossFn  # the one alias (kernels: a leaf)
from fedsim.label_prior import label_counts, log_prior, shift_logits
from fedsim.registry import Registry


class MissingPriorError(ValueError):
    """The global label prior was asked for but the node's data does not carry it."""


def per_example(loss: torch.Tensor) -> torch.Tensor:
    """Reduce per-target losses ``(B,)`` or ``(B, T)`` to per-example ``(B,)``."""
    return loss.flatten(1).mean(1) if loss.dim() > 1 else loss


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (the default loss, and the fast MLP kernel's)."""
    return per_example(F.cross_entropy(logits, targets, reduction="none"))


def logit_adjusted(prior_log: torch.Tensor, tau: float) -> LossFn:
    """``-log softmax(z + tau * log(prior))_y``; ``tau = 0`` is :func:`cross_entropy`."""
    if tau == 0.0:
        return cross_entropy
    shift = tau * prior_log  # (C,)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(shift_logits(logits, shift), targets)

    return loss


def label_smoothing(epsilon: float) -> LossFn:
    """``(1 - epsilon) * CE + epsilon * mean_c(-log p_c)``: soft uniform targets."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return per_example(
            F.cross_entropy(logits, targets, reduction="none", label_smoothing=epsilon)
        )

    return loss


def entropy_regularised(beta: float) -> LossFn:
    """``CE - beta * H(softmax(z))``: the confidence penalty (Pereyra et al. 2017)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        entropy = -(log_p.exp() * log_p).sum(dim=1)  # (B,) or (B, T)
        return per_example(F.nll_loss(log_p, targets, reduction="none") - beta * entropy)

    return loss


# A loss factory gets its section, the node's training labels, the class count and the
# global label counts (None where the node's data does not carry them).
LossFactory = Callable[[Any, NDArray[np.int64], int, "NDArray[np.int64] | None"], LossFn]
LOSSES: Registry[LossFactory] = Registry("client losses")


@LOSSES.register("cross_entropy", help="plain cross-entropy (default)")
def _cross_entropy(
    cfg: CrossEntropyLoss, y: NDArray[np.int64], c: int, g: NDArray[np.int64] | None
) -> LossFn:
    return cross_entropy


@LOSSES.register("logit_adjusted", help="cross-entropy of logits + tau*log(prior)")
def _logit_adjusted(
    cfg: LogitAdjustedLoss, y: NDArray[np.int64], c: int, g: NDArray[np.int64] | None
) -> LossFn:
    if cfg.prior == "own":
        counts = label_counts(y, c)
    elif g is None:
        raise MissingPriorError(
            "client.loss.prior: 'global' needs the global label counts, which this "
            "node's data file lacks (write it with `fedsim deploy split`), or use 'own'"
        )
    else:
        counts = g
    return logit_adjusted(log_prior(counts, c), cfg.tau)


@LOSSES.register("label_smoothing", help="cross-entropy against smoothed targets (epsilon)")
def _label_smoothing(
    cfg: LabelSmoothingLoss, y: NDArray[np.int64], c: int, g: NDArray[np.int64] | None
) -> LossFn:
    return cross_entropy if cfg.epsilon == 0.0 else label_smoothing(cfg.epsilon)


@LOSSES.register("entropy_regularised", help="cross-entropy minus beta * prediction entropy")
def _entropy_regularised(
    cfg: EntropyRegularisedLoss, y: NDArray[np.int64], c: int, g: NDArray[np.int64] | None
) -> LossFn:
    return cross_entropy if cfg.beta == 0.0 else entropy_regularised(cfg.beta)


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(f(x) - y)² / 2`` per example, for a one-output model ``(B, 1)`` or ``(B,)``."""
    return 0.5 * (outputs.reshape(len(targets), -1)[:, 0] - targets.to(outputs.dtype)) ** 2


@LOSSES.register("squared_error", help="half squared error (regression targets)")
def _squared_error(
    cfg: SquaredErrorLoss, y: NDArray[np.int64], c: int, g: NDArray[np.int64] | None
) -> LossFn:
    return squared_error


def build_loss(
    cfg: LossConfig,
    y: NDArray[np.int64],
    num_classes: int,
    global_counts: NDArray[np.int64] | None = None,
) -> LossFn:
    """Return the per-example loss ``client.loss`` names for a node with labels ``y``."""
    factory = LOSSES.get(cfg.name)
    return factory(cfg, y, num_classes, global_counts)
