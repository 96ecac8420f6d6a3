"""SCAFFOLD's client step (Karimireddy et al. 2020), written against fedsim's public API.

Client i keeps its control variate ``c_i`` in ``context.state`` (zero before its first
round) and receives the model x and the server's control variate c. Each local step
adds ``c - c_i`` to the data gradient (the gradient correction), so the update runs
``y <- y - η (g_i(y) - c_i + c)``. After K steps the client's new control variate is

- option I: ``c_i+ = g_i(x)``, the gradient of its loss at x over all its data;
- option II: ``c_i+ = c_i - c + (x - y) / (K η)`` (exact for plain SGD at rate η; with
  momentum or weight decay it is the paper's estimate all the same).

The reply carries the trained model and ``c_i+ - c_i`` under the keys c arrived with.

``c_i+`` is kept pending (``scaffold-pending``, tagged with its round) until a later
message's ``scaffold-confirmed-round`` says the server added its ``Δc_i`` to c; then it
becomes ``c_i``, and otherwise it is dropped (the reply never reached c: deadline,
dropout, failure). Without this, c drifts away from the mean of the ``c_i``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import nn

import fedsim
from fedsim import wire
from fedsim.algorithms.scaffold import keys

KEPT_C = "scaffold-c"  # context.state record: this client's control variate c_i
# context.state records: c_i+ awaiting the server's confirmation, and its round.
PENDING_C = "scaffold-pending"
PENDING_ROUND = "scaffold-pending-round"


def settle_pending(state: RecordDict, confirmed_round: int) -> None:
    """Commit the pending ``c_i+`` if its round is ``confirmed_round``; else drop it."""
    pending = state.array_records.get(PENDING_C)
    if pending is None:
        return
    trained_in = int(state.config_records[PENDING_ROUND]["round"])  # type: ignore[arg-type]
    if trained_in == confirmed_round:
        state[KEPT_C] = pending
    del state[PENDING_C]
    del state[PENDING_ROUND]


@fedsim.register_step(keys.STEP, help="SCAFFOLD: gradient corrected by c - c_i")
class ScaffoldStep(fedsim.LocalStep):
    """Local SGD with the drift correction ``c - c_i``; replies with ``Δc_i`` too."""

    reads = frozenset({keys.SCAFFOLD_OPTION, keys.SCAFFOLD_CONFIRMED})
    # correction reads only tensors (its c - c_i); reply (and its pending c_i+ in
    # context.state) runs per client when stacked
    vectorisable = True

    def __init__(self, inputs: fedsim.StepInputs) -> None:
        super().__init__(inputs)
        self.option = str(inputs.config.get(keys.SCAFFOLD_OPTION, "II"))
        if self.option not in ("I", "II"):
            raise ValueError(f"{keys.SCAFFOLD_OPTION} must be 'I' or 'II', got {self.option!r}")
        self.state = inputs.state
        self.lr = inputs.lr
        self.round = int(inputs.config.get(wire.SERVER_ROUND, 0))
        settle_pending(inputs.state, int(inputs.config.get(keys.SCAFFOLD_CONFIRMED, 0)))
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
            # g_i(x): the gradient of the mean data loss over all of the node's data
            model, data = inputs.global_model, inputs.data
            device = next(model.parameters()).device  # the training device
            x, y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
            gradient = fedsim.full_data_gradient(model, self.data_loss, x, y, inputs.batch_size)
            self.c_at_x = gradient.mean()

    def correction(self, params: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``c - c_i`` for every parameter (the same at every step of the job)."""
        return self.drift

    def reply(
        self, model: nn.Module, data: fedsim.NodeData, work: fedsim.TrainResult | None
    ) -> fedsim.Reply:
        """The trained model and ``c_i+ - c_i``; keeps ``c_i+`` pending in ``context.state``."""
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
        self.state[PENDING_C] = ArrayRecord(
            {n: Array(np.ascontiguousarray(v.cpu().numpy())) for n, v in new_c.items()}
        )
        self.state[PENDING_ROUND] = ConfigRecord({"round": self.round})
        arrays = dict(self.model_arrays(model))
        for n, v in new_c.items():
            arrays[keys.SCAFFOLD_C_PREFIX + n] = (v - self.c_i[n]).cpu().numpy()
        return fedsim.Reply(arrays, work)
