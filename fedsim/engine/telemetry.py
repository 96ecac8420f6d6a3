"""Per-round counters an engine keeps about the messages it carried."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

from flwr.app import Message, MetricRecord

from fedsim import wire

# A delivered train reply's (train loss, num-examples, attacker flag), where known.
Delivered = tuple[Any, Any, bool]

# flwr.common.constant.ErrorCode: the SuperLink answers a message for a node that went
# offline (missed its heartbeats) with this error; it is a dropout, not a client failure.
NODE_UNAVAILABLE = 5


def content_bytes(message: Message) -> int:
    """Bytes a message's payload would occupy on the wire."""
    if not message.has_content():
        return 0
    return sum(record.count_bytes() for record in message.content.values())


def reply_metrics(reply: Message) -> MetricRecord:
    """The reply's first MetricRecord (``content.metric_records`` builds a new view per call)."""
    for record in reply.content.values():
        if isinstance(record, MetricRecord):
            return record
    return MetricRecord()


@dataclass
class RoundStats:
    """What the engine saw since the last :meth:`Telemetry.pop`.

    ``participants`` counts train replies delivered to the strategy; ``stragglers``
    replies that missed the deadline; ``dropouts`` messages never answered;
    ``failures`` error replies (a client raised); ``attackers`` the delivered train
    replies whose metrics flag them as an attacker's; ``epsilon`` the largest DP-SGD privacy
    spend any client reported (replies that missed the deadline included: their devices
    trained, and spent privacy, all the same).
    """

    participants: int = 0
    stragglers: int = 0
    dropouts: int = 0
    failures: int = 0
    attackers: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    train_loss_sum: float = 0.0
    train_examples: int = 0
    epsilon: float | None = None

    @property
    def train_loss(self) -> float | None:
        """Example-weighted mean train loss of the delivered train replies."""
        return self.train_loss_sum / self.train_examples if self.train_examples else None

    def as_record(self) -> dict[str, float | int | None]:
        """Return the fields that go into ``metrics.jsonl``."""
        out: dict[str, float | int | None] = {
            k: v for k, v in asdict(self).items() if k not in ("train_loss_sum", "train_examples")
        }
        out["train_loss"] = self.train_loss
        return out


@dataclass
class Telemetry:
    """Accumulates :class:`RoundStats`; the server pops them once per round."""

    current: RoundStats = field(default_factory=RoundStats)
    failure_reasons: list[str] = field(default_factory=list)

    def pop(self) -> RoundStats:
        """Return the stats since the last call and start afresh."""
        stats, self.current = self.current, RoundStats()
        return stats

    def record_upload(
        self, reply: Message, nbytes: int | None = None, metrics: MetricRecord | None = None
    ) -> None:
        """Count a reply that left its device (bytes, privacy spent), on time or not.

        ``nbytes`` and ``metrics`` are the reply's payload size and metrics when the caller
        has them already.
        """
        if reply.has_error():
            return
        stats = self.current
        stats.bytes_up += content_bytes(reply) if nbytes is None else nbytes
        eps = (reply_metrics(reply) if metrics is None else metrics).get(wire.EPSILON)
        if isinstance(eps, int | float) and math.isfinite(eps):
            self.record_epsilon(float(eps))

    def record_epsilon(self, eps: float) -> None:
        """Count privacy spent by a reply that left its device: the round keeps the most."""
        stats = self.current
        stats.epsilon = eps if stats.epsilon is None else max(stats.epsilon, eps)

    def record_delivery(self, reply: Message) -> None:
        """Count a reply handed to the strategy (participant, failure or dropout)."""
        stats = self.current
        if reply.has_error():
            if reply.error.code == NODE_UNAVAILABLE:
                stats.dropouts += 1
                return
            stats.failures += 1
            self.failure_reasons.append(reply.error.reason or "")
            return
        if not reply.metadata.message_type.startswith("train"):
            return
        metrics = reply_metrics(reply)
        # ``in`` first: a record's ``get`` of a missing key raises and catches inside.
        attacker = wire.ATTACKER_METRIC in metrics and metrics[wire.ATTACKER_METRIC] == 1
        self._count_train(metrics.get(wire.TRAIN_LOSS), metrics.get(wire.NUM_EXAMPLES), attacker)

    def record_deliveries(self, replies: Iterable[Message], known: Mapping[int, Delivered]) -> None:
        """:meth:`record_delivery` of each reply, in order.

        ``known`` holds, by reply ``id``, the (train loss, num-examples, attacker) of
        train replies whose metrics the caller has read already (a stacked chunk's).
        """
        rows: list[Delivered] = []  # known rows waiting, counted in arrival order
        for reply in replies:
            row = known.get(id(reply))
            if row is None:
                self._count_rows(rows)
                rows = []
                self.record_delivery(reply)
            else:
                rows.append(row)
        self._count_rows(rows)

    def _count_rows(self, rows: list[Delivered]) -> None:
        """:meth:`_count_train` of each row, the loss sum still added in row order."""
        if not rows:
            return
        stats = self.current
        stats.participants += len(rows)
        stats.attackers += sum(1 for _, _, attacker in rows if attacker)
        for loss, n, _ in rows:
            if _finite(loss) and _finite(n):
                stats.train_loss_sum += float(loss) * float(n)
                stats.train_examples += int(n)

    def _count_train(self, loss: object, n: object, attacker: bool) -> None:
        """Count one delivered train reply with these metrics."""
        stats = self.current
        stats.participants += 1
        stats.attackers += bool(attacker)
        # A reply's numbers are the client's word: a NaN count must not crash the count.
        if _finite(loss) and _finite(n):
            stats.train_loss_sum += float(loss) * float(n)
            stats.train_examples += int(n)


def _finite(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is one finite number."""
    return isinstance(value, int | float) and math.isfinite(value)
