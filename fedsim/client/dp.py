"""DP-SGD on the client: clipped per-example gradients, Gaussian noise, accounting.

Every mode leaves the same thing in ``p.grad`` (the sum of per-example gradients
clipped to ``max_grad_norm``); the noise, the scaling and the accounting are shared:

* ``fast``: fedsim's kernels, one forward and one backward pass
  (:func:`fedsim.kernels.clipped_gradient`);
* ``opacus-hooks``: Opacus ``GradSampleModule`` materialises per-example gradients;
* ``opacus-ghost``: Opacus ghost clipping, two backward passes;
* ``naive``: one backward pass per example.

``rgp`` (:mod:`fedsim.client.rgp`) privatises differently: its noise goes on low-rank
gradient carriers, not on ``p.grad``; it registers in :data:`GRADIENT_MODES` and
:func:`private_gradient` picks it by name. Every mode shares the accountant.

The accountant is Opacus's RDP accountant; its history lives in the node's
``context.state`` so privacy spent accumulates across rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedsim.client.losses import LossFn

# Federated evaluation on a node's data under client.dp: refused (validation and client).
from fedsim.config.rules import DP_EVALUATE_REFUSAL as DP_EVALUATE_REFUSAL
from fedsim.config.schema import DPConfig
from fedsim.kernels import clipped_gradient
from fedsim.kernels.oracle import clipped_sum_of, per_example_grads_loop
from fedsim.kernels.rgp import supports_rgp
from fedsim.registry import Registry

# A clipper fills p.grad with the clipped sum and returns the per-example losses (B,).
Clipper = Callable[[nn.Module, LossFn, torch.Tensor, torch.Tensor, float], torch.Tensor]
CLIPPERS: Registry[Callable[[nn.Module], Clipper]] = Registry("DP modes")
# Modes that are whole private gradients (noise placed their own way), by mode name:
# ``factory(cfg, model, expected_batch, generator, state)`` returns the gradient callable.
GRADIENT_MODES: Registry[Callable[..., Any]] = Registry("DP gradient modes")


def _set_clipped_sum(
    model: nn.Module, per_example: dict[str, torch.Tensor], max_norm: float
) -> None:
    """Clip materialised per-example gradients {name: (B, ...)} and sum them into p.grad."""
    for name, grad in clipped_sum_of(per_example, max_norm).items():
        param = model.get_parameter(name)
        param.grad = grad.to(param.dtype)


@CLIPPERS.register("fast", help="fedsim kernels: one forward/backward, no per-example gradients")
def fast(model: nn.Module) -> Clipper:
    """fedsim's per-layer kernels."""

    def clip(
        m: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: float
    ) -> torch.Tensor:
        return clipped_gradient(m, loss_fn, x, y, c).losses

    return clip


@CLIPPERS.register("naive", help="one backward pass per example")
def naive(model: nn.Module) -> Clipper:
    """Example by example."""

    def clip(
        m: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: float
    ) -> torch.Tensor:
        _set_clipped_sum(m, per_example_grads_loop(m, loss_fn, x, y), c)
        with torch.no_grad():
            return loss_fn(m(x), y)

    return clip


@CLIPPERS.register("opacus-hooks", help="Opacus GradSampleModule (materialised gradients)")
def opacus_hooks(model: nn.Module) -> Clipper:
    """Opacus's hook-based per-example gradients."""
    from opacus import GradSampleModule

    gsm = GradSampleModule(model, loss_reduction="sum")

    def clip(
        m: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: float
    ) -> torch.Tensor:
        losses = loss_fn(gsm(x), y)
        losses.sum().backward()
        # Opacus attaches `grad_sample` (B, *shape) to every trainable parameter.
        samples = {n: p.grad_sample for n, p in m.named_parameters() if p.requires_grad}  # type: ignore[attr-defined]
        _set_clipped_sum(m, samples, c)
        for p in m.parameters():
            p.grad_sample = None  # type: ignore[attr-defined]
        return losses.detach()

    return clip


@CLIPPERS.register("opacus-ghost", help="Opacus ghost clipping (two backward passes)")
def opacus_ghost(model: nn.Module) -> Clipper:
    """Opacus's fast gradient clipping with ghost norms."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    def clip(
        m: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, c: float
    ) -> torch.Tensor:
        gsm = state.get("gsm")
        if gsm is None or gsm.max_grad_norm != c:
            gsm = state["gsm"] = GradSampleModuleFastGradientClipping(
                m, max_grad_norm=c, use_ghost_clipping=True, loss_reduction="sum"
            )
        losses = loss_fn(gsm(x), y)
        losses.sum().backward(retain_graph=True)  # first pass: norms via hooks
        coef = gsm.get_clipping_coef()
        m.zero_grad(set_to_none=True)
        gsm.disable_hooks()
        (coef.detach() * losses).sum().backward()  # second pass: the clipped sum
        gsm.enable_hooks()
        return losses.detach()

    state: dict[str, Any] = {}
    return clip


def check_model(cfg: DPConfig, model: nn.Module) -> None:
    """Refuse combinations that cannot work before any training starts.

    Raises
    ------
    ValueError
        Opacus modes on fedsim's LSTM (Opacus has no grad sampler for it, and
        ``torch.func`` cannot trace its hand-written backward), or layers that mix
        examples within a batch (any mode).
    """
    from fedsim.kernels import StructuredDropoutLSTM
    from fedsim.kernels.capture import trainable_layers

    trainable_layers(model)  # raises UnsupportedModuleError (a TypeError) naming the module
    lstm = any(isinstance(m, StructuredDropoutLSTM) for m in model.modules())
    if cfg.mode.startswith("opacus") and lstm:
        raise ValueError(f"'{cfg.mode}' cannot train fedsim's LSTM layers; use mode: fast")
    if cfg.mode == "rgp" and not any(supports_rgp(m) for m in model.modules()):
        raise ValueError("'rgp' found no Linear or Conv layer to reparametrize; use mode: fast")


class PrivateGradient:
    """One DP-SGD gradient: clipped sum plus ``N(0, (σC)²)`` noise, over the batch size.

    The sum is divided by the expected batch size (``q·n``), as DP-SGD prescribes.

    Parameters
    ----------
    cfg : DPConfig
        The ``client.dp`` section.
    model : nn.Module
        The model (Opacus modes wrap it once per job).
    expected_batch : float
        ``q·N`` for Poisson sampling, the batch size for fixed-size batches.
    generator : torch.Generator
        Source of the noise (seeded per job).
    """

    def __init__(
        self, cfg: DPConfig, model: nn.Module, expected_batch: float, generator: torch.Generator
    ) -> None:
        self.cfg = cfg
        self.clipper = CLIPPERS.get(cfg.mode)(model)
        self.expected_batch = expected_batch
        self.generator = generator

    def __call__(
        self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Fill ``p.grad``; return the per-example losses (empty for an empty batch)."""
        params = [p for p in model.parameters() if p.requires_grad]
        if x.shape[0] > 0:
            losses = self.clipper(model, loss_fn, x, y, self.cfg.max_grad_norm)
        else:  # a Poisson draw can be empty: the update is noise alone
            losses = x.new_zeros(0)
            for p in params:
                p.grad = torch.zeros_like(p)
        std = self.cfg.noise_multiplier * self.cfg.max_grad_norm
        grads = [p.grad for p in params if p.grad is not None]
        assert len(grads) == len(params), "a clipper left a parameter without a gradient"
        if std > 0 and params:
            # One draw for every parameter from the client's CPU generator (the same noise
            # on every device, and the numbers the stacked path draws), and one copy to the
            # device, from pinned memory on CUDA so it does not wait for the host: no host
            # round trip per parameter. Each parameter then adds its slice, in parameter
            # order, in one multi-tensor op.
            first = params[0]
            count = sum(p.numel() for p in params)
            pinned = first.device.type == "cuda"
            noise = torch.empty(count, dtype=first.dtype, pin_memory=pinned)
            flat = noise.normal_(generator=self.generator).to(first.device, non_blocking=True)
            sizes = [p.numel() for p in params]
            views = [v.view(g.shape) for v, g in zip(flat.split(sizes), grads, strict=True)]
            torch._foreach_add_(grads, views, alpha=std)
        torch._foreach_div_(grads, self.expected_batch)
        return losses


def private_gradient(
    cfg: DPConfig,
    model: nn.Module,
    expected_batch: float,
    generator: torch.Generator,
    state: RecordDict,
) -> Callable[[nn.Module, LossFn, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The DP-SGD gradient of ``cfg.mode``: a registered gradient mode, else clip-and-noise."""
    if cfg.mode in GRADIENT_MODES:
        return GRADIENT_MODES.get(cfg.mode)(cfg, model, expected_batch, generator, state)  # type: ignore[no-any-return]
    return PrivateGradient(cfg, model, expected_batch, generator)


# ---------------------------------------------------------------- accounting


LEDGER = "dp-ledger"
# Opacus RDPAccountant's default orders.
ALPHAS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


@lru_cache(maxsize=1024)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one Poisson-subsampled Gaussian step at every order (Opacus's analysis)."""
    from opacus.accountants.analysis import rdp

    return tuple(
        rdp.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(ALPHAS)
        )
    )


def rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` after the Poisson ``(noise_multiplier, sample_rate, steps)`` history.

    The same computation as Opacus's ``RDPAccountant.get_epsilon`` (RDP composes by
    adding; Opacus's ``compute_rdp`` is the one-step value times ``steps``), with the
    one-step RDP cached: it is pure-Python and costs ~0.4 s per (σ, q) pair, which a
    client would otherwise pay again every round. No step taken: nothing was released,
    so ε = 0 (the RDP-to-DP conversion would report log(1/δ)/(α−1) > 0 for zero RDP).
    """
    from opacus.accountants.analysis import rdp

    if sum(s for _, _, s in history) == 0:
        return 0.0
    total = sum([np.asarray(_rdp_per_step(n, q)) * s for n, q, s in history])
    eps, _ = rdp.get_privacy_spent(orders=list(ALPHAS), rdp=total, delta=delta)
    return float(eps)


@lru_cache(maxsize=1024)
def _rdp_per_step_fixed(noise_multiplier: float, n: int, batch: int) -> tuple[float, ...]:
    """RDP of one step on a uniformly drawn batch of ``batch`` of ``n`` (dp-accounting).

    The library's own event and accountant, read after one composition: RDP composes by
    adding, and the pure-Python bound costs ~1 s per (σ, n, batch), which a client would
    otherwise pay again every round (tests compare with the library's ε for a history).
    """
    from dp_accounting import dp_event
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant(list(ALPHAS), NeighboringRelation.REPLACE_ONE)
    gaussian = dp_event.GaussianDpEvent(noise_multiplier / 2.0)
    accountant.compose(dp_event.SampledWithoutReplacementDpEvent(n, batch, gaussian))
    return tuple(float(v) for v in accountant._rdp)


def fixed_epsilon(history: list[tuple[float, int, int, int]], delta: float) -> float:
    """ε at ``delta`` after ``(σ, n, batch, steps)`` steps on uniformly drawn fixed-size batches.

    dp-accounting's RDP bound for sampling without replacement (Wang, Balle &
    Kasiviswanathan 2019, Thm. 27), which holds for the replace-one relation only; under
    it the clipped sum's sensitivity is 2C, so the accountant sees noise multiplier σ/2.
    """
    from dp_accounting.rdp import compute_epsilon

    if sum(s for *_, s in history) == 0:
        return 0.0
    total = sum([np.asarray(_rdp_per_step_fixed(z, n, b)) * s for z, n, b, s in history])
    eps, _ = compute_epsilon(list(ALPHAS), total, delta)
    return float(eps)


def spend(state: RecordDict, cfg: DPConfig, n: int, batch: int, steps: int) -> float:
    """Record ``steps`` DP-SGD steps on ``n`` examples in the node's state; return ε so far.

    ``batch`` is the expected batch size (``client.dp.sampling: poisson``, rate
    ``batch / n``) or the exact one (``fixed``). ε is at ``client.dp.delta``: for Poisson
    sampling under the add/remove-one relation (Opacus's RDP analysis), for fixed-size
    batches under replace-one (dp-accounting's sampling-without-replacement bound).
    """
    empty = ConfigRecord({"noise": [], "n": [], "batch": [], "steps": []})
    ledger = state.config_records.get(LEDGER, empty)
    noise = [float(v) for v in ledger["noise"]] + [cfg.noise_multiplier]  # type: ignore[union-attr]
    sizes = [int(v) for v in ledger["n"]] + [n]  # type: ignore[union-attr]
    batches = [int(v) for v in ledger["batch"]] + [batch]  # type: ignore[union-attr]
    count = [int(v) for v in ledger["steps"]] + [steps]  # type: ignore[union-attr]
    state[LEDGER] = ConfigRecord({"noise": noise, "n": sizes, "batch": batches, "steps": count})
    if sum(count) == 0:
        return 0.0  # nothing released yet
    if cfg.noise_multiplier == 0:
        return float("inf")
    if cfg.sampling == "fixed":
        return fixed_epsilon(list(zip(noise, sizes, batches, count, strict=True)), cfg.delta)
    rates = [b / m for b, m in zip(batches, sizes, strict=True)]
    return rdp_epsilon(list(zip(noise, rates, count, strict=True)), cfg.delta)
