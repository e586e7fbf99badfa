"""Campaign-lift statistics from per-arm summaries, computed with statsmodels.

Conversion (share of people with ≥ 1 attributed purchase):
    absolute lift = rate_test − rate_control; 95 % CI by the Wald interval
    for a difference of two independent proportions
    (``confint_proportions_2indep(method="wald", compare="diff")``);
    p-value by the pooled two-proportion z-test (``proportions_ztest``);
    relative lift = rate ratio − 1 with the log-ratio CI
    (``confint_proportions_2indep(method="log", compare="ratio")``).
Revenue per person (zeros included):
    absolute lift = mean_test − mean_control; Welch's unequal-variance t-test
    and CI (``CompareMeans.ttest_ind / tconfint_diff(usevar="unequal")``);
    relative lift = difference / control mean, its CI the difference's CI
    divided by the control mean (the control mean is treated as known).
Incremental conversions / revenue = absolute lift × people in the test arm
(CI scaled the same way).

Welch's test needs only each arm's size, mean and sample variance, so the
engine never pulls one row per person out of DuckDB: statsmodels gets a
two-point weighted sample with exactly those moments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

ALPHA = 0.05


@dataclass(frozen=True)
class ArmSummary:
    people: float
    converters: float
    purchases: float
    revenue: float
    revenue_var: float  # sample variance (ddof=1) of revenue per person

    @property
    def conversion_rate(self) -> float | None:
        return self.converters / self.people if self.people > 0 else None

    @property
    def revenue_per_person(self) -> float | None:
        return self.revenue / self.people if self.people > 0 else None


def finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def conversion_lift(test: ArmSummary, control: ArmSummary) -> dict[str, float | None]:
    nt, nc = test.people, control.people
    ct, cc = min(test.converters, nt), min(control.converters, nc)
    out: dict[str, float | None] = dict.fromkeys(
        (
            "conversion_lift_abs",
            "conversion_lift_abs_ci_low",
            "conversion_lift_abs_ci_high",
            "conversion_lift_rel",
            "conversion_lift_rel_ci_low",
            "conversion_lift_rel_ci_high",
            "conversion_p_value",
            "incremental_conversions",
            "incremental_conversions_ci_low",
            "incremental_conversions_ci_high",
        )
    )
    if nt < 2 or nc < 2:
        return out
    rt, rc = ct / nt, cc / nc
    diff = rt - rc
    low, high = confint_proportions_2indep(
        ct, nt, cc, nc, method="wald", compare="diff", alpha=ALPHA
    )
    out.update(
        conversion_lift_abs=diff,
        conversion_lift_abs_ci_low=low,
        conversion_lift_abs_ci_high=high,
        incremental_conversions=diff * nt,
        incremental_conversions_ci_low=low * nt,
        incremental_conversions_ci_high=high * nt,
    )
    if 0 < (ct + cc) < (nt + nc):
        out["conversion_p_value"] = proportions_ztest([ct, cc], [nt, nc])[1]
    if ct > 0 and cc > 0:
        rlow, rhigh = confint_proportions_2indep(
            ct, nt, cc, nc, method="log", compare="ratio", alpha=ALPHA
        )
        out.update(
            conversion_lift_rel=rt / rc - 1,
            conversion_lift_rel_ci_low=rlow - 1,
            conversion_lift_rel_ci_high=rhigh - 1,
        )
    return {k: finite(v) for k, v in out.items()}


def _moments_sample(people: float, mean: float, var: float) -> DescrStatsW:
    # Two points mean ± d, each weighted people/2: weighted mean = mean and
    # var(ddof=0)·people/(people−1) = var, which is all Welch's test reads.
    d = math.sqrt(max(var, 0.0) * (people - 1) / people)
    return DescrStatsW([mean - d, mean + d], weights=[people / 2, people / 2])


def revenue_lift(test: ArmSummary, control: ArmSummary) -> dict[str, float | None]:
    out: dict[str, float | None] = dict.fromkeys(
        (
            "revenue_per_person_lift_abs",
            "revenue_per_person_lift_abs_ci_low",
            "revenue_per_person_lift_abs_ci_high",
            "revenue_per_person_lift_rel",
            "revenue_per_person_lift_rel_ci_low",
            "revenue_per_person_lift_rel_ci_high",
            "revenue_p_value",
            "incremental_revenue",
            "incremental_revenue_ci_low",
            "incremental_revenue_ci_high",
        )
    )
    if test.people < 2 or control.people < 2:
        return out
    mt, mc = test.revenue / test.people, control.revenue / control.people
    diff = mt - mc
    out.update(revenue_per_person_lift_abs=diff, incremental_revenue=diff * test.people)
    if test.revenue_var > 0 or control.revenue_var > 0:
        compare = CompareMeans(
            _moments_sample(test.people, mt, test.revenue_var),
            _moments_sample(control.people, mc, control.revenue_var),
        )
        _, p_value, _ = compare.ttest_ind(usevar="unequal")
        low, high = compare.tconfint_diff(alpha=ALPHA, usevar="unequal")
        out.update(
            revenue_p_value=p_value,
            revenue_per_person_lift_abs_ci_low=low,
            revenue_per_person_lift_abs_ci_high=high,
            incremental_revenue_ci_low=low * test.people,
            incremental_revenue_ci_high=high * test.people,
        )
        if mc > 0:
            out.update(
                revenue_per_person_lift_rel_ci_low=low / mc,
                revenue_per_person_lift_rel_ci_high=high / mc,
            )
    if mc > 0:
        out["revenue_per_person_lift_rel"] = diff / mc
    return {k: finite(v) for k, v in out.items()}
