"""Which partition each of Flower's nodes holds: a node's identity on the virtual clock.

The in-process engine names node ``k``'s partition ``NODE_ID_OFFSET + k``, and draws
its device, its fates and its place in Flower's client sampling from that id. Flower's
runtimes (the Ray simulation, a deployment) give nodes random ids and do not tell the
server which partition a node holds, so the server asks each node once
(``query.partition``: the ClientApp replies with its ``partition-id``) and from then
on uses the partition's in-process id wherever the clock needs a node's identity.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedsim import wire
from fedsim.engine.node_contexts import NODE_ID_OFFSET
from fedsim.engine.telemetry import reply_metrics
from fedsim.errors import FedsimError


class PartitionUnknown(FedsimError):
    """A node did not say which partition it holds, or two nodes claim the same one."""


class NodePartitions:
    """Each node's partition, learnt by asking the nodes not asked yet.

    Parameters
    ----------
    grid : Grid
        Flower's grid (the questions bypass fedsim's counting: they are no round's).
    timeout_s : float
        Longest wall-clock wait for the nodes' answers.
    """

    def __init__(self, grid: Grid, timeout_s: float) -> None:
        self.grid = grid
        self.timeout_s = timeout_s
        self.partition: dict[int, int] = {}

    def learn(self, node_ids: Iterable[int]) -> None:
        """Ask every node in ``node_ids`` not asked yet which partition it holds.

        Raises
        ------
        PartitionUnknown
            If a node does not answer in time, answers with an error, or claims a
            partition another node holds.
        """
        unknown = [n for n in node_ids if n not in self.partition]
        if not unknown:
            return
        questions = [Message(RecordDict(), n, wire.QUERY_PARTITION) for n in unknown]
        replies = self.grid.send_and_receive(questions, timeout=self.timeout_s)
        answers = {r.metadata.src_node_id: r for r in replies}
        owners = {p: n for n, p in self.partition.items()}
        for node in unknown:
            reply = answers.get(node)
            if reply is None or reply.has_error():
                why = (
                    "no answer" if reply is None else (reply.error.reason or "error").split("\n")[0]
                )
                raise PartitionUnknown(
                    f"node {node} did not say its {wire.PARTITION_ID} within "
                    f"{self.timeout_s:g} s ({why}); the virtual clock needs it"
                )
            partition = int(reply_metrics(reply).get(wire.PARTITION_ID, -1))  # type: ignore[arg-type]
            if partition < 0:
                raise PartitionUnknown(f"node {node} answered without a {wire.PARTITION_ID}")
            if partition in owners:
                raise PartitionUnknown(
                    f"nodes {owners[partition]} and {node} both hold "
                    f"{wire.PARTITION_ID} {partition}: each node needs its own"
                )
            owners[partition] = node
            self.partition[node] = partition

    def clock_id(self, node_id: int) -> int:
        """The node's id on the clock: its partition's in-process node id."""
        return NODE_ID_OFFSET + self.partition[node_id]

    def in_partition_order(self, node_ids: Iterable[int]) -> list[int]:
        """``node_ids`` in the order of their partitions (the in-process engine's order).

        Flower's sampling (``random.sample``) picks positions in this list, so the same
        seed samples the same partitions on every engine.
        """
        ids = list(node_ids)
        self.learn(ids)
        return sorted(ids, key=self.partition.__getitem__)
