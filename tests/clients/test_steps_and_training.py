"""Local steps and the single training loop."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn

import fedsim
from fedsim import wire
from fedsim.client.loop import num_local_steps, train_local
from fedsim.client.steps import (
    STEPS,
    LocalStep,
    PlainStep,
    ProximalStep,
    StepInputs,
    select_step,
)
from fedsim.client.unread_keys import unread_keys, warn_unread
from fedsim.config.schema import ClientConfig
from fedsim.errors import FedsimWarning


def test_step_selection() -> None:
    assert select_step({}) is PlainStep
    assert select_step({wire.PROXIMAL_MU: 0.1}) is ProximalStep  # Flower's FedProx key
    assert select_step({wire.LOCAL_STEP: "plain", wire.PROXIMAL_MU: 0.1}) is PlainStep
    with pytest.raises(ValueError, match="unknown local step"):
        select_step({wire.LOCAL_STEP: "nope"})


def test_proximal_penalty_value() -> None:
    """mu/2 * ||w - w0||^2 with w - w0 = 0.5 on all 4+1 parameters: 0.1/2 * 5 * 0.25."""
    model = nn.Linear(4, 1)
    step = ProximalStep(StepInputs({wire.PROXIMAL_MU: 0.1}, model))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    penalty = step.penalty(dict(model.named_parameters()))
    assert penalty is not None
    assert float(penalty.detach()) == pytest.approx(0.05 * 5 * 0.25)


def test_number_of_steps() -> None:
    assert num_local_steps(100, ClientConfig(local_epochs=2, batch_size=32)) == 8
    assert num_local_steps(10, ClientConfig(batch_size=32)) == 1
    assert num_local_steps(100, ClientConfig(local_steps=5)) == 5


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_training_is_deterministic_given_the_generator() -> None:
    x, y = _data()
    cfg = ClientConfig(local_epochs=3, batch_size=8)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Linear(5, 2)
        res = train_local(
            model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(1)
        )
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert res.samples == 3 * 64 and res.steps == 24


def test_training_reduces_loss() -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    cfg = ClientConfig(local_epochs=1, batch_size=8, optimizer={"lr": 0.5})
    first = train_local(
        model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(1)
    )
    later = train_local(
        model, x, y, cfg, LocalStep(StepInputs({}, model)), torch.Generator().manual_seed(2)
    )
    assert later.mean_loss < first.mean_loss


def test_the_correction_is_added_to_the_gradient_before_each_step() -> None:
    """A zero data loss and correction c = 0.25 on the bias: K = 3 SGD steps at η = 0.1
    move the bias by exactly -K·η·c = -0.075 and leave the weight where it was."""

    class Shifted(LocalStep):
        def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return 0.0 * logits.sum(1)

        def correction(self, params: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
            return {"bias": torch.full_like(params["bias"], 0.25)}

    x, y = _data()
    cfg = ClientConfig(local_steps=3, batch_size=8, optimizer={"lr": 0.1})
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_local(model, x, y, cfg, Shifted(StepInputs({}, model)), torch.Generator().manual_seed(1))
    assert torch.equal(model.weight, before["weight"])
    torch.testing.assert_close(model.bias.detach(), before["bias"] - 3 * 0.1 * 0.25)


def test_a_config_key_no_one_reads_is_warned_of_once_per_run() -> None:
    config = {wire.SERVER_ROUND: 1, wire.PROXIMAL_MU: 0.1, "proximal_mu": 0.1}
    assert unread_keys(ProximalStep, config) == ["proximal_mu"]
    with pytest.warns(FedsimWarning, match="'proximal_mu', which local step 'proximal'"):
        warn_unread(("test", 1), ProximalStep, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_unread(("test", 1), ProximalStep, config)  # the same run: said already


def test_a_registered_step_is_selected_by_name_and_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The registration lasts for this test only (other tests list every step).
    monkeypatch.setattr(STEPS, "_items", dict(STEPS._items))
    monkeypatch.setattr(STEPS, "_help", dict(STEPS._help))

    @fedsim.register_step("test-halved", help="half the data loss")
    class Halved(fedsim.LocalStep):
        def data_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return 0.5 * super().data_loss(logits, targets)

    assert select_step({wire.LOCAL_STEP: "test-halved"}) is Halved
    assert ("test-halved", "half the data loss") in STEPS.describe()
    with pytest.raises(TypeError, match="not a LocalStep subclass"):
        fedsim.register_step("test-bad")(int)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("n", "batch", "steps", "dp"),
    [
        (64, 32, 5, None),  # epochs end exactly: the next one is drawn mid-run
        (70, 32, 7, None),  # a short last batch per epoch
        (10, 32, 3, None),  # the batch is the whole client
        (50, 8, 4, "fixed"),
        (50, 8, 4, "poisson"),
        (5, 1, 6, "poisson"),  # empty batches
    ],
)
def test_batch_rows_are_batch_spans_as_rows(n: int, batch: int, steps: int, dp: str | None) -> None:
    """The stacked path's batch rows are the per-client batches, in order, padded by -1."""
    from fedsim.client.loop import clients_batch_rows

    cfg = _client_cfg(batch, dp, local_steps=steps)
    (rows,) = clients_batch_rows([n], cfg, [steps], [11])
    _assert_rows_are_spans(rows, n, cfg, steps, 11)


def _client_cfg(batch: int, dp: str | None, **steps: int) -> ClientConfig:
    dp_cfg = None if dp is None else {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sampling": dp}
    return ClientConfig.model_validate({"batch_size": batch, "dp": dp_cfg, **steps})


def _assert_rows_are_spans(
    rows: np.ndarray, n: int, cfg: ClientConfig, steps: int, seed: int
) -> None:
    """``rows`` hold batch_spans' batches from a generator seeded ``seed``, -1 padded."""
    from fedsim.client.loop import batch_spans

    want = [
        order[span].tolist()
        for order, span in batch_spans(n, cfg, steps, torch.Generator().manual_seed(seed))
    ]
    assert len(rows) == steps
    assert [[int(v) for v in row if v >= 0] for row in rows] == want
    assert all(
        (row[: len(w)] >= 0).all() and (row[len(w) :] == -1).all()
        for row, w in zip(rows, want, strict=True)
    )


def test_job_seeds_at_once_equal_each_jobs_seed() -> None:
    """The vectorised SeedSequence gives every job the seed numpy gives it."""
    from fedsim.client.job import job_seed
    from fedsim.client.job_seeds import job_seeds

    rng = np.random.default_rng(5)
    ids = [0, 1, 2**32 - 1, *rng.integers(0, 2**32, 200).tolist()]
    for run_seed, server_round, purpose in [
        (0, 1, 0),
        (2**32 - 1, 2**31, 1),
        *[tuple(int(v) for v in rng.integers(0, 2**32, 3)) for _ in range(5)],
    ]:
        want = [job_seed(run_seed, p, server_round, purpose) for p in ids]
        assert job_seeds(run_seed, ids, server_round, purpose) == want
    # Words past 32 bits take numpy's own path.
    assert job_seeds(2**40, [3, 2**33], 1, 0) == [
        job_seed(2**40, 3, 1, 0),
        job_seed(2**40, 2**33, 1, 0),
    ]
    assert job_seeds(1, [], 1, 0) == []


@pytest.mark.parametrize("dp", [None, "fixed"])
def test_many_clients_batch_rows_are_each_clients_own(dp: str | None) -> None:
    """Rows drawn for many clients at once (sizes and step counts mixed) are each one's."""
    from fedsim.client.loop import clients_batch_rows

    cfg = _client_cfg(8, dp, local_epochs=2)
    sizes = [20, 64, 20, 5, 64, 17]
    steps = [num_local_steps(n, cfg) for n in sizes]
    steps[1] = 3  # a client cut short of its epochs
    seeds = [3, 99, 4, 7, 2**32 - 1, 0]
    together = clients_batch_rows(sizes, cfg, steps, seeds)
    for rows, n, t, seed in zip(together, sizes, steps, seeds, strict=True):
        _assert_rows_are_spans(rows, n, cfg, t, seed)


def test_a_loss_tally_kept_on_the_device_adds_what_the_host_adds() -> None:
    """The device-side tally (read once) is the host's float sum, bit for bit."""
    from fedsim.client.loop import LossTally

    rng = np.random.default_rng(2)
    steps = [
        torch.from_numpy(rng.normal(size=n).astype(np.float32) * 10**e)
        for n, e in [(32, 0), (7, 3), (1, -4), (32, 2)]
    ]
    host, device = LossTally(on_host=True), LossTally(on_host=False)
    for losses in steps:
        host.add(losses)
        device.add(losses)
    assert device.tensor is not None and device.total() == host.total()
    assert LossTally(on_host=False).total() == 0.0
