"""SCAFFOLD's client step (Karimireddy et al. 2020), written against fedsim's public API.

Client i keeps its control variate ``c_i`` in ``context.state`` (zero before its first
round) and receives the model x and the server's control variate c. Each local step
adds ``c - c_i`` to the data gradient (the gradient correction), so the update runs
``y <- y - η (g_i(y) - c_i + c)``. After K steps the client's new control variate is

- option I: ``c_i+ = g_i(x)``, the gradient of its loss at x over all its data;
- option II: ``c_i+ = c_i - c + (x - y) / (K η)`` (exact for plain SGD at rate η; with
  momentum or weight decay it is the paper's estimate all the same).

The reply carries the trained model and ``c_i+ - c_i`` under the keys c arrived with.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn

import fedsim
from fedsim.algorithms.scaffold import keys

KEPT_C = "scaffold-c"  # context.state record: this client's control variate c_i


@fedsim.register_step("scaffold", help="SCAFFOLD: gradient corrected by c - c_i")
class ScaffoldStep(fedsim.LocalStep):
    """Local SGD with the drift correction ``c - c_i``; replies with ``Δc_i`` too."""

    reads = frozenset({keys.SCAFFOLD_OPTION})
    vectorisable = False  # its reply reads context.state

    def __init__(self, inputs: fedsim.StepInputs) -> None:
        super().__init__(inputs)
        self.option = str(inputs.config.get(keys.SCAFFOLD_OPTION, "II"))
        if self.option not in ("I", "II"):
            raise ValueError(f"{keys.SCAFFOLD_OPTION} must be 'I' or 'II', got {self.option!r}")
        self.state = inputs.state
        self.lr = inputs.lr
        params = dict(inputs.global_model.named_parameters())
        self.anchor = {n: p.detach().clone() for n, p in params.items()}
        kept = inputs.state.array_records.get(KEPT_C, ArrayRecord())
        self.c_i = {
            n: torch.from_numpy(kept[n].numpy()).to(p.device) if n in kept else torch.zeros_like(p)
            for n, p in self.anchor.items()
        }
        prefix = keys.SCAFFOLD_C_PREFIX
        self.c = {
            n: torch.from_numpy(np.asarray(inputs.extras[prefix + n])).to(p.device, p.dtype)
            if prefix + n in inputs.extras
            else torch.zeros_like(p)
            for n, p in self.anchor.items()
        }
        self.drift = {n: self.c[n] - self.c_i[n] for n in self.anchor}
        self.c_at_x: dict[str, torch.Tensor] | None = None
        if self.option == "I":
            if inputs.data is None:
                raise ValueError("SCAFFOLD's option I needs the node's data")
            self.c_at_x = self._mean_gradient(inputs.global_model, inputs.data, inputs.batch_size)

    def _mean_gradient(
        self, model: nn.Module, data: fedsim.NodeData, batch: int
    ) -> dict[str, torch.Tensor]:
        """``g_i(x)``: the gradient of the mean data loss over all of the node's data."""
        model.train()
        device = next(model.parameters()).device  # the training device
        x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
        params = [p for _, p in model.named_parameters()]
        total = [torch.zeros_like(p) for p in params]
        for start in range(0, len(y), batch):
            loss = self.data_loss(model(x[start : start + batch]), y[start : start + batch])
            grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t.add_(g)
        names = [n for n, _ in model.named_parameters()]
        return {n: t / max(len(y), 1) for n, t in zip(names, total, strict=True)}

    def correction(self, params: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``c - c_i`` for every parameter (the same at every step of the job)."""
        return self.drift

    def reply(
        self, model: nn.Module, data: fedsim.NodeData, work: fedsim.TrainResult | None
    ) -> fedsim.Reply:
        """The trained model and ``c_i+ - c_i``; keeps ``c_i+`` in ``context.state``."""
        assert work is not None  # this step trains
        trained = dict(model.named_parameters())
        if self.c_at_x is not None:
            new_c = self.c_at_x
        else:
            k_lr = max(work.steps, 1) * self.lr
            new_c = {
                n: self.c_i[n] - self.c[n] + (self.anchor[n] - trained[n].detach()) / k_lr
                if k_lr > 0
                else self.c_i[n] - self.c[n]
                for n in self.anchor
            }
        self.state[KEPT_C] = ArrayRecord(
            {n: Array(np.ascontiguousarray(v.cpu().numpy())) for n, v in new_c.items()}
        )
        arrays = dict(self.model_arrays(model))
        for n, v in new_c.items():
            arrays[keys.SCAFFOLD_C_PREFIX + n] = (v - self.c_i[n]).cpu().numpy()
        return fedsim.Reply(arrays, work)
