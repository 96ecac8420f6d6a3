"""DP-SGD inside the stacked computation (``engine.batch_clients`` with ``client.dp``).

Each client's step is what :class:`fedsim.client.dp.PrivateGradient` does alone:
per-example gradients of its data loss (``vmap`` over the client's examples inside
``vmap`` over clients), each clipped to ``max_grad_norm`` with the factor
``min(1, C / (‖g_i‖ + 1e-6))``, summed, plus Gaussian noise ``N(0, (σC)²)`` drawn from
the client's own noise generator (seeded as its ClientApp job seeds it, parameter by
parameter in the same order, on the CPU), divided by the client's expected batch size;
then the step's penalty gradient, outside the privatised part. Padding examples weigh
nothing, and an empty Poisson batch is noise alone, as in the per-client path. So a
stacked DP run releases what the per-client run releases (the same ε: the accountant
sees the same steps), up to float rounding of the clipped sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from fedsim.client.stacked_steps import StackedStep
from fedsim.config.schema import DPConfig

EPS = 1e-6  # the clipping factor's, as fedsim's kernels and Opacus use


class StackedPrivateGradient:
    """Per-client DP-SGD gradients of a stack of clients (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The chunk's model (its parameters are replaced by the stacked ones).
    stacked : StackedStep
        The clients' steps.
    cfg : DPConfig
        The ``client.dp`` section.
    expected_batch : sequence of float
        Each client's expected batch size (``min(batch_size, n)``), in stack order.
    noise_seeds : sequence of int
        Each client's noise generator seed (its job seed + 1, as the ClientApp's).
    """

    def __init__(
        self,
        model: nn.Module,
        stacked: StackedStep,
        cfg: DPConfig,
        expected_batch: Sequence[float],
        noise_seeds: Sequence[int],
    ) -> None:
        self.cfg = cfg
        self.names = [n for n, _ in model.named_parameters()]
        device = next(model.parameters()).device
        self.expected = torch.tensor(list(expected_batch), device=device)
        self.generators = [torch.Generator().manual_seed(s) for s in noise_seeds]
        self.stacked = stacked
        dims = list(stacked.dims)

        def example_loss(
            params: Mapping[str, torch.Tensor],
            values: list[torch.Tensor],
            x: torch.Tensor,
            y: torch.Tensor,
        ) -> tuple[torch.Tensor, torch.Tensor]:
            own = stacked.view(values)
            loss = own.data_loss(functional_call(model, dict(params), (x[None],)), y[None]).sum()
            return loss, loss.detach()

        per_example = vmap(grad(example_loss, has_aux=True), in_dims=(None, None, 0, 0))
        self.per_example = vmap(per_example, in_dims=(0, dims, 0, 0))
        first = stacked.first
        self.has_penalty = first.penalty(dict(model.named_parameters())) is not None

        def penalty(params: Mapping[str, torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
            out = stacked.view(values).penalty(params)
            assert out is not None  # has_penalty
            return out

        self.penalty_grad = vmap(grad(penalty), in_dims=(0, dims))

    def __call__(
        self,
        params: Mapping[str, torch.Tensor],
        values: list[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The active clients' private gradients and per-example losses ``(a, B)``."""
        a = x.shape[0]
        grads, losses = self.per_example(dict(params), values, x, y)  # each (a, B, ...)
        real = (w > 0).to(losses.dtype)  # (a, B): padding weighs nothing
        sq = sum(g.flatten(2).pow(2).sum(2) for g in grads.values())
        norms = torch.as_tensor(sq).sqrt()  # (a, B)
        coef = (self.cfg.max_grad_norm / (norms + EPS)).clamp(max=1.0) * real
        std = self.cfg.noise_multiplier * self.cfg.max_grad_norm
        noise: dict[str, torch.Tensor] = {}
        if std > 0 and self.names:
            # As the per-client path draws it: one flat draw per client from its own
            # generator over every parameter in order, each parameter taking its slice.
            shapes = [grads[n].shape[2:] for n in self.names]
            sizes = [math.prod(shape) for shape in shapes]
            dtype = grads[self.names[0]].dtype
            flat = torch.stack(
                [torch.randn(sum(sizes), generator=gen, dtype=dtype) for gen in self.generators[:a]]
            )  # (a, P)
            for n, shape, part in zip(self.names, shapes, flat.split(sizes, dim=1), strict=True):
                noise[n] = part.reshape(a, *shape)
        out: dict[str, torch.Tensor] = {}
        for n in self.names:
            g = grads[n]
            total = torch.einsum("ab,ab...->a...", coef.to(g.dtype), g)  # (a, ...)
            if n in noise:
                total = total + std * noise[n].to(total.device, total.dtype)
            out[n] = total / self.expected[:a].view(a, *([1] * (total.dim() - 1))).to(g.dtype)
        if self.has_penalty:  # outside the privatised gradient, as train_local adds it
            for n, g in self.penalty_grad(dict(params), values).items():
                out[n] = out[n] + g
        return out, losses * real
