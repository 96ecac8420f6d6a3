"""The client side of ``compression``: a Flower client mod ``(msg, ctx, call_next)``.

Arriving arrays coded by the server (``compression.downlink``) are decoded before the
handler sees them; the reply's arrays are coded for the uplink
(``compression.uplink``), each as its difference to the array of the same name the
client received when there is one (the update, not the weights). The server's
compression wrapper decodes them on arrival. The mod reads the scenario from the run
config, so it works unchanged on every engine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fedsim import wire
from fedsim.algorithms.compression.codec import (
    code_record,
    decode_record,
    map_records,
    plain_arrays,
)
from fedsim.run_config import scenario_of_run_config

_UPLINK = 0x0C0DE  # purpose tag of the uplink's rounding draws
CallNext = Callable[[Message, Context], Message]  # what a Flower mod calls on


def link_mod(msg: Message, ctx: Context, call_next: CallNext) -> Message:
    """Decode the downlink, run the handler, code the uplink."""
    scenario = scenario_of_run_config(ctx.run_config)
    cfg = scenario.compression
    if not cfg.active or not msg.has_content():
        return call_next(msg, ctx)
    msg.content = map_records(msg.content, decode_record)
    references = plain_arrays(msg.content)
    reply = call_next(msg, ctx)
    if cfg.uplink.method == "none" or reply.has_error() or not reply.has_content():
        return reply
    config = msg.content.config_records.get(wire.CONFIG, ConfigRecord())
    server_round = int(config.get(wire.SERVER_ROUND, 0))  # type: ignore[arg-type]
    pid = int(ctx.node_config[wire.PARTITION_ID])
    rng = np.random.default_rng([scenario.seed, pid, server_round, _UPLINK])
    reply.content = map_records(
        reply.content, lambda record: code_record(record, cfg.uplink, rng, references)
    )
    return reply
