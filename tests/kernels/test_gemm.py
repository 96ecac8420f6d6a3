"""GEMM routes (oneDNN, MKL, operand orientations) against torch's own dense products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedsim.kernels import dense_linear, gemm

needs_onednn = pytest.mark.skipif(not gemm.ONEDNN, reason="torch built without oneDNN")


class CountCalls:
    """Wraps an op and counts its calls, those of its overloads (``.binary``) included."""

    def __init__(self, op: object, parent: CountCalls | None = None) -> None:
        self.op, self.calls, self.parent = op, 0, parent

    def __call__(self, *args: object) -> object:
        counter = self.parent or self
        counter.calls += 1
        return self.op(*args)  # type: ignore[operator]

    def __getattr__(self, name: str) -> object:
        return CountCalls(getattr(self.op, name), self.parent or self)


@pytest.fixture(params=[True, False], ids=["onednn", "mkl"])
def onednn_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CountCalls:
    """Each route in turn; the spy counts the oneDNN matmuls the test ran."""
    if request.param and not gemm.ONEDNN:
        pytest.skip("torch built without oneDNN")
    monkeypatch.setattr(gemm, "ONEDNN", request.param)
    spy = CountCalls(torch.ops.mkldnn._linear_pointwise)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    return spy


def _dense_linear_and_grads(
    dtype: torch.dtype, fast: bool
) -> tuple[torch.Tensor, ...]:  # out, dx, dW, db in float64
    torch.manual_seed(0)
    x0 = torch.randn(6, 4, 9, dtype=torch.float64)  # (B, T, in), used as (T, B, in)
    w0, b0 = torch.randn(7, 9, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    cot = torch.randn(4, 6, 7, dtype=torch.float64)
    x, w, b = (t.to(dtype).requires_grad_(True) for t in (x0, w0, b0))
    xt = x.transpose(0, 1)  # a non-contiguous input, as the LM's decoder sees it
    out = dense_linear(xt, w, b) if fast else F.linear(xt, w, b)
    (out.double() * cot).sum().backward()
    return tuple(t.double() for t in (out, x.grad, w.grad, b.grad))  # type: ignore[union-attr]


def test_dense_linear_equals_f_linear_in_float64() -> None:
    """float64 takes torch.addmm: the same sums as F.linear, in another orientation."""
    for got, ref in zip(
        _dense_linear_and_grads(torch.float64, True),
        _dense_linear_and_grads(torch.float64, False),
        strict=True,
    ):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_dense_linear_in_float32_matches_float64_on_each_route(onednn_calls: CountCalls) -> None:
    """float32 on oneDNN (or MKL) against float64 F.linear, to float32 rounding."""
    got = _dense_linear_and_grads(torch.float32, True)
    assert (onednn_calls.calls == 3) is gemm.ONEDNN  # forward, dX and dW
    for a, b in zip(got, _dense_linear_and_grads(torch.float64, False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dense_linear_output_is_contiguous_rows() -> None:
    x = torch.randn(5, 3, 4).transpose(0, 1)
    out = dense_linear(x, torch.randn(2, 4))
    assert out.shape == (3, 5, 2) and out.is_contiguous()


def test_linear_rows_adds_and_reuses_a_packed_weight(onednn_calls: CountCalls) -> None:
    """``x Wᵀ + b + add`` with W packed once, and with W as a transposed view; an empty
    reduction (a step that keeps no unit) falls back to torch.addmm on either route."""
    torch.manual_seed(1)
    x, add = torch.randn(5, 8), torch.randn(5, 3)
    w, bias = torch.randn(3, 8), torch.randn(3)
    ref = x.double() @ w.double().T + bias.double() + add.double()
    packed = gemm.pack_weight(w, 5)
    for weight in (packed, w.t().contiguous().t()):
        got = gemm.linear_rows(x, weight, bias, add=add)
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)
    assert (onednn_calls.calls == 2) is gemm.ONEDNN
    empty = gemm.linear_rows(torch.randn(5, 0), torch.randn(3, 0), bias)
    torch.testing.assert_close(empty, bias.expand(5, 3))


def test_weight_grad_is_the_transposed_product() -> None:
    x, d = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(gemm.weight_grad(x, d), d.T @ x, rtol=0, atol=1e-12)


def test_column_sums_is_the_bias_gradient() -> None:
    d = torch.randn(12, 5, dtype=torch.float64)
    torch.testing.assert_close(gemm.column_sums(d), d.sum(0), rtol=0, atol=1e-12)
