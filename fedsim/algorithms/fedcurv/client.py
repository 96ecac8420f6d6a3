"""FedCurv's client step: the EWC penalty from server sums, and the Fisher diagonal.

Shoham et al. (2019): client s minimises ``L_s(θ) + λ Σ_{j≠s} Σ F_j ⊙ (θ - θ_j)²``. With
the server's sums over the clients whose replies it aggregated in one round
``U = Σ F_j``, ``V = Σ F_j ⊙ θ_j``, ``W = Σ F_j ⊙ θ_j²`` the penalty is
``λ Σ [θ² ⊙ (U-u) - 2θ ⊙ (V-v) + (W-w)]``: O(|θ|) whatever the number of clients.

``u, v, w`` are the client's own terms *if they are in the sums*, and zero otherwise.
Under client sampling, deadlines, dropouts and failures a client is often absent from
the round the sums come from (or trained in it, but its reply never arrived); subtracting
terms that are not in the sums gives the penalty negative weights and makes it unbounded
below. So the server says which round the sums cover (``curv-sums-round``) and whose
terms they hold (``curv-members``), and the client keeps its terms per round it trained
in (``context.state``), dropping those older than any round the server still uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fedsim import wire
from fedsim.algorithms.fedcurv import keys
from fedsim.client.full_gradient import full_data_gradient
from fedsim.client.losses import LossFn
from fedsim.client.steps import LocalStep, Reply, StepInputs, TrainResult, register_step
from fedsim.data.node_data import NodeData
from fedsim.training_device import model_device

# context.state records "curv-own.<round>": this client's F, F⊙θ, F⊙θ² of that round.
OWN_TERMS = "curv-own"
FISHER_CHUNK = 64  # examples per vectorised per-example-gradient call


def empirical_fisher(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: the mean over examples of squared per-example gradients."""
    return full_data_gradient(model, loss_fn, x, y, FISHER_CHUNK, squared=True).mean()


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


@register_step(keys.STEP)
class CurvatureStep(LocalStep):
    """The EWC-penalised step FedCurv asks for (config ``curv-lambda``)."""

    trigger_key = keys.CURV_LAMBDA
    reads = frozenset({keys.CURV_LAMBDA, keys.CURV_FISHER, keys.CURV_SUMS_ROUND, keys.CURV_MEMBERS})
    dp_refusal = keys.DP_REFUSAL
    # penalty reads only tensors (the sums less own terms); reply runs per client
    vectorisable = True

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        self.lam = float(inputs.config[keys.CURV_LAMBDA])
        self.estimator = str(inputs.config.get(keys.CURV_FISHER, "empirical"))
        self.batch = inputs.batch_size
        self.state = inputs.state
        self.round = int(inputs.config.get(wire.SERVER_ROUND, 0))
        own = own_terms_in_sums(inputs.state, inputs.config, inputs.node_id)
        # Differences in float64 (U - u cancels digits when one client dominates the
        # sums), the penalty in the parameters' dtype.
        self.others: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, param in inputs.global_model.named_parameters():
            key = f"{keys.CURV_PREFIX}U.{name}"
            if key not in inputs.extras:
                continue  # first round: nobody has sent curvature yet
            terms = []
            for kind, mine in (("U", "F"), ("V", "FT"), ("W", "FTT")):
                total = np.asarray(inputs.extras[f"{keys.CURV_PREFIX}{kind}.{name}"], np.float64)
                own_key = f"{mine}.{name}"
                own_term = own[own_key].numpy().astype(np.float64) if own_key in own else 0.0
                terms.append(
                    torch.from_numpy(np.asarray(total - own_term)).to(param.device, param.dtype)
                )
            self.others[name] = (terms[0], terms[1], terms[2])

    def penalty(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The curvature penalty (None when λ = 0 or before anyone sent curvature)."""
        if self.lam == 0.0 or not self.others:
            return None
        mine = {n: p for n, p in params.items() if n in self.others}
        return curvature_penalty(mine, self.others, self.lam)

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """Reply with the trained model plus F and F⊙θ at the trained θ; keep (F, F⊙θ, F⊙θ²)."""
        assert work is not None  # this step trains
        device = model_device(model)
        x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
        if self.estimator == "batch":
            fisher = batch_fisher(model, self.data_loss, x, y, self.batch)
        else:
            fisher = empirical_fisher(model, self.data_loss, x, y)
        extra: dict[str, np.ndarray] = {}
        own: dict[str, np.ndarray] = {}
        for name, p in model.named_parameters():
            f = fisher[name].detach().cpu().numpy()
            theta = p.detach().cpu().numpy()
            extra[f"{keys.CURV_PREFIX}F.{name}"] = f
            extra[f"{keys.CURV_PREFIX}FT.{name}"] = f * theta
            own[f"F.{name}"], own[f"FT.{name}"], own[f"FTT.{name}"] = (
                f,
                f * theta,
                f * theta * theta,
            )
        self.state[f"{OWN_TERMS}.{self.round}"] = ArrayRecord(
            {k: _array(v) for k, v in own.items()}
        )
        return Reply({**self.model_arrays(model), **extra}, work)


def own_terms_in_sums(state: RecordDict, config: Mapping[str, Any], node_id: int) -> ArrayRecord:
    """Return this client's terms that the received sums hold (empty if none).

    Forgets the terms of rounds before ``curv-sums-round``: the server's sums only move
    forward, so no later message can need them.

    Raises
    ------
    ValueError
        If the server counts this client in sums of a round whose terms it no longer
        has (its state was lost): guessing would give a wrong penalty.
    """
    if keys.CURV_SUMS_ROUND not in config:
        return ArrayRecord()
    sums_round = int(config[keys.CURV_SUMS_ROUND])
    prefix = f"{OWN_TERMS}."
    for key in [k for k in state.array_records if k.startswith(prefix)]:
        if int(key[len(prefix) :]) < sums_round:
            del state[key]
    members = {str(m) for m in config.get(keys.CURV_MEMBERS, [])}
    if str(node_id) not in members:
        return ArrayRecord()
    own = state.array_records.get(f"{prefix}{sums_round}")
    if own is None:
        raise ValueError(
            f"the server's curvature sums of round {sums_round} hold this node's terms, "
            "but its context.state has none for that round"
        )
    return own


def _array(v: np.ndarray) -> object:
    from flwr.app import Array

    return Array(np.ascontiguousarray(v))
