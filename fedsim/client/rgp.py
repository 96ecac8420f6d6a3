"""``client.dp.mode: rgp``: DP-SGD whose noise lives in low-rank gradient carriers.

Reparametrized gradient perturbation (Yu, Zhang, Chen et al., "Large scale private
learning via low-rank reparametrization", ICML 2021). Every Linear and plain Conv1d/Conv2d
weight ``W`` (p, d) gets carriers ``L`` (p, r) and ``R`` (r, d), r = min(rank, p, d),
rebuilt at every step by ``power_iterations`` power-method rounds from the layer's
historical update (:func:`fedsim.kernels.rgp.carriers`). One forward/backward pass
captures each layer's inputs and output gradients (fedsim's clipping kernels' capture);
per example the released vector is

- the carrier gradients ``∂L_i``, ``∂R_i`` and the bias gradient of every RGP layer
  (from the captured tensors through rank-r products: ``g_i = Δ_iᵀ A_i`` is never formed),
- the per-example gradients of every other layer (their fast-clipping kernels),

clipped jointly to ``max_grad_norm`` C, summed, and given Gaussian noise ``N(0, (σC)²)``
on every coordinate, then divided by the expected batch as DP-SGD does. Each ``W``'s
update is reconstructed from its noisy carrier gradients
(``∂L R + L ∂R − L Lᵀ ∂L R``) and kept, per layer, in ``context.state`` as the history
the next step's carriers come from, across steps and rounds.

Privacy: each step is one subsampled Gaussian mechanism on a vector of per-example
norm ≤ C (adding or removing one example moves the clipped sum by at most C), exactly
as ``fast``; carriers depend only on earlier noisy releases and a data-independent
Gaussian draw, and the reconstruction is post-processing. So the same accountant and
ledger as ``fast`` apply (:func:`fedsim.client.dp.spend`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict
from torch import nn

from fedsim.client.dp import GRADIENT_MODES
from fedsim.config.client import RGP_POWER_ITERATIONS, RGP_RANK, DPConfig
from fedsim.kernels.capture import LossFn, backprop_per_example
from fedsim.kernels.clipping import EPS
from fedsim.kernels.registry import set_grad
from fedsim.kernels.rgp import (
    carrier_grads,
    carriers,
    layer_inputs,
    reconstruct,
    supports_rgp,
    weight_shape,
)

HISTORY = "rgp-history"  # context.state record: layer path -> its last noisy W update

Bases = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer path -> (L, R)


@dataclass
class CarrierSums:
    """One batch's clipped sums of the carrier gradients, per RGP layer.

    ``left[path]`` (p, r) and ``right[path]`` (r, d); biases and every other layer's
    clipped sums are in their parameters' ``.grad``. ``norms`` (B,) are the per-example
    norms of the whole released vector, ``losses`` (B,) the per-example losses.
    """

    left: dict[str, torch.Tensor]
    right: dict[str, torch.Tensor]
    norms: torch.Tensor
    losses: torch.Tensor


def rgp_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules RGP reparametrizes, by their path in ``model`` (the capture's names)."""
    return {
        name or "<root>": m
        for name, m in model.named_modules()
        if supports_rgp(m) and m.weight.requires_grad
    }


def clipped_carrier_sums(
    model: nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    max_norm: float,
    bases: Bases,
) -> CarrierSums:
    """Clip every example's released vector (carriers, biases, other layers) jointly to C.

    Fills the ``.grad`` of biases of RGP layers and of every parameter of other layers
    with their clipped sums; returns the carriers' clipped sums.
    """
    layers, records, losses = backprop_per_example(model, loss_fn, x, y)
    norm_sq: torch.Tensor | float = 0.0
    per_example: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
    for path, module, kernel in layers:
        if path in bases:
            a, delta = layer_inputs(module, records[path])  # (B, T, d), (B, T, p)
            left, right = bases[path]
            gl, gr = carrier_grads(a, delta, left, right)  # (B, p, r), (B, r, d)
            bias = delta.sum(1) if module.bias is not None else None  # (B, p)
            per_example[path] = (gl, gr, bias)
            norm_sq = norm_sq + gl.pow(2).sum((1, 2)) + gr.pow(2).sum((1, 2))
            if bias is not None:
                norm_sq = norm_sq + bias.pow(2).sum(1)
        else:
            norm_sq = norm_sq + kernel.norm_sq(module, records[path])
    if not isinstance(norm_sq, torch.Tensor):
        raise ValueError("the model has no trainable parameters")
    norms = norm_sq.clamp(min=0).sqrt()
    coef = (max_norm / (norms + EPS)).clamp(max=1.0)  # (B,)
    sums_l, sums_r = {}, {}
    for path, module, kernel in layers:
        if path not in per_example:
            kernel.accumulate(module, records[path], coef)
            continue
        gl, gr, gb = per_example[path]
        sums_l[path] = torch.einsum("b,bpr->pr", coef, gl)
        sums_r[path] = torch.einsum("b,brd->rd", coef, gr)
        if gb is not None:
            set_grad(module.bias, coef @ gb)
    return CarrierSums(sums_l, sums_r, norms, losses)


class RGPGradient:
    """One RGP step's gradient: what :class:`~fedsim.client.dp.PrivateGradient` is to ``fast``.

    Parameters
    ----------
    cfg : DPConfig
        The ``client.dp`` section (``rank``, ``power_iterations``, σ, C).
    model : nn.Module
        The model being trained.
    expected_batch : float
        ``q·N`` for Poisson sampling, the batch size for fixed-size batches.
    generator : torch.Generator
        Source of the noise and of the carriers' Gaussian starts (seeded per job).
    state : RecordDict
        The node's ``context.state`` (the layers' historical updates live there).
    """

    def __init__(
        self,
        cfg: DPConfig,
        model: nn.Module,
        expected_batch: float,
        generator: torch.Generator,
        state: RecordDict,
    ) -> None:
        self.cfg, self.expected_batch, self.generator, self.state = (
            cfg,
            expected_batch,
            generator,
            state,
        )
        self.layers = rgp_layers(model)
        if not self.layers:
            raise ValueError(
                "client.dp.mode: 'rgp' found no Linear or Conv layer to reparametrize "
                "(use mode: fast)"
            )
        kept = state.array_records.get(HISTORY, ArrayRecord())
        self.history: dict[str, torch.Tensor] = {
            path: torch.from_numpy(kept[path].numpy()) for path in self.layers if path in kept
        }

    def bases(self) -> Bases:
        """The carriers of every RGP layer for the next step, from the layers' histories."""
        out: Bases = {}
        for path, module in self.layers.items():
            w = module.weight
            assert isinstance(w, torch.Tensor)
            left, right = carriers(
                self.history.get(path),
                weight_shape(module),
                RGP_RANK if self.cfg.rank is None else self.cfg.rank,
                RGP_POWER_ITERATIONS
                if self.cfg.power_iterations is None
                else self.cfg.power_iterations,
                self.generator,
                w.dtype,
            )
            out[path] = (left.to(w.device), right.to(w.device))
        return out

    def __call__(
        self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Fill every ``p.grad`` with the privatised, reconstructed gradient; return losses."""
        bases = self.bases()
        if x.shape[0] > 0:
            sums = clipped_carrier_sums(model, loss_fn, x, y, self.cfg.max_grad_norm, bases)
            losses, left_sums, right_sums = sums.losses, sums.left, sums.right
        else:  # an empty Poisson draw: the release is noise alone
            losses = x.new_zeros(0)
            for p in model.parameters():
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
            left_sums = {k: torch.zeros_like(lr[0]) for k, lr in bases.items()}
            right_sums = {k: torch.zeros_like(lr[1]) for k, lr in bases.items()}
        std = self.cfg.noise_multiplier * self.cfg.max_grad_norm
        released: list[torch.Tensor] = [*left_sums.values(), *right_sums.values()]
        released += [
            p.grad
            for path, module in _named_owners(model)
            for name, p in module.named_parameters(recurse=False)
            if p.requires_grad and not (path in bases and name == "weight") and p.grad is not None
        ]
        for g in released:
            if std > 0:  # drawn on the CPU whatever the device: the same noise everywhere
                noise = torch.randn(g.shape, generator=self.generator, dtype=g.dtype)
                g.add_(noise.to(g.device), alpha=std)
            g.div_(self.expected_batch)
        for path, module in self.layers.items():
            left, right = bases[path]
            update = reconstruct(left_sums[path], right_sums[path], left, right)  # (p, d)
            set_grad(module.weight, update)
            self.history[path] = update.detach()
        self.state[HISTORY] = ArrayRecord(
            {
                path: Array(np.ascontiguousarray(h.to("cpu").numpy()))
                for path, h in self.history.items()
            }
        )
        return losses


def _named_owners(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module with parameters of its own, by its capture path."""
    return [
        (name or "<root>", m)
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]


GRADIENT_MODES.add("rgp", RGPGradient, help="RGP: noise on low-rank gradient carriers")
