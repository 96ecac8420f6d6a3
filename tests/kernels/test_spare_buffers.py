"""Large outputs reuse their previous instance's memory only when nothing holds it."""

from __future__ import annotations

import pytest
import torch

from fedsim.kernels import gathered, spare_buffers
from fedsim.kernels.gathered import gathered_linear
from fedsim.kernels.spare_buffers import empty_reusing

LIKE = torch.empty(0)


@pytest.fixture
def small_spares(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CPU output is kept, in a spare table of this test's own."""
    monkeypatch.setattr(spare_buffers, "MIN_BYTES", 0)
    monkeypatch.setattr(spare_buffers, "_spares", {})


def test_a_dead_output_lends_its_memory_to_the_next(small_spares: None) -> None:
    first = empty_reusing("slot", (4, 5), LIKE)
    address = first.data_ptr()
    del first
    second = empty_reusing("slot", (4, 5), LIKE)
    assert second.data_ptr() == address
    assert second.shape == (4, 5) and second.is_contiguous()


def test_a_live_view_a_kept_tensor_or_another_size_gets_new_memory(small_spares: None) -> None:
    first = empty_reusing("slot", (4, 5), LIKE)
    view = first[1:]
    address = first.data_ptr()
    del first
    assert empty_reusing("slot", (4, 5), LIKE).data_ptr() != address  # `view` holds it
    del view
    kept = empty_reusing("slot", (4, 5), LIKE)
    assert empty_reusing("slot", (4, 5), LIKE).data_ptr() != kept.data_ptr()
    assert empty_reusing("slot", (4, 6), LIKE).data_ptr() != kept.data_ptr()


def test_small_outputs_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spare_buffers, "_spares", {})
    empty_reusing("slot", (4, 5), LIKE)
    assert spare_buffers._spares == {}


def test_gathered_logits_kept_by_the_caller_are_never_overwritten(
    small_spares: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-step route's output comes from a spare: a second call must neither
    change the first call's logits that the caller still holds nor differ from them.
    On two threads, so no pool thread keeps an output alive after the call."""
    monkeypatch.setitem(gathered.ROUTES, "cpu", gathered._GatheredLinear)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check_logits_are_never_overwritten()
    finally:
        torch.set_num_threads(threads)


def check_logits_are_never_overwritten() -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(3, 4, 6), torch.randn(5, 6), torch.randn(5)
    keep = torch.rand(4, 6) > 0.5
    first = gathered_linear(x, keep, w, b, 2.0)
    snapshot = first.clone()
    second = gathered_linear(x, keep, w, b, 2.0)
    assert second.data_ptr() != first.data_ptr()
    assert torch.equal(first, snapshot) and torch.equal(second, snapshot)
    address = second.data_ptr()  # the slot's spare now
    del first, second
    third = gathered_linear(x, keep, w, b, 2.0)  # free again: reused
    assert third.data_ptr() == address
    torch.testing.assert_close(third, (x * keep * 2.0 @ w.T + b).transpose(0, 1))
