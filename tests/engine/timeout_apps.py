"""Client apps for ``engine.client_timeout_s`` tests, importable by worker processes."""

from __future__ import annotations

import time

import torch
from flwr.app import Context, Message, UserConfig

from fedsim import wire
from fedsim.client.app import app as fedsim_app

SPIN_ROUNDS = (1, 2)  # the rounds in which partition 0 never returns


class SlowStart:
    """fedsim's ClientApp whose per-process set-up takes 2.5 s (a large dataset's load).

    Like a real app it sets up on first use unless prepared before.
    """

    def __init__(self) -> None:
        self.prepared = False

    def __call__(self, msg: Message, ctx: Context) -> Message:
        if not self.prepared:
            self.prepare(ctx.run_config)
        return fedsim_app(msg, ctx)

    def prepare(self, run_config: UserConfig) -> None:
        time.sleep(2.5)
        fedsim_app.prepare(run_config)
        self.prepared = True


slow_start_app = SlowStart()


def spinning_app(msg: Message, ctx: Context) -> Message:
    """fedsim's ClientApp, except that partition 0 computes forever in rounds 1 and 2.

    It alternates pure-Python spinning (which holds the GIL) with torch work (so a
    timeout fires mid-step).
    """
    config = msg.content.config_records.get(wire.CONFIG)
    round_ = config.get(wire.SERVER_ROUND) if config is not None else None
    if int(ctx.node_config[wire.PARTITION_ID]) == 0 and round_ in SPIN_ROUNDS:
        a = torch.randn(256, 256)
        while True:
            a = torch.tanh(a @ a)
            sum(range(10_000))
    return fedsim_app(msg, ctx)


def hanging_app(msg: Message, ctx: Context) -> Message:
    """fedsim's ClientApp, except that partition 0 hangs (sleeps a minute) in round 1."""
    config = msg.content.config_records.get(wire.CONFIG)
    round_ = config.get(wire.SERVER_ROUND) if config is not None else None
    if int(ctx.node_config[wire.PARTITION_ID]) == 0 and round_ == 1:
        time.sleep(60)  # "forever", as far as the run is concerned
    return fedsim_app(msg, ctx)
