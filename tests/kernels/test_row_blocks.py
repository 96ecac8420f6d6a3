"""Step loops split into row blocks on several threads: the blocks and the results."""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator

import pytest
import torch

from fedsim.kernels import row_blocks as row_blocks_module
from fedsim.kernels.row_blocks import (
    MIN_BLOCK_ROWS,
    SPLIT_MAX_MACS,
    SPLIT_MIN_MACS,
    row_blocks,
    run_by_rows,
    run_side_by_side,
)
from tests.kernels.test_clipping import TinyLM, check

CPU = torch.device("cpu")


@pytest.fixture
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_blocks_cover_the_batch_once_in_order(two_threads: None) -> None:
    blocks = row_blocks(37, SPLIT_MIN_MACS, CPU)
    assert blocks == [slice(0, 18), slice(18, 37)]
    assert torch.get_num_threads() == 2


def test_small_batches_small_and_big_steps_and_gpus_are_not_split(two_threads: None) -> None:
    rows = 2 * MIN_BLOCK_ROWS - 1
    assert row_blocks(rows, SPLIT_MIN_MACS, CPU) == [slice(0, rows)]
    assert row_blocks(128, SPLIT_MIN_MACS - 1, CPU) == [slice(0, 128)]
    assert row_blocks(128, SPLIT_MAX_MACS + 1, CPU) is None
    assert row_blocks(128, SPLIT_MIN_MACS, torch.device("cuda")) is None


def test_each_block_runs_on_one_thread_and_the_count_is_restored(two_threads: None) -> None:
    seen: dict[int, int] = {}

    def work(rows: slice) -> None:
        seen[rows.start] = torch.get_num_threads()

    run_by_rows(work, 64, SPLIT_MIN_MACS, CPU)
    assert seen == {0: 1, 32: 1}
    assert torch.get_num_threads() == 2


def test_a_block_that_raises_reraises_in_the_caller(two_threads: None) -> None:
    def work(rows: slice) -> None:
        if rows.start > 0:
            raise ArithmeticError("second block")

    with pytest.raises(ArithmeticError, match="second block"):
        run_by_rows(work, 64, SPLIT_MIN_MACS, CPU)
    assert torch.get_num_threads() == 2


def test_split_lstm_clipping_matches_the_oracle(
    two_threads: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 24 on two threads, every step split however small: the forward and
    BPTT loops run as two row blocks (float64, as every oracle test)."""
    monkeypatch.setattr(row_blocks_module, "SPLIT_MIN_MACS", 0)
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(5)

        assert row_blocks(24, 24 * 6 * 24, CPU) == [slice(0, 12), slice(12, 24)]
        check(TinyLM(7, 3, 6, 2), torch.randint(0, 7, (24, 5)), torch.randint(0, 7, (24, 5)))
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_block_threads(two_threads: None) -> None:
    """The parent's pool threads do not survive a fork; the child must not wait on them."""
    run_by_rows(lambda rows: None, 64, SPLIT_MIN_MACS, CPU)  # the parent's pool exists
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: split a loop, report, exit without running pytest's teardown
        seen: list[int] = []
        run_by_rows(lambda rows: seen.append(rows.start), 64, SPLIT_MIN_MACS, CPU)
        os.write(write, bytes(sorted(seen)))
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 30)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    report = os.read(read, 8) if ready else b""
    os.close(read)
    assert ready, "the forked child hung waiting for its parent's block threads"
    assert report == bytes([0, 32])


def test_the_caller_runs_a_block_whose_thread_never_started(two_threads: None) -> None:
    """A busy pool (its core taken, here a task that waits) delays nothing: the caller
    runs the second block itself once its own is done."""
    release = threading.Event()
    busy = row_blocks_module._workers(1).submit(release.wait, 30)
    seen: dict[int, str] = {}
    try:

        def work(rows: slice) -> None:
            seen[rows.start] = threading.current_thread().name

        run_by_rows(work, 64, SPLIT_MIN_MACS, CPU)
    finally:
        release.set()
        busy.result()
    assert seen == {0: threading.current_thread().name, 32: threading.current_thread().name}
    assert torch.get_num_threads() == 2


def test_side_by_side_parts_share_the_threads_and_the_count_is_restored(
    two_threads: None,
) -> None:
    """Two parts on two threads: each part gets one, on its own Python thread."""
    seen: dict[str, tuple[int, str]] = {}

    def work(part: str) -> None:
        seen[part] = (torch.get_num_threads(), threading.current_thread().name)

    run_side_by_side(work, ["first", "second"])
    assert seen["first"] == (1, threading.current_thread().name)
    assert seen["second"][0] == 1
    assert torch.get_num_threads() == 2
