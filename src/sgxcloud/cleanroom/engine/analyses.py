"""The three analysis templates, computed exactly inside DuckDB.

Each returns a :class:`Draft`: exact figures plus, for every figure, how
many distinct people it covers and which suppression unit it belongs to,
and the cohorts (the person keys behind each figure, as conditions over
one working table) that the differencing check compares.  Privacy
(suppression, noise) is applied by the engine.  Working tables are ordinary
tables, replaced by the next query: DuckDB keeps temporary tables in memory,
ordinary ones spill under the memory limit.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import duckdb

from sgxcloud.cleanroom.definition import Analysis, Attribute, Dataset, Definition
from sgxcloud.cleanroom.engine.identity import ensure_persons, person_table, quote
from sgxcloud.cleanroom.engine.query import (
    And,
    AudienceSizeQuery,
    CampaignLiftQuery,
    Comparison,
    OverlapQuery,
)
from sgxcloud.cleanroom.engine.sql import comparison_condition, compile_filter

ALL = "(all)"
NONE_SEGMENT = "(none)"
ARMS = ("test", "control")


@dataclass(frozen=True)
class Cohort:
    """The people behind one figure: rows of the draft's ``cohort_table`` (one per
    person, column ``person``) meeting ``condition`` (engine-made SQL; values bound)."""

    condition: str
    params: tuple[Any, ...] = ()

    @staticmethod
    def union(parts: list[Cohort]) -> Cohort:
        """Disjoint parts together (e.g. the hidden segments of one arm)."""
        return Cohort(
            " OR ".join(f"({p.condition})" for p in parts),
            tuple(v for p in parts for v in p.params),
        )


@dataclass
class Draft:
    """Exact results before privacy; ``cohorts`` maps a cell label to its people."""

    counts: dict[str, int] = field(default_factory=dict)
    cohorts: dict[str, Cohort] = field(default_factory=dict)
    cohort_table: str = ""
    lift: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    regions: dict[tuple[bool, ...], int] = field(default_factory=dict)
    segments: tuple[str, ...] = ()


def audience_size(
    con: duckdb.DuckDBPyConnection, definition: Definition, query: AudienceSizeQuery
) -> Draft:
    params: list[Any] = []
    universe, rest = "persons", query.filter
    comparisons = (
        query.filter.items
        if isinstance(query.filter, And)
        else (query.filter,)
        if isinstance(query.filter, Comparison)
        else ()
    )
    if comparisons and all(isinstance(c, Comparison) for c in comparisons):
        # Only people of the first comparison's dataset can match a conjunction of
        # comparisons: start from them, not from everyone in any dataset.
        dataset, condition = comparison_condition(definition, comparisons[0], params)
        universe = f"(SELECT DISTINCT person FROM {person_table(dataset)} WHERE {condition})"
        rest = And(tuple(comparisons[1:])) if len(comparisons) > 1 else None
    else:
        ensure_persons(con, definition.datasets)
    where = compile_filter(definition, rest, params)
    con.execute(
        f"CREATE OR REPLACE TABLE q_audience AS SELECT person FROM {universe} WHERE {where}", params
    )
    n = con.execute("SELECT count(*) FROM q_audience").fetchone()[0]
    return Draft(
        counts={"audience": n}, cohorts={"audience": Cohort("TRUE")}, cohort_table="q_audience"
    )


def overlap_label(datasets: tuple[str, ...]) -> str:
    return "+".join(datasets)


def region_label(datasets: tuple[str, ...], region: tuple[bool, ...]) -> str:
    """The Venn region of people in exactly the ``region`` datasets."""
    return (
        overlap_label(tuple(d for d, inside in zip(datasets, region, strict=True) if inside))
        + " only"
    )


def overlap(con: duckdb.DuckDBPyConnection, definition: Definition, query: OverlapQuery) -> Draft:
    params: list[Any] = []
    where = compile_filter(definition, query.filter, params)
    ensure_persons(con, definition.datasets)
    flags = []
    for i, ref in enumerate(query.datasets):
        ds = definition.dataset(ref)
        assert ds is not None  # checked by check_query
        flags.append(f"person IN (SELECT person FROM {person_table(ds)}) AS m{i}")
    any_member = " OR ".join(f"m{i}" for i in range(len(query.datasets)))
    con.execute(
        f"CREATE OR REPLACE TABLE q_overlap AS SELECT * FROM "
        f"(SELECT person, {', '.join(flags)} FROM persons WHERE {where}) WHERE {any_member}",
        params,
    )
    draft = Draft(cohort_table="q_overlap")
    cols = ", ".join(f"m{i}" for i in range(len(query.datasets)))
    for row in con.execute(f"SELECT {cols}, count(*) FROM q_overlap GROUP BY ALL").fetchall():
        draft.regions[tuple(row[:-1])] = row[-1]
    for region in itertools.product((False, True), repeat=len(query.datasets)):
        if any(region):  # each Venn region is a cohort too, when derivable
            cond = " AND ".join(f"{'' if b else 'NOT '}m{i}" for i, b in enumerate(region))
            draft.cohorts[region_label(query.datasets, region)] = Cohort(cond)
    for size in range(1, len(query.datasets) + 1):
        for subset in itertools.combinations(range(len(query.datasets)), size):
            label = overlap_label(tuple(query.datasets[i] for i in subset))
            cond = " AND ".join(f"m{i}" for i in subset)
            draft.counts[label] = sum(
                n for region, n in draft.regions.items() if all(region[i] for i in subset)
            )
            draft.cohorts[label] = Cohort(cond)
    return draft


def campaign_lift(
    con: duckdb.DuckDBPyConnection,
    definition: Definition,
    analysis: Analysis,
    query: CampaignLiftQuery,
) -> Draft:
    """Exact lift figures per (segment, arm), and the person-key table of every
    cell (people and converters) for the differencing check."""
    exposures = definition.dataset(analysis.exposures or "")
    purchases = definition.dataset(analysis.purchases or "")
    assert exposures is not None and purchases is not None  # checked by the definition
    params: list[Any] = []
    where = compile_filter(definition, query.filter, params, person_col="person")
    _choose_exposed(con, exposures, where, params)
    _attribute_purchases(con, purchases, int(analysis.attribution_window_days))
    attribute = _segment_people(con, definition, query.breakdown) if query.breakdown else None
    draft = Draft(cohort_table="q_lift")
    draft.lift = _lift_figures(con, definition)
    if attribute is not None:
        draft.segments = _lift_segments(attribute, draft.lift)
    for arm in ARMS:
        draft.counts[arm] = draft.lift.get((ALL, arm), {}).get("people", 0)
    _lift_cohorts(draft)
    return draft


# One large join per statement, and arms and segments aggregated as small
# integer codes: min()/max() of strings next to a join cannot spill and ran
# out of memory on ten million people.


def _arm_code(group_column: str) -> str:
    """SQL turning the (quoted) arm column into the arm's index in ``ARMS``."""
    whens = " ".join(f"WHEN '{arm}' THEN {n}" for n, arm in enumerate(ARMS))
    return f"CASE {group_column} {whens} END"


def _arm_name(code_column: str) -> str:
    """SQL turning an arm code back into its name."""
    whens = " ".join(f"WHEN {n} THEN '{arm}'" for n, arm in enumerate(ARMS))
    return f"CASE {code_column} {whens} END"


def _choose_exposed(
    con: duckdb.DuckDBPyConnection, exposures: Dataset, where: str, params: list[Any]
) -> None:
    """``q_chosen``: people exposed to one arm only, with their first exposure,
    meeting the query's filter."""
    grp, ets = quote(exposures.group_column or ""), quote(exposures.timestamp_column or "")
    con.execute(f"""
        CREATE OR REPLACE TABLE q_exposed AS
        SELECT person, min({ets}) AS first_exposure, min(arm) AS arm
        FROM (SELECT person, {ets}, {_arm_code(grp)} AS arm FROM {person_table(exposures)})
        GROUP BY person HAVING min(arm) = max(arm)  -- one arm only""")
    con.execute(
        f"CREATE OR REPLACE TABLE q_chosen AS SELECT * FROM q_exposed WHERE {where}", params
    )
    con.execute("DROP TABLE q_exposed")


def _attribute_purchases(
    con: duckdb.DuckDBPyConnection, purchases: Dataset, window_days: int
) -> None:
    """``q_lift`` from ``q_chosen``: one row per chosen person with the purchases
    and revenue made within ``window_days`` of the first exposure (zero for none),
    all in the segment ``ALL``."""
    pts, amt = quote(purchases.timestamp_column or ""), quote(purchases.amount_column or "")
    con.execute(f"""
        CREATE OR REPLACE TABLE q_attributed AS
        SELECT c.person, count(*) AS purchases, sum(p.{amt}) AS revenue
        FROM {person_table(purchases)} p JOIN q_chosen c ON p.person = c.person
         AND p.{pts} >= c.first_exposure
         AND p.{pts} < c.first_exposure + INTERVAL {window_days} DAY
        GROUP BY c.person""")
    con.execute(f"""
        CREATE OR REPLACE TABLE q_lift AS
        SELECT c.person, {_arm_name("c.arm")} AS arm, '{ALL}' AS segment,
               coalesce(a.purchases, 0) AS purchases, coalesce(a.revenue, 0.0) AS revenue
        FROM q_chosen c LEFT JOIN q_attributed a ON a.person = c.person""")
    con.execute("DROP TABLE q_chosen")
    con.execute("DROP TABLE q_attributed")


def _segment_code(attribute: Attribute) -> tuple[str, list[Any], tuple[str, ...]]:
    """(SQL coding a person's value as an integer, its parameters, the values in
    code order).  Codes follow the values' own order, so min() picks what
    min(value) would."""
    if attribute.type == "boolean":
        return f"CAST({quote(attribute.column)} AS INTEGER)", [], ("false", "true")
    values = tuple(sorted(attribute.values))
    whens = " ".join(f"WHEN ? THEN {n}" for n in range(len(values)))
    return f"CASE {quote(attribute.column)} {whens} END", list(values), values


def _segment_people(
    con: duckdb.DuckDBPyConnection, definition: Definition, breakdown: str
) -> Attribute:
    """Each ``q_lift`` row's segment: the person's value of ``breakdown`` (the
    smallest if several), ``NONE_SEGMENT`` without one.  Returns the attribute."""
    resolved = definition.resolve_attribute(breakdown)
    assert resolved is not None  # checked by check_query
    ds, attribute = resolved
    code, code_params, values = _segment_code(attribute)
    con.execute(
        f"CREATE OR REPLACE TABLE q_segment AS SELECT person, min(code) AS code "
        f"FROM (SELECT person, {code} AS code FROM {person_table(ds)}) "
        "WHERE code IS NOT NULL GROUP BY person",
        code_params,
    )
    names = " ".join(f"WHEN {n} THEN ?" for n in range(len(values)))
    con.execute(
        f"""
            CREATE OR REPLACE TABLE q_lift AS
            SELECT l.person, l.arm, coalesce(CASE s.code {names} END, '{NONE_SEGMENT}') AS segment,
                   l.purchases, l.revenue
            FROM q_lift l LEFT JOIN q_segment s ON s.person = l.person""",
        list(values),
    )
    con.execute("DROP TABLE q_segment")
    return attribute


_LIFT_COLUMNS = (
    "segment",
    "arm",
    "people",
    "converters",
    "purchases",
    "revenue",
    "revenue_var",
    "purchases_clipped",
    "revenue_clipped",
    "revenue_sq_clipped",
)
"""The columns of one lift cell's record, as ``_lift_figures`` selects them."""


def _lift_figures(
    con: duckdb.DuckDBPyConnection, definition: Definition
) -> dict[tuple[str, str], dict[str, Any]]:
    """The exact figures of every (segment, arm) cell and of each arm over all
    segments, clipped too at the DP bounds (1 without DP) for the noise."""
    bounds = definition.privacy.dp.bounds if definition.privacy.dp else None
    max_p = bounds.max_purchases_per_person if bounds else 1
    max_r = float(bounds.max_revenue_per_person) if bounds else 1.0
    rows = con.execute(
        """
        SELECT coalesce(segment, ?) AS segment, arm, count(*) AS people,
               count(*) FILTER (WHERE purchases > 0) AS converters,
               sum(purchases) AS purchases, sum(revenue) AS revenue,
               coalesce(var_samp(revenue), 0.0) AS revenue_var,
               sum(least(purchases, ?)) AS purchases_clipped,
               sum(least(revenue, ?)) AS revenue_clipped,
               sum(least(revenue, ?) * least(revenue, ?)) AS revenue_sq_clipped
        FROM q_lift GROUP BY GROUPING SETS ((segment, arm), (arm))
        """,
        [ALL, max_p, max_r, max_r, max_r],
    ).fetchall()
    lift: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        record = dict(zip(_LIFT_COLUMNS, row, strict=True))
        if record["arm"] not in ARMS:
            continue  # ingestion rejects other values; be safe anyway
        lift[(record["segment"], record["arm"])] = record
    return lift


def _lift_segments(
    attribute: Attribute, lift: dict[tuple[str, str], dict[str, Any]]
) -> tuple[str, ...]:
    """The breakdown's segments: every declared value and ``NONE_SEGMENT``,
    present or not — which segments exist would otherwise show that 1 … k−1
    people have a value (and escape DP)."""
    declared = tuple(dict.fromkeys((*breakdown_values(attribute), NONE_SEGMENT)))
    extra = sorted({s for s, _ in lift if s != ALL} - set(declared))
    return (*declared, *extra)  # extra: never, ingestion checks values


def breakdown_values(attribute: Attribute) -> tuple[str, ...]:
    """The segments of a breakdown attribute, as its values print in SQL."""
    return ("true", "false") if attribute.type == "boolean" else attribute.values


def lift_cohort(segment: str, arm: str, level: str = "people") -> str:
    """The cohort label of one lift cell: its people, or its converters."""
    return f"{segment}|{arm}|{level}"


def _lift_cohorts(draft: Draft) -> None:
    """The people of every (segment, arm) cell and level, for the differencing
    check: a breakdown segment is released on its own, so it is a cohort of its own."""
    for segment in (ALL, *draft.segments):
        for arm in ARMS:
            where, params = "arm = ?", (arm,)
            if segment != ALL:
                where, params = f"{where} AND segment = ?", (arm, segment)
            draft.cohorts[lift_cohort(segment, arm, "people")] = Cohort(where, params)
            draft.cohorts[lift_cohort(segment, arm, "conversion")] = Cohort(
                f"{where} AND purchases > 0", params
            )
