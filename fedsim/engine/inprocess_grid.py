"""The in-process engine: a Flower ``Grid`` that calls the ClientApp directly.

No Ray, no polling and no serialisation round trip: a pushed message is handled at
once by calling ``ClientApp(message, context)`` with the node's persistent
``Context``. Each reply is stamped with a simulated arrival time from the node's
device profile (:mod:`fedsim.engine.clock`). ``send_and_receive`` returns the replies
that beat the round deadline; ``push_messages``/``pull_messages`` hand replies out in
virtual-time order for asynchronous strategies.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.engine.clock import VirtualClock
from fedsim.engine.delivery import (
    DeviceTraceExhausted,
    Pending,
    Settled,
    cut_at_deadline,
    online_nodes,
    settle,
)
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.dispatch_plan import DeviceTable, InjectedFault, plan_dispatch
from fedsim.engine.executor import (
    ClientCallable,
    ClientExecutor,
    SerialExecutor,
)
from fedsim.engine.flower_compat import assign_message_ids, empty_run
from fedsim.engine.node_contexts import NODE_ID_OFFSET as NODE_ID_OFFSET
from fedsim.engine.node_contexts import NodeContexts
from fedsim.engine.node_contexts import node_contexts as node_contexts
from fedsim.engine.reply_check import ReplyRules, WorkBound, agreeing
from fedsim.engine.telemetry import Telemetry
from fedsim.engine.watchdog import Watchdog
from fedsim.errors import FedsimWarning
from fedsim.process_note import current as process_note
from fedsim.reply_chunk import chunk_rows

__all__ = [
    "NODE_ID_OFFSET",
    "DeviceTraceExhausted",
    "InProcessGrid",
    "InjectedFault",
    "node_contexts",
]


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
    client_timeout_s : float, optional
        Wall-clock seconds a client call may take before it is abandoned and counted
        as a failure (see :mod:`fedsim.engine.watchdog` for what abandoning means).

    executor : ClientExecutor, optional
        Runs the client calls (default: a :class:`SerialExecutor` over ``contexts``,
        with the watchdog); a :class:`fedsim.engine.executor.WorkerPool` keeps the
        nodes' states in its worker processes (``contexts`` then only names the nodes).
    min_online : int
        With a device trace: :meth:`get_node_ids` first moves simulated time on until
        this many nodes are online (the server waiting for devices to check in).
    batch_clients : int
        ``engine.batch_clients`` for the default executor (a pool's workers get it in
        their :class:`~fedsim.engine.executor.WorkerSpec`); off under a client timeout.

    Replies are checked against :attr:`reply_rules` (set by :meth:`check_replies`)
    before anything else sees them; see :mod:`fedsim.engine.reply_check`.
    """

    def __init__(
        self,
        client_app: ClientCallable,
        contexts: Mapping[int, Context],
        devices: Mapping[int, DeviceProfile],
        clock: VirtualClock,
        deadline_s: float | None = None,
        run_id: int = 1,
        client_timeout_s: float | None = None,
        min_online: int = 1,
        executor: ClientExecutor | None = None,
        batch_clients: int = 0,
    ) -> None:
        self.client_app = client_app
        if batch_clients and client_timeout_s is not None:
            warnings.warn(
                "engine.batch_clients is off under engine.client_timeout_s: the watchdog "
                "times each client alone",
                FedsimWarning,
                stacklevel=2,
            )
        # A NodeContexts stays lazy; any other mapping is copied as before.
        self.contexts = contexts if isinstance(contexts, NodeContexts) else dict(contexts)
        self.devices = dict(devices)
        self.table = DeviceTable.of(self.devices)
        self.clock = clock
        self.deadline_s = deadline_s
        self.telemetry = Telemetry()
        self._run = empty_run(run_id)
        self._pending: list[Pending] = []
        self._dispatch = 0
        self._seq = 0
        self.reply_rules: ReplyRules | None = None
        self._sent: dict[str, Message] = {}  # this dispatch's messages by id
        watchdog = None if client_timeout_s is None else Watchdog(client_timeout_s)
        # The client calls: here, one after another, unless the engine brings a pool;
        # here, each call is noted first, for the supervisor of `fedsim run`.
        self.executor: ClientExecutor = executor or SerialExecutor(
            client_app, self.contexts, watchdog, batch_clients, process_note()
        )
        self.min_online = min_online
        self._availability = {n: d.availability for n, d in self.devices.items()}
        self._traced = any(a is not None for a in self._availability.values())

    def check_replies(
        self,
        model: ArrayRecord,
        partition_examples: Sequence[int],
        per_parameter: Sequence[str] = (),
        work: WorkBound | None = None,
    ) -> None:
        """Refuse replies that do not fit ``model`` or claim more examples than their node has.

        ``partition_examples[k]`` is the number of examples of partition ``k``;
        ``per_parameter`` the reply array prefixes that stand for one parameter each;
        ``work`` bounds the ``train-samples`` a reply may claim (they drive the clock).
        """
        sizes = list(partition_examples)
        known: dict[int, float] = {}  # a node's partition never changes in-process

        def node_examples(node: int) -> float:
            examples = known.get(node)
            if examples is None:
                partition = int(self.contexts[node].node_config[wire.PARTITION_ID])
                examples = sizes[partition] if 0 <= partition < len(sizes) else math.inf
                known[node] = examples
            return examples

        total = float(sum(sizes))
        self.reply_rules = ReplyRules.for_model(model, node_examples, total, per_parameter, work)

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
        """Return the connected nodes: all of them, or with a device trace those online.

        With a trace, simulated time first moves on until ``min_online`` nodes are
        online (the server waiting for devices to check in). Flower's strategies poll
        in wall-clock time until ``min_available_nodes``/``min_train_nodes`` are
        connected, so those must not exceed ``min_online`` (the server checks).
        """
        if not self._traced:
            return list(self.contexts)
        return online_nodes(self.clock, self._availability, self.min_online, self._dispatch)

    @property
    def virtual_time_s(self) -> float:
        """Simulated seconds since the run started."""
        return self.clock.now

    @property
    def latency_s(self) -> float:
        """One-way network latency of every link (``system.latency_s``)."""
        return self.clock.cfg.latency_s

    def device(self, node_id: int) -> DeviceProfile:
        """The simulated device of ``node_id`` (speed and link bandwidths)."""
        return self.devices[node_id]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver messages now; their replies become pullable at their arrival times."""
        settled = self._settled(messages)
        ids = list(self._sent)
        for message_id, (arrival, reply) in zip(ids, settled.arrivals, strict=True):
            if reply is not None:
                heapq.heappush(self._pending, Pending(arrival, self._seq, message_id, reply))
                self._seq += 1
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the earliest reply among ``message_ids`` (advancing the clock to it).

        Replies already arrived are all returned; if none has, simulated time moves to
        the earliest arrival among those asked for. Replies never come for dropouts.
        """
        return self.pull_messages_until(message_ids, math.inf)

    def pull_messages_until(self, message_ids: Iterable[str], until_s: float) -> list[Message]:
        """:meth:`pull_messages` that never moves simulated time past ``until_s``.

        The virtual-clock form of polling with a timeout: if no reply among
        ``message_ids`` arrives by ``until_s``, the clock moves to ``until_s`` and
        nothing is returned. Asynchronous strategies use it to act at fixed simulated
        times (central evaluation every so many seconds).
        """
        wanted = set(message_ids)
        mine = [p for p in self._pending if p.message_id in wanted]
        first = min((p.arrival for p in mine), default=math.inf)
        if first > until_s:
            self.clock.now = max(self.clock.now, until_s)
            return []
        if not mine:
            return []
        self.clock.now = max(self.clock.now, first)
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
        settled = self._settled(messages)
        replies = cut_at_deadline(
            self.clock, self.telemetry, start, self.deadline_s, settled.arrivals
        )
        if self.reply_rules is not None:
            replies = agreeing(replies, self._sent, settled.known)
        self.telemetry.record_deliveries(replies, settled.delivered)
        return chunk_rows(replies, settled.rows)

    # ------------------------------------------------------------- checkpoints

    def engine_state(self) -> dict[str, Any]:
        """Return what a resumed run needs: node states, clock, counters, telemetry.

        Taken between rounds, when no reply is in flight.
        """
        if self._pending:
            raise RuntimeError("cannot checkpoint the grid while replies are in flight")
        return {
            "now": self.clock.now,
            "dispatch": self._dispatch,
            "seq": self._seq,
            "telemetry": self.telemetry,
            "events": None if self.clock.events is None else list(self.clock.events),
            # Only nodes that keep something: most of a large population never trains.
            "node_states": self.executor.node_states(),
        }

    def restore_engine_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`engine_state` returned."""
        self.clock.now = state["now"]
        self._dispatch, self._seq = state["dispatch"], state["seq"]
        self.telemetry = state["telemetry"]
        if state.get("events") is not None:
            self.clock.events = list(state["events"])
        self.executor.restore_node_states(state["node_states"])

    def close(self) -> None:
        """Stop the executor's worker processes, if any (the run is over)."""
        self.executor.close()

    # ---------------------------------------------------------------- internals

    def _settled(self, messages: Iterable[Message]) -> Settled:
        """Handle every message of one dispatch: each one's arrival and reply (or None).

        Three phases, so that what the strategy sees does not depend on the executor:
        fates for the whole dispatch, the client calls all at once through
        :attr:`executor`, then clock stamps and telemetry for the whole dispatch again.
        The dispatch's message ids are :attr:`_sent`'s keys, in message order.
        """
        self._dispatch += 1
        if self.reply_rules is not None:
            self.reply_rules.new_dispatch()
        messages = list(messages)
        ids = [f"{self._dispatch}-{i}" for i in range(len(messages))]
        assign_message_ids(messages, ids)
        self._sent = dict(zip(ids, messages, strict=True))
        plan = plan_dispatch(self.clock, self.table, self._dispatch, messages, ids)
        runs = plan.runs()
        plan.deliver(runs, self.executor.run([(messages[i], plan.nodes[i]) for i in runs]))
        return settle(
            self.clock, self.telemetry, self.reply_rules, self._dispatch, plan, self.table
        )
