"""The watchdog gives up on calls that outlast their limit, and only on those."""

from __future__ import annotations

import threading

import pytest

from fedsim.engine.watchdog import CallTimeout, Watchdog


def test_calls_return_their_value_and_raise_their_errors() -> None:
    dog = Watchdog(30.0)
    assert dog.call(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        dog.call(lambda: 1 / 0)
    assert dog.abandoned == 0


def test_a_hung_call_is_abandoned_and_the_next_call_runs_on_a_fresh_thread() -> None:
    dog = Watchdog(0.2)
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hang() -> None:
        threads.append(threading.current_thread())
        release.wait(30)

    with pytest.raises(CallTimeout, match=r"no reply within 0\.2 s"):
        dog.call(hang)
    assert dog.call(lambda: threading.current_thread()) is not threads[0]
    assert dog.abandoned == 1 and threads[0].daemon  # never blocks the interpreter's exit
    release.set()
    threads[0].join(5)
    assert not threads[0].is_alive()  # it ends once the hung call returns


def test_calls_share_one_worker_thread_while_none_hangs() -> None:
    """What a client keeps per thread (fedsim's model cache) survives between calls."""
    dog = Watchdog(30.0)
    first = dog.call(threading.current_thread)
    assert dog.call(threading.current_thread) is first
