"""FedAwS: the spreadout regularizer, the positive-only step, what crosses the wire."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message

import fedsim
from fedsim import wire
from fedsim.algorithms.fedaws.client import PositiveOnlyStep
from fedsim.algorithms.fedaws.server import FedAwS
from fedsim.algorithms.fedaws.spreadout import normalize_rows, spreadout_loss, spreadout_steps
from fedsim.client.steps import StepInputs, TrainResult
from fedsim.data.node_data import NodeData
from fedsim.engine import inprocess_grid
from fedsim.engine.delivery import Settled
from fedsim.models import build_model
from fedsim.models.cosine import EMBEDDINGS_KEY, mean_offdiagonal_cosine


def _pair_distance(w: np.ndarray, i: int, j: int, distance: str) -> float:
    a, b = w[i].astype(np.float64), w[j].astype(np.float64)
    if distance == "sqeuclid":
        return float(((a - b) ** 2).sum())
    return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _brute_force(w: np.ndarray, margin: float, distance: str, top_k: int | None) -> float:
    """Σ_c Σ_{c' in the k nearest others of c} max(0, ν - d)², by explicit loops."""
    c = len(w)
    total = 0.0
    for i in range(c):
        others = sorted((_pair_distance(w, i, j, distance), j) for j in range(c) if j != i)
        for d, _ in others[: (c - 1 if top_k is None else top_k)]:
            total += max(0.0, margin - d) ** 2
    return total


@pytest.mark.parametrize(("distance", "margin"), [("sqeuclid", 2.0), ("cosine", 1.0)])
def test_no_loss_and_no_gradient_when_every_pair_meets_the_margin(
    distance: str, margin: float
) -> None:
    """Orthonormal rows are exactly at the orthogonal margin: zero loss, zero gradient."""
    w = torch.eye(5, 8, dtype=torch.float64, requires_grad=True)
    loss = spreadout_loss(w, margin, distance)
    (grad,) = torch.autograd.grad(loss, w)
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(grad) == 0
    # Rows further apart than the margin (a smaller margin) also contribute nothing.
    assert float(spreadout_loss(w, margin / 2, distance)) == 0.0


@pytest.mark.parametrize(("distance", "margin"), [("sqeuclid", 2.0), ("cosine", 1.0)])
def test_only_violating_pairs_get_gradient_and_one_step_separates_them(
    distance: str, margin: float
) -> None:
    rows = np.eye(4, 6)
    rows[1] = normalize_rows((rows[0] + 0.2 * np.eye(1, 6, 1))[None])[0]  # near row 0
    w = torch.tensor(rows, requires_grad=True)
    (grad,) = torch.autograd.grad(spreadout_loss(w, margin, distance), w)
    norms = grad.norm(dim=1)
    assert norms[0] > 0 and norms[1] > 0
    assert norms[2] == 0 and norms[3] == 0  # rows 2 and 3 meet the margin with everyone
    before = _pair_distance(rows, 0, 1, distance)
    stepped = spreadout_steps(rows, steps=1, step_size=0.05, margin=margin, distance=distance)
    assert _pair_distance(stepped, 0, 1, distance) > before
    assert _pair_distance(normalize_rows(stepped), 0, 1, distance) > before
    np.testing.assert_array_equal(stepped[2:], rows[2:].astype(np.float32))


@pytest.mark.parametrize("distance", ["sqeuclid", "cosine"])
def test_top_k_equals_brute_force_and_k_all_is_the_full_regularizer(distance: str) -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(7, 3, generator=g, dtype=torch.float64)
    margin = 2.0 if distance == "sqeuclid" else 1.0
    full = spreadout_loss(w, margin, distance)
    assert float(full) == pytest.approx(_brute_force(w.numpy(), margin, distance, None), rel=1e-12)
    for k in (1, 3):
        got = float(spreadout_loss(w, margin, distance, top_k=k))
        assert got == pytest.approx(_brute_force(w.numpy(), margin, distance, k), rel=1e-12)
    wk = w.clone().requires_grad_(True)
    wf = w.clone().requires_grad_(True)
    top = spreadout_loss(wk, margin, distance, top_k=6)
    whole = spreadout_loss(wf, margin, distance)
    assert float(top) == float(whole)
    torch.testing.assert_close(
        torch.autograd.grad(top, wk)[0], torch.autograd.grad(whole, wf)[0], rtol=0, atol=0
    )


def test_positive_only_step_is_the_squared_hinge_on_the_own_row() -> None:
    torch.manual_seed(0)
    model = build_model("cosine", {"embedding_dim": 4, "scale": 8.0}, (6,), 3)
    row = np.array([0.6, 0.0, 0.8, 0.0], dtype=np.float32)
    config = {
        wire.FEDAWS_CLASS: 2,
        wire.FEDAWS_POSITIVE_MARGIN: 0.9,
        wire.FEDAWS_TRAIN_ROW: True,
    }
    step = PositiveOnlyStep(StepInputs(config, model, {wire.FEDAWS_ROW: row}))
    w = model.class_embeddings.detach()
    assert torch.equal(w[2], torch.from_numpy(row)) and torch.count_nonzero(w[:2]) == 0
    x = torch.randn(5, 6)
    y = torch.full((5,), 2)
    got = step.data_loss(model(x), y)
    feats = torch.nn.functional.normalize(model.backbone(x), dim=1)
    cos = feats @ torch.from_numpy(row)  # the row is unit length
    torch.testing.assert_close(got, torch.clamp(0.9 - cos, min=0) ** 2)
    data = NodeData(x.numpy(), y.numpy(), 3)
    reply = step.reply(model, data, TrainResult(0.0, 5, 1))
    assert wire.FEDAWS_ROW in reply.arrays and EMBEDDINGS_KEY not in reply.arrays


def _fedaws(tiny: dict[str, Any], **params: Any) -> dict[str, Any]:
    tiny["data"] = {"dataset": "digits", "num_clients": 10, "partitioner": "one-class"}
    tiny["model"] = {"name": "cosine", "params": {"embedding_dim": 8}}
    tiny["strategy"] = {"name": "fedaws", "params": params}
    return tiny


def test_each_train_message_holds_one_row_and_w_never_leaves_the_server(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Message, Message | None]] = []
    settle = inprocess_grid.settle

    def spy(*args: Any) -> Settled:
        settled = settle(*args)
        plan = args[4]
        # Copies: the strategy strips the row off the replies it aggregates.
        for message, (_, reply) in zip(plan.messages, settled.arrivals, strict=True):
            seen.append((copy.deepcopy(message), copy.deepcopy(reply)))
        return settled

    monkeypatch.setattr(inprocess_grid, "settle", spy)
    result = fedsim.run(fedsim.load_scenario(_fedaws(tiny)), tmp_path)
    classes, dim = 10, 8
    trains = [(m, r) for m, r in seen if m.metadata.message_type == "train"]
    assert len(trains) == 2 * 10  # 2 rounds, all clients
    assert {m.metadata.message_type for m, _ in seen} == {"train", "query.labels"}
    for message, reply in seen:
        for msg in (message, reply):
            if msg is None:
                continue
            for record in msg.content.array_records.values():
                assert EMBEDDINGS_KEY not in record
                assert all(a.shape != (classes, dim) for a in record.values())
    for message, reply in trains:
        record = message.content.array_records[wire.ARRAYS]
        # θ (the backbone) plus exactly one class row.
        assert [k for k in record if not k.startswith("backbone.")] == [wire.FEDAWS_ROW]
        assert record[wire.FEDAWS_ROW].shape == (dim,)
        assert reply is not None and wire.FEDAWS_ROW in reply.content.array_records[wire.ARRAYS]
        # The row sent is the row of the class that node holds.
        node = message.metadata.dst_node_id
        cls = int(message.content.config_records[wire.CONFIG][wire.FEDAWS_CLASS])  # type: ignore[arg-type]
        assert cls == (node - min(m.metadata.dst_node_id for m, _ in trains)) % classes
    with np.load(result.run_dir / "final_arrays.npz") as f:
        assert f[EMBEDDINGS_KEY].shape == (classes, dim)
        np.testing.assert_allclose(np.linalg.norm(f[EMBEDDINGS_KEY], axis=1), 1.0, rtol=1e-5)


def _embeddings(result: Any) -> np.ndarray:
    with np.load(result.run_dir / "final_arrays.npz") as f:
        return f[EMBEDDINGS_KEY]


def test_frozen_w_never_changes_and_spreadout_spreads(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[np.ndarray] = []  # W at the start of every round (server side)
    configure = FedAwS.configure_train

    def spy(self: FedAwS, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
        sent.append(arrays[EMBEDDINGS_KEY].numpy().copy())
        return configure(self, server_round, arrays, config, grid)

    monkeypatch.setattr(FedAwS, "configure_train", spy)
    tiny["rounds"] = 3
    frozen = fedsim.run(
        fedsim.load_scenario(_fedaws(tiny, train_embeddings=False)), tmp_path / "frozen"
    )
    assert len(sent) == 3
    for w in [*sent[1:], _embeddings(frozen)]:
        np.testing.assert_array_equal(w, sent[0])
    sent.clear()
    spread = fedsim.run(fedsim.load_scenario(_fedaws(tiny)), tmp_path / "spread")
    assert not np.array_equal(sent[0], sent[1])
    plain = fedsim.run(fedsim.load_scenario(_fedaws(tiny, spreadout=False)), tmp_path / "plain")
    cos = {
        name: mean_offdiagonal_cosine(torch.from_numpy(_embeddings(r)))
        for name, r in (("spread", spread), ("plain", plain))
    }
    assert cos["spread"] < cos["plain"]
    assert spread.metrics[-1]["diagnostics"]["embedding_mean_cosine"] == pytest.approx(
        cos["spread"], abs=1e-6
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (
            {"data": {"dataset": "digits", "num_clients": 10, "partitioner": "iid"}},
            "data.partitioner",
        ),
        ({"model": {"name": "mlp"}}, "model.name"),
        ({"strategy": {"name": "fedaws", "params": {"fraction_evaluate": 0.5}}}, "strategy.params"),
        ({"strategy": {"name": "fedaws", "params": {"distance": "l1"}}}, "strategy.params"),
    ],
)
def test_misuse_is_a_scenario_error(
    tiny: dict[str, Any], tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    scenario = _fedaws(tiny)
    scenario.update(change)
    with pytest.raises(fedsim.ScenarioError, match=key.replace(".", r"\.")):
        fedsim.run(fedsim.load_scenario(scenario), tmp_path)


def test_lost_replies_leave_no_client_state_to_reconcile(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    """The audit for SCAFFOLD's class of bug: FedAwS clients keep nothing between rounds
    (the row they train arrives with every message), and a node whose labels reply was
    lost is asked again, so with dropouts, failures and deadline stragglers every
    node ends up known by its true class and no node state needs a rollback."""
    from fedsim.client.app import app as client_app
    from tests.conftest import run_with_client_app

    _fedaws(tiny)
    tiny["rounds"] = 3
    tiny["system"].update(
        dropout_prob=0.2, failure_prob=0.1, straggle_prob=0.2, straggle_slowdown=100.0
    )
    tiny["system"]["deadline_s"] = 1.0
    seen: list[FedAwS] = []
    original = FedAwS.__init__

    def keep(self: FedAwS, **kwargs: Any) -> None:
        original(self, **kwargs)
        seen.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FedAwS, "__init__", keep)
        grid = run_with_client_app(fedsim.load_scenario(tiny), client_app, tmp_path / "r")
    states = grid.engine_state()["node_states"]
    assert all(len(state) == 0 for state in states.values())
    first = min(grid.get_node_ids())
    assert seen[-1].node_classes == {n: (n - first) % 10 for n in grid.get_node_ids()}
