"""Lift statistics on edge cases, against statsmodels on explicit per-person data."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from sgxcloud.cleanroom.engine.stats import ArmSummary, conversion_lift, revenue_lift


def _summary(revenue: np.ndarray) -> ArmSummary:
    return ArmSummary(
        len(revenue),
        int((revenue > 0).sum()),
        int((revenue > 0).sum()),
        float(revenue.sum()),
        float(revenue.var(ddof=1)),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_from_moments_equals_statsmodels_on_rows(seed):
    rng = np.random.default_rng(seed)
    test = np.where(rng.random(700) < 0.1, rng.lognormal(3, 1, 700), 0.0)
    control = np.where(rng.random(300) < 0.05, rng.lognormal(3, 1, 300), 0.0)
    out = revenue_lift(_summary(test), _summary(control))
    compare = CompareMeans(DescrStatsW(test), DescrStatsW(control))
    _, p_value, _ = compare.ttest_ind(usevar="unequal")
    low, high = compare.tconfint_diff(usevar="unequal")
    assert out["revenue_p_value"] == pytest.approx(p_value)
    assert out["revenue_per_person_lift_abs_ci_low"] == pytest.approx(low)
    assert out["revenue_per_person_lift_abs_ci_high"] == pytest.approx(high)


def test_no_control_converters_leaves_relative_lift_undefined():
    out = conversion_lift(ArmSummary(100, 10, 10, 100.0, 1.0), ArmSummary(100, 0, 0, 0.0, 0.0))
    assert out["conversion_lift_abs"] == pytest.approx(0.1)
    assert out["conversion_lift_rel"] is None
    assert out["conversion_p_value"] is not None
    rev = revenue_lift(ArmSummary(100, 10, 10, 100.0, 9.0), ArmSummary(100, 0, 0, 0.0, 0.0))
    assert rev["revenue_per_person_lift_rel"] is None
    assert rev["revenue_per_person_lift_abs"] == pytest.approx(1.0)


def test_tiny_or_degenerate_arms_give_no_statistics():
    assert all(
        v is None
        for v in conversion_lift(
            ArmSummary(1, 1, 1, 5.0, 0.0), ArmSummary(50, 5, 5, 50.0, 1.0)
        ).values()
    )
    out = revenue_lift(ArmSummary(50, 0, 0, 0.0, 0.0), ArmSummary(50, 0, 0, 0.0, 0.0))
    assert out["revenue_p_value"] is None and out["revenue_per_person_lift_abs"] == 0.0
    same = conversion_lift(ArmSummary(50, 0, 0, 0, 0), ArmSummary(50, 0, 0, 0, 0))
    assert same["conversion_p_value"] is None  # no converters at all: z-test undefined
