"""Attack mods reply exactly as documented in :mod:`fedsim.client.attacks`; who attacks
is drawn from the seed or set by the node config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim import wire
from fedsim.client.attacks import attack_mod, attacker_partitions, poisoned_labels
from fedsim.config.schema import AttackersConfig
from fedsim.engine.flower_compat import set_task_identity
from tests.conftest import write_yaml

G = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "b": np.ones(4, np.float32)}
W = {"w": G["w"] + np.float32(0.3), "b": np.array([1.5, 0.5, 1.0, 2.0], np.float32)}
STEPS = {"steps": np.array([3], np.int64)}  # a non-float array: never attacked


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity(1)


def _context(tmp_path: Path, tiny: dict[str, Any], attack: Any, **node: Any) -> Context:
    tiny["system"]["attackers"] = {"nodes": [0], "attack": attack}
    path = write_yaml(tmp_path / f"s{abs(hash(str(attack)))}.yaml", tiny)
    config = {wire.PARTITION_ID: 0, wire.NUM_PARTITIONS: 4, **node}
    return Context(1, 1000, config, RecordDict(), {wire.RUN_SCENARIO: str(path)})


def _run(ctx: Context) -> tuple[dict[str, np.ndarray], MetricRecord, list[Message]]:
    seen: list[Message] = []
    message = Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord({k: Array(v) for k, v in G.items()}),
                wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 2}),
            }
        ),
        1000,
        "train",
    )

    def honest(msg: Message, context: Context) -> Message:
        seen.append(msg)
        arrays = ArrayRecord({k: Array(v) for k, v in {**W, **STEPS}.items()})
        metrics = MetricRecord({wire.NUM_EXAMPLES: 10})
        return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)

    reply = attack_mod(message, ctx, honest)
    arrays = {k: v.numpy() for k, v in reply.content[wire.ARRAYS].items()}
    return arrays, reply.content[wire.METRICS], seen


def _expected(update: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: G[k] + update[k] for k in G}


@pytest.mark.parametrize(
    ("attack", "update"),
    [
        ("sign-flip", {k: -(W[k] - G[k]) for k in G}),
        ({"name": "scale", "factor": -3.5}, {k: (W[k] - G[k]) * np.float32(-3.5) for k in G}),
        ({"name": "same-value", "value": 0.25}, {k: np.full_like(G[k], 0.25) for k in G}),
    ],
)
def test_update_attacks_reply_g_plus_the_documented_update(
    tmp_path: Path, tiny: dict[str, Any], attack: Any, update: dict[str, np.ndarray]
) -> None:
    arrays, metrics, _ = _run(_context(tmp_path, tiny, attack))
    for key, value in _expected(update).items():
        assert np.array_equal(arrays[key], value), key
    assert np.array_equal(arrays["steps"], STEPS["steps"])
    assert metrics[wire.ATTACKER_METRIC] == 1


def test_gaussian_noise_has_the_update_norm(tmp_path: Path, tiny: dict[str, Any]) -> None:
    arrays, _, _ = _run(_context(tmp_path, tiny, "gaussian"))
    again, _, _ = _run(_context(tmp_path, tiny, "gaussian"))
    honest = np.concatenate([(W[k] - G[k]).ravel() for k in G])
    sent = np.concatenate([(arrays[k] - G[k]).ravel() for k in G])
    assert np.linalg.norm(sent) == pytest.approx(np.linalg.norm(honest), rel=1e-5)
    assert abs(np.corrcoef(sent, honest)[0, 1]) < 0.9  # not the update itself
    assert all(np.array_equal(arrays[k], again[k]) for k in G)  # seeded


def test_label_flip_poisons_the_data_not_the_reply(tmp_path: Path, tiny: dict[str, Any]) -> None:
    arrays, metrics, seen = _run(_context(tmp_path, tiny, "label-flip"))
    assert seen[0].content[wire.CONFIG][wire.LABEL_FLIP] is True
    assert seen[0].content[wire.CONFIG][wire.SERVER_ROUND] == 2
    assert all(np.array_equal(arrays[k], W[k]) for k in W)
    assert metrics[wire.ATTACKER_METRIC] == 1
    assert poisoned_labels(np.array([0, 3, 9]), 10).tolist() == [9, 6, 0]


def test_an_honest_node_replies_unchanged_and_says_so(tmp_path: Path, tiny: dict[str, Any]) -> None:
    ctx = _context(tmp_path, tiny, "sign-flip", **{wire.ATTACKER: "false"})  # overrides nodes
    arrays, metrics, seen = _run(ctx)
    assert all(np.array_equal(arrays[k], W[k]) for k in W)
    assert metrics[wire.ATTACKER_METRIC] == 0
    assert wire.LABEL_FLIP not in seen[0].content[wire.CONFIG]


def test_attackers_are_drawn_from_the_seed() -> None:
    cfg = AttackersConfig(fraction=0.3)
    drawn = attacker_partitions(cfg, 20, seed=7)
    assert len(drawn) == 6 and drawn == attacker_partitions(cfg, 20, seed=7)
    assert drawn != attacker_partitions(cfg, 20, seed=8)
    assert attacker_partitions(AttackersConfig(nodes=[2, 5]), 20, seed=7) == {2, 5}
    with pytest.raises(ValueError, match="exactly one"):
        AttackersConfig(fraction=0.1, nodes=[1])


def test_a_run_counts_the_attackers_it_delivers(tmp_path: Path, tiny: dict[str, Any]) -> None:
    """4 clients, all train every round, nodes 1 and 3 attack: 2 attackers a round."""
    import fedsim

    tiny["system"]["attackers"] = {"nodes": [1, 3], "attack": "sign-flip"}
    result = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "run")
    assert [r["attackers"] for r in result.metrics] == [0, 2, 2]
    assert result.summary["attackers"] == 4


def test_the_client_app_trains_a_label_flipper_on_flipped_labels(
    tmp_path: Path, tiny: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same node's data, once attacking and once not: labels y and 9 − y."""
    from fedsim.array_codec import encode_record
    from fedsim.client import app as client_app
    from fedsim.client import job as client_job
    from fedsim.models import build_model

    seen: list[np.ndarray] = []
    real = client_job.train_local

    def spy(model: Any, x: Any, y: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(np.array(y))  # a tensor on the training device (the CPU here)
        return real(model, x, y, *args, **kwargs)

    monkeypatch.setattr(client_job, "train_local", spy)
    model = build_model("mlp", tiny["model"]["params"], (64,), 10)
    for flag in ("true", "false"):
        ctx = _context(tmp_path, tiny, "label-flip", **{wire.ATTACKER: flag})
        content = RecordDict(
            {
                wire.ARRAYS: encode_record(model.state_dict()),
                wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1}),
            }
        )
        reply = client_app.app(Message(content, 1000, "train"), ctx)
        assert not reply.has_error() and reply.content[wire.METRICS][wire.ATTACKER_METRIC] == (
            flag == "true"
        )
    assert len(seen) == 2 and seen[1].size > 0
    assert np.array_equal(seen[0], 9 - seen[1])
