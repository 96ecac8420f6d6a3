"""A dead Ray actor is replaced, so one client that kills its process costs one failure.

Flower 1.41's simulation backend puts the actor of a failed job back into its pool,
dead or alive: after one client ends its actor's process (a segfault, ``os._exit``, a
SIGKILL), every later job sent to that actor fails too, and training stops for the rest
of the run. fedsim's ServerApp, which runs in the simulation's process, wraps the
pool's result fetch once: a job whose actor died still fails (one counted failure, as
Flower reports it), and a fresh actor takes the dead one's place in the pool.

This reaches into Flower's simulation internals (``BasicActorPool``): the pinned flwr
version and ``tests/engine/test_ray_actors.py`` (a Ray run in which a client kills its actor)
hold it in place.
"""

from __future__ import annotations

import sys
from typing import Any


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
