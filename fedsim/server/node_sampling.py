"""The generator Flower's strategies sample nodes with, apart from the global ``random``.

Flower's strategies pick a round's nodes with ``random.sample`` on the module-level
``random`` of ``flwr.serverapp.strategy.strategy_utils`` (the legacy strategies: of
``flwr.server.client_manager``). In-process nothing else draws from that global
generator, so seeding it made the sample reproducible. In Flower's Ray simulation the
ServerApp shares its process with Ray's and Flower's own threads, which also draw from
the global generator, at moments that depend on timing: under load a round sampled
other nodes (seen in 1 of about 10 runs), and its stragglers and virtual time differed
from the in-process run's.

:data:`SAMPLER` is fedsim's own generator, handed to those two modules in place of the
module: it is seeded with the run seed, saved in checkpoints and drawn from by nothing
else, so a run samples the same nodes on every engine and under any load. Its draws are
those the seeded global generator gave when nothing else used it, so runs keep their
samples.
"""

from __future__ import annotations

import random
from types import ModuleType

# Drawn from only by the node sampling of the modules :func:`seed_sampling` patches.
SAMPLER = random.Random(0)


def _sampling_modules() -> list[ModuleType]:
    from flwr.server import client_manager
    from flwr.serverapp.strategy import strategy_utils

    return [strategy_utils, client_manager]


def seed_sampling(seed: int) -> None:
    """Seed :data:`SAMPLER` and make Flower's node sampling draw from it (idempotent)."""
    SAMPLER.seed(seed)
    for module in _sampling_modules():
        # The modules call ``random.sample``: a Random instance answers that call.
        module.random = SAMPLER  # type: ignore[attr-defined]
