"""fedsim's Triton LSTM recurrence against the textbook dense LSTM.

Without a GPU, triton's interpreter runs the kernels on CPU tensors (tests/kernels/
conftest.py sets ``TRITON_INTERPRET=1``); the ``gpu`` test runs them compiled on CUDA.
Float64 to 1e-13 (the kernels' ``tanh(z) = 2σ(2z) − 1`` differs from torch's tanh in
the last bits; measured differences ~2e-15), float32 to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.kernels import StructuredDropoutLSTM, gathered
from fedsim.kernels.recurrence_routes import LOOP_RECURRENCE
from tests.kernels.test_structured_dropout import reference_lstm

pytest.importorskip("triton", reason="the optional 'gpu' extra (triton) is not installed")
from fedsim.kernels import triton_lstm


def _compare(device: str, dtype: torch.dtype, b: int, t: int, i: int, h: int) -> None:
    """Outputs, last state and every gradient of one layer against the reference."""
    torch.manual_seed(b * 7 + h)
    kw = {"dtype": dtype, "device": device}
    params = {
        "weight_ih_l0": torch.randn(4 * h, i, **kw) * 0.4,
        "weight_hh_l0": torch.randn(4 * h, h, **kw) * 0.4,
        "bias_ih_l0": torch.randn(4 * h, **kw) * 0.1,
        "bias_hh_l0": torch.randn(4 * h, **kw) * 0.1,
    }
    params = {n: v.requires_grad_(True) for n, v in params.items()}
    x = torch.randn(b, t, i, **kw, requires_grad=True)
    w_out = torch.randn(b, t, h, **kw)

    def loss(out: torch.Tensor, hn: torch.Tensor, cn: torch.Tensor) -> torch.Tensor:
        return (out * w_out).sum() + 0.3 * hn.sum() + 0.7 * cn.sum()

    # Ours: the input projections of all steps, then the Triton recurrence.
    gx = torch.addmm(
        params["bias_ih_l0"] + params["bias_hh_l0"],
        x.transpose(0, 1).reshape(t * b, i),
        params["weight_ih_l0"].t(),
    ).view(t, b, 4 * h)
    zeros = torch.zeros(b, h, **kw)
    out, hn, cn = triton_lstm.TritonRecurrence.apply(gx, zeros, zeros, params["weight_hh_l0"], None)
    ours = torch.autograd.grad(loss(out, hn, cn), (x, *params.values()))

    ref_out, ref_h, ref_c = reference_lstm(x, params, None, 0.0, 1)
    ref = torch.autograd.grad(loss(ref_out, ref_h[0], ref_c[0]), (x, *params.values()))
    tol = {"rtol": 1e-13, "atol": 1e-13} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(hn, ref_h[0], **tol)
    torch.testing.assert_close(cn, ref_c[0], **tol)
    for name, a, r in zip(("x", *params), ours, ref, strict=True):
        torch.testing.assert_close(a, r, **tol, msg=name)


@pytest.mark.skipif(not triton_lstm.runs_on("cpu"), reason="TRITON_INTERPRET=1 not set")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("b", "t", "i", "h"),
    [(3, 5, 4, 6), (19, 4, 7, 37), (16, 1, 2, 32)],
    ids=["tiny", "ragged-blocks", "exact-blocks"],
)
def test_interpreted_kernels_match_the_textbook_lstm(
    dtype: torch.dtype, b: int, t: int, i: int, h: int
) -> None:
    """Batch and hidden sizes below, across and exactly at the kernels' block sizes."""
    _compare("cpu", dtype, b, t, i, h)


@pytest.mark.skipif(not triton_lstm.runs_on("cpu"), reason="TRITON_INTERPRET=1 not set")
@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 40), t=st.integers(1, 4), h=st.integers(1, 40), seed=st.integers(0, 99))
def test_given_state_and_its_gradients_match_torch_lstm(b: int, t: int, h: int, seed: int) -> None:
    """A non-zero initial state (h0, c0) and the gradients reaching it, on drawn shapes,
    against torch's own LSTM (float64, the CPU's native kernel): the Triton recurrence
    fed the same input projections through an identity input weight."""
    torch.manual_seed(seed)
    kw = {"dtype": torch.float64}
    gx = torch.randn(t, b, 4 * h, **kw, requires_grad=True)
    h0 = torch.randn(b, h, **kw, requires_grad=True)
    c0 = torch.randn(b, h, **kw, requires_grad=True)
    w_hh = (torch.randn(4 * h, h, **kw) * 0.5).requires_grad_(True)
    w_out = torch.randn(t, b, h, **kw)
    out, hn, cn = triton_lstm.TritonRecurrence.apply(gx, h0, c0, w_hh, None)
    loss = (out.transpose(0, 1) * w_out).sum() + 0.3 * hn.sum() + 0.7 * cn.sum()
    ours = torch.autograd.grad(loss, (gx, h0, c0, w_hh))
    eye = torch.eye(4 * h, **kw)
    ref_out, ref_h, ref_c = torch.lstm(
        gx, (h0[None], c0[None]), [eye, w_hh], False, 1, 0.0, True, False, False
    )
    ref_loss = (ref_out * w_out).sum() + 0.3 * ref_h.sum() + 0.7 * ref_c.sum()
    ref = torch.autograd.grad(ref_loss, (gx, h0, c0, w_hh))
    tol = {"rtol": 1e-13, "atol": 1e-13}
    torch.testing.assert_close(out.transpose(0, 1), ref_out, **tol)
    torch.testing.assert_close(hn, ref_h[0], **tol)
    torch.testing.assert_close(cn, ref_c[0], **tol)
    for name, a, r in zip(("gx", "h0", "c0", "w_hh"), ours, ref, strict=True):
        torch.testing.assert_close(a, r, **tol, msg=name)


@pytest.mark.skipif(not triton_lstm.runs_on("cpu"), reason="TRITON_INTERPRET=1 not set")
@pytest.mark.parametrize("batched", [False, True], ids=["per-step-gather", "batched-gather"])
def test_structured_lstm_on_gathered_projections_and_triton_matches_the_reference(
    batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The structured-dropout LSTM outside DP with fedsim's own layers (``fused=False``):
    each dropped input enters through the gathered GEMM (per step, and CUDA's batched
    route over (T, B, kept)), the recurrence runs in the Triton kernels; outputs, state
    and every gradient equal the masked dense textbook LSTM in float64."""
    cls = gathered._GatheredLinearBatched if batched else gathered._GatheredLinear
    monkeypatch.setitem(gathered.ROUTES, "cpu", cls)
    monkeypatch.setitem(LOOP_RECURRENCE, "cpu", "triton")
    calls = []
    apply = triton_lstm.TritonRecurrence.apply

    def counted(*args: object) -> object:
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(triton_lstm.TritonRecurrence, "apply", counted)
    torch.manual_seed(3)
    b, t, i, h, layers, p = 5, 6, 4, 20, 2, 0.5
    lstm = StructuredDropoutLSTM(i, h, layers, dropout=p, fused=False).double().train()
    masks = torch.rand(layers, t, h) >= p
    x = torch.randn(b, t, i, dtype=torch.float64, requires_grad=True)
    w = torch.randn(b, t, h, dtype=torch.float64)
    out, (hn, cn) = lstm(x, masks=masks)
    (out * w).sum().add(hn.sum() * 0.3 + cn.sum() * 0.7).backward()
    assert len(calls) == layers  # every layer's recurrence ran in the Triton kernels

    params = {n: q.detach().clone().requires_grad_(True) for n, q in lstm.named_parameters()}
    x2 = x.detach().clone().requires_grad_(True)
    ref_out, ref_h, ref_c = reference_lstm(x2, params, masks, p, layers)
    (ref_out * w).sum().add(ref_h.sum() * 0.3 + ref_c.sum() * 0.7).backward()
    tol = {"rtol": 1e-13, "atol": 1e-13}
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(hn, ref_h, **tol)
    torch.testing.assert_close(cn, ref_c, **tol)
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    for n, q in lstm.named_parameters():
        torch.testing.assert_close(q.grad, params[n].grad, **tol, msg=n)


def test_the_route_refuses_tensors_it_cannot_run_on() -> None:
    """CPU tensors without the interpreter (or CUDA without a GPU): one clear error."""
    if triton_lstm.runs_on("cpu") and triton_lstm.runs_on("cuda"):
        pytest.skip("both devices are runnable here")
    device = "cuda" if triton_lstm.runs_on("cpu") else "cpu"
    with pytest.raises(RuntimeError, match="'triton' LSTM route cannot run on"):
        triton_lstm.require(device)


@pytest.mark.gpu
@pytest.mark.skipif(not triton_lstm.runs_on("cuda"), reason="needs a CUDA device (compiled)")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_compiled_kernels_on_cuda_match_the_textbook_lstm(dtype: torch.dtype) -> None:
    _compare("cuda", dtype, 37, 9, 11, 70)
