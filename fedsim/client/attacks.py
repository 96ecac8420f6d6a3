"""Byzantine clients (``system.attackers``): a Flower client mod ``(msg, ctx, call_next)``.

Whether a node attacks is decided on the node, from what every engine gives it: the
node config's ``attacker`` (true/false, set with ``flower-supernode --node-config``)
if present, else the scenario's ``system.attackers`` (``nodes``, or a ``fraction`` of
the partitions drawn from the run seed, see :func:`attacker_partitions`). So the same
attacker runs in-process, on Ray and on a deployed SuperNode.

An attacker trains honestly, then replaces its update ``u = w - g`` (``w`` the trained
arrays, ``g`` the arrays of the same name and shape it received) before replying with
``g + u'``. Replies (exactly; ``tests/clients/test_attacks.py`` checks each):

- ``sign-flip``: ``u' = -u``;
- ``scale``: ``u' = factor * u``;
- ``gaussian``: ``u' = z * ‖u‖ / ‖z‖``, z standard normal over every float coordinate
  of the update (seeded by run seed, node and round), so the noise has its norm;
- ``same-value``: ``u' = value`` in every coordinate;
- ``label-flip``: trains on labels ``y -> C - 1 - y`` (the handler reads the config key
  ``label-flip`` the mod adds) and replies with that honest-looking update.

Arrays that are not float, or that have no received counterpart, pass unchanged.
ALIE ("a little is enough": mean + z·std of the round's honest updates) is not here: it
needs every honest update of the round, which no client of a real deployment sees.

Every train reply carries the metric ``attacker`` (1 or 0) while ``system.attackers``
is set, so the engines count attackers among the delivered replies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from numpy.typing import NDArray

from fedsim import wire
from fedsim.array_codec import decode, encode
from fedsim.config.schema import (
    AttackersConfig,
    GaussianAttack,
    SameValueAttack,
    ScaleAttack,
)
from fedsim.registry import Registry
from fedsim.run_config import scenario_of_run_config

Update = dict[str, NDArray[Any]]
Corrupt = Callable[[Update, Any, np.random.Generator], Update]
CallNext = Callable[[Message, Context], Message]
_ATTACK = 0xA77AC  # purpose tag of the attackers' draws


@dataclass(frozen=True)
class Attack:
    """What an attacker does: corrupt its update, and/or poison its labels first."""

    corrupt: Corrupt
    poisons_labels: bool = False


def _sign_flip(update: Update, cfg: Any, rng: np.random.Generator) -> Update:
    return {k: -u for k, u in update.items()}


def _scale(update: Update, cfg: ScaleAttack, rng: np.random.Generator) -> Update:
    return {k: (u * cfg.factor).astype(u.dtype) for k, u in update.items()}


def _gaussian(update: Update, cfg: GaussianAttack, rng: np.random.Generator) -> Update:
    noise = {k: rng.standard_normal(u.shape) for k, u in update.items()}
    norm_u = np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in update.values()))
    norm_z = np.sqrt(sum(float(np.sum(z**2)) for z in noise.values()))
    factor = norm_u / norm_z if norm_z > 0 else 0.0
    return {k: (noise[k] * factor).astype(u.dtype) for k, u in update.items()}


def _same_value(update: Update, cfg: SameValueAttack, rng: np.random.Generator) -> Update:
    return {k: np.full_like(u, cfg.value) for k, u in update.items()}


def _unchanged(update: Update, cfg: Any, rng: np.random.Generator) -> Update:
    return update


ATTACKS: Registry[Attack] = Registry("attacks")
ATTACKS.add("sign-flip", Attack(_sign_flip), help="reply g - u")
ATTACKS.add("scale", Attack(_scale), help="reply g + factor * u")
ATTACKS.add("gaussian", Attack(_gaussian), help="reply g + noise of the update's norm")
ATTACKS.add("same-value", Attack(_same_value), help="reply g + value everywhere")
ATTACKS.add("label-flip", Attack(_unchanged, poisons_labels=True), help="train on C - 1 - y")


def attacker_partitions(cfg: AttackersConfig, num_clients: int, seed: int) -> frozenset[int]:
    """The partitions that attack: ``cfg.nodes``, or ``round(fraction * n)`` drawn from the seed."""
    if cfg.nodes is not None:
        return frozenset(cfg.nodes)
    return _drawn(cfg.fraction or 0.0, num_clients, seed)


@functools.lru_cache(maxsize=64)
def _drawn(fraction: float, num_clients: int, seed: int) -> frozenset[int]:
    # Cached: every message of a run asks again, and a large population's draw costs.
    rng = np.random.default_rng([seed, _ATTACK])
    count = round(fraction * num_clients)
    return frozenset(int(k) for k in rng.choice(num_clients, size=count, replace=False))


def is_attacker(ctx: Context, cfg: AttackersConfig, num_clients: int, seed: int) -> bool:
    """The node config's ``attacker`` if it has one, else membership of the seeded draw."""
    flag = ctx.node_config.get(wire.ATTACKER)
    if flag is not None:
        return str(flag).strip().lower() in ("1", "true", "yes")
    return int(ctx.node_config[wire.PARTITION_ID]) in attacker_partitions(cfg, num_clients, seed)


def poisoned_labels(y: NDArray[np.int64], num_classes: int) -> NDArray[np.int64]:
    """The label-flip map ``y -> C - 1 - y``."""
    return (num_classes - 1 - y).astype(y.dtype)


def attack_mod(msg: Message, ctx: Context, call_next: CallNext) -> Message:
    """Run the handler; on an attacking node, corrupt the train reply (see module doc)."""
    scenario = scenario_of_run_config(ctx.run_config)
    cfg = scenario.system.attackers
    if cfg is None or not msg.metadata.message_type.startswith("train"):
        return call_next(msg, ctx)
    attacking = is_attacker(ctx, cfg, scenario.data.num_clients, scenario.seed)
    attack = ATTACKS.get(cfg.attack.name)
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    if attacking and attack.poisons_labels:
        poisoned = ConfigRecord(dict(config))
        poisoned[wire.LABEL_FLIP] = True
        msg.content[wire.CONFIG] = poisoned
    references = {  # only an attacker needs what it received
        key: decode(array)
        for record in (msg.content.array_records.values() if attacking else ())
        for key, array in record.items()
    }
    reply = call_next(msg, ctx)
    if reply.has_error():
        return reply
    for record in reply.content.values():
        if isinstance(record, MetricRecord):
            record[wire.ATTACKER_METRIC] = int(attacking)
    if not attacking:
        return reply
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    pid = int(ctx.node_config[wire.PARTITION_ID])
    rng = np.random.default_rng([scenario.seed, pid, server_round, _ATTACK])
    for record in reply.content.values():
        if isinstance(record, ArrayRecord):
            _corrupt_record(record, references, lambda u: attack.corrupt(u, cfg.attack, rng))
    return reply


def _corrupt_record(
    record: ArrayRecord, references: Update, corrupt: Callable[[Update], Update]
) -> None:
    """Replace, in place, each float array ``w`` with a reference ``g`` by ``g + u'``."""
    update: Update = {}
    for key, array in record.items():
        value, reference = decode(array), references.get(key)
        if value.dtype.kind == "f" and reference is not None and reference.shape == value.shape:
            update[key] = value - reference
    for key, u in corrupt(update).items():
        record[key] = encode(np.ascontiguousarray((references[key] + u).astype(u.dtype)))
