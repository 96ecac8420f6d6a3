"""Flower's Ray simulation, patched where fedsim's ServerApp needs it.

A dead Ray actor is replaced, so one client that kills its process costs one failure
(:func:`replace_dead_actors`); the simulation's node-to-partition assignment is noted
as jobs pass, so replies are checked against their node's partition as in-process
(:func:`simulated_partitions`).

Flower 1.41's simulation backend puts the actor of a failed job back into its pool,
dead or alive: after one client ends its actor's process (a segfault, ``os._exit``, a
SIGKILL), every later job sent to that actor fails too, and training stops for the rest
of the run. fedsim's ServerApp, which runs in the simulation's process, wraps the
pool's result fetch once: a job whose actor died still fails (one counted failure, as
Flower reports it), and a fresh actor takes the dead one's place in the pool.

This reaches into Flower's simulation internals (``BasicActorPool``, ``RayBackend``):
the pinned flwr version and ``tests/engine/test_ray_actors.py`` (Ray runs in which a
client kills its actor, and in which clients overstate their work) hold it in place.
"""

from __future__ import annotations

import sys
from typing import Any

from fedsim.wire import PARTITION_ID


def replace_dead_actors() -> bool:
    """Make Flower's Ray actor pool replace actors that died (idempotent).

    Returns whether the pool is patched (False outside a process that runs Ray: nothing
    to patch).
    """
    if "ray" not in sys.modules:  # not Flower's simulation process (a deployment's)
        return False
    try:
        import ray
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool
    except ImportError:
        return False
    if getattr(BasicActorPool, "_fedsim_replaces_dead_actors", False):
        return True
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool

    def fetch_replacing_dead(self: Any, future: Any) -> Any:
        try:
            return fetch(self, future)
        except ray.exceptions.RayActorError:
            # Flower's backend hands the future's actor back to the pool after this
            # error: make that actor a fresh one.
            self._future_to_actor[future] = self.create_actor_fn()
            raise

    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_replacing_dead  # type: ignore[method-assign]
    BasicActorPool._fedsim_replaces_dead_actors = True  # type: ignore[attr-defined]
    return True


_partitions: dict[int, int] = {}


def simulated_partitions() -> dict[int, int] | None:
    """Node id -> partition id of Flower's simulated nodes, filled as their jobs start.

    Flower's simulation gives node ``k`` (a random node id) ``partition-id`` ``k`` in its
    node config, which the ServerApp never sees; its Ray backend reads it before running
    each job, so noting it there names every node's partition before its first reply
    arrives. None outside a process that runs Ray (a deployment's: nodes hold their
    own data).
    """
    if "ray" not in sys.modules:
        return None
    try:
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    except ImportError:
        return None
    if not getattr(RayBackend, "_fedsim_notes_partitions", False):
        process = RayBackend.process_message

        def noting_partition(self: Any, message: Any, context: Any) -> Any:
            node = message.metadata.dst_node_id
            _partitions[node] = int(context.node_config[PARTITION_ID])
            return process(self, message, context)

        RayBackend.process_message = noting_partition  # type: ignore[method-assign]
        RayBackend._fedsim_notes_partitions = True  # type: ignore[attr-defined]
    return _partitions
