"""Fast per-example norms and clipped sums against independent oracles.

The oracle runs one ordinary backward pass per example (batch of one), so it shares no
code with the kernels; ``torch.func`` over the whole model is checked against it too.
Everything runs in float64 so the 1e-5 relative tolerance tests the math, not rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsim.kernels import (
    KERNELS,
    LSTM,
    StructuredDropoutLSTM,
    UnsupportedModuleError,
    clip_and_accumulate,
    per_example_grad_norms,
)
from fedsim.kernels.oracle import (
    clipped_sum_of,
    norms_of,
    per_example_grads_func,
    per_example_grads_loop,
)
from fedsim.kernels.recurrence_routes import DP_RECURRENCE
from tests.kernels.routes import DP_ROUTE_PARAMS

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SETTINGS = settings(max_examples=12, deadline=None)


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy; sequence outputs (B, C, T) sum over positions."""
    loss = F.cross_entropy(out, y, reduction="none")
    return loss.flatten(1).sum(1) if loss.dim() > 1 else loss


@pytest.fixture(autouse=True)
def _float64() -> None:
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_norm: float = 0.7) -> None:
    """Norms and the clipped sum agree with the loop oracle to 1e-5 relative."""
    ref = per_example_grads_loop(model, ce, x, y)
    ref_norms = norms_of(ref)
    norms = per_example_grad_norms(model, ce, x, y)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-5, atol=1e-12)
    got_norms = clip_and_accumulate(model, ce, x, y, max_norm)
    torch.testing.assert_close(got_norms, ref_norms, rtol=1e-5, atol=1e-12)
    expected = clipped_sum_of(ref, max_norm)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-10)
        assert p.requires_grad  # unfrozen again


batch = st.integers(1, 5)
width = st.integers(1, 9)


@SETTINGS
@given(b=batch, i=width, o=st.integers(2, 6), bias=st.booleans())
def test_linear_2d(b: int, i: int, o: int, bias: bool) -> None:
    torch.manual_seed(b * 100 + i)
    check(nn.Linear(i, o, bias=bias), torch.randn(b, i), torch.randint(0, o, (b,)))


@SETTINGS
@given(b=batch, t=st.integers(1, 12), i=st.integers(1, 30), o=st.integers(2, 30))
def test_linear_sequence_both_routes(b: int, t: int, i: int, o: int) -> None:
    """Small T·(i+o) vs i·o picks the ghost norm, large picks materialisation."""
    torch.manual_seed(t * 7 + i)

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(i, o)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).transpose(1, 2)  # (B, C, T) for per-position CE

    check(Seq(), torch.randn(b, t, i), torch.randint(0, o, (b, t)))


@SETTINGS
@given(
    b=batch,
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 8),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 2),
    dil=st.integers(1, 2),
    size=st.integers(5, 9),
    two_d=st.booleans(),
    bias=st.booleans(),
)
def test_conv(
    b: int,
    c_in: int,
    c_out: int,
    k: int,
    stride: int,
    pad: int,
    dil: int,
    size: int,
    two_d: bool,
    bias: bool,
) -> None:
    torch.manual_seed(size * 13 + k)
    conv = (nn.Conv2d if two_d else nn.Conv1d)(c_in, c_out, k, stride, pad, dil, bias=bias)
    shape = (c_in, size, size) if two_d else (c_in, size)
    with torch.no_grad():
        flat = conv(torch.zeros(1, *shape)).numel()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(flat, 3))
    check(model, torch.randn(b, *shape), torch.randint(0, 3, (b,)))


def test_conv_ghost_route() -> None:
    """Wide layer, few output positions: the ghost-norm route (and its clipped sum)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 64, 3), nn.Flatten(), nn.Linear(64 * 4, 3))
    check(model, torch.randn(4, 8, 4, 4), torch.randint(0, 3, (4,)))


@SETTINGS
@given(
    b=batch, t=st.integers(1, 8), vocab=st.integers(2, 6), dim=st.integers(1, 5), pad=st.booleans()
)
def test_embedding_with_repeats(b: int, t: int, vocab: int, dim: int, pad: bool) -> None:
    """Few tokens so rows repeat within an example; padding rows get no gradient."""
    torch.manual_seed(t * 5 + vocab)
    emb = nn.Embedding(vocab, dim, padding_idx=0 if pad else None)
    model = nn.Sequential(emb, nn.Flatten(), nn.Linear(t * dim, 3))
    check(model, torch.randint(0, vocab, (b, t)), torch.randint(0, 3, (b,)))


@SETTINGS
@given(b=batch, groups=st.sampled_from([1, 2, 4]), t=st.integers(1, 5), layer=st.booleans())
def test_norm_layers(b: int, groups: int, t: int, layer: bool) -> None:
    torch.manual_seed(b + groups * 3 + t)
    norm = nn.LayerNorm(8) if layer else nn.GroupNorm(groups, 8)
    model = nn.Sequential(nn.Conv1d(2, 8, 1), nn.Tanh())
    if layer:
        model.append(_Transpose())
    model.extend([norm, nn.Flatten(), nn.Linear(8 * t, 3)])
    with torch.no_grad():  # give the affine parameters non-trivial values
        norm.weight.normal_()
        norm.bias.normal_()
    check(model, torch.randn(b, 2, t), torch.randint(0, 3, (b,)))


class _Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


@SETTINGS
@given(
    b=batch, t=st.integers(1, 6), i=st.integers(1, 5), h=st.integers(1, 6), layers=st.integers(1, 2)
)
def test_lstm_language_model(b: int, t: int, i: int, h: int, layers: int) -> None:
    """Embedding -> fedsim LSTM -> Linear decoder over every position (char-LM shape)."""
    torch.manual_seed(b * 31 + t + h)
    check(TinyLM(7, i, h, layers), torch.randint(0, 7, (b, t)), torch.randint(0, 7, (b, t)))


class TinyLM(nn.Module):
    """Embedding -> fedsim LSTM -> Linear decoder over every position (char-LM shape)."""

    def __init__(self, vocab: int, emb: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = LSTM(emb, hidden, layers)
        self.dec = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.lstm(self.emb(x))[0]).transpose(1, 2)


@pytest.mark.parametrize("recurrence", DP_ROUTE_PARAMS)
def test_lstm_classifier_on_raw_inputs(recurrence: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LSTM as first layer (its input needs no gradient) with the last state read,
    by every recurrence route of a DP pass (recurrence_routes.py: the CPU's step loop, the
    fused forward with the BPTT terms rebuilt in bulk, and CUDA's cuDNN-gates route)."""
    monkeypatch.setitem(DP_RECURRENCE, "cpu", recurrence)
    torch.manual_seed(0)

    class Clf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = LSTM(3, 5, 2)
            self.head = nn.Linear(5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[1][0][-1])  # h_n of the last layer

    check(Clf(), torch.randn(4, 6, 3), torch.randint(0, 4, (4,)))


class Scale(nn.Module):
    """A layer no kernel knows: served by the torch.func fallback."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w + torch.sin(x * self.w)


def test_fallback_layer_in_a_mixed_model() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), Scale(6), nn.ReLU(), nn.Linear(6, 3))
    check(model, torch.randn(5, 4), torch.randint(0, 3, (5,)))


def test_layer_called_twice_counts_both_uses() -> None:
    torch.manual_seed(2)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.lin(torch.tanh(self.lin(x))))

    check(Twice(), torch.randn(3, 4), torch.randint(0, 3, (3,)))


def test_cnn_of_the_registry_against_torch_func() -> None:
    """The shipped CNN: kernels, the loop oracle and torch.func all agree."""
    from fedsim.models import build_model

    torch.manual_seed(3)
    model = build_model("cnn", {}, (1, 8, 8), 10)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    func = norms_of(per_example_grads_func(model, ce, x, y))
    torch.testing.assert_close(func, norms_of(per_example_grads_loop(model, ce, x, y)))
    check(model, x, y)


def test_clipped_examples_respect_the_bound() -> None:
    """Each clipped per-example gradient (batch of one) has norm <= C(1 + 1e-6)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(36, 5))
    x, y = torch.randn(8, 1, 5, 5) * 10, torch.randint(0, 5, (8,))
    c = 0.01
    for i in range(8):
        norms = clip_and_accumulate(model, ce, x[i : i + 1], y[i : i + 1], c)
        assert norms.item() > c  # really clipped
        total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert total <= c * (1 + 1e-6)


def test_large_bound_gives_the_ordinary_summed_gradient() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    ce(model(x), y).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    norms = clip_and_accumulate(model, ce, x, y, max_norm=1e6)
    assert norms.max() < 1e6
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-12, atol=1e-14)


def test_batchnorm_is_refused_by_path() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2)))
    with pytest.raises(UnsupportedModuleError, match=r"^1\.0 \(BatchNorm2d\)"):
        per_example_grad_norms(model, ce, torch.randn(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))


def test_tied_weights_are_refused_by_path() -> None:
    emb, dec = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
    dec.weight = emb.weight
    model = nn.Sequential(emb, dec)
    with pytest.raises(UnsupportedModuleError, match="1 shares a parameter with 0"):
        per_example_grad_norms(
            model, ce, torch.randint(0, 5, (2, 4)), torch.zeros(2, dtype=torch.long)
        )


def test_loss_must_be_per_example() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="one loss per example"):
        per_example_grad_norms(
            model,
            lambda o, y: F.cross_entropy(o, y),
            torch.randn(4, 3),
            torch.zeros(4, dtype=torch.long),
        )


def test_every_kernel_type_is_exercised() -> None:
    assert set(KERNELS) == {
        nn.Linear,
        nn.Conv1d,
        nn.Conv2d,
        nn.Embedding,
        nn.LayerNorm,
        nn.GroupNorm,
        LSTM,
        StructuredDropoutLSTM,
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_on_cuda() -> None:
    torch.manual_seed(6)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(9, 4)
            self.lstm = LSTM(4, 6, 2)
            self.conv = nn.Conv1d(6, 6, 3, padding=1)
            self.dec = nn.Linear(6, 9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.lstm(self.emb(x))[0]
            h = self.conv(h.transpose(1, 2)).transpose(1, 2)
            return self.dec(h).transpose(1, 2)

    model = LM().cuda()
    x, y = torch.randint(0, 9, (5, 7)).cuda(), torch.randint(0, 9, (5, 7)).cuda()
    check(model, x, y)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("recurrence", ["step-loop", "fused-forward", "cudnn-gates", "triton"])
def test_lstm_recurrence_routes_on_cuda(recurrence: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DP recurrence route on CUDA (cuDNN, the Triton kernels compiled) against the
    batch-of-one oracle, two layers under an embedding (G flows on to the embedding)."""
    if recurrence == "triton":
        pytest.importorskip("triton", reason="the optional 'gpu' extra is not installed")
    monkeypatch.setitem(DP_RECURRENCE, "cuda", recurrence)
    torch.manual_seed(7)
    x, y = torch.randint(0, 9, (18, 7)).cuda(), torch.randint(0, 9, (18, 7)).cuda()
    check(TinyLM(9, 5, 20, 2).cuda(), x, y)
