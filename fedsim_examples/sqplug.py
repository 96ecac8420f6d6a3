"""A plugin algorithm in one file: its keys, its client step, its strategy and its spec.

Copy this file anywhere, then ``fedsim run scenario.yaml --import sqplug`` (or list it
under the scenario's ``plugins``). The clients train as FedAvg's do and also reply,
for every model parameter, its squared update ``(y - x)²`` under ``sqplug.sq.<name>``;
the server sums those into the metric ``sqplug-sum`` (``train/sqplug-sum`` in
``metrics.jsonl``) and averages the models. Those arrays are statistics of the client's
data that DP-SGD does not cover, so the algorithm refuses ``client.dp``.
"""

from flwr.app import ArrayRecord

import fedsim
from fedsim.algorithms.fedavg.server import FedAvg

# Keys: what the two halves share.
SQUARES = "sqplug.sq."  # reply arrays "<prefix><parameter name>", one per parameter
STEP = "sqplug-step"  # the local step the strategy asks for
REFUSAL = "sqplug clients upload their squared updates without clipping or noise"


@fedsim.register_step(STEP)
class SquaredUpdate(fedsim.LocalStep):
    """Plain local training; the reply adds each parameter's squared update."""

    dp_refusal = REFUSAL  # the client refuses too, should a scenario skip validation

    def __init__(self, inputs):
        super().__init__(inputs)
        params = inputs.global_model.named_parameters()
        self.anchor = {name: p.detach().clone() for name, p in params}

    def reply(self, model, data, work):
        """The trained model and ``sqplug.sq.<name>`` for every parameter."""
        arrays = dict(self.model_arrays(model))
        for name, p in model.named_parameters():
            arrays[SQUARES + name] = ((p.detach() - self.anchor[name]) ** 2).cpu().numpy()
        return fedsim.Reply(arrays, work)


@fedsim.register_algorithm("sqplug", steps=(STEP,), reply_prefixes=(SQUARES,), dp_refusal=REFUSAL)
class SquaredUpdateAvg(FedAvg):
    """FedAvg that also sums its clients' squared updates (metric ``sqplug-sum``)."""

    def configure_train(self, server_round, arrays, config, grid):
        """FedAvg's train messages, asking for the plugin's step."""
        config["local-step"] = STEP
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        """Sum the squared updates; average the models as FedAvg does."""
        replies, total = list(replies), 0.0
        for msg in replies:
            if msg.has_error():
                continue
            record = msg.content["arrays"]
            squares = {k: v for k, v in record.items() if k.startswith(SQUARES)}
            total += sum(float(v.numpy().sum()) for v in squares.values())
            # FedAvg averages the model: give it the model's arrays only.
            msg.content["arrays"] = ArrayRecord(
                {k: v for k, v in record.items() if k not in squares}
            )
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            metrics["sqplug-sum"] = total
        return arrays, metrics
