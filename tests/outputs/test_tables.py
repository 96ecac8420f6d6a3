"""Printed comparison tables: whole bytes, and no spread made up from one seed."""

from __future__ import annotations

from fedsim.outputs.comparison import comparison_rows, display


def _summary(acc: float, up: int) -> dict[str, object]:
    return {
        "final_eval_accuracy": acc, "best_eval_accuracy": acc, "rounds_to_target": None,
        "virtual_time_to_target_s": None, "bytes_up": up,
    }  # fmt: skip


def test_one_seed_shows_no_spread_and_bytes_are_whole_numbers() -> None:
    rows = comparison_rows(
        {"one": [_summary(0.5, 1_234_567)], "two": [_summary(0.5, 10), _summary(0.7, 11)]},
        None,
    )
    assert rows[0]["final_acc_std"] is None
    headers, cells = display(rows)
    one, two = (dict(zip(headers, line, strict=True)) for line in cells)
    assert rows[0]["final_acc_ci95"] is None
    key = "final_acc (mean ± 95% CI)"
    assert one[key] == "0.5000"
    # Two seeds, std 0.1414: t(0.975, 1) = 12.706, so the half-width is 12.706 x 0.1 = 1.2706.
    assert two[key] == "0.6000 ± 1.2706"
    assert one["bytes_up_mean"] == "1,234,567" and two["bytes_up_mean"] == "10"
