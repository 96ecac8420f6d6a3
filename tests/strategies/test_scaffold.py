"""SCAFFOLD: control-variate updates by hand, and FedAvg when the control variates are zero.

The strategy and its step are written against fedsim's public API: their modules import
nothing from fedsim but ``fedsim`` itself and the shared wire keys (checked below), and
this test imports nothing else from fedsim but the two modules under test.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

import fedsim
from fedsim.algorithms.scaffold.client import KEPT_C, PENDING_C, ScaffoldStep
from fedsim.algorithms.scaffold.server import Scaffold

ROOT = Path(__file__).parents[2]


def fedsim_step(name: str) -> type[fedsim.LocalStep]:
    """The step registered as ``name`` (here SCAFFOLD's, registered by its module)."""
    assert name == "scaffold"
    return ScaffoldStep


@pytest.mark.parametrize(
    "module", ["fedsim/algorithms/scaffold/client.py", "fedsim/algorithms/scaffold/server.py"]
)
def test_scaffold_is_written_against_the_public_api(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in imported if m.startswith("fedsim")} <= {"fedsim"} | {
        "fedsim.wire",  # the wire keys every algorithm shares
        "fedsim.algorithms.scaffold",  # its own package: the keys both halves share
    }


def _step(option: str, c: dict[str, np.ndarray], c_i: dict[str, np.ndarray] | None) -> Any:
    """A linear 3 -> 2 model, 4 examples, full-batch SGD at η = 0.1 for K = 2 steps."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    rng = np.random.default_rng(1)
    data = fedsim.NodeData(
        rng.normal(size=(4, 3)).astype(np.float32), np.array([0, 1, 1, 0]), num_classes=2
    )
    state = RecordDict()
    if c_i is not None:
        state[KEPT_C] = ArrayRecord({k: Array(v) for k, v in c_i.items()})
    config = {"local-step": "scaffold", "scaffold-option": option}
    extras = {f"scaffold.c.{k}": v for k, v in c.items()}
    inputs = fedsim.StepInputs(
        config, model, extras, state, batch_size=4, data=data, lr=0.1, local_steps=2
    )
    return model, data, state, inputs


def _by_hand(
    model: nn.Module, data: Any, c: dict[str, np.ndarray], c_i: dict[str, np.ndarray]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """y_{k+1} = y_k - η (∇L(y_k) - c_i + c), twice; returns (x, y_2, ∇L(x))."""
    x = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs, ys = torch.from_numpy(data.x), torch.from_numpy(data.y)

    def grad(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        wt = {n: v.clone().requires_grad_(True) for n, v in w.items()}
        loss = F.cross_entropy(xs @ wt["weight"].T + wt["bias"], ys)
        g = torch.autograd.grad(loss, list(wt.values()))
        return dict(zip(wt, g, strict=True))

    y = dict(x)
    for _ in range(2):
        g = grad(y)
        y = {n: y[n] - 0.1 * (g[n] - torch.from_numpy(c_i[n]) + torch.from_numpy(c[n])) for n in y}
    return x, y, grad(x)


@pytest.mark.parametrize("option", ["I", "II"])
def test_one_round_of_control_variates_matches_the_hand_computation(option: str) -> None:
    """The correction is c - c_i; after the K = 2 steps y_{k+1} = y_k - η(∇L(y_k) - c_i + c)
    (done here by hand), option I replies Δc_i = ∇L_i(x) - c_i and option II
    Δc_i = -c + (x - y_K)/(K η), and the client keeps c_i+ = c_i + Δc_i.
    """
    rng = np.random.default_rng(2)
    c = {"weight": rng.normal(size=(2, 3)).astype(np.float32), "bias": np.full(2, 0.3, np.float32)}
    c_i = {
        "weight": rng.normal(size=(2, 3)).astype(np.float32),
        "bias": np.full(2, -0.2, np.float32),
    }
    model, data, state, inputs = _step(option, c, c_i)
    x, y, g_x = _by_hand(model, data, c, c_i)
    step = fedsim_step("scaffold")(inputs)
    params = dict(model.named_parameters())
    for n, v in step.correction(params).items():
        torch.testing.assert_close(v, torch.from_numpy(c[n] - c_i[n]))
    with torch.no_grad():  # the shared loop's K steps, as computed by hand
        for n, p in params.items():
            p.copy_(y[n])
    reply = step.reply(model, data, fedsim.TrainResult(0.5, 8, 2))
    for n in x:
        if option == "I":
            expected = g_x[n] - torch.from_numpy(c_i[n])
        else:
            expected = -torch.from_numpy(c[n]) + (x[n] - y[n]) / (2 * 0.1)
        torch.testing.assert_close(torch.as_tensor(reply.arrays[f"scaffold.c.{n}"]), expected)
        torch.testing.assert_close(torch.as_tensor(reply.arrays[n]), y[n])
        pending = torch.from_numpy(state[PENDING_C][n].numpy())
        torch.testing.assert_close(pending, torch.from_numpy(c_i[n]) + expected)
        # Not in effect until the server confirms the round it was computed in.
        torch.testing.assert_close(
            torch.from_numpy(state[KEPT_C][n].numpy()), torch.from_numpy(c_i[n])
        )


@pytest.mark.parametrize("confirmed", [True, False])
def test_a_pending_control_variate_commits_only_when_confirmed(confirmed: bool) -> None:
    """c_i+ computed in round 3 becomes c_i when the next message confirms round 3; any
    other confirmed round (the reply never reached c) rolls back to the old c_i."""
    c = {"weight": np.zeros((2, 3), np.float32), "bias": np.zeros(2, np.float32)}
    c_i = {"weight": np.ones((2, 3), np.float32), "bias": np.ones(2, np.float32)}
    model, data, state, inputs = _step("II", c, c_i)
    inputs.config["server-round"] = 3
    step = fedsim_step("scaffold")(inputs)
    step.reply(model, data, fedsim.TrainResult(0.5, 8, 2))
    c_plus = {n: state[PENDING_C][n].numpy().copy() for n in c}
    inputs.config.update({"server-round": 5, "scaffold-confirmed-round": 3 if confirmed else 2})
    nxt = fedsim_step("scaffold")(inputs)
    expected = c_plus if confirmed else c_i
    for n in c:
        np.testing.assert_array_equal(nxt.c_i[n].numpy(), expected[n])
    assert PENDING_C not in state.array_records  # settled one way or the other


def test_a_first_round_starts_from_zero_client_control_variates() -> None:
    c = {"weight": np.ones((2, 3), np.float32), "bias": np.ones(2, np.float32)}
    _, _, _, inputs = _step("II", c, None)
    step = fedsim_step("scaffold")(inputs)
    for n, v in step.correction(dict(inputs.global_model.named_parameters())).items():
        torch.testing.assert_close(v, torch.from_numpy(c[n]))  # c - 0


class _Grid:
    """The one thing SCAFFOLD's configure_train asks a grid besides sampling: N."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]


def test_the_server_adds_the_mean_change_over_all_nodes_to_c() -> None:
    """Two of N = 4 nodes reply: c+ = c + (Δc_1 + Δc_2)/4; x+ = the FedAvg mean (η_g = 1)
    or x + η_g (mean - x)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    strategy = Scaffold(option="II", server_lr=0.5, fraction_train=0.5, min_available_nodes=2)
    x = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    sent = list(strategy.configure_train(1, x, ConfigRecord(), _Grid()))  # type: ignore[arg-type]
    assert len(sent) == 2
    record = sent[0].content.array_records["arrays"]
    assert np.array_equal(record["scaffold.c.w"].numpy(), np.zeros(3, np.float32))
    assert dict(sent[0].content.config_records["config"])["local-step"] == "scaffold"
    replies = []
    for k, msg in enumerate(sent):
        arrays = ArrayRecord(
            {
                "w": Array(np.full(3, 1.0 + k, np.float32)),  # y_1 = 1, y_2 = 2
                "scaffold.c.w": Array(np.full(3, 4.0 * (k + 1), np.float32)),  # 4, 8
            }
        )
        metrics = MetricRecord({"num-examples": 10})
        replies.append(Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg))
    new_x, _ = strategy.aggregate_train(1, replies)
    assert new_x is not None
    np.testing.assert_allclose(new_x["w"].numpy(), 0.5 * 1.5)  # 0 + 0.5·(1.5 - 0)
    np.testing.assert_allclose(strategy.c["w"], (4.0 + 8.0) / 4)
    assert strategy.confirmed == {str(m.metadata.dst_node_id): 1 for m in sent}
    # Each node's next message says which of its rounds reached c; the others' say none.
    again = {
        m.metadata.dst_node_id: m for m in strategy.configure_train(2, x, ConfigRecord(), _Grid())
    }  # type: ignore[arg-type]
    for node, msg in again.items():
        expected = strategy.confirmed.get(str(node), 0)
        assert msg.content.config_records["config"]["scaffold-confirmed-round"] == expected


def test_zero_control_variates_give_fedavg(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Round 1 has c = c_i = 0: SCAFFOLD's first model is FedAvg's, bit for bit."""
    tiny["rounds"] = 1
    avg = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "a")
    tiny["strategy"] = {"name": "scaffold", "params": {"fraction_train": 1.0}}
    scaffold = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "s")
    a = np.load(avg.run_dir / "final_arrays.npz")
    s = np.load(scaffold.run_dir / "final_arrays.npz")
    assert sorted(a) == sorted(s) and all(np.array_equal(a[k], s[k]) for k in a)


def test_scaffold_refuses_unknown_options() -> None:
    with pytest.raises(ValueError, match="option must be one of 'I', 'II', got 'III'"):
        Scaffold(option="III")
    with pytest.raises(ValueError, match="server_lr must be a number > 0, got 0"):
        Scaffold(server_lr=0)


def test_validation_refuses_option_one_under_dp(tiny: dict[str, Any]) -> None:
    tiny["client"]["dp"] = {"noise_multiplier": 1.0}
    tiny["strategy"] = {"name": "scaffold", "params": {"option": "I"}}
    with pytest.raises(fedsim.ScenarioError, match=r"strategy\.params\.option: option 'I'"):
        fedsim.load_scenario(tiny)
    tiny["strategy"]["params"]["option"] = "II"  # post-processing of the private update
    fedsim.load_scenario(tiny)
