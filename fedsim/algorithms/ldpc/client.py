"""LDPC moment encoding's client step: the coded block's product at the received model.

Client ``j`` holds the coded block ``[A_j | c_j]`` of the second moment
(:mod:`fedsim.data.moments`) and replies, without training, ``A_j θ − c_j`` with ``θ``
the received linear model's parameters (weight, then bias) in float64, as the
``moment.product`` array the server sent (zeros of the same shape), plus its partition
id (the code position) as the ``moment-block`` metric.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.algorithms.ldpc import keys
from fedsim.client.steps import LocalStep, Reply, StepInputs, TrainResult, register_step
from fedsim.data.node_data import NodeData


def linear_parameters(model: nn.Module) -> torch.Tensor:
    """θ of a one-output affine model: its weight then its bias, float64 ``(p,)``."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(layers) != 1 or layers[0].out_features != 1 or layers[0].bias is None:
        raise ValueError("moment encoding needs a one-output linear model (model: linear)")
    layer = layers[0]
    return torch.cat([layer.weight.detach().flatten(), layer.bias.detach()]).double().cpu()


@register_step(keys.STEP)
class MomentProductStep(LocalStep):
    """Reply ``A_j θ − c_j`` at the received model (selected by ``local-step``)."""

    trains = False  # the reply is a coded product at the received model, not a model
    dp_refusal = keys.DP_REFUSAL

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        if inputs.data is None or inputs.data.moments is None:
            raise ValueError("the moment-product step needs data.moment_encoding's block")
        self.block = torch.from_numpy(np.asarray(inputs.data.moments, dtype=np.float64))
        self.partition_id = inputs.partition_id

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """The product (the reply's only array); the work counts one sample per row."""
        theta = linear_parameters(model)
        a, c = self.block[:, :-1], self.block[:, -1]
        if a.shape[1] != theta.shape[0]:
            raise ValueError(f"the moment block has {a.shape[1]} columns, the model {len(theta)}")
        rows = int(self.block.shape[0])
        return Reply(
            {keys.MOMENT_PRODUCT: (a @ theta - c).numpy()},
            TrainResult(0.0, rows, 0, num_examples=float(rows)),
            {keys.MOMENT_BLOCK: float(self.partition_id)},
        )
