"""fedsim's Triton LSTM recurrence against the textbook dense LSTM.

Without a GPU, triton's interpreter runs the kernels on CPU tensors (tests/kernels/
conftest.py sets ``TRITON_INTERPRET=1``); the ``gpu`` test runs them compiled on CUDA.
Float64 to 1e-13 (the kernels' ``tanh(z) = 2σ(2z) − 1`` differs from torch's tanh in
the last bits; measured differences ~2e-15), float32 to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

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
