"""AGC's client step: the encoded gradient of the examples this client holds.

After the offline sharing phase (:mod:`fedsim.data.sharing`) client k holds its private
examples ``P_k`` and the non-private examples ``S_k`` (its own and those received): its
node data, with each example's holder count (1 or ``d``), on a device as in simulation. At
the received model it returns, without training,
``e_k = Σ_{x∈P_k} g(x)/(1−p) + Σ_{x∈S_k} g(x)/(d(1−p))``, with ``g`` the gradient of
the per-example loss, summed over all held examples in mini-batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedsim.algorithms.agc import keys
from fedsim.client.full_gradient import full_data_gradient
from fedsim.client.loop import batches
from fedsim.client.steps import LocalStep, Reply, StepInputs, TrainResult, register_step
from fedsim.config.schema import ClientConfig
from fedsim.data.node_data import NodeData


@register_step(keys.STEP)
class CodedGradientStep(LocalStep):
    """Encode the gradient over the held examples (selected by ``agc-p``)."""

    trigger_key = keys.AGC_P
    reads = frozenset({keys.AGC_P})
    trains = False  # the reply is the coded gradient at the received model, not a model
    dp_refusal = keys.DP_REFUSAL

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        if inputs.data is None:
            raise ValueError("the coded-gradient step needs the node's data")
        self.p = float(inputs.config[keys.AGC_P])
        data = inputs.data
        device = next(inputs.global_model.parameters()).device  # the training device
        self.x, self.y = torch.from_numpy(data.x).to(device), torch.from_numpy(data.y).to(device)
        # No sharing plan: every example private (held by its owner alone).
        holders = np.ones(len(data.y)) if data.holders is None else data.holders
        self.weights = torch.from_numpy(1.0 / (holders * (1.0 - self.p))).float().to(device)
        self.batch_size = inputs.batch_size
        # The job's seed (the ClientApp seeds each job before building its step).
        self.generator = torch.Generator().manual_seed(int(torch.initial_seed()))

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """Accumulate ``Σ w(x)·g(x)`` over one pass of mini-batches; no optimizer step.

        The reply's only arrays are the encoded gradient.
        """
        cfg = ClientConfig(batch_size=self.batch_size)  # reshuffled batches, as training's
        n = len(self.y)
        steps = math.ceil(n / min(cfg.batch_size, n)) if n else 0
        order = batches(n, cfg, steps, self.generator)  # one epoch: every example once
        coded = full_data_gradient(
            model, self.data_loss, self.x, self.y, n, order=order, weights=self.weights
        )
        gradient = {
            f"{keys.AGC_GRAD_PREFIX}{name}": coded.sums[name]
            .detach()
            .cpu()
            .numpy()
            .astype(np.float32)
            for name, _ in model.named_parameters()
        }
        assert coded.loss_sum is not None  # summed whenever the gradients are not squared
        loss_sum = coded.loss_sum
        # The reply stands for Σ w·(1−p) examples: |P_k| + |S_k|/d.
        effective = float(self.weights.double().sum()) * (1.0 - self.p)
        return Reply(gradient, TrainResult(loss_sum / max(n, 1), n, 0, num_examples=effective))
