"""Structured-dropout LSTM against an independently written masked dense LSTM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.kernels import (
    GATHER_RULES,
    GatherRule,
    StructuredDropoutLSTM,
    clip_and_accumulate,
    gathered,
    gathered_linear,
    gemm,
    structure_pays,
)
from fedsim.kernels.oracle import clipped_sum_of, norms_of, per_example_grads_loop
from fedsim.kernels.recurrence_routes import DP_RECURRENCE
from tests.kernels.routes import DP_ROUTE_PARAMS
from tests.kernels.test_gemm import CountCalls


@pytest.fixture(autouse=True)
def _float64() -> None:
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def reference_lstm(x, params, masks, p, layers):  # type: ignore[no-untyped-def]
    """A textbook LSTM (gate order i, f, g, o) with dense dropout on layer outputs.

    ``masks`` (L, T, H) multiplies every batch row alike; kept units scaled 1/(1-p).
    """
    b, t, _ = x.shape
    inp, hs_n, cs_n = x, [], []
    for k in range(layers):
        w_ih, w_hh, b_ih, b_hh = (
            params[f"{n}_l{k}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )
        hid = w_hh.shape[1]
        h = x.new_zeros(b, hid)
        c = x.new_zeros(b, hid)
        outs = []
        for s in range(t):
            z = inp[:, s] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
            i, f, g, o = (
                z[:, :hid].sigmoid(),
                z[:, hid : 2 * hid].sigmoid(),
                z[:, 2 * hid : 3 * hid].tanh(),
                z[:, 3 * hid :].sigmoid(),
            )
            c = f * c + i * g
            h = o * c.tanh()
            outs.append(h)
        hs_n.append(h)
        cs_n.append(c)
        inp = torch.stack(outs, 1)
        if masks is not None:
            inp = inp * masks[k].to(inp.dtype) / (1 - p)
    return inp, torch.stack(hs_n), torch.stack(cs_n)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "step-loop+gathered"])
@pytest.mark.parametrize(("layers", "p"), [(1, 0.3), (2, 0.5), (3, 0.65)])
def test_given_masks_match_the_masked_dense_reference(
    layers: int, p: float, fused: bool, route: str
) -> None:
    torch.manual_seed(layers)
    b, t, i, h = 4, 6, 3, 5
    lstm = StructuredDropoutLSTM(i, h, layers, dropout=p, fused=fused).train()
    masks = torch.rand(layers, t, h) >= p
    x = torch.randn(b, t, i, requires_grad=True)
    out, (hn, cn) = lstm(x, masks=masks)
    w = torch.randn_like(out)
    (out * w).sum().add(hn.sum() * 0.3 + cn.sum() * 0.7).backward()
    ours = {n: q.grad.clone() for n, q in lstm.named_parameters()}
    dx = x.grad.clone()

    params = {n: q.detach().clone().requires_grad_(True) for n, q in lstm.named_parameters()}
    x2 = x.detach().clone().requires_grad_(True)
    ref_out, ref_h, ref_c = reference_lstm(x2, params, masks, p, layers)
    (ref_out * w).sum().add(ref_h.sum() * 0.3 + ref_c.sum() * 0.7).backward()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-9)
    torch.testing.assert_close(hn, ref_h, rtol=0, atol=1e-9)
    torch.testing.assert_close(cn, ref_c, rtol=0, atol=1e-9)
    torch.testing.assert_close(dx, x2.grad, rtol=0, atol=1e-9)
    for n, g in ours.items():
        torch.testing.assert_close(g, params[n].grad, rtol=0, atol=1e-9, msg=n)


def test_drawn_masks_are_structured_in_space_random_in_time() -> None:
    torch.manual_seed(0)
    p, t, h = 0.4, 200, 64
    lstm = StructuredDropoutLSTM(3, h, 2, dropout=p).train()
    out, _ = lstm(torch.randn(8, t, 3))
    zero = out == 0  # (B, T, H): dropped units of the last layer
    assert torch.equal(zero, zero[:1].expand_as(zero))  # every row shares the pattern
    masks = lstm.last_masks
    assert masks is not None and masks.shape == (2, t, h)
    assert torch.equal(zero[0], ~masks[-1])
    assert not torch.equal(masks[0, 0], masks[0, 1])  # redrawn every step
    n = masks.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(masks.double().mean().item() - (1 - p)) < 3 * sigma


def test_eval_mode_is_the_plain_lstm() -> None:
    torch.manual_seed(1)
    ours = StructuredDropoutLSTM(4, 6, 2, dropout=0.5).eval()
    ref = nn.LSTM(4, 6, 2, batch_first=True)
    ref.load_state_dict(ours.state_dict())  # same parameter names either way
    x = torch.randn(3, 7, 4)
    torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=0, atol=1e-12)
    assert ours.last_masks is None


def test_per_element_variant_masks_each_row() -> None:
    torch.manual_seed(2)
    lstm = StructuredDropoutLSTM(3, 8, 1, dropout=0.5, per_element=True).train()
    out, _ = lstm(torch.randn(6, 20, 3))
    zero = out == 0
    assert not torch.equal(zero, zero[:1].expand_as(zero))


ROUTE_IDS = ["per-step", "batched"]


@pytest.fixture(params=ROUTE_IDS)
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the CPU through each route of ``gathered_linear``; the batched one
    (the CUDA route) also in chunks of two steps, so the chunk seams are exercised."""
    batched = request.param == "batched"
    cls = gathered._GatheredLinearBatched if batched else gathered._GatheredLinear
    monkeypatch.setitem(gathered.ROUTES, "cpu", cls)
    return str(request.param)


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks"])
def test_gathered_linear_equals_the_dense_masked_linear(
    route: str, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(3)
    x = torch.randn(5, 7, 9, requires_grad=True)
    keep = torch.rand(7, 9) > 0.5
    keep[2] = False  # a step that keeps nothing
    keep[4] = True  # and one that keeps everything
    lin = nn.Linear(9, 4)
    if chunked:  # two steps of (k_max · out) elements per chunk
        monkeypatch.setattr(gathered, "BATCHED_MAX", 2 * 9 * 4)
    y = gathered_linear(x, keep, lin.weight, lin.bias, scale=2.0)  # (T, B, out)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    got = (x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone())
    x.grad = lin.weight.grad = lin.bias.grad = None
    ref = lin(x * keep * 2.0).transpose(0, 1)
    (ref * w).sum().backward()
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    for a, b in zip(got, (x.grad, lin.weight.grad, lin.bias.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2], ids=["in-sequence", "side-by-side"])
def test_gathered_loops_side_by_side_match_the_dense_reference(
    threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On several CPU threads the per-step route's forward steps, then its data-gradient
    and weight-gradient loops, run side by side (one thread each); on one they run in
    sequence. Both equal the dense masked linear (float64); the threads are restored."""
    monkeypatch.setitem(gathered.ROUTES, "cpu", gathered._GatheredLinear)
    spy = CountCalls(gathered.run_side_by_side)
    monkeypatch.setattr(gathered, "run_side_by_side", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(4)
        x = torch.randn(6, 5, 8, requires_grad=True)
        keep = torch.rand(5, 8) > 0.5
        keep[1] = False  # a step that keeps nothing
        lin = nn.Linear(8, 7)
        y = gathered_linear(x, keep, lin.weight, lin.bias, scale=2.0)
        assert spy.calls == (1 if threads > 1 else 0)
        w = torch.randn_like(y)
        (y * w).sum().backward()
        assert spy.calls == (2 if threads > 1 else 0)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    got = (y.detach(), x.grad.clone(), lin.weight.grad.clone())
    x.grad = lin.weight.grad = None
    ref = lin(x * keep * 2.0).transpose(0, 1)
    (ref * w).sum().backward()
    for a, b in zip(got, (ref, x.grad, lin.weight.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_padded_kept_index_lists_kept_units_first_and_never_repeats() -> None:
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    idx, valid = gathered.padded_kept_index(keep)
    assert idx.tolist() == [[0, 2], [3, 0]]
    assert valid.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize(
    ("device", "batch", "hidden", "p", "pays"),
    [
        ("cpu", 64, 650, 0.5, True),
        ("cpu", 20, 650, 0.5, False),  # B rows per step: too narrow a GEMM
        ("cpu", 64, 650, 0.3, False),  # too little dropped
        ("cpu", 64, 256, 0.5, False),  # the char-LM's width: too small a GEMM per step
        ("cuda", 64, 650, 0.5, False),  # the gathered copy outweighs the halved GEMM
        ("cuda", 64, 1500, 0.5, True),
        ("mps", 64, 1500, 0.5, False),  # no rule for the device: the dense route
    ],
)
def test_structure_pays_by_device_and_shape(
    device: str, batch: int, hidden: int, p: float, pays: bool
) -> None:
    assert structure_pays(device, batch, hidden, p) is pays


@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "dense"])
def test_charlm_decoder_weight_lives_transposed_and_keeps_its_gradient_layout(
    gather: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nn.Linear's shape and values, one memory row per hidden unit: both decoder
    routes' weight gradients come out in that layout (autograd keeps them, no copy), the
    state dict loads into nn.Linear and back, and SGD updates it like any weight."""
    from fedsim.models import build_model

    monkeypatch.setitem(GATHER_RULES, "cpu", GatherRule(1 if gather else 10**6, 0.4))
    torch.manual_seed(0)
    model = build_model("charlm", {"hidden": 8, "dropout": 0.5}, (5,), 11).train()
    weight = model.dec.weight
    assert weight.shape == (11, 8) and weight.t().is_contiguous()
    model(torch.randint(0, 11, (4, 5))).sum().backward()
    assert weight.grad is not None and weight.grad.stride() == weight.stride()
    plain = nn.Linear(8, 11)
    plain.load_state_dict({"weight": weight.detach(), "bias": model.dec.bias.detach()})
    assert torch.equal(plain.weight, weight)
    model.dec.load_state_dict(plain.state_dict())
    assert weight.t().is_contiguous() and torch.equal(plain.weight, weight)


@pytest.mark.parametrize(
    "batch", [GATHER_RULES["cpu"].min_batch - 1, GATHER_RULES["cpu"].min_batch]
)
def test_charlm_gathers_exactly_where_the_rule_says(
    batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedsim.models import build_model, charlm

    calls: list[int] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return gathered_linear(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(charlm, "gathered_linear", spy)
    # A tiny model under the CPU rule without its width threshold: the batch decides.
    monkeypatch.setitem(GATHER_RULES, "cpu", GatherRule(GATHER_RULES["cpu"].min_batch, 0.4))
    torch.manual_seed(0)
    model = build_model("charlm", {"hidden": 8, "dropout": 0.5}, (5,), 11).train()
    model(torch.randint(0, 11, (batch, 5)))
    assert bool(calls) is structure_pays("cpu", batch, 8, 0.5)
    model.eval()(torch.randint(0, 11, (batch, 5)))  # eval never gathers
    assert len(calls) == int(structure_pays("cpu", batch, 8, 0.5))


class _FixedMaskLM(nn.Module):
    """A char-LM whose dropout masks are fixed, so a batch-of-one oracle sees the same."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 4)
        self.lstm = StructuredDropoutLSTM(4, 6, 2, dropout=0.5)
        self.dec = nn.Linear(6, 9)
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.lstm(self.emb(x), masks=self.masks)[0]).transpose(1, 2)


def _assert_clipping_matches_the_oracle(model: nn.Module) -> None:
    """Norms and clipped sums of a (vocab 9, T = 7) LM against the batch-of-one oracle."""
    x, y = torch.randint(0, 9, (5, 7)), torch.randint(0, 9, (5, 7))

    def loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, t, reduction="none").mean(1)

    ref = per_example_grads_loop(model, loss, x, y)
    norms = clip_and_accumulate(model, loss, x, y, 0.3)
    torch.testing.assert_close(norms, norms_of(ref), rtol=1e-5, atol=1e-12)
    expected = clipped_sum_of(ref, 0.3)
    for n, q in model.named_parameters():
        torch.testing.assert_close(q.grad, expected[n], rtol=1e-5, atol=1e-10, msg=n)


@pytest.mark.parametrize("recurrence", DP_ROUTE_PARAMS)
def test_fast_clipping_serves_the_structured_lstm(
    recurrence: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DP clipping through the gathered input projections (both routes) and every
    recurrence route of a DP pass, against the batch-of-one oracle."""
    monkeypatch.setitem(DP_RECURRENCE, "cpu", recurrence)
    torch.manual_seed(4)
    model = _FixedMaskLM(torch.rand(2, 7, 6) >= 0.5).train()
    _assert_clipping_matches_the_oracle(model)


@pytest.mark.parametrize("pays", [True, False], ids=["rule-gathers", "rule-says-dense"])
def test_a_device_asking_the_rule_gathers_the_dp_input_only_where_it_pays(
    pays: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's choice for a DP pass's dropped layer inputs, run on the CPU: with the CPU
    among the devices that ask ``structure_pays``, the input is gathered exactly where
    the rule says so and takes the dense masked GEMM elsewhere; clipped sums equal the
    batch-of-one oracle's either way."""
    from fedsim.kernels import lstm as lstm_module

    monkeypatch.setattr(lstm_module, "INPUT_GATHER_BY_RULE", {"cpu"})
    min_batch = 1 if pays else 10**6
    monkeypatch.setitem(GATHER_RULES, "cpu", GatherRule(min_batch, 0.4))
    calls: list[int] = []
    real = lstm_module.gathered_linear

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lstm_module, "gathered_linear", spy)
    torch.manual_seed(4)
    model = _FixedMaskLM(torch.rand(2, 7, 6) >= 0.5).train()
    _assert_clipping_matches_the_oracle(model)
    assert bool(calls) is pays


def test_charlm_decoder_keeps_its_dp_hook() -> None:
    """A DP pass through CharLM runs the decoder as nn.Linear (its kernel needs the hook),
    not the dense or gathered routes: clipped sums equal the batch-of-one oracle's."""
    from fedsim.models import build_model

    torch.manual_seed(9)
    model = build_model("charlm", {"embed": 4, "hidden": 6}, (7,), 9).train()
    _assert_clipping_matches_the_oracle(model)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "step-loop+gathered"])
def test_input_dropout_matches_the_reference_on_the_masked_input(fused: bool) -> None:
    """dropout_input: the first layer's input is masked (T, I), batch-shared, 1/(1-p)."""
    torch.manual_seed(5)
    b, t, i, h, layers, p = 4, 6, 3, 5, 2, 0.5
    lstm = StructuredDropoutLSTM(i, h, layers, dropout=p, fused=fused, dropout_input=True).train()
    masks = torch.rand(layers, t, h) >= p
    input_mask = torch.rand(t, i) >= p
    x = torch.randn(b, t, i, requires_grad=True)
    out, _ = lstm(x, masks=masks, input_mask=input_mask)
    out.sum().backward()
    params = {n: q.detach().clone().requires_grad_(True) for n, q in lstm.named_parameters()}
    x2 = x.detach().clone().requires_grad_(True)
    ref_out, _, _ = reference_lstm(x2 * input_mask / (1 - p), params, masks, p, layers)
    ref_out.sum().backward()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-9)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=1e-9)
    for n, q in lstm.named_parameters():
        torch.testing.assert_close(q.grad, params[n].grad, rtol=0, atol=1e-9, msg=n)


def test_charlm_drops_its_embedding_output_by_default() -> None:
    """The drawn input mask is (T, embed), shared by the batch and redrawn per step; the
    module without it (dropout_input=False) leaves the embedding untouched."""
    from fedsim.models import build_model

    torch.manual_seed(0)
    model = build_model("charlm", {"embed": 16, "hidden": 8, "dropout": 0.5}, (40,), 20).train()
    model(torch.randint(0, 20, (3, 40)))
    mask = model.lstm.last_input_mask
    assert mask is not None and mask.shape == (40, 16)
    assert not torch.equal(mask[0], mask[1]) and 0.3 < mask.double().mean().item() < 0.7
    off = build_model(
        "charlm", {"embed": 16, "hidden": 8, "dropout": 0.5, "dropout_input": False}, (40,), 20
    ).train()
    off(torch.randint(0, 20, (3, 40)))
    assert off.lstm.last_input_mask is None
    model.eval()(torch.randint(0, 20, (3, 40)))
    assert model.lstm.last_input_mask is None  # eval: no mask


@pytest.mark.skipif(not gemm.ONEDNN, reason="torch built without oneDNN")
@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "mkl"])
def test_float32_gemm_routes_match_the_float64_reference(
    onednn: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In float32 the per-step GEMMs (recurrence, gathered input and decoder) run in
    oneDNN, which has no float64 matmul: the step-loop LSTM and the gathered decoder,
    forward and every gradient, against the float64 reference to float32 rounding."""
    monkeypatch.setattr(gemm, "ONEDNN", onednn)
    spy = CountCalls(torch.ops.mkldnn._linear_pointwise)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", spy)
    torch.manual_seed(8)
    b, t, i, h, layers, p, vocab = 5, 7, 6, 9, 2, 0.5, 11
    lstm = StructuredDropoutLSTM(i, h, layers, dropout=p, fused=False, dropout_input=True)
    lstm = lstm.float().train()
    dec = nn.Linear(h, vocab).float()
    masks, input_mask = torch.rand(layers, t, h) >= p, torch.rand(t, i) >= p
    masks[1, 3] = input_mask[2] = False  # steps that keep no unit (oneDNN refuses k = 0)
    x = torch.randn(b, t, i, dtype=torch.float32, requires_grad=True)
    out, _ = lstm(x, masks=masks, input_mask=input_mask)
    logits = gathered_linear(out, masks[-1], dec.weight, dec.bias)  # (T, B, V)
    w = torch.randn(t, b, vocab)
    (logits.double() * w).sum().backward()
    assert (spy.calls > 0) is onednn

    params = {n: q.detach().double().requires_grad_(True) for n, q in lstm.named_parameters()}
    wd, bd = (q.detach().double().requires_grad_(True) for q in (dec.weight, dec.bias))
    x2 = x.detach().double().requires_grad_(True)
    ref_out, _, _ = reference_lstm(x2 * input_mask / (1 - p), params, masks, p, layers)
    ref_logits = (ref_out @ wd.T + bd).transpose(0, 1)
    (ref_logits * w).sum().backward()
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(logits.double(), ref_logits, **tol)
    torch.testing.assert_close(x.grad.double(), x2.grad, **tol)
    for n, q in lstm.named_parameters():
        torch.testing.assert_close(q.grad.double(), params[n].grad, **tol, msg=n)
    torch.testing.assert_close(dec.weight.grad.double(), wd.grad, **tol)
    torch.testing.assert_close(dec.bias.grad.double(), bd.grad, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunks"])
def test_gathered_linear_on_cuda_takes_the_batched_route_and_equals_the_dense(
    chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA's route (batched GEMMs over (T, B, kept)) against the dense masked Linear on
    the CPU, forward and both gradients, in float64."""
    assert gathered.ROUTES["cuda"] is gathered._GatheredLinearBatched
    if chunked:
        monkeypatch.setattr(gathered, "BATCHED_MAX", 3 * 40 * 30)
    torch.manual_seed(7)
    x = torch.randn(6, 11, 40)
    keep = torch.rand(11, 40) > 0.5
    keep[3] = False
    lin = nn.Linear(40, 30)
    w = torch.randn(11, 6, 30)
    x_ref = x.clone().requires_grad_(True)
    ref = lin(x_ref * keep * 2.0).transpose(0, 1)
    (ref * w).sum().backward()
    ref_grads = (x_ref.grad, lin.weight.grad.clone(), lin.bias.grad.clone())
    lin = lin.cuda()
    lin.zero_grad()
    x_gpu = x.cuda().requires_grad_(True)
    y = gathered_linear(x_gpu, keep.cuda(), lin.weight, lin.bias, scale=2.0)
    (y * w.cuda()).sum().backward()
    torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=1e-12)
    for a, b in zip((x_gpu.grad, lin.weight.grad, lin.bias.grad), ref_grads, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-12)
