"""Claim verdicts from per-seed results: a gain held only when its 95% interval clears
the claim's bar; lower-is-better metrics and tolerances read the right way round.

Expected verdicts are worked by hand from t(0.975, 2) = 4.303 over three seeds.
"""

from __future__ import annotations

from typing import Any

from fedsim.outputs.claims import Gain, gains_table, metric_table, paired, tuning_table


def _result(**per_variant: dict[str, dict[str, float | None]]) -> dict[str, Any]:
    return {"variants": per_variant}


def _verdicts(table: str) -> list[str]:
    return [row.rsplit("|", 2)[1].strip() for row in table.splitlines()[2:]]


def test_a_loss_claim_is_held_when_a_is_lower_on_every_seed() -> None:
    """Gains b − a of 0.010, 0.011, 0.012: mean 0.011, half-width 4.303·0.001/√3 = 0.0025."""
    result = _result(
        a={"final_loss": {"0": 0.040, "1": 0.041, "2": 0.042}},
        b={"final_loss": {"0": 0.050, "1": 0.052, "2": 0.054}},
    )
    lower = Gain("a beats b", "a", "b", metric="final_loss", lower_is_better=True)
    higher = Gain("a beats b", "a", "b", metric="final_loss")  # read the wrong way round
    table = gains_table(result, [lower, higher])
    assert _verdicts(table) == ["held", "not held"]
    assert "+0.011 ± 0.002 (n = 3)" in table


def test_a_margin_claim_accepts_a_small_loss_and_refuses_a_large_one() -> None:
    """a − b = −0.005, −0.004, −0.006: interval [−0.0075, −0.0025] is above −0.02, not 0."""
    result = _result(
        a={"final_acc": {"0": 0.895, "1": 0.896, "2": 0.894}},
        b={"final_acc": {"0": 0.9, "1": 0.9, "2": 0.9}},
    )
    claims = [
        Gain("a within 0.02 of b", "a", "b", margin=0.02),
        Gain("a beats b", "a", "b"),
        Gain("a within 0.002 of b", "a", "b", margin=0.002),
    ]
    assert _verdicts(gains_table(result, claims)) == ["held", "not held", "not held"]


def test_pairs_are_by_seed_and_skip_seeds_either_lacks() -> None:
    assert paired({"0": 1.0, "1": None, "2": 3.0}, {"0": 0.5, "1": 1.0, "3": 9.0}) == [0.5]


def test_tables_show_per_seed_values_tuned_settings_and_diverged_points() -> None:
    result = {
        "variants": {
            "a": {"final_acc": {"0": 0.5, "1": 0.7}, "tuned": {"client.optimizer.lr": 0.3}}
        },
        "tuning": {
            "config": {"select": "final", "metric": "accuracy", "seeds": [100]},
            "points": [
                {
                    "variant": "a",
                    "settings": {"client.optimizer.lr": 0.3},
                    "mean": 0.61,
                    "diverged": None,
                    "chosen": True,
                },
                {
                    "variant": "a",
                    "settings": {"client.optimizer.lr": 3.0},
                    "mean": None,
                    "diverged": {"100": "non-finite evaluation loss in round 2"},
                    "chosen": False,
                },
            ],
        },
    }
    table = metric_table(result, {"final_acc": "final accuracy"})
    assert "| a | lr 0.3 | 0.600 ± 1.271 | 0.500 0.700 |" in table  # 12.706·0.1414/√2
    assert "| a | lr 0.3: 0.610 *; lr 3.0: diverged (chosen at the grid edge) |" in tuning_table(
        result
    )
    inside = [  # the middle of three points chosen: no flag
        {"variant": "b", "settings": {"lr": lr}, "mean": m, "diverged": None, "chosen": m == 0.7}
        for lr, m in ((0.1, 0.6), (0.3, 0.7), (1.0, 0.5))
    ]
    result["tuning"]["points"] = inside
    assert "| b | lr 0.1: 0.600; lr 0.3: 0.700 *; lr 1.0: 0.500 |" in tuning_table(result)
