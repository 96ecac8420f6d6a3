"""A client process reuses its built model only when nothing of an earlier job can leak."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fedsim
from fedsim import wire
from fedsim.client import model_cache
from fedsim.client.app import app as client_app
from fedsim.client.model_cache import model_for_job
from fedsim.config.sources import to_yaml
from fedsim.engine.flower_compat import set_task_identity
from fedsim.models import build_model


def test_reused_only_when_every_entry_is_overwritten() -> None:
    args: tuple[Any, ...] = ("mlp", {"hidden": [8]}, (1, 8, 8), 10)
    first = model_for_job(*args, overwritten=())
    names = list(first.state_dict())
    assert model_for_job(*args, overwritten=names) is first
    assert model_for_job(*args, overwritten=names[:-1]) is not first
    other = model_for_job("mlp", {"hidden": [9]}, (1, 8, 8), 10, overwritten=names)
    assert set(other.state_dict()) != set(names) or other is not first
    kept = model_for_job(*args, overwritten=names)
    assert model_for_job(*args, overwritten=names, reusable=False) is not kept


def _message(arrays: dict[str, np.ndarray], round_: int = 1) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: round_}),
        }
    )
    return Message(content, 1001, "train")


def _reply_arrays(reply: Message) -> dict[str, bytes]:
    assert not reply.has_error(), reply.error
    return {k: v.data for k, v in reply.content[wire.ARRAYS].items()}


@pytest.mark.parametrize("dp", [False, True])
def test_a_job_replies_the_same_with_a_reused_or_new_model(
    tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch, dp: bool
) -> None:
    if dp:
        tiny["client"]["dp"] = {"noise_multiplier": 0.5, "max_grad_norm": 1.0}
    scenario = fedsim.load_scenario(tiny)
    set_task_identity(1)
    run_config = {wire.RUN_SCENARIO_YAML: to_yaml(scenario)}

    def context(pid: int) -> Context:
        node = {wire.PARTITION_ID: pid, wire.NUM_PARTITIONS: 4}
        return Context(1, 1001 + pid, node, RecordDict(), run_config)

    global_model = {
        k: v.numpy()
        for k, v in build_model("mlp", {"hidden": [16]}, (1, 8, 8), 10).state_dict().items()
    }
    other_model = {k: v + 0.5 for k, v in global_model.items()}
    monkeypatch.setattr(model_cache, "_local", type(model_cache._local)())  # a cold process
    cold = _reply_arrays(client_app(_message(global_model), context(1)))
    # Another node trains from other weights first: the process's model now holds them.
    _reply_arrays(client_app(_message(other_model, 2), context(2)))
    warm = _reply_arrays(client_app(_message(global_model), context(1)))
    assert warm == cold
    # A message without the whole model is refused, as by a new process: the kept
    # model's last weights never stand in for a missing array.
    partial = {k: v for k, v in global_model.items() if not k.endswith("bias")}
    # (The ClientApp's failure mod turns the ValueError into an error reply, as Flower would.)
    refused = client_app(_message(partial), context(1))
    assert refused.has_error()
    assert "ValueError" in refused.error.reason and "lacks model arrays" in refused.error.reason
