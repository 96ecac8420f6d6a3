"""A log written by another process reaches the listeners record by record, while it runs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from fedsim.outputs.metrics_log import following, listening


def test_each_record_reaches_the_listener_before_the_next_is_written(tmp_path: Path) -> None:
    """The writer appends a record only once the listener has the one before.

    So the listener is fed while the log grows (as a progress bar must be), not from the
    finished file: were the records read only at the end, the writer would wait for the
    first forever (bounded here by a 60 s wait that fails the test). A partial line is
    held back until its end arrives; a log started afresh is read from its start.
    """
    log = tmp_path / "metrics.jsonl"
    seen: list[int] = []
    got = threading.Condition()

    def listener(record: dict[str, int]) -> None:
        with got:
            seen.append(record["round"])
            got.notify_all()

    with listening(listener), following(log, poll_s=0.01):
        for r in range(4):
            text = json.dumps({"round": r}) + "\n"
            with log.open("a") as f:  # in two writes: the first half is a partial line
                f.write(text[:5])
                f.flush()
                f.write(text[5:])
            with got:
                assert got.wait_for(lambda r=r: len(seen) == r + 1, timeout=60), seen
        log.write_text(json.dumps({"round": 0}) + "\n")  # the log started afresh
        with got:
            assert got.wait_for(lambda: len(seen) == 5, timeout=60), seen
    assert seen == [0, 1, 2, 3, 0]


def test_nothing_follows_without_listeners(tmp_path: Path) -> None:
    before = threading.active_count()
    with following(tmp_path / "metrics.jsonl"):
        assert threading.active_count() == before
