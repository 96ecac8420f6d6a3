"""How much work a reply may claim: the numbers that drive the virtual clock.

Part of the reply checks (:mod:`fedsim.engine.reply_check`): ``train-samples`` within
what one local job can take, ``duration-s`` within the time since the message was sent.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from flwr.app import Message, MetricRecord

from fedsim import wire

# A client's wall-clock seconds cannot exceed the time since the server made its message;
# the slack covers timestamps taken on different clocks of one host (and rounding).
CLOCK_SLACK_S = 1.0
# The most examples a node's reply may count where the server cannot know its data (a
# deployed node): a plausibility cap, far above any device's data, that keeps absurd
# counts (1e300) out of weighted averages and work bounds; not a proof of honesty.
MAX_NODE_EXAMPLES = 1e9


@dataclass(frozen=True)
class WorkBound:
    """The most training samples one local job may report (``client`` section's numbers).

    A job takes ``local_steps`` batches, or ``local_epochs`` passes over the examples
    in batches of ``batch_size`` (the last one of each pass may be short), so it touches
    at most ``local_steps x batch_size`` or ``local_epochs x (examples + batch_size)``
    samples. Under DP's Poisson sampling a batch's size is random (each example joins
    with probability ``batch_size / examples``), so one batch may hold every example:
    the bound is then ``batches x examples``.
    """

    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 1
    poisson: bool = False  # client.dp with sampling: poisson

    def samples(self, examples: float) -> float:
        """The most samples a job over ``examples`` examples touches."""
        if self.poisson:
            batches = self.local_steps or self.local_epochs * math.ceil(examples / self.batch_size)
            return float(batches * max(examples, self.batch_size))
        if self.local_steps is not None:
            return float(self.local_steps * self.batch_size)
        return self.local_epochs * (examples + self.batch_size)


def work_problem(
    sent: Message, metrics: MetricRecord, work: WorkBound | None, examples: float
) -> str | None:
    """What is wrong with a reply's ``train-samples`` and ``duration-s`` (clock inputs)."""
    samples = metrics.get(wire.TRAIN_SAMPLES)
    if isinstance(samples, list):
        return f"{wire.TRAIN_SAMPLES} is a list"
    if samples is not None:
        if samples < 0:
            return f"{wire.TRAIN_SAMPLES} {samples:g} is negative"
        most = math.inf if work is None else work.samples(examples)
        if samples > most:
            return f"{wire.TRAIN_SAMPLES} {samples:g} exceeds the {most:g} a local job can take"
    duration = metrics.get(wire.DURATION_S)
    if isinstance(duration, list):
        return f"{wire.DURATION_S} is a list"
    if duration is not None:
        elapsed = time.time() - sent.metadata.created_at + CLOCK_SLACK_S
        if not 0 <= duration <= elapsed:
            return (
                f"{wire.DURATION_S} {duration:g} is not within the {elapsed:.3g} s "
                "since the message was sent"
            )
    return None
