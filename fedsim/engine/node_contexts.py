"""One persistent flwr ``Context`` per simulated node, built on first use."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from flwr.app import Context, RecordDict, UserConfig

from fedsim import wire

NODE_ID_OFFSET = 1000  # node ids 1000, 1001, ...: clear of the SuperLink's id 1


class NodeContexts(Mapping[int, Context]):
    """One persistent Context per node, built the first time the node is looked up.

    A large population where each round samples a few nodes never builds the Contexts
    of the nodes that are never sent a message (10,000 nodes at 1% per round build a
    few hundred).

    Parameters
    ----------
    num_nodes : int
        Population size; node ids are ``NODE_ID_OFFSET + k`` for partition ``k``.
    run_config : UserConfig
        Flower's run config every Context carries (each gets its own copy).
    run_id : int
        Flower run id.
    """

    def __init__(self, num_nodes: int, run_config: UserConfig, run_id: int = 1) -> None:
        self.num_nodes = num_nodes
        self.run_config = dict(run_config)
        self.run_id = run_id
        self.built: dict[int, Context] = {}

    def __getitem__(self, node_id: int) -> Context:
        context = self.built.get(node_id)
        if context is None:
            k = node_id - NODE_ID_OFFSET
            if not 0 <= k < self.num_nodes:
                raise KeyError(node_id)
            context = self.built[node_id] = Context(
                run_id=self.run_id,
                node_id=node_id,
                node_config={wire.PARTITION_ID: k, wire.NUM_PARTITIONS: self.num_nodes},
                state=RecordDict(),
                run_config=dict(self.run_config),
            )
        return context

    def __iter__(self) -> Iterator[int]:
        return iter(range(NODE_ID_OFFSET, NODE_ID_OFFSET + self.num_nodes))

    def __len__(self) -> int:
        return self.num_nodes


def node_contexts(num_nodes: int, run_config: UserConfig, run_id: int = 1) -> NodeContexts:
    """One persistent Context per node, with Flower's partition keys in node_config."""
    return NodeContexts(num_nodes, run_config, run_id)
