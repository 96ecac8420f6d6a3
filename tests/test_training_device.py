"""``engine.device``: where clients train; the ``gpu`` tests run only where CUDA exists."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import fedsim
from fedsim.cli.main import app
from fedsim.client.dp import CLIPPERS, PrivateGradient
from fedsim.config.schema import DPConfig
from fedsim.errors import ScenarioError
from fedsim.kernels import StructuredDropoutLSTM
from fedsim.kernels.oracle import clipped_sum_of, per_example_grads_loop
from fedsim.models import build_model
from fedsim.training_device import (
    client_device,
    on_device,
    resolve,
    set_process_device,
)
from tests.conftest import write_yaml

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


# ------------------------------------------------------------------- anywhere


def test_auto_is_cuda_when_present_else_the_cpu() -> None:
    assert resolve("auto") == ("cuda" if CUDA else "cpu")
    assert resolve("cpu") == "cpu" and resolve("cuda:1") == "cuda:1"


@pytest.mark.skipif(CUDA, reason="the error is for machines without CUDA")
def test_cuda_without_cuda_is_a_one_line_error_naming_the_key(
    tiny: dict[str, Any], tmp_path: Path
) -> None:
    tiny["engine"] = {"device": "cuda"}
    path = write_yaml(tmp_path / "s.yaml", tiny)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "engine.device" in lines[0] and "auto or cpu" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before any training
    with pytest.raises(ScenarioError, match=r"engine\.device"):
        fedsim.run(fedsim.load_scenario(tiny), tmp_path / "api")


def test_unknown_device_names_the_key_and_the_choices(tiny: dict[str, Any]) -> None:
    tiny["engine"] = {"device": ["cpu", "tpu"]}
    with pytest.raises(ScenarioError, match=r"engine.device.*'tpu'.*auto, cpu, cuda"):
        fedsim.load_scenario(tiny)


def test_node_config_then_process_then_scenario() -> None:
    try:
        assert client_device("cpu", {}) == "cpu"
        assert client_device(["cuda:1", "cuda:0"], {"device": "cpu"}) == "cpu"
        set_process_device("cuda:3")
        assert client_device("cpu", {}) == "cuda:3"
        assert client_device("cpu", {"device": "mps"}) == "mps"
    finally:
        set_process_device(None)
    assert client_device(["cuda:1", "cuda:0"], {}) == "cuda:1"


def test_ray_actors_set_their_threads_from_the_run_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedsim import training_device, wire
    from fedsim.training_device import set_process_threads

    monkeypatch.setitem(training_device._process, "threads", None)  # a fresh process
    before = torch.get_num_threads()
    try:
        set_process_threads({wire.RUN_TORCH_THREADS: 1}, wire.RUN_TORCH_THREADS)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        set_process_threads({wire.RUN_TORCH_THREADS: 1}, wire.RUN_TORCH_THREADS)
        assert torch.get_num_threads() == 2  # once per process, not once per job
        set_process_threads({}, wire.RUN_TORCH_THREADS)  # a deployment: torch's own choice
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_on_the_cpu_data_is_shared_not_copied() -> None:
    x = np.arange(6, dtype=np.float32)
    t = on_device(x, "cpu", key="k")
    x[0] = 7.0
    assert t[0].item() == 7.0


# ------------------------------------------------------------------- on CUDA


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("engine", [{"device": "cuda"}, {"device": "cuda", "workers": 2}])
def test_a_run_on_cuda_equals_the_cpu_run(
    tiny: dict[str, Any], tmp_path: Path, engine: dict[str, Any]
) -> None:
    """Model, data, FedProx's anchor, optimizer state and central evaluation on the GPU."""
    tiny["strategy"] = {"name": "fedprox", "params": {"proximal_mu": 0.1}}
    tiny["client"]["optimizer"].update(momentum=0.9)
    tiny["engine"] = {"device": "cpu"}
    cpu = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "cpu")
    tiny["engine"] = engine
    gpu = fedsim.run(fedsim.load_scenario(tiny), tmp_path / "gpu")
    assert len(gpu.metrics) == len(cpu.metrics) == 3
    for a, b in zip(cpu.metrics, gpu.metrics, strict=True):
        for key in ("eval_loss", "eval_accuracy", "train_loss"):
            if a.get(key) is not None:
                assert b[key] == pytest.approx(a[key], abs=1e-4), key
    wa, wb = np.load(cpu.run_dir / "final_arrays.npz"), np.load(gpu.run_dir / "final_arrays.npz")
    for k in wa.files:
        np.testing.assert_allclose(wb[k], wa[k], atol=1e-4, rtol=0)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("mode", sorted(CLIPPERS.names()))
def test_dp_clipping_on_cuda_matches_the_per_example_oracle(mode: str) -> None:
    """Every client.dp mode's clipped sum on the GPU equals the CPU oracle's loop."""
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4, 8], "hidden": 16}, (1, 8, 8), 10)
    x, y = torch.randn(12, 1, 8, 8) * 3, torch.randint(0, 10, (12,))
    expected = clipped_sum_of(per_example_grads_loop(model, ce, x, y), 0.5)
    model = model.cuda()
    losses = CLIPPERS.get(mode)(model)(model, ce, x.cuda(), y.cuda(), 0.5)
    assert losses.is_cuda and losses.shape == (12,)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.cpu(), expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@needs_cuda
def test_private_gradient_on_cuda_adds_the_cpu_noise() -> None:
    """The noise is drawn on the CPU generator: the same update on either device."""
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5)
    torch.manual_seed(2)
    cpu_model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for model, xs, ys in ((cpu_model, x, y), (gpu_model, x.cuda(), y.cuda())):
        grad = PrivateGradient(cfg, model, 8.0, torch.Generator().manual_seed(5))
        grad(model, ce, xs, ys)
    for (name, a), b in zip(cpu_model.named_parameters(), gpu_model.parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "step-loop+gathered"])
def test_structured_dropout_lstm_on_cuda_matches_the_dense_reference(fused: bool) -> None:
    """Given masks, the GPU LSTM's outputs and gradients equal the CPU textbook LSTM's."""
    from tests.kernels.test_structured_dropout import reference_lstm

    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(3)
        layers, p, b, t, i, h = 2, 0.5, 4, 6, 3, 5
        lstm = StructuredDropoutLSTM(i, h, layers, dropout=p, fused=fused).train()
        masks = torch.rand(layers, t, h) >= p
        x = torch.randn(b, t, i)
        w = torch.randn(b, t, h)
        params = {n: q.detach().clone().requires_grad_(True) for n, q in lstm.named_parameters()}
        x_ref = x.clone().requires_grad_(True)
        ref_out, ref_h, ref_c = reference_lstm(x_ref, params, masks, p, layers)
        (ref_out * w).sum().add(ref_h.sum() * 0.3 + ref_c.sum() * 0.7).backward()

        lstm = lstm.cuda()
        x_gpu = x.cuda().requires_grad_(True)
        out, (hn, cn) = lstm(x_gpu, masks=masks.cuda())
        (out * w.cuda()).sum().add(hn.sum() * 0.3 + cn.sum() * 0.7).backward()
        torch.testing.assert_close(out.cpu(), ref_out, rtol=0, atol=1e-9)
        torch.testing.assert_close(hn.cpu(), ref_h, rtol=0, atol=1e-9)
        torch.testing.assert_close(x_gpu.grad.cpu(), x_ref.grad, rtol=0, atol=1e-9)
        for n, q in lstm.named_parameters():
            torch.testing.assert_close(q.grad.cpu(), params[n].grad, rtol=0, atol=1e-9, msg=n)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_deployed_nodes_device_travels_in_its_node_config() -> None:
    from flwr.common.config import parse_config_args

    from fedsim.deploy.flower_commands import node_config
    from fedsim.errors import DeploymentError

    parsed = parse_config_args([node_config(0, 2, None, "cuda:1")])
    assert parsed == {"partition-id": 0, "num-partitions": 2, "device": "cuda:1"}
    assert client_device("cpu", parsed) == "cuda:1"
    with pytest.raises(DeploymentError, match="--device"):
        node_config(0, 2, None, "tpu")
