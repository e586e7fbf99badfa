"""The engine's figures equal an independent pandas/statsmodels computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW


@pytest.fixture
def engine(make_definition, make_engine):
    return make_engine(make_definition(min_group_size=5))


def test_audience_size_matches_plain(engine, plain):
    result = engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true AND (bank.customers.income_band "
            "IN ('high', 'middle') OR NOT telecom.subscribers.region = 'north')",
        },
        "brand",
    )
    baby = plain.people("retailer.customers", lambda f: f.baby_buyer)
    income = plain.people("bank.customers", lambda f: f.income_band.isin(["high", "middle"]))
    north = plain.people("telecom.subscribers", lambda f: f.region == "north")
    expected = baby & (income | (plain.everyone - north))
    assert result.value("people") == len(expected)
    assert len(expected) > 50  # a real, non-trivial audience


def test_comparison_needs_presence_in_the_dataset(engine, plain):
    """``x != v`` means: has a row in x's dataset whose value is not v."""
    result = engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "bank.customers.premium_card != true",
        },
        "brand",
    )
    assert result.value("people") == len(plain.people("bank.customers", lambda f: ~f.premium_card))


def test_audience_without_filter_counts_everyone(engine, plain):
    result = engine.run({"template": "audience_size", "analysis": "audience"}, "brand")
    assert result.value("people") == len(plain.everyone)


def test_overlap_matches_plain(engine, plain):
    refs = ["bank.customers", "retailer.customers", "telecom.subscribers"]
    result = engine.run(
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": refs,
            "filter": {
                "not": {"attribute": "bank.customers.premium_card", "op": "=", "value": True}
            },
        },
        "brand",
    )
    # NOT holds for people the bank does not know too
    not_premium = plain.everyone - plain.people("bank.customers", lambda f: f.premium_card)
    sets = {r: plain.people(r) & not_premium for r in refs}
    for size in (1, 2, 3):
        for combo in itertools.combinations(refs, size):
            expected = set.intersection(*(sets[r] for r in combo))
            assert result.value("people", datasets="+".join(combo)) == len(expected), combo


def _welch(test, control):
    compare = CompareMeans(
        DescrStatsW(test.revenue.to_numpy()), DescrStatsW(control.revenue.to_numpy())
    )
    _, p_value, _ = compare.ttest_ind(usevar="unequal")
    return p_value, compare.tconfint_diff(alpha=0.05, usevar="unequal")


def _check_segment(result, table, segment):
    approx = pytest.approx
    arms = {arm: table[table.arm == arm] for arm in ("test", "control")}
    for arm, rows in arms.items():
        dims = {"segment": segment, "arm": arm}
        assert result.value("people", **dims) == len(rows)
        assert result.value("converters", **dims) == int((rows.purchases > 0).sum())
        assert result.value("purchases", **dims) == int(rows.purchases.sum())
        assert result.value("revenue", **dims) == approx(rows.revenue.sum())
        assert result.value("conversion_rate", **dims) == approx((rows.purchases > 0).mean())
        assert result.value("revenue_per_person", **dims) == approx(rows.revenue.mean())
    t, c = arms["test"], arms["control"]
    ct, nt, cc, nc = int((t.purchases > 0).sum()), len(t), int((c.purchases > 0).sum()), len(c)
    diff = ct / nt - cc / nc
    low, high = confint_proportions_2indep(ct, nt, cc, nc, method="wald", compare="diff")
    rlow, rhigh = confint_proportions_2indep(ct, nt, cc, nc, method="log", compare="ratio")
    _, p_conv = proportions_ztest([ct, cc], [nt, nc])
    seg = {"segment": segment}
    assert result.value("conversion_lift_abs", **seg) == approx(diff)
    assert result.value("conversion_lift_abs_ci_low", **seg) == approx(low)
    assert result.value("conversion_lift_abs_ci_high", **seg) == approx(high)
    assert result.value("conversion_lift_rel", **seg) == approx((ct / nt) / (cc / nc) - 1)
    assert result.value("conversion_lift_rel_ci_low", **seg) == approx(rlow - 1)
    assert result.value("conversion_lift_rel_ci_high", **seg) == approx(rhigh - 1)
    assert result.value("conversion_p_value", **seg) == approx(p_conv)
    assert result.value("incremental_conversions", **seg) == approx(diff * nt)
    p_rev, (rev_low, rev_high) = _welch(t, c)
    rpp_diff = t.revenue.mean() - c.revenue.mean()
    assert result.value("revenue_per_person_lift_abs", **seg) == approx(rpp_diff)
    assert result.value("revenue_per_person_lift_abs_ci_low", **seg) == approx(rev_low)
    assert result.value("revenue_per_person_lift_abs_ci_high", **seg) == approx(rev_high)
    assert result.value("revenue_per_person_lift_rel", **seg) == approx(rpp_diff / c.revenue.mean())
    assert result.value("revenue_p_value", **seg) == approx(p_rev)
    assert result.value("incremental_revenue", **seg) == approx(rpp_diff * nt)
    assert result.value("incremental_revenue_ci_low", **seg) == approx(rev_low * nt)


def test_campaign_lift_matches_plain(engine, plain):
    result = engine.run({"template": "campaign_lift", "analysis": "lift"}, "brand")
    table = plain.lift_table(window_days=28)
    _check_segment(result, table, "(all)")
    assert result.value("conversion_lift_abs", segment="(all)") > 0  # the generated effect


def test_campaign_lift_breakdown_and_filter_match_plain(engine, plain):
    result = engine.run(
        {
            "template": "campaign_lift",
            "analysis": "lift",
            "breakdown": "bank.customers.premium_card",
            "filter": "bank.customers.income_band != 'low'",
        },
        "brand",
    )
    chosen = plain.people("bank.customers", lambda f: f.income_band != "low")
    table = plain.lift_table(restrict=chosen, segment=("bank.customers", "premium_card"))
    _check_segment(result, table, "(all)")
    for segment in ("true", "false"):
        part = table[table.segment == segment]
        arms = [part[part.arm == a] for a in ("test", "control")]
        if min(len(a) for a in arms) >= 5 and min(int((a.purchases > 0).sum()) for a in arms) >= 5:
            _check_segment(result, part, segment)


def test_attribution_window_changes_what_counts(engine, plain):
    """Purchases outside the window after first exposure are not counted."""
    table_28 = plain.lift_table(window_days=28)
    table_all = plain.lift_table(window_days=10_000)
    assert table_all.purchases.sum() > table_28.purchases.sum()  # the data has late purchases
    result = engine.run({"template": "campaign_lift", "analysis": "lift"}, "brand")
    total = sum(result.value("purchases", segment="(all)", arm=a) for a in ("test", "control"))
    assert total == int(table_28.purchases.sum())


def test_results_are_json_finite(engine):
    result = engine.run(
        {
            "template": "campaign_lift",
            "analysis": "lift",
            "breakdown": "telecom.subscribers.region",
        },
        "brand",
    )
    for cell in result.cells:
        assert cell.value is None or np.isfinite(cell.value)
    assert result.to_json()
