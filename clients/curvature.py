"""FedCurv's client step: the EWC penalty from server sums, and the Fisher diagonal.

Shoham et al. (2019): client s minimises ``L_s(θ) + λ Σ_{j≠s} Σ F_j ⊙ (θ - θ_j)²``. With
the server's sums over all last-round participants ``U = Σ F_j``, ``V = Σ F_j ⊙ θ_j``,
``W = Σ F_j ⊙ θ_j²`` and the client's own last terms ``u, v, w`` (kept in its state),
the penalty is ``λ Σ [θ² ⊙ (U-u) - 2θ ⊙ (V-v) + (W-w)]``: O(|θ|) whatever the number of
clients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from fedsim import wire
from fedsim.clients.steps import STEPS, LocalStep, StepInputs
from fedsim.kernels.oracle import per_example_grads_func, per_example_grads_loop

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OWN_TERMS = "curv-own"  # context.state record: this client's last F, F⊙θ, F⊙θ²
FISHER_CHUNK = 64  # examples per vectorised per-example-gradient call


def empirical_fisher(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over examples of squared per-example gradients.

    ``torch.func`` computes the per-example gradients (batch-of-one backward passes for
    layers it cannot vectorise, such as fedsim's LSTM).
    """
    total: dict[str, torch.Tensor] = {}
    for start in range(0, len(y), FISHER_CHUNK):
        xb, yb = x[start : start + FISHER_CHUNK], y[start : start + FISHER_CHUNK]
        try:
            grads = per_example_grads_func(model, loss_fn, xb, yb)
        except (RuntimeError, NotImplementedError):
            grads = per_example_grads_loop(model, loss_fn, xb, yb)
        for name, g in grads.items():
            sq = g.pow(2).sum(0)
            total[name] = total[name] + sq if name in total else sq
    return {name: v / len(y) for name, v in total.items()}


def batch_fisher(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, batch: int
) -> dict[str, torch.Tensor]:
    """OpenFL's estimate, for comparison: the squared batch-mean gradient of the last batch."""
    model.zero_grad(set_to_none=True)
    loss_fn(model(x[-batch:]), y[-batch:]).mean().backward()
    out = {n: p.grad.detach().pow(2) for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def curvature_penalty(
    params: Mapping[str, torch.Tensor],
    others: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    lam: float,
) -> torch.Tensor:
    """``λ Σ [θ²⊙(U-u) - 2θ⊙(V-v) + (W-w)]`` given ``others[name] = (U-u, V-v, W-w)``."""
    total = sum(
        (p * p * a - 2 * p * b + c).sum()
        for name, p in params.items()
        for a, b, c in [others[name]]
    )
    return lam * total  # type: ignore[return-value]


class CurvatureStep(LocalStep):
    """The EWC-penalised step FedCurv asks for (config ``curv-lambda``)."""

    trigger_key = wire.CURV_LAMBDA

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        self.lam = float(inputs.config[wire.CURV_LAMBDA])
        self.estimator = str(inputs.config.get(wire.CURV_FISHER, "empirical"))
        self.batch = inputs.batch_size
        self.state = inputs.state
        own = inputs.state.array_records.get(OWN_TERMS, ArrayRecord())
        self.others: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, _ in inputs.global_model.named_parameters():
            key = f"{wire.CURV_PREFIX}U.{name}"
            if key not in inputs.extras:
                continue  # first round: nobody has sent curvature yet
            terms = []
            for kind, mine in (("U", "F"), ("V", "FT"), ("W", "FTT")):
                total = inputs.extras[f"{wire.CURV_PREFIX}{kind}.{name}"]
                own_key = f"{mine}.{name}"
                own_term = own[own_key].numpy() if own_key in own else 0.0
                terms.append(torch.from_numpy(np.asarray(total - own_term, dtype=np.float32)))
            self.others[name] = (terms[0], terms[1], terms[2])

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        """The curvature penalty (None when λ = 0 or before anyone sent curvature)."""
        if self.lam == 0.0 or not self.others:
            return None
        params = {n: p for n, p in model.named_parameters() if n in self.others}
        return curvature_penalty(params, self.others, self.lam)

    def finish(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        """Estimate F at the trained θ; keep (F, F⊙θ, F⊙θ²); reply with F and F⊙θ."""
        if self.estimator == "batch":
            fisher = batch_fisher(model, self.data_loss, x, y, self.batch)
        else:
            fisher = empirical_fisher(model, self.data_loss, x, y)
        extra: dict[str, np.ndarray] = {}
        own: dict[str, np.ndarray] = {}
        for name, p in model.named_parameters():
            f = fisher[name].detach().numpy()
            theta = p.detach().numpy()
            extra[f"{wire.CURV_PREFIX}F.{name}"] = f
            extra[f"{wire.CURV_PREFIX}FT.{name}"] = f * theta
            own[f"F.{name}"], own[f"FT.{name}"], own[f"FTT.{name}"] = (
                f,
                f * theta,
                f * theta * theta,
            )
        self.state[OWN_TERMS] = ArrayRecord({k: _array(v) for k, v in own.items()})
        return extra


def _array(v: np.ndarray) -> object:
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))


STEPS.add("curvature", CurvatureStep)
