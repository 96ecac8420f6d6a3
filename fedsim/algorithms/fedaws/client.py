"""FedAwS's client step: a positive-only squared hinge on one class embedding.

The client holds one class ``y`` and receives θ plus only the row ``w_y`` of the
class-embedding matrix. It minimises ``max(0, ν_pos - cos(g_θ(x), w_y))²`` over its
examples, training θ and (unless the server froze it) ``w_y``, and returns both but
never a full matrix: the other rows are zeros that no loss term touches.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from torch import nn

from fedsim import wire
from fedsim.algorithms.fedaws import keys
from fedsim.client.actions import register_action
from fedsim.client.job import partition
from fedsim.client.steps import LocalStep, Reply, StepInputs, TrainResult, register_step
from fedsim.data.node_data import NodeData
from fedsim.models.cosine import EMBEDDINGS_KEY, CosineClassifier


@register_step(keys.STEP, help="FedAwS: positive-only squared hinge on the own class")
class PositiveOnlyStep(LocalStep):
    """Pull each feature's cosine with its own class row up to the positive margin."""

    trigger_key = keys.FEDAWS_CLASS
    dp_refusal = keys.DP_REFUSAL
    reads = frozenset({keys.FEDAWS_CLASS, keys.FEDAWS_POSITIVE_MARGIN, keys.FEDAWS_TRAIN_ROW})
    fills = frozenset({EMBEDDINGS_KEY})  # the server sends one row of it, never the matrix

    def __init__(self, inputs: StepInputs) -> None:
        super().__init__(inputs)
        model = inputs.global_model
        if not isinstance(model, CosineClassifier):
            raise ValueError("fedaws needs a class-embedding head: use model 'cosine'")
        self.cls = int(inputs.config[keys.FEDAWS_CLASS])
        self.margin = float(inputs.config[keys.FEDAWS_POSITIVE_MARGIN])
        self.train_row = bool(inputs.config.get(keys.FEDAWS_TRAIN_ROW, True))
        self.scale = model.scale
        row = torch.from_numpy(np.asarray(inputs.extras[keys.FEDAWS_ROW]))  # copied to the device
        with torch.no_grad():
            model.class_embeddings.zero_()
            model.class_embeddings[self.cls] = row
        # A frozen row gets no gradient, so the optimizer leaves it alone.
        model.class_embeddings.requires_grad_(self.train_row)

    def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example ``max(0, ν_pos - cos(g(x), w_y))²`` (logits are scale·cos)."""
        cos = logits.gather(1, targets[:, None]).squeeze(1) / self.scale
        return torch.relu(self.margin - cos).pow(2)

    def reply(self, model: nn.Module, data: NodeData, work: TrainResult | None) -> Reply:
        """Reply with θ and the trained row of the own class (no row when it was frozen)."""
        assert work is not None and isinstance(model, CosineClassifier)
        arrays = self.model_arrays(model)
        if self.train_row:
            row = model.class_embeddings[self.cls].detach().cpu().numpy().copy()
            arrays[keys.FEDAWS_ROW] = row
        return Reply(arrays, work)


@register_action("query", keys.QUERY_LABELS)
def labels(msg: Message, context: Context) -> Message:
    """Reply with the distinct labels this node holds (FedAwS asks once per node)."""
    scenario, _, data = partition(context)
    if scenario.client.dp is not None:
        raise ValueError(f"client.dp: {PositiveOnlyStep.dp_refusal}")
    held = sorted({int(v) for v in np.unique(data.y)})
    return Message(RecordDict({wire.METRICS: MetricRecord({keys.LABELS: held})}), reply_to=msg)
