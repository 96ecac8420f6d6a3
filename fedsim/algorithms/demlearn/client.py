"""DemLearn's client step: plain local training from the model the server sent.

Each agent receives its own start model (its top-down specialised model, see
:mod:`fedsim.algorithms.demlearn.server`), trains it with the shared loop as the plain step
does, and replies with the trained model plus its partition id (the
``demlearn-partition`` metric, public node configuration), by which the server scores
the agent's model on the agent's own test data.
"""

from __future__ import annotations

from torch import nn

import fedsim
from fedsim.algorithms.demlearn import keys


@fedsim.register_step(keys.STEP, help="DemLearn: plain training, reply names the agent")
class DemLearnStep(fedsim.LocalStep):
    """Plain empirical risk minimisation; the reply adds the node's partition id."""

    dp_refusal = keys.DP_REFUSAL  # the strategy's report reads the agents' own data

    def __init__(self, inputs: fedsim.StepInputs) -> None:
        super().__init__(inputs)
        self.partition_id = inputs.partition_id

    def reply(
        self, model: nn.Module, data: fedsim.NodeData, work: fedsim.TrainResult | None
    ) -> fedsim.Reply:
        """The trained model, and the partition id as ``demlearn-partition``."""
        if work is None:  # this step trains: the shared loop always hands its result
            raise ValueError("the demlearn step replies only after training")
        metrics = {keys.PARTITION: float(self.partition_id)}
        return fedsim.Reply(self.model_arrays(model), work, metrics)
