"""A Flower ``Grid`` wrapper that keeps fedsim's per-round telemetry.

The in-process grid counts what it carries itself. Under Flower's own runtimes (a
SuperLink deployment, the Ray simulation) the ServerApp gets Flower's grid; wrapping
it counts the same participants, failures, dropouts, bytes and train loss from the
messages that pass through, so ``metrics.jsonl`` has the same fields on every engine.
It also checks every reply (:mod:`fedsim.engine.reply_check`) before the strategy sees
it, and bounds a round's wait by ``engine.client_timeout_s``.

Given the scenario's virtual clock and device population, it keeps the clock as the
in-process grid does, with the same code (:mod:`fedsim.engine.delivery`): each
message's fate is drawn by (seed, dispatch, the node's partition); dropouts and injected
failures are not sent (a failure becomes the error reply the in-process engine makes);
each reply is stamped with its virtual arrival, those past ``system.deadline_s`` are
cut and counted as stragglers, and the replies reach the strategy in arrival order.
Nodes are known by their partition (:mod:`fedsim.engine.node_partitions`) and listed
in partition order, so Flower's sampling picks the partitions the in-process engine
picks. A round's metrics, virtual time and telemetry then equal the in-process run's.
Pushed and pulled messages (a strategy that runs its own loop) pass unclocked: the
ServerApp refuses such a strategy with a clock that would change anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsim.engine.clock import VirtualClock
from fedsim.engine.delivery import cut_at_deadline, settle
from fedsim.engine.devices import DeviceProfile
from fedsim.engine.dispatch_plan import DeviceTable, plan_dispatch
from fedsim.engine.flower_compat import assign_message_id
from fedsim.engine.node_contexts import NODE_ID_OFFSET
from fedsim.engine.node_partitions import NodePartitions
from fedsim.engine.reply_check import ReplyRules, WorkBound, agreeing, checked
from fedsim.engine.telemetry import Telemetry, content_bytes

# Longest wait for the nodes to say their partitions without engine.client_timeout_s.
PARTITION_QUERY_TIMEOUT_S = 300.0


class NoReply(TimeoutError):
    """A node that did not reply within ``engine.client_timeout_s`` (a failure)."""


class ObservedGrid(Grid):
    """Delegate every call to ``inner`` and count the messages in :attr:`telemetry`.

    Parameters
    ----------
    inner : Grid
        The grid the runtime handed to the ServerApp.
    client_timeout_s : float, optional
        Longest wait for a round's replies; a node that has not replied by then counts
        as a failure (Flower's runtimes run nodes in parallel, so this bounds each one).
    clock : VirtualClock, optional
        The scenario's virtual clock; with it, rounds are kept on the clock.
    population : sequence of DeviceProfile
        Partition ``k``'s simulated device at ``k`` (with ``clock``).
    deadline_s : float, optional
        ``system.deadline_s`` (with ``clock``).
    simulated : mapping of node id to partition id, optional
        Flower's simulated nodes' partitions, as the simulation itself assigned them
        (:func:`fedsim.engine.ray_actors.simulated_partitions`, filled before each
        node's first job); None where nodes hold their own data (a deployment). The
        reply bounds use these, not what the nodes say (:attr:`partitions`, which the
        clock needs before any job has run): a bound must not rest on a node's word.
    """

    def __init__(
        self,
        inner: Grid,
        client_timeout_s: float | None = None,
        clock: VirtualClock | None = None,
        population: Sequence[DeviceProfile] = (),
        deadline_s: float | None = None,
        simulated: Mapping[int, int] | None = None,
    ) -> None:
        self.inner = inner
        self.telemetry = Telemetry()
        self.client_timeout_s = client_timeout_s
        self.simulated = simulated
        self.reply_rules: ReplyRules | None = None
        self._sent: dict[str, Message] = {}  # pushed messages whose replies are not pulled
        self.clock = clock
        self.deadline_s = deadline_s
        self._devices = DeviceTable.of({NODE_ID_OFFSET + k: d for k, d in enumerate(population)})
        wait = PARTITION_QUERY_TIMEOUT_S if client_timeout_s is None else client_timeout_s
        self.partitions = NodePartitions(inner, wait)
        self._dispatch = 0

    @property
    def virtual_time_s(self) -> float | None:
        """Simulated seconds since the run started (None without a clock)."""
        return None if self.clock is None else self.clock.now

    def check_replies(
        self,
        model: ArrayRecord,
        partition_examples: Sequence[int],
        per_parameter: Sequence[str] = (),
        work: WorkBound | None = None,
    ) -> None:
        """Refuse replies that do not fit ``model`` (see :mod:`fedsim.engine.reply_check`).

        In a simulation (:attr:`simulated` known) a node holds
        ``partition_examples[its partition]`` examples, as in-process: its
        ``num-examples`` and ``train-samples`` are bounded by them (by the largest
        partition for a node not seen yet). A deployed node holds its own data, which
        the server cannot know: its ``num-examples`` is bounded by
        :data:`~fedsim.engine.reply_check.MAX_NODE_EXAMPLES`, and the ``train-samples``
        of its model replies by ``work`` over that ``num-examples``.
        """
        partitions = self.simulated
        if partitions is None:
            self.reply_rules = ReplyRules.for_model(model, per_parameter=per_parameter, work=work)
            return
        sizes = [float(n) for n in partition_examples]
        largest = max(sizes, default=math.inf)

        def node_examples(node: int) -> float:
            partition = partitions.get(node)
            in_range = partition is not None and 0 <= partition < len(sizes)
            return sizes[partition] if in_range else largest  # type: ignore[index]  # checked

        self.reply_rules = ReplyRules.for_model(
            model, node_examples, sum(sizes), per_parameter, work
        )

    def set_run(self, run: Any) -> None:
        """Set the run the inner grid operates in."""
        self.inner.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]  # flwr's Run is not a public type
        """Run information of the inner grid."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message through the inner grid (deprecated in Flower)."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Return the ids of the connected nodes (on the clock: in partition order)."""
        ids = self.inner.get_node_ids()
        return ids if self.clock is None else self.partitions.in_partition_order(ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push messages, counting their bytes."""
        messages = list(messages)
        self._count_sent(messages)
        ids = list(self.inner.push_messages(messages))
        self._sent.update((i, m) for i, m in zip(ids, messages, strict=False) if i)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull the replies that have arrived, checking and counting them."""
        replies = list(self.inner.pull_messages(message_ids))
        sent: dict[str, Message] = {}
        for reply in replies:
            message = self._sent.pop(reply.metadata.reply_to_message_id, None)
            if message is not None:
                sent[reply.metadata.reply_to_message_id] = message
        return self._received(replies, sent)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push messages and wait for their replies (or ``timeout``), counting both."""
        messages = list(messages)
        limit = timeout
        if self.client_timeout_s is not None:
            limit = min(math.inf if timeout is None else timeout, self.client_timeout_s)
        if self.clock is not None:
            return self._clocked_round(messages, limit)
        self._count_sent(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=limit))
        sent = {m.metadata.message_id: m for m in messages}
        if self.client_timeout_s is not None:
            answered = {r.metadata.reply_to_message_id for r in replies}
            for message_id, message in sent.items():
                if message_id not in answered:
                    self.telemetry.current.failures += 1
                    self.telemetry.failure_reasons.append(
                        f"node {message.metadata.dst_node_id}: no reply within "
                        f"engine.client_timeout_s={self.client_timeout_s:g}"
                    )
        return self._received(replies, sent, round_of_replies=True)

    def _count_sent(self, messages: list[Message]) -> None:
        self.telemetry.current.bytes_down += sum(content_bytes(m) for m in messages)

    def _received(
        self, replies: list[Message], sent: dict[str, Message], *, round_of_replies: bool = False
    ) -> list[Message]:
        if self.reply_rules is not None:
            self.reply_rules.new_dispatch()
            replies = [
                checked(self.reply_rules, sent[r.metadata.reply_to_message_id], r)
                if r.metadata.reply_to_message_id in sent
                else r
                for r in replies
            ]
            if round_of_replies:
                replies = agreeing(replies, sent)
        for reply in replies:
            self.telemetry.record_upload(reply)
            self.telemetry.record_delivery(reply)
        return replies

    def _clocked_round(self, messages: list[Message], limit: float | None) -> list[Message]:
        """:meth:`send_and_receive` on the virtual clock, as ``InProcessGrid`` runs a round."""
        clock = self.clock
        assert clock is not None  # only called with a clock
        self._dispatch += 1
        if self.reply_rules is not None:
            self.reply_rules.new_dispatch()
        start = clock.now
        self.partitions.learn(m.metadata.dst_node_id for m in messages)
        nodes = [self.partitions.clock_id(m.metadata.dst_node_id) for m in messages]
        ids = [str(i) for i in range(len(messages))]
        plan = plan_dispatch(clock, self._devices, self._dispatch, messages, ids, nodes)
        # Dropouts never reach their node; injected failures are the engine's, not a
        # client's: only the others are sent (and their clients run), as in-process.
        runs = plan.runs()
        # (Nothing to send when every message was dropped: no call to Flower at all.)
        sent = [messages[i] for i in runs]
        replies = self.inner.send_and_receive(sent, timeout=limit) if runs else []
        by_message = {r.metadata.reply_to_message_id: r for r in replies}
        waited = (
            "the round's timeout"
            if self.client_timeout_s is None
            else (f"engine.client_timeout_s={self.client_timeout_s:g}")
        )
        for i, message in zip(runs, sent, strict=True):
            reply = by_message.get(message.metadata.message_id)
            plan.outcomes[i] = NoReply(f"no reply within {waited}") if reply is None else reply
        for i, message in enumerate(messages):
            if not message.metadata.message_id:  # not sent: its error reply needs an id
                assign_message_id(message, f"unsent-{self._dispatch}-{i}")
        settled = settle(
            clock, self.telemetry, self.reply_rules, self._dispatch, plan, self._devices
        )
        on_time = cut_at_deadline(clock, self.telemetry, start, self.deadline_s, settled.arrivals)
        if self.reply_rules is not None:
            by_id = {m.metadata.message_id: m for m in messages}
            on_time = agreeing(on_time, by_id, settled.known)
        self.telemetry.record_deliveries(on_time, settled.delivered)
        return on_time
