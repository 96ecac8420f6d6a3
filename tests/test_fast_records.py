"""Records filled without per-item checks equal the checked ones."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsim.array_codec import encode
from fedsim.fast_records import filled


def test_filled_records_equal_checked_ones_and_leave_the_template_empty() -> None:
    arrays = {"w": encode(np.ones((2, 3), np.float32)), "b": encode(np.zeros(3, np.float32))}
    metrics = {"num-examples": 64, "train-loss": 0.5, "labels": [1, 2]}
    config = {"server-round": 3, "local-step": "plain"}
    cases = [
        (ArrayRecord(), arrays, ArrayRecord(arrays)),
        (MetricRecord(), metrics, MetricRecord(metrics)),
        (ConfigRecord(), config, ConfigRecord(config)),
    ]
    for empty, items, checked in cases:
        got = filled(empty, items)
        assert type(got) is type(checked) and got == checked and list(got) == list(checked)
        assert len(empty) == 0
        assert got.__dict__.keys() == empty.copy().__dict__.keys()  # what Flower's copy sets
        assert got.__dict__["_data"] is not items  # its own store
        got["extra"] = checked[next(iter(checked))]  # still the record's own checked store
        assert "extra" in got and "extra" not in empty
    content = filled(
        RecordDict(), {"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)}
    )
    want = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    assert content == want
    assert list(content.array_records) == ["arrays"] and list(content.metric_records) == ["metrics"]
