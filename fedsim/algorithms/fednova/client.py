"""FedNova's client step: plain local SGD that also reports how many steps it took.

The client trains as FedAvg's does (the shared loop, ``client.loss``) and replies with
its model and ``fednova-steps`` = τ_i, the optimizer steps of this job, so the server
can normalise each update by the work behind it.
"""

from __future__ import annotations

from torch import nn

from fedsim.algorithms.fednova import keys
from fedsim.client.steps import LocalStep, Reply, TrainResult, register_step
from fedsim.data.node_data import NodeData


@register_step(keys.STEP, help="FedNova: plain local SGD, reporting its step count")
class FedNovaStep(LocalStep):
    """Plain local training; the reply adds the number of local steps τ_i."""

    vectorisable = True  # data loss and penalty are the plain step's

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """The trained model and ``fednova-steps``."""
        assert work is not None  # this step trains
        return Reply(self.model_arrays(model), work, {keys.FEDNOVA_STEPS: float(work.steps)})
