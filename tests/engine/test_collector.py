"""The collector settings of a run's rounds are set for the rounds and restored after."""

from __future__ import annotations

import gc

import pytest

from fedsim.engine.collector import YOUNG_THRESHOLD, rounds_collector


def test_rounds_collect_young_objects_less_often_and_restore_the_settings() -> None:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        with rounds_collector():
            assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
            assert gc.get_freeze_count() > 0  # what was alive is frozen
        assert gc.get_threshold() == (700, 10, 10)
        with pytest.raises(RuntimeError), rounds_collector():  # restored on errors too
            raise RuntimeError("a failing run")
        assert gc.get_threshold() == (700, 10, 10)
        gc.set_threshold(20_000, 5, 5)  # a process that collects less often already
        with rounds_collector():
            assert gc.get_threshold() == (20_000, 5, 5)
    finally:
        gc.set_threshold(*before)
