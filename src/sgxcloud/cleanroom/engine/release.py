"""From exact drafts to released cells: DP noise (when enabled), then suppression.

Without DP, suppression is decided on exact counts (a released cell really
covers k people).  With DP, noise is added first and suppression is decided
on the noisy counts: whether a figure is hidden is then post-processing of
DP outputs and reveals nothing the noisy figures do not (issue 9, finding
10).  Derived figures (rates, lifts, intervals) are computed from the noisy
values only — post-processing, which costs no budget.  Budget per query: ε
(and δ) is split evenly over the measures that touch the same people
(sequential composition); disjoint slices (test vs control arm, breakdown
segments, Venn regions of an overlap) each get the full share (parallel
composition).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgxcloud.cleanroom.definition import DifferentialPrivacy
from sgxcloud.cleanroom.engine.analyses import (
    ALL,
    ARMS,
    Draft,
    lift_cohort,
    overlap_label,
    region_label,
)
from sgxcloud.cleanroom.engine.query import (
    AudienceSizeQuery,
    CampaignLiftQuery,
    OverlapQuery,
    Query,
)
from sgxcloud.cleanroom.engine.stats import ArmSummary, conversion_lift, finite, revenue_lift
from sgxcloud.cleanroom.privacy import NoiseSource, Release, complementary_suppression
from sgxcloud.cleanroom.results import Cell

LEVELS = ("people", "conversion")  # suppression units of a lift cell
REST = "(hidden)"  # the segments hidden in one arm, as a whole
LIFT_MEASURES = 5  # people, converters, purchases, revenue, revenue² per arm
ARM_PEOPLE_METRICS = ("people",)
ARM_CONVERSION_METRICS = (
    "converters",
    "conversion_rate",
    "purchases",
    "revenue",
    "revenue_per_person",
)


@dataclass
class ReleasePlan:
    query: Query
    draft: Draft
    k: int
    suppressed: set[tuple[str, ...]] = field(default_factory=set)
    released_cohorts: list[str] = field(default_factory=list)
    # cohorts not released as a cell but derivable by subtraction: label -> the
    # disjoint released-draft cohorts whose union it is
    derived_cohorts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    noisy: bool = False
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def any_released(self) -> bool:
        return bool(self.released_cohorts)

    # -- what the differencing check compares ---------------------------------------

    def release_shape(self) -> tuple[str, list[Any], Release]:
        """The release as regions and vectors for the differencing check: a SQL
        expression giving each row of the draft's cohort table its region (rows
        with NULL are in no region), its bound values, and every released count
        as the set of regions it adds up."""
        query, draft = self.query, self.draft
        labels: list[str] = []
        vectors: list[frozenset[int]] = []
        if isinstance(query, AudienceSizeQuery):
            if ("audience",) not in self.suppressed:
                labels.append("audience")
                vectors.append(frozenset({0}))
            return "0", [], Release(tuple(labels), tuple(vectors))
        if isinstance(query, OverlapQuery):
            n = len(query.datasets)
            expr = " + ".join(f"m{i}::INTEGER * {1 << i}" for i in range(n)) + " - 1"
            for label in draft.counts:
                if (label,) in self.suppressed:
                    continue
                members = [query.datasets.index(r) for r in label.split("+")]
                labels.append(label)
                vectors.append(
                    frozenset(
                        mask - 1 for mask in range(1, 2**n) if all(mask >> i & 1 for i in members)
                    )
                )
            return expr, [], Release(tuple(labels), tuple(vectors))
        # lift: (segment, arm, converted) regions; a segment's cells and the totals
        # per arm are unions of them
        segments = draft.segments or (ALL,)
        seg_code = (
            "0"
            if not draft.segments
            else "CASE segment "
            + " ".join(f"WHEN ? THEN {n}" for n in range(len(segments)))
            + " END"
        )
        params: list[Any] = [] if not draft.segments else list(segments)
        expr = (
            f"({seg_code}) * 4 + (CASE arm WHEN 'test' THEN 0 WHEN 'control' THEN 2 END)"
            " + (purchases > 0)::INTEGER"
        )
        for level in LEVELS:
            for arm_no, arm in enumerate(ARMS):
                for segment in (ALL, *draft.segments):
                    if (level, segment, arm) in self.suppressed:
                        continue
                    chosen = range(len(segments)) if segment == ALL else (segments.index(segment),)
                    converted = (0, 1) if level == "people" else (1,)
                    labels.append(lift_cohort(segment, arm, level))
                    vectors.append(
                        frozenset(s * 4 + arm_no * 2 + c for s in chosen for c in converted)
                    )
        return expr, params, Release(tuple(labels), tuple(vectors))

    # -- noise -------------------------------------------------------------------

    def add_noise(self, noise: NoiseSource, dp: DifferentialPrivacy) -> dict[str, Any]:
        self.noisy = True
        info: dict[str, Any] = {
            "mechanism": dp.mechanism,
            "epsilon": dp.epsilon_per_query,
            "delta": dp.delta,
        }
        if isinstance(self.query, AudienceSizeQuery):
            self.draft.counts["audience"] = noise.count(
                self.draft.counts["audience"], dp.epsilon_per_query, dp.delta
            )
            info["epsilon_per_measure"] = dp.epsilon_per_query
        elif isinstance(self.query, OverlapQuery):
            n = len(self.query.datasets)
            regions = {}
            for mask in range(1, 2**n):
                region = tuple(bool(mask >> i & 1) for i in range(n))
                regions[region] = noise.count(
                    self.draft.regions.get(region, 0), dp.epsilon_per_query, dp.delta
                )
            for label in list(self.draft.counts):
                members = [self.query.datasets.index(r) for r in label.split("+")]
                self.draft.counts[label] = sum(
                    v for region, v in regions.items() if all(region[i] for i in members)
                )
            self.draft.regions = regions  # suppression then sees only noisy regions
            info["epsilon_per_measure"] = dp.epsilon_per_query
        else:
            info.update(self._noise_lift(noise, dp))
        return info

    def _noise_lift(self, noise: NoiseSource, dp: DifferentialPrivacy) -> dict[str, Any]:
        eps = dp.epsilon_per_query / LIFT_MEASURES
        delta = dp.delta / LIFT_MEASURES if dp.delta else None
        bounds = dp.bounds
        slices = self.draft.segments or (ALL,)
        for segment in slices:
            for arm in ARMS:
                rec = self.draft.lift.setdefault((segment, arm), _empty(segment, arm))
                people = noise.count(rec["people"], eps, delta)
                rec.update(
                    people=people,
                    converters=min(noise.count(rec["converters"], eps, delta), people),
                    purchases=noise.bounded_sum(
                        rec["purchases_clipped"], bounds.max_purchases_per_person, eps, delta
                    ),
                    revenue=noise.bounded_sum(
                        rec["revenue_clipped"], bounds.max_revenue_per_person, eps, delta
                    ),
                    revenue_sq=noise.bounded_sum(
                        rec["revenue_sq_clipped"], bounds.max_revenue_per_person**2, eps, delta
                    ),
                )
        if self.draft.segments:  # overall figures are sums of the noisy segments
            for arm in ARMS:
                total = self.draft.lift[(ALL, arm)]
                for metric in ("people", "converters", "purchases", "revenue", "revenue_sq"):
                    total[metric] = sum(self.draft.lift[(s, arm)][metric] for s in slices)
        for rec in self.draft.lift.values():
            n = rec["people"]
            mean = rec["revenue"] / n if n > 0 else 0.0
            rec["revenue_var"] = (
                max(0.0, (rec["revenue_sq"] - n * mean * mean) / (n - 1)) if n > 1 else 0.0
            )
        return {
            "epsilon_per_measure": eps,
            "measures": LIFT_MEASURES,
            "contribution_bounds": {
                "max_purchases_per_person": bounds.max_purchases_per_person,
                "max_revenue_per_person": bounds.max_revenue_per_person,
            },
            "note": "purchases and revenue are clipped per person to the bounds",
        }

    # -- cells ---------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        if isinstance(self.query, AudienceSizeQuery):
            return [self._cell("people", self.draft.counts["audience"], {}, ("audience",))]
        if isinstance(self.query, OverlapQuery):
            return [
                self._cell("people", n, {"datasets": label}, (label,))
                for label, n in self.draft.counts.items()
            ]
        return self._lift_cells()

    def _cell(self, metric: str, value: Any, dims: dict[str, str], unit: tuple[str, ...]) -> Cell:
        hidden = unit in self.suppressed
        if isinstance(value, float):
            value = finite(value)
        return Cell(metric, None if hidden else value, dims, hidden, self.noisy and not hidden)

    def _lift_cells(self) -> list[Cell]:
        out: list[Cell] = []
        for segment in (ALL, *self.draft.segments):
            summaries = {}
            for arm in ARMS:
                rec = self.draft.lift.setdefault((segment, arm), _empty(segment, arm))
                summary = ArmSummary(
                    rec["people"],
                    rec["converters"],
                    rec["purchases"],
                    rec["revenue"],
                    rec["revenue_var"],
                )
                summaries[arm] = summary
                dims = {"segment": segment, "arm": arm}
                out.append(self._cell("people", rec["people"], dims, ("people", segment, arm)))
                values = {
                    "converters": rec["converters"],
                    "conversion_rate": summary.conversion_rate,
                    "purchases": rec["purchases"],
                    "revenue": float(rec["revenue"]),
                    "revenue_per_person": summary.revenue_per_person,
                }
                for metric in ARM_CONVERSION_METRICS:
                    out.append(
                        self._cell(metric, values[metric], dims, ("conversion", segment, arm))
                    )
            hidden = any(("conversion", segment, arm) in self.suppressed for arm in ARMS)
            comparison = {
                **conversion_lift(summaries["test"], summaries["control"]),
                **revenue_lift(summaries["test"], summaries["control"]),
            }
            for metric, value in comparison.items():
                out.append(
                    Cell(
                        metric,
                        None if hidden else value,
                        {"segment": segment},
                        hidden,
                        self.noisy and not hidden,
                    )
                )
        return out


def _empty(segment: str, arm: str) -> dict[str, Any]:
    return {
        "segment": segment,
        "arm": arm,
        "people": 0,
        "converters": 0,
        "purchases": 0,
        "revenue": 0.0,
        "revenue_var": 0.0,
        "purchases_clipped": 0,
        "revenue_clipped": 0.0,
        "revenue_sq_clipped": 0.0,
    }


def build_cells(query: Query, draft: Draft, k: int) -> ReleasePlan:
    """Decide suppression on the draft's counts (exact ones, or noisy ones after
    :meth:`ReleasePlan.add_noise`); say which cohorts will be released."""
    plan = ReleasePlan(query, draft, k)
    decide_suppression(plan)
    return plan


def decide_suppression(plan: ReleasePlan) -> None:
    """Suppress on the counts the draft holds now.  Under DP these are the noisy
    counts, so whether a figure is suppressed is post-processing of DP outputs.

    Under DP only primary suppression applies (a noisy count below k is hidden):
    totals and overlap cells are sums of the noisy parts, so anything derived
    from the released figures by subtraction is itself a noisy, DP-protected
    value, and hiding more would only cost accuracy."""
    query, draft, k = plan.query, plan.draft, plan.k
    if isinstance(query, AudienceSizeQuery):
        if draft.counts["audience"] < k:
            plan.suppressed.add(("audience",))
        else:
            plan.released_cohorts.append("audience")
        return
    if isinstance(query, OverlapQuery):
        _suppress_overlap(plan)
        return
    assert isinstance(query, CampaignLiftQuery)
    _suppress_lift(plan)
    _lift_released_cohorts(plan)


def _lift_released_cohorts(plan: ReleasePlan) -> None:
    """Every released (segment, arm) cell is a cohort — its people and, when its
    conversion figures are shown, its converters — and so is what subtraction
    yields: a released total minus the released segments (the hidden rest)."""
    segments = plan.draft.segments
    for level in LEVELS:
        for arm in ARMS:
            for segment in (ALL, *segments):
                if (level, segment, arm) not in plan.suppressed:
                    plan.released_cohorts.append(lift_cohort(segment, arm, level))
            hidden = tuple(s for s in segments if (level, s, arm) in plan.suppressed)
            if hidden and (level, ALL, arm) not in plan.suppressed:
                plan.derived_cohorts[lift_cohort(REST, arm, level)] = tuple(
                    lift_cohort(s, arm, level) for s in hidden
                )


def _suppress_lift(plan: ReleasePlan) -> None:
    """Hide lift cells over fewer than k people (converters for the conversion
    figures), then, without noise, enough further segments of each arm that no
    hidden one is had by subtracting the shown ones from the arm's total."""
    _suppress_small_lift_cells(plan)
    if not plan.draft.segments or plan.noisy:
        return
    for level, metric in (("people", "people"), ("conversion", "converters")):
        for arm in ARMS:
            if (level, ALL, arm) in plan.suppressed:
                continue  # the total is hidden: nothing to subtract from
            for segment in _complements(plan, level, metric, arm):
                plan.suppressed.add((level, segment, arm))
                if level == "people":
                    plan.suppressed.add(("conversion", segment, arm))
    # a segment newly hidden at the people level may leave one conversion part exposed
    for arm in ARMS:
        if ("conversion", ALL, arm) in plan.suppressed:
            continue
        for segment in _complements(plan, "conversion", "converters", arm):
            plan.suppressed.add(("conversion", segment, arm))


def _lift_figure(draft: Draft, segment: str, arm: str, metric: str) -> int:
    """One exact figure of a lift cell; 0 for a cell with nobody in it."""
    return int(draft.lift.get((segment, arm), {}).get(metric, 0))


def _suppress_small_lift_cells(plan: ReleasePlan) -> None:
    """A cell of fewer than k people hides all its figures; one with fewer than
    k converters, its conversion figures."""
    draft, k = plan.draft, plan.k
    for segment in (ALL, *draft.segments):
        for arm in ARMS:
            if _lift_figure(draft, segment, arm, "people") < k:
                plan.suppressed.add(("people", segment, arm))
                plan.suppressed.add(("conversion", segment, arm))
            elif _lift_figure(draft, segment, arm, "converters") < k:
                plan.suppressed.add(("conversion", segment, arm))


def _complements(plan: ReleasePlan, level: str, metric: str, arm: str) -> set[str]:
    """The segments of ``arm`` to hide at ``level`` besides those hidden already,
    so that the arm's total minus the shown segments covers 0 or at least k."""
    segments = plan.draft.segments
    parts = {s: _lift_figure(plan.draft, s, arm, metric) for s in segments}
    primary = {s for s in segments if (level, s, arm) in plan.suppressed}
    return complementary_suppression(parts, primary, plan.k)


def _suppress_overlap(plan: ReleasePlan) -> None:
    """Hide overlap cells until no figure derivable from the released ones — a
    cell, a Venn region (``bank = 100`` and ``bank+telecom = 97`` give "bank
    only" = 3), or any other set of regions — covers 1 … k−1 people.

    With at most three datasets there are 7 regions and 127 sets of regions, so
    every derivable set is checked exactly (linear algebra over region counts).
    """
    assert isinstance(plan.query, OverlapQuery)
    draft, k, datasets = plan.draft, plan.k, plan.query.datasets
    assert all(overlap_label((r,)) in draft.counts for r in datasets)
    venn = VennAlgebra(datasets, draft.regions)
    released = [label for label in draft.counts if draft.counts[label] >= k]
    while released and not plan.noisy:
        bad = venn.small_derivable(released, k)
        if bad is None:
            break
        # hide the most specific (then smallest) cell whose absence stops the leak
        order = sorted(released, key=lambda lb: (-lb.count("+"), draft.counts[lb], lb))
        victim = next(
            (lb for lb in order if not venn.derivable([x for x in released if x != lb], bad)),
            order[0],
        )
        released.remove(victim)
    for label in draft.counts:
        if label in released:
            plan.released_cohorts.append(label)
        else:
            plan.suppressed.add((label,))
    for region in venn.derivable_regions(released):
        if not all(region):  # the all-datasets region is the released intersection cell
            plan.derived_cohorts[region_label(datasets, region)] = (region_label(datasets, region),)


class VennAlgebra:
    """Overlap cells as sums of disjoint Venn regions, for derivability checks.

    A cell (an intersection of datasets) is the 0/1 vector of the regions it
    contains; a set of regions is derivable from released cells when its
    vector lies in their span (then its count is a linear combination of
    released counts).
    """

    def __init__(self, datasets: tuple[str, ...], regions: dict[tuple[bool, ...], int]) -> None:
        n = len(datasets)
        self.datasets = datasets
        self.regions = [tuple(bool(mask >> i & 1) for i in range(n)) for mask in range(1, 2**n)]
        self.counts = np.array([regions.get(r, 0) for r in self.regions], dtype=float)
        # every non-empty set of regions, as rows of 0/1
        m = len(self.regions)
        self.sets = np.array(
            [[mask >> j & 1 for j in range(m)] for mask in range(1, 2**m)], dtype=float
        )

    def vector(self, label: str) -> np.ndarray:
        members = [self.datasets.index(ref) for ref in label.split("+")]
        return np.array([all(r[i] for i in members) for r in self.regions], dtype=float)

    def _in_span(self, released: list[str], rows: np.ndarray) -> np.ndarray:
        if not released:
            return np.zeros(len(rows), dtype=bool)
        basis = np.array([self.vector(lb) for lb in released])
        projector = np.linalg.pinv(basis) @ basis
        return np.abs(rows - rows @ projector).max(axis=1) < 1e-9

    def derivable(self, released: list[str], row: np.ndarray) -> bool:
        return bool(self._in_span(released, row[None, :])[0])

    def small_derivable(self, released: list[str], k: int) -> np.ndarray | None:
        """A derivable set of regions covering 1 … k−1 people, if any."""
        sizes = self.sets @ self.counts
        hits = self._in_span(released, self.sets) & (sizes > 0) & (sizes < k)
        return self.sets[int(np.argmax(hits))] if hits.any() else None

    def derivable_regions(self, released: list[str]) -> list[tuple[bool, ...]]:
        unit = np.eye(len(self.regions))
        return [r for r, ok in zip(self.regions, self._in_span(released, unit), strict=True) if ok]
