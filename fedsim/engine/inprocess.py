"""The in-process engine: a Flower ``Grid`` that calls the ClientApp directly.

No Ray, no polling and no serialisation round trip: a pushed message is handled at
once by calling ``ClientApp(message, context)`` with the node's persistent
``Context``. Each reply is stamped with a simulated arrival time from the node's
device profile (:mod:`fedsim.engine.clock`). ``send_and_receive`` returns the replies
that beat the round deadline; ``push_messages``/``pull_messages`` hand replies out in
virtual-time order for asynchronous strategies.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
    UserConfig,
)
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.engine.clock import EVAL_COST_FACTOR, Fate, VirtualClock
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.flower_compat import assign_message_id, empty_run
from fedsim.engine.telemetry import Telemetry, content_bytes, reply_metrics

ClientCallable = Callable[[Message, Context], Message]

CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode
NODE_ID_OFFSET = 1000  # node ids 1000, 1001, ...: clear of the SuperLink's id 1


class InjectedFault(RuntimeError):
    """Raised in place of a client when the scenario's ``system.failure_prob`` fires."""


def copy_content(content: RecordDict) -> RecordDict:
    """Copy the record containers a client could mutate (arrays are immutable bytes).

    Flower's strategies put one shared ``RecordDict`` into every message; transports
    serialise it, so in-process each node needs its own containers.
    """
    out = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            out[key] = ArrayRecord(dict(record.items()))
        elif isinstance(record, ConfigRecord):
            out[key] = ConfigRecord({k: copy.copy(v) for k, v in record.items()})
        elif isinstance(record, MetricRecord):
            out[key] = MetricRecord({k: copy.copy(v) for k, v in record.items()})
    return out


@dataclass(order=True)
class _Pending:
    arrival: float
    seq: int
    message_id: str = field(compare=False)
    reply: Message = field(compare=False)


class InProcessGrid(Grid):
    """A :class:`flwr.serverapp.Grid` that runs every node in this process.

    Parameters
    ----------
    client_app : callable
        ``ClientApp`` (or any ``(Message, Context) -> Message`` callable).
    contexts : mapping of node id to Context
        One persistent context per node.
    devices : mapping of node id to DeviceProfile
        The simulated device of each node.
    clock : VirtualClock
        Timing model and the run's simulated time.
    deadline_s : float, optional
        Round deadline for ``send_and_receive``; later replies are stragglers.
    run_id : int
        Flower run id reported by :attr:`run`.
    """

    def __init__(
        self,
        client_app: ClientCallable,
        contexts: Mapping[int, Context],
        devices: Mapping[int, DeviceProfile],
        clock: VirtualClock,
        deadline_s: float | None = None,
        run_id: int = 1,
    ) -> None:
        self.client_app = client_app
        self.contexts = dict(contexts)
        self.devices = dict(devices)
        self.clock = clock
        self.deadline_s = deadline_s
        self.telemetry = Telemetry()
        self._run = empty_run(run_id)
        self._pending: list[_Pending] = []
        self._dispatch = 0
        self._seq = 0

    # ----------------------------------------------------------------- Grid API

    def set_run(self, run: object) -> None:
        """Set the run this grid operates in."""
        self._run = run

    @property
    def run(self):  # type: ignore[no-untyped-def]  # flwr's Run is not a public type
        """Run information."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message (deprecated in Flower; kept for older strategies)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Return every node id (all nodes are always connected)."""
        return list(self.contexts)

    @property
    def virtual_time_s(self) -> float:
        """Simulated seconds since the run started."""
        return self.clock.now

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver messages now; their replies become pullable at their arrival times."""
        ids: list[str] = []
        for arrival, message_id, reply in self._dispatch_all(messages):
            ids.append(message_id)
            if reply is not None:
                heapq.heappush(self._pending, _Pending(arrival, self._seq, message_id, reply))
                self._seq += 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the earliest reply among ``message_ids`` (advancing the clock to it).

        Replies already arrived are all returned; if none has, simulated time moves to
        the earliest arrival among those asked for. Replies never come for dropouts.
        """
        wanted = set(message_ids)
        mine = [p for p in self._pending if p.message_id in wanted]
        if not mine:
            return []
        self.clock.now = max(self.clock.now, min(p.arrival for p in mine))
        ready = [p for p in mine if p.arrival <= self.clock.now]
        ready_ids = {p.message_id for p in ready}
        self._pending = [p for p in self._pending if p.message_id not in ready_ids]
        heapq.heapify(self._pending)
        replies = [p.reply for p in sorted(ready)]
        for reply in replies:
            self.telemetry.record_delivery(reply)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Run one synchronous round: every reply that beats the deadline, in arrival order.

        ``timeout`` (Flower's wall-clock limit) has no meaning on a virtual clock; the
        scenario's ``system.deadline_s`` plays its part.
        """
        start = self.clock.now
        arrived = sorted(
            (arrival, i, reply)
            for i, (arrival, _, reply) in enumerate(self._dispatch_all(messages))
            if reply is not None
        )
        if not arrived:
            return []
        cutoff = float("inf") if self.deadline_s is None else start + self.deadline_s
        on_time = [(a, r) for a, _, r in arrived if a <= cutoff]
        late = len(arrived) - len(on_time)
        self.telemetry.current.stragglers += late
        self.clock.now = cutoff if late else max(a for a, _ in on_time)
        for _, reply in on_time:
            self.telemetry.record_delivery(reply)
        return [r for _, r in on_time]

    # ---------------------------------------------------------------- internals

    def _dispatch_all(self, messages: Iterable[Message]) -> list[tuple[float, str, Message | None]]:
        """Handle every message of one dispatch; return (arrival, id, reply or None)."""
        self._dispatch += 1
        out: list[tuple[float, str, Message | None]] = []
        for i, message in enumerate(messages):
            message_id = f"{self._dispatch}-{i}"
            assign_message_id(message, message_id)
            arrival, reply = self._handle(message)
            out.append((arrival, message_id, reply))
        return out

    def _handle(self, message: Message) -> tuple[float, Message | None]:
        """Run one node on one message; return its reply and simulated arrival time."""
        node = message.metadata.dst_node_id
        device = self.devices[node]
        fate = self.clock.draw(self._dispatch, node)
        nbytes = content_bytes(message)
        self.telemetry.current.bytes_down += nbytes
        if fate is Fate.DROPOUT:
            self.telemetry.current.dropouts += 1
            return 0.0, None
        t = self.clock.now + self.clock.download_s(device, nbytes)
        delivered = Message(  # type: ignore[call-overload]  # flwr's own copy path
            content=copy_content(message.content), metadata=copy.copy(message.metadata)
        )
        try:
            if fate is Fate.FAILURE:
                raise InjectedFault("fault injected by system.failure_prob")
            reply = self.client_app(delivered, self.contexts[node])
        except Exception as exc:  # a failing client never kills a run
            reply = Message(
                Error(CLIENT_APP_RAISED_EXCEPTION, f"{type(exc).__name__}: {exc}"), reply_to=message
            )
        if reply.has_error():
            return t + self.clock.upload_s(device, 0), reply
        up = content_bytes(reply)
        self.telemetry.record_upload(reply)
        t += self.clock.compute_s(device, _work(message, reply), fate)
        return t + self.clock.upload_s(device, up), reply


def _work(message: Message, reply: Message) -> float:
    """Training examples' worth of compute a reply represents (drives the clock)."""
    metrics = reply_metrics(reply)
    kind = message.metadata.message_type
    if kind.startswith("train"):
        return float(metrics.get(wire.TRAIN_SAMPLES, metrics.get(wire.NUM_EXAMPLES, 0)))  # type: ignore[arg-type]
    if kind.startswith("evaluate"):
        return EVAL_COST_FACTOR * float(metrics.get(wire.NUM_EXAMPLES, 0))  # type: ignore[arg-type]
    return 0.0


def node_contexts(num_nodes: int, run_config: UserConfig, run_id: int = 1) -> dict[int, Context]:
    """One persistent Context per node, with Flower's partition keys in node_config."""
    return {
        NODE_ID_OFFSET + k: Context(
            run_id=run_id,
            node_id=NODE_ID_OFFSET + k,
            node_config={wire.PARTITION_ID: k, wire.NUM_PARTITIONS: num_nodes},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        for k in range(num_nodes)
    }
