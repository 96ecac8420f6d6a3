"""``engine.batch_clients``: clients trained together reply as each would alone."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

import fedsim
from fedsim import wire
from fedsim.array_codec import decode
from fedsim.client.app import app
from fedsim.client.stacked import train_chunks, train_together
from fedsim.client.steps import STEPS, LocalStep, PlainStep
from fedsim.compose import load_scenario
from fedsim.config.sources import to_yaml
from fedsim.engine.executor import copy_content
from fedsim.engine.flower_compat import set_task_identity
from fedsim.engine.inprocess_grid import node_contexts
from fedsim.errors import FedsimWarning
from fedsim.models import build_model, register_model
from fedsim.outputs.metrics_log import read_metrics
from fedsim.reply_chunk import TrainedTogether
from tests.conftest import strip_wall_clock

RTOL = 1e-5


class _NotDeclared(LocalStep):
    """A custom step that does not say it is vectorisable (LocalStep's default: False)."""


class _Fills(PlainStep):
    """Vectorisable, but fills a model array itself (the stack trains received arrays only)."""

    fills = frozenset({"0.bias"})


@pytest.fixture(autouse=True)
def _test_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """This module's steps, registered for each of its tests only (other modules count
    the registered steps)."""
    monkeypatch.setitem(STEPS._items, "test-batched-custom", _NotDeclared)
    monkeypatch.setitem(STEPS._items, "test-batched-fills", _Fills)


@register_model("test-batched-bn")
def _batchnorm_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """An MLP with BatchNorm (running statistics are buffers)."""
    width = int(np.prod(input_shape))
    return nn.Sequential(
        nn.Flatten(), nn.Linear(width, 8), nn.BatchNorm1d(8), nn.Linear(8, num_classes)
    )


class _Branchy(nn.Module):
    """Data-dependent control flow: vmap cannot run it."""

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.flat, self.fc = nn.Flatten(), nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(self.flat(x))
        return out if bool(out.sum() > 0) else -out


@register_model("test-batched-branchy")
def _branchy(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A linear model whose forward pass branches on its output."""
    return _Branchy(int(np.prod(input_shape)), num_classes)


def _scenario(**overrides: Any) -> Any:
    base: dict[str, Any] = {
        "name": "batched",
        "seed": 3,
        "rounds": 1,
        # Dirichlet shares: uneven client sizes, so step counts and last batches differ.
        "data": {
            "dataset": "digits",
            "num_clients": 6,
            "partitioner": {"name": "dirichlet", "alpha": 0.5},
        },
        "model": {"name": "mlp", "params": {"hidden": [16]}},
        "client": {
            "local_epochs": 2,
            "batch_size": 16,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        },
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_scenario(base)


def _jobs(scenario: Any, tmp_path: Path, config: dict[str, Any]) -> list[tuple[Message, Context]]:
    """One train message per node (the same content, as Flower's strategies send)."""
    resolved = tmp_path / "scenario.resolved.yaml"
    resolved.write_text(to_yaml(scenario), encoding="utf-8")
    set_task_identity(1)
    contexts = node_contexts(scenario.data.num_clients, {wire.RUN_SCENARIO: str(resolved)})
    from fedsim.data.federated import federated_data

    data = federated_data(scenario.data, scenario.seed)
    torch.manual_seed(0)
    model = build_model(
        scenario.model.name, scenario.model.params, data.input_shape, data.num_classes
    )
    content = RecordDict(
        {
            wire.ARRAYS: ArrayRecord(model.state_dict()),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 2, **config}),
        }
    )
    return [(Message(content, node, "train"), contexts[node]) for node in contexts]


def twin_jobs(jobs: Sequence[tuple[Message, Context]]) -> list[tuple[Message, Context]]:
    """The jobs with copies of their Contexts (steps write to ``context.state``)."""
    return [
        (
            m,
            Context(
                c.run_id, c.node_id, dict(c.node_config), copy.deepcopy(c.state), dict(c.run_config)
            ),
        )
        for m, c in jobs
    ]


def _delivered(message: Message) -> Message:
    return Message(content=copy_content(message.content), metadata=copy.copy(message.metadata))  # type: ignore[call-overload]


def _sequential(jobs: Sequence[tuple[Message, Context]]) -> list[Message]:
    return [app(_delivered(m), c) for m, c in jobs]


def _assert_same_reply(batched: Message, alone: Message) -> None:
    assert not alone.has_error(), alone.error
    got, want = batched.content.array_records[wire.ARRAYS], alone.content.array_records[wire.ARRAYS]
    assert list(got) == list(want)
    for key in want:
        a, b = decode(got[key]), decode(want[key])
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.abs(a - b).max() <= RTOL * np.abs(b).max(), key
    m_got, m_want = (
        batched.content.metric_records[wire.METRICS],
        alone.content.metric_records[wire.METRICS],
    )
    assert set(m_got) == set(m_want)
    assert m_got[wire.NUM_EXAMPLES] == m_want[wire.NUM_EXAMPLES]
    assert m_got[wire.TRAIN_SAMPLES] == m_want[wire.TRAIN_SAMPLES]
    if wire.TRAIN_LOSS in m_want:  # not under DP
        assert m_got[wire.TRAIN_LOSS] == pytest.approx(m_want[wire.TRAIN_LOSS], rel=RTOL)


@pytest.mark.parametrize(
    ("model", "config"),
    [
        ({"name": "mlp", "params": {"hidden": [16]}}, {}),
        ({"name": "mlp", "params": {"hidden": [16]}}, {wire.PROXIMAL_MU: 0.5}),
        ({"name": "cnn", "params": {"channels": [4, 8], "hidden": 16}}, {}),
        ({"name": "cnn", "params": {"channels": [4, 8], "hidden": 16}}, {wire.PROXIMAL_MU: 0.5}),
    ],
    ids=["mlp-plain", "mlp-proximal", "cnn-plain", "cnn-proximal"],
)
def test_replies_equal_each_clients_own(
    model: dict[str, Any], config: dict[str, Any], tmp_path: Path
) -> None:
    scenario = _scenario(model=model)
    jobs = _jobs(scenario, tmp_path, config)
    sizes = {len(_n(c)) for _, c in jobs}
    # Uneven clients with last partial batches of batch 16: the masking is exercised.
    assert len(sizes) > 1 and any(size % 16 for size in sizes)
    alone = _sequential(jobs)
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=4)  # two chunks
    assert all(r is not None for r in together)
    for batched, own in zip(together, alone, strict=True):
        assert batched is not None
        _assert_same_reply(batched, own)


def _n(context: Context) -> np.ndarray:
    from fedsim.client.job import partition

    return partition(context)[2].y


def test_a_stack_of_one_equals_the_client_alone(tmp_path: Path) -> None:
    jobs = _jobs(_scenario(), tmp_path, {wire.PROXIMAL_MU: 0.1})[:3]
    alone = _sequential(jobs)
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=1)
    for batched, own in zip(together, alone, strict=True):
        assert batched is not None
        _assert_same_reply(batched, own)


@pytest.mark.parametrize(
    ("overrides", "config", "said"),
    [
        ({"client": {"weights": {"bits": 8}}}, {}, "client.weights"),
        ({"compression": {"uplink": {"method": "deterministic-rounding"}}}, {}, "compression"),
        (
            {"system": {"attackers": {"fraction": 0.5, "attack": {"name": "label-flip"}}}},
            {},
            "attackers",
        ),
        ({}, {wire.LOCAL_STEP: "test-batched-custom"}, "_NotDeclared is not vectorisable"),
        ({}, {wire.LOCAL_STEP: "test-batched-fills"}, "_Fills does not train the whole"),
        ({"model": {"name": "test-batched-bn", "params": {}}}, {}, "BatchNorm"),
        ({"model": {"name": "lstm", "params": {}}}, {}, "LSTM"),
        ({"model": {"name": "test-batched-branchy", "params": {}}}, {}, "cannot be stacked"),
    ],
    ids=[
        "low-precision",
        "compression",
        "attackers",
        "custom-step",
        "does-not-train",
        "batchnorm",
        "lstm",
        "branchy",
    ],
)
def test_what_cannot_be_stacked_falls_back_and_says_so_once(
    overrides: dict[str, Any],
    config: dict[str, Any],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedsim.client import stacked as batched

    monkeypatch.setattr(batched, "_said", set())
    jobs = _jobs(_scenario(**overrides), tmp_path, config)
    with pytest.warns(FedsimWarning, match=said) as caught:
        assert train_together(jobs, max_batch=8) == [None] * len(jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FedsimWarning)
        assert train_together(jobs, max_batch=8) == [None] * len(jobs)  # said once
    assert len([w for w in caught if issubclass(w.category, FedsimWarning)]) == 1


def test_evaluate_and_bad_messages_are_left_to_the_client_app(tmp_path: Path) -> None:
    jobs = _jobs(_scenario(), tmp_path, {})
    evaluate = [(Message(m.content, m.metadata.dst_node_id, "evaluate"), c) for m, c in jobs[:2]]
    # Arrays of another shape: the ClientApp's load reports it, not the batched path.
    wrong = ArrayRecord(build_model("mlp", {"hidden": [3]}, (64,), 10).state_dict())
    bad = [
        (
            Message(RecordDict({wire.ARRAYS: wrong}), jobs[0][0].metadata.dst_node_id, "train"),
            jobs[0][1],
        )
    ]
    assert train_together([*evaluate, *bad], max_batch=8) == [None, None, None]


def _run(scenario: Any, out: Path) -> list[dict[str, Any]]:
    fedsim.run(scenario, out)
    return strip_wall_clock(read_metrics(out))


def _assert_close_records(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert set(a) == set(b)
        for key, value in b.items():
            if isinstance(value, float):
                assert a[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert a[key] == value, key


def _count_stacked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each train_together call's number of stacked replies, appended as runs go."""
    from fedsim.client import stacked as batched

    stacked_replies: list[int] = []

    def counting(jobs: Sequence[tuple[Message, Context]], max_batch: int) -> TrainedTogether:
        together = train_chunks(jobs, max_batch)
        stacked_replies.append(sum(r is not None for r in together.replies))
        return together

    monkeypatch.setattr(batched, "train_chunks", counting)
    return stacked_replies


def test_a_run_with_batch_clients_has_the_metrics_of_one_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stacked_replies = _count_stacked(monkeypatch)
    base = {
        "rounds": 3,
        "strategy": {"name": "fedprox", "params": {"proximal_mu": 0.1, "fraction_train": 0.7}},
        "system": {
            "dropout_prob": 0.1,
            "failure_prob": 0.1,
            "straggle_prob": 0.2,
            "deadline_s": 3.0,
            "speed": {"distribution": "lognormal", "median": 1.0, "sigma": 0.5},
        },
        "output": {"plots": False},
    }
    plain = _run(_scenario(**base), tmp_path / "one-by-one")
    stacked = _run(
        _scenario(**base, engine={"name": "inprocess", "batch_clients": 3}), tmp_path / "together"
    )
    _assert_close_records(stacked, plain)
    assert sum(stacked_replies) >= 6  # most of the 3 rounds x 4 train replies were stacked
    assert any(r.get("failures") for r in plain) or any(r.get("dropouts") for r in plain)


def test_a_run_whose_clients_cannot_be_stacked_is_the_run_without(tmp_path: Path) -> None:
    base = {"rounds": 2, "client": {"weights": {"bits": 8}}, "output": {"plots": False}}
    plain = _run(_scenario(**base), tmp_path / "one-by-one")
    with pytest.warns(FedsimWarning, match="client.weights"):
        stacked = _run(
            _scenario(**base, engine={"name": "inprocess", "batch_clients": 8}),
            tmp_path / "together",
        )
    assert stacked == plain  # the ClientApp's path, bit for bit


@pytest.mark.parametrize(
    "words", [(0, 0, 0, 0), (3, 17, 2, 1), (2**32 - 1, 5, 6, 0), (2**40 + 7, 3, 4, 0)]
)
def test_job_seed_is_numpys_seed_sequence_of_the_four_words(
    words: tuple[int, int, int, int],
) -> None:
    from fedsim.client.job import job_seed

    want = int(np.random.SeedSequence(list(words)).generate_state(1)[0])
    assert job_seed(*words) == want


def test_batch_clients_under_a_client_timeout_says_it_is_off(tmp_path: Path) -> None:
    from fedsim.config.sources import to_yaml
    from fedsim.engine.inprocess_run import build_grid
    from fedsim.engine.workers import WorkerPool

    scenario = _scenario(engine={"name": "inprocess", "batch_clients": 4, "client_timeout_s": 30.0})
    (tmp_path / "s.yaml").write_text(to_yaml(scenario))
    with pytest.warns(FedsimWarning, match="batch_clients is off under engine.client_timeout_s"):
        grid = build_grid(app, scenario, {wire.RUN_SCENARIO: str(tmp_path / "s.yaml")})
    try:  # the clients run in a killable worker, each timed alone
        pool = grid.executor
        assert isinstance(pool, WorkerPool) and pool.timeout_s == 30.0
        assert [spec.batch_clients for spec in pool.specs] == [0]
    finally:
        grid.close()


@pytest.mark.slow
def test_workers_train_their_own_nodes_together(tmp_path: Path) -> None:
    base = {"rounds": 1, "output": {"plots": False}}
    plain = _run(_scenario(**base), tmp_path / "one-by-one")
    workers = {"name": "inprocess", "workers": 2, "batch_clients": 4}
    stacked = _run(_scenario(**base, engine=workers), tmp_path / "workers")
    _assert_close_records(stacked, plain)
    # Equal up to float rounding, not bit for bit: the workers did train together.
    assert stacked != plain


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stacked_replies_on_cuda_equal_the_cpu_ones(tmp_path: Path) -> None:
    """The stacked path on CUDA (data kept there, one copy out per chunk) equals the CPU's."""
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cuda").mkdir()
    cpu_jobs = _jobs(_scenario(), tmp_path / "cpu", {wire.PROXIMAL_MU: 0.1})
    on_cpu = train_together([(_delivered(m), c) for m, c in cpu_jobs], max_batch=4)
    cuda = _scenario(engine={"name": "inprocess", "device": "cuda"})
    cuda_jobs = _jobs(cuda, tmp_path / "cuda", {wire.PROXIMAL_MU: 0.1})
    on_cuda = train_together([(_delivered(m), c) for m, c in cuda_jobs], max_batch=4)
    for a, b in zip(on_cuda, on_cpu, strict=True):
        assert a is not None and b is not None
        for key, value in b.content.array_records[wire.ARRAYS].items():
            want = decode(value)
            got = decode(a.content.array_records[wire.ARRAYS][key])
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), key


@pytest.mark.parametrize(
    ("sampling", "config"),
    [
        ("poisson", {}),
        ("fixed", {wire.PROXIMAL_MU: 0.5}),
        ("poisson", {wire.LOCAL_STEP: "scaffold"}),
    ],
    ids=["poisson-plain", "fixed-proximal", "poisson-scaffold"],
)
def test_dp_replies_together_equal_each_clients_own(
    sampling: str, config: dict[str, Any], tmp_path: Path
) -> None:
    """Per-example clipping and noise per client inside the stack: the same arrays and ε."""
    dp = {"noise_multiplier": 0.7, "max_grad_norm": 0.5, "sampling": sampling}
    client = {"local_steps": 3, "batch_size": 8, "dp": dp}
    scenario = _scenario(client=client, data={"num_clients": 4})
    jobs = _jobs(scenario, tmp_path, config)
    twins = twin_jobs(jobs)
    alone = [app(_delivered(m), c) for m, c in twins]
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=3)
    for batched, own in zip(together, alone, strict=True):
        assert batched is not None
        _assert_same_reply(batched, own)
        m_got = batched.content.metric_records[wire.METRICS]
        m_want = own.content.metric_records[wire.METRICS]
        assert wire.TRAIN_LOSS not in m_got and m_got[wire.EPSILON] == m_want[wire.EPSILON] > 0


def test_an_empty_poisson_batch_mid_stack_still_takes_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose Poisson batch is empty at a step still trains on (and the others too).

    Who trains at a step follows the step counts: counting the non-empty batches dropped
    the stack's last client whenever an earlier one drew no example.
    """
    from fedsim.client import stacked_training

    dp = {"noise_multiplier": 0.7, "max_grad_norm": 0.5, "sampling": "poisson"}
    scenario = _scenario(client={"local_steps": 4, "batch_size": 1, "dp": dp})
    jobs = _jobs(scenario, tmp_path, {})
    seen: list[stacked_training.Schedule] = []
    original = stacked_training.schedule

    def recorded(*args: Any, **kwargs: Any) -> list[stacked_training.Schedule]:
        steps = original(*args, **kwargs)
        seen.extend(steps)
        return steps

    monkeypatch.setattr(stacked_training, "schedule", recorded)
    alone = [app(_delivered(m), c) for m, c in twin_jobs(jobs)]
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=6)
    # The case is there: some step has an empty batch before its stack's last client.
    assert any(s.active == 6 and (s.samples[:-1] == 0).any() for s in seen)
    for batched, own in zip(together, alone, strict=True):
        assert batched is not None
        _assert_same_reply(batched, own)


def test_batch_clients_auto_sizes_chunks_from_free_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``auto`` (-1 on the way to the app): chunk sizes from free memory, same replies."""
    from fedsim.client import chunk_size
    from fedsim.engine.executor import AUTO_BATCH

    assert (
        _scenario(engine={"name": "inprocess", "batch_clients": "auto"}).engine.batch_clients
        == "auto"
    )
    with pytest.raises(Exception, match="whole number >= 0 or 'auto'"):
        _scenario(engine={"name": "inprocess", "batch_clients": "all"})
    small, large = (
        build_model("mlp", {"hidden": [8]}, (64,), 10),
        build_model("mlp", {"hidden": [512]}, (64,), 10),
    )
    assert (
        chunk_size.auto_chunk(small, (64,), 16, "cpu")
        >= chunk_size.auto_chunk(large, (64,), 16, "cpu")
        >= 1
    )
    # 2 clients' worth of free memory: chunks of two, replies as each client's own.
    model = build_model("mlp", {"hidden": [16]}, (64,), 10)
    # A fixed free memory (the machine's own changes between two reads under load).
    free = 10**9
    monkeypatch.setattr(chunk_size, "free_bytes", lambda device: free)
    per_client = chunk_size.auto_chunk(model, (64,), 16, "cpu")  # clients in 1 GB, < MAX_CHUNK
    assert 3 <= per_client < chunk_size.MAX_CHUNK
    monkeypatch.setattr(chunk_size, "free_bytes", lambda device: int(free * 2 / per_client) + 1)
    seen: list[int] = []
    from fedsim.client import stacked as batched

    original = batched._train_chunk
    monkeypatch.setattr(
        batched, "_train_chunk", lambda chunk: seen.append(len(chunk)) or original(chunk)
    )
    jobs = _jobs(_scenario(client={"local_steps": 2}), tmp_path, {})
    alone = _sequential(jobs)
    together = train_together([(_delivered(m), c) for m, c in jobs], max_batch=AUTO_BATCH)
    assert seen == [2, 2, 2]
    for got, want in zip(together, alone, strict=True):
        assert got is not None
        _assert_same_reply(got, want)


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": {"name": "scaffold", "params": {"option": "II", "fraction_train": 0.7}}},
        {"strategy": {"name": "fedcurv", "params": {"curv_lambda": 0.1, "fraction_train": 0.7}}},
        {
            "strategy": {"name": "fedavg", "params": {"fraction_train": 0.7}},
            "client": {"local_steps": 2, "dp": {"noise_multiplier": 0.8, "max_grad_norm": 1.0}},
        },
    ],
    ids=["scaffold", "fedcurv", "dp"],
)
def test_a_run_keeping_client_state_with_batch_clients_is_the_run_without(
    overrides: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Partial participation and deadline stragglers with steps that keep client state
    (SCAFFOLD's c_i, FedCurv's own terms, DP's privacy ledger): same metrics, same ε."""
    stacked_replies = _count_stacked(monkeypatch)
    base = {
        "rounds": 3,
        "client": {"local_steps": 2, "batch_size": 16},
        "system": {"straggle_prob": 0.3, "deadline_s": 3.0},
        "output": {"plots": False},
        **overrides,
    }
    plain = _run(_scenario(**base), tmp_path / "one-by-one")
    stacked = _run(
        _scenario(**base, engine={"name": "inprocess", "batch_clients": 4}), tmp_path / "together"
    )
    _assert_close_records(stacked, plain)
    assert sum(stacked_replies) >= 9  # 3 rounds x 4 of the 6 clients, all stacked
