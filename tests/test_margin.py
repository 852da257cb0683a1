"""The stability margin: where the collapse rate first reaches one half, never more optimistic
than the data, with its seed-bootstrap CI computed the same way and non-monotone curves flagged."""

from __future__ import annotations

import pytest

from tests.test_audit_report import runs_table
from trainenv.audit import metrics as M
from trainenv.audit.summary import NON_MONOTONE, NON_MONOTONE_LEGEND, format_summary, summarize

GRID = [0.1, 0.3, 1.0]
FIVE = (0, 1, 2, 3, 4)


def test_a_curve_that_falls_again_keeps_the_margin_below_the_first_magnitude_at_half() -> None:
    # collapse counts 0.1:1/5 0.3:3/5 1:2/5 -- half is reached at 0.3, then the rate falls
    value, censored = M.margin(GRID, [0.2, 0.6, 0.4], log_scale=True)
    assert censored == "none" and value < 0.3
    assert value == pytest.approx(0.1 * 3**0.75)  # t = (0.5 - 0.2) / (0.6 - 0.2), geometric
    assert not M.is_monotone([0.2, 0.6, 0.4])
    # tolerated again at 30 after half collapsed at 10: the margin stays below 10
    value, censored = M.margin([1, 10, 30, 100], [0.0, 0.75, 0.25, 0.75], log_scale=True)
    assert censored == "none" and value == pytest.approx(10 ** (2 / 3))


def test_a_monotone_curve() -> None:
    rates = [0.0, 0.25, 1.0]
    assert M.is_monotone(rates) and M.is_monotone([0.0, float("nan"), 0.5, 0.5])
    assert M.margin([10, 100, 1000], rates, log_scale=True) == (
        pytest.approx(100 * 10 ** (1 / 3)),
        "none",
    )
    # exactly half at a grid point: the margin is that magnitude
    assert M.margin([1, 2, 4], [0.0, 0.5, 1.0], log_scale=False) == (2.0, "none")
    with pytest.raises(ValueError, match="collapse_rates must be 1-D"):
        M.is_monotone([[0.0, 1.0]])


def test_the_summary_and_its_legend_for_the_issues_counts() -> None:
    runs = runs_table(
        {"reward_flip": {0.1: (0,), 0.3: (0, 1, 2), 1.0: (0, 1)}}, seeds=FIVE
    )  # 1/5, 3/5, 2/5
    summary = summarize(runs, n_boot=300)
    row = summary.margins.set_index("intervention").loc["reward_flip"]
    assert row["censored"] == "none" and row["margin"] < 0.3 and not row["monotone"]
    assert row["margin_lo"] <= row["margin"] <= row["margin_hi"]
    text = format_summary(summary)
    assert ">=1" not in text and f"0.1:1/5 0.3:3/5 1:2/5 {NON_MONOTONE}" in text
    assert NON_MONOTONE_LEGEND in text
    calm = summarize(runs_table({"reward_flip": {0.1: (), 0.3: (0,), 1.0: FIVE}}, seeds=FIVE))
    assert calm.margins["monotone"].all()
    assert NON_MONOTONE not in format_summary(calm)


def test_the_bootstrap_ci_uses_the_same_rule() -> None:
    # 9 of 10 seeds collapse at 0.3 and none at 1: every resample that reaches half reaches it
    # by 0.3, so the interval stays below 0.3 (reading the last tolerated magnitude, as the
    # margin once did, would give [1, 1]).
    seeds = tuple(range(10))
    runs = runs_table({"reward_flip": {0.1: (), 0.3: seeds[:9], 1.0: ()}}, seeds=seeds)
    row = summarize(runs, n_boot=500).margins.iloc[0]
    assert row["censored"] == "none" and not row["monotone"]
    assert 0.1 < row["margin_lo"] <= row["margin"] <= row["margin_hi"] <= 0.3
