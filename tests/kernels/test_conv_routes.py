"""Every convolution route (materialised, patch Gram, pixel Gram) against the oracle.

The route is forced, so each is exercised on every drawn geometry whatever the cost
model would pick; the pixel Gram is also compared with the Gram of ``F.unfold``'s
patches, an independent construction. float64 throughout, as in ``test_clipping``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsim.kernels import conv as conv_module
from fedsim.kernels.conv import CHANNELS_LAST_MIN, GHOST_ROUTES, MATERIALISE, conv_route
from fedsim.kernels.conv_gram import ONE_OP_SHIFT_SUM, patch_gram
from tests.kernels.test_clipping import check

ROUTES = (MATERIALISE, *GHOST_ROUTES)


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@st.composite
def conv_cases(draw: st.DrawFn, c_out: int | None = None) -> tuple[nn.Module, torch.Tensor]:
    """A plain Conv1d or Conv2d of drawn geometry (bias or not) and a batch for it."""
    torch.manual_seed(draw(st.integers(0, 2**16)))  # weights and batch follow the draw
    c_in, k, size = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(5, 9))
    two_d = draw(st.booleans())
    conv = (nn.Conv2d if two_d else nn.Conv1d)(
        c_in,
        draw(st.integers(1, 5)) if c_out is None else c_out,
        k,
        stride=draw(st.integers(1, 2)),
        padding=draw(st.integers(0, 2)),
        dilation=draw(st.integers(1, 2)),
        bias=draw(st.booleans()),
    )
    shape = (c_in, size, size) if two_d else (c_in, size)
    return conv, torch.randn(draw(st.integers(1, 4)), *shape)


@settings(max_examples=12, deadline=None)
@given(case=conv_cases(c_out=2))
def test_pixel_gram_equals_the_gram_of_unfolded_patches(
    case: tuple[nn.Module, torch.Tensor],
) -> None:
    conv, x = case
    assert isinstance(conv, nn.Conv1d | nn.Conv2d)
    if isinstance(conv, nn.Conv2d):
        x4, kernel, dilation = x, conv.kernel_size, conv.dilation
        padding, strides = conv.padding, conv.stride
    else:  # a Conv1d is a Conv2d of height 1
        x4, kernel, dilation = x.unsqueeze(2), (1, conv.kernel_size[0]), (1, conv.dilation[0])
        padding, strides = (0, conv.padding[0]), (1, conv.stride[0])
    u = F.unfold(x4, kernel, dilation, padding, strides).transpose(1, 2)  # (B, L, K)
    # Both ways of summing the shifted blocks: per tap (the CPU's), one strided
    # reduction (CUDA's, here forced onto the CPU).
    for one_op in (False, True):
        devices = ONE_OP_SHIFT_SUM.copy()
        ONE_OP_SHIFT_SUM.clear()
        ONE_OP_SHIFT_SUM.update({"cpu"} if one_op else set())
        try:
            gram = patch_gram(conv, x)
        finally:
            ONE_OP_SHIFT_SUM.clear()
            ONE_OP_SHIFT_SUM.update(devices)
        torch.testing.assert_close(gram, u @ u.transpose(1, 2), msg=f"one_op={one_op}")


@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=8, deadline=None)
@given(case=conv_cases())
def test_each_route_matches_the_oracle(route: str, case: tuple[nn.Module, torch.Tensor]) -> None:
    conv, x = case
    with torch.no_grad():
        flat = conv(x[:1]).numel()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(flat, 3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_module, "conv_route", lambda *_: route)
        check(model, x, torch.randint(0, 3, (x.shape[0],)))


def test_the_cost_model_picks_the_pixel_gram_for_the_28x28_cnn() -> None:
    """Second layer of the shipped 28x28 CNN: 0.9 M multiply-adds per example by the
    pixel Gram against 3.3 M to materialise; the one-channel first layer materialises."""
    first, second = nn.Conv2d(1, 32, 5), nn.Conv2d(32, 64, 5)
    batch = torch.Size
    assert conv_route(first, batch((128, 1, 28, 28)), batch((128, 32, 24, 24))) == MATERIALISE
    assert conv_route(second, batch((128, 32, 12, 12)), batch((128, 64, 8, 8))) == "pixel-gram"


@pytest.mark.parametrize("route", ROUTES)
def test_wide_inputs_take_channels_last_patches_in_every_route(route: str) -> None:
    """From CHANNELS_LAST_MIN input channels the patches are gathered channels last."""
    torch.manual_seed(7)
    conv = nn.Conv2d(CHANNELS_LAST_MIN, 4, 3, padding=1, stride=2)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_module, "conv_route", lambda *_: route)
        check(model, torch.randn(3, CHANNELS_LAST_MIN, 5, 5), torch.randint(0, 3, (3,)))


def test_a_conv_called_twice_materialises_both_calls() -> None:
    """Several calls of one layer add up per example before the norm (wide input)."""
    torch.manual_seed(8)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(CHANNELS_LAST_MIN, CHANNELS_LAST_MIN, 3, padding=1)
            self.out = nn.Linear(CHANNELS_LAST_MIN * 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.conv(torch.tanh(self.conv(x))).flatten(1))

    check(Twice(), torch.randn(3, CHANNELS_LAST_MIN, 4, 4), torch.randint(0, 3, (3,)))
