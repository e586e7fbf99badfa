"""The differencing check: what two releases reveal together, and across refreshes.

Regression tests for issue 9 findings 2 (a union derived from an overlap's
cells against an audience) and 3 (a refresh that changes person keys), on a
hand-made population whose every person the test knows."""

from __future__ import annotations

import duckdb
import pytest

from sgxcloud.cleanroom.errors import QueryRefused
from sgxcloud.cleanroom.privacy import CohortStore, Release

from .world import Person, World

PREMIUM = {"attribute": "bank.customers.premium_card", "op": "=", "value": True}


def _exact(make_definition, k):
    """The shipped example's privacy with DP off: exact answers, the check on."""
    return make_definition(min_group_size=k, differencing_check=True, dp={"enabled": False})


def _bank(premium=True, band="middle"):
    return {"premium_card": premium, "income_band": band}


def _union_world() -> World:
    """181 premium bank customers: 60 also in telecom only, 60 also at the retailer
    only, 60 in both, and one — Bob — in neither."""
    people, pid = [], 0
    for telecom, retailer, n in (
        (True, False, 60),
        (False, True, 60),
        (True, True, 60),
        (False, False, 1),
    ):
        for _ in range(n):
            people.append(
                Person(
                    pid,
                    bank=_bank(),
                    telecom={"region": "south", "device": "ios"} if telecom else None,
                    retailer={"baby_buyer": False, "loyalty_tier": "none"} if retailer else None,
                )
            )
            pid += 1
    return World(people)


@pytest.mark.parametrize("k", [5, 50])
@pytest.mark.parametrize("order", ["overlap_first", "audience_first"])
def test_audience_minus_overlap_union_is_refused(make_definition, make_engine, k, order):
    """audience(F) − (T + R − T∩R) counts the people of F in neither dataset (1 here)."""
    engine = make_engine(_exact(make_definition, k), ingest=False)
    _union_world().ingest(engine)
    overlap = {
        "template": "overlap",
        "analysis": "reach",
        "filter": PREMIUM,
        "datasets": ["telecom.subscribers", "retailer.customers"],
    }
    audience = {"template": "audience_size", "analysis": "audience", "filter": PREMIUM}
    first, second = (overlap, audience) if order == "overlap_first" else (audience, overlap)
    released = engine.run(first, "brand")
    assert not any(c.suppressed for c in released.cells)
    with pytest.raises(QueryRefused) as err:
        engine.run(second, "brand")
    assert err.value.reason == "differencing"


def test_audience_minus_both_lift_arms_is_refused(make_definition, make_engine):
    """A lift's arms add up to everyone exposed: audience(F) − (test + control) is
    the one person of F never exposed."""
    k = 20
    people = [
        Person(
            pid,
            retailer={"baby_buyer": True, "loyalty_tier": "gold"},
            arm=("test", "control")[pid % 2],
            converted=pid % 3 == 0,
        )
        for pid in range(100)
    ]
    people.append(Person(100, retailer={"baby_buyer": True, "loyalty_tier": "gold"}))
    engine = make_engine(_exact(make_definition, k), ingest=False)
    World(people).ingest(engine)
    baby = {"attribute": "retailer.customers.baby_buyer", "op": "=", "value": True}
    lift = engine.run({"template": "campaign_lift", "analysis": "lift", "filter": baby}, "brand")
    assert lift.value("people", segment="(all)", arm="test") == 50
    with pytest.raises(QueryRefused) as err:
        engine.run({"template": "audience_size", "analysis": "audience", "filter": baby}, "brand")
    assert err.value.reason == "differencing"


def test_breakdown_cell_against_audience_is_refused(make_definition, make_engine):
    """A breakdown segment's two arms together against an audience of the same
    segment: the difference is the one premium customer not exposed."""
    k = 20
    people = [
        Person(
            pid,
            bank=_bank(premium=pid % 2 == 0),
            retailer={"baby_buyer": False, "loyalty_tier": "none"},
            arm=("test", "control")[pid // 2 % 2],
            converted=pid % 5 == 0,
        )
        for pid in range(200)
    ]
    people.append(Person(200, bank=_bank(premium=True)))
    engine = make_engine(_exact(make_definition, k), ingest=False)
    World(people).ingest(engine)
    engine.run(
        {
            "template": "campaign_lift",
            "analysis": "lift",
            "breakdown": "bank.customers.premium_card",
        },
        "brand",
    )
    with pytest.raises(QueryRefused) as err:
        engine.run(
            {"template": "audience_size", "analysis": "audience", "filter": PREMIUM}, "brand"
        )
    assert err.value.reason == "differencing"


def _refresh_world() -> World:
    """40 high-income bank customers in telecom: Bob (the only one in the north)
    and 39 in the south."""
    return World(
        [
            Person(
                pid,
                bank=_bank(band="high"),
                telecom={"region": "north" if pid == 0 else "south", "device": "ios"},
            )
            for pid in range(40)
        ]
    )


HIGH = "bank.customers.income_band = 'high'"
HIGH_NOT_BOB = f"{HIGH} AND telecom.subscribers.region != 'north'"


@pytest.mark.parametrize("refresh", [False, True])
def test_a_refresh_that_changes_person_keys_keeps_cohorts_comparable(
    make_definition, make_engine, refresh
):
    """Finding 3: the bank re-ingests with one more identifier per row (every bank
    person's key changes); 40 then 39 would reveal Bob's region."""
    engine = make_engine(_exact(make_definition, 5), ingest=False)
    world = _refresh_world()
    world.ingest(engine)
    assert (
        engine.run(
            {"template": "audience_size", "analysis": "audience", "filter": HIGH}, "brand"
        ).value("people")
        == 40
    )
    if refresh:
        world.ingest(engine, extra_ids=True, only=("bank.customers",))
    with pytest.raises(QueryRefused) as err:
        engine.run(
            {"template": "audience_size", "analysis": "audience", "filter": HIGH_NOT_BOB}, "brand"
        )
    assert err.value.reason == "differencing"


def test_cohorts_stay_comparable_across_refresh_and_restart(make_definition, make_engine, tmp_path):
    """The stored links survive a restart: a refresh after it still remaps."""
    definition = _exact(make_definition, 5)
    engine = make_engine(definition, tmp_path / "w", ingest=False)
    world = _refresh_world()
    world.ingest(engine)
    engine.run({"template": "audience_size", "analysis": "audience", "filter": HIGH}, "brand")
    engine.close()
    restarted = make_engine(definition, tmp_path / "w", ingest=False)
    world.ingest(restarted, extra_ids=True, only=("bank.customers",))
    with pytest.raises(QueryRefused):
        restarted.run(
            {"template": "audience_size", "analysis": "audience", "filter": HIGH_NOT_BOB}, "brand"
        )
    # the same 40 people after the refresh: difference 0, allowed, same answer
    same = restarted.run(
        {"template": "audience_size", "analysis": "audience", "filter": f"{HIGH} OR {HIGH}"},
        "brand",
    )
    assert same.value("people") == 40


# -- the store on its own ----------------------------------------------------------------


def _store() -> tuple[duckdb.DuckDBPyConnection, CohortStore]:
    con = duckdb.connect()
    return con, CohortStore(con)


def _stage(store: CohortStore, *regions: range | list[int]) -> None:
    values = ", ".join(f"({r}, {m})" for r, members in enumerate(regions) for m in members)
    store.stage(f"SELECT * FROM (VALUES {values}) v(region, person)" if values else "", [])


def _one(*regions: int) -> Release:
    """One released figure counting the given regions."""
    return Release(("c",), (frozenset(regions),))


def test_store_refuses_pairwise_differences_below_k():
    """The former pairwise rule still holds: 1 ≤ |A △ B| < k is refused."""
    con, store = _store()
    _stage(store, range(100))
    store.check_staged(_one(0), 10)
    store.record_staged(_one(0), "q1")
    for close in (range(1, 100), range(109), [*range(1, 100), 7777]):
        _stage(store, close)
        with pytest.raises(QueryRefused):
            store.check_staged(_one(0), 10)
    for fine in (
        range(100),
        [*range(5, 100), *range(100, 105)],
        range(150, 200),
        range(500, 600),
        [],
    ):
        _stage(store, fine)
        store.check_staged(_one(0), 10)  # same, 10 apart, far, disjoint, empty
    assert con.execute("SELECT count(*) FROM released_region").fetchone()[0] == 100


def test_store_sees_unions_and_inclusion_exclusion():
    """Regions 0, 1, 2 released as the cells {0, 2}, {1, 2}, {2} (an overlap): their
    union, 0 + 1 + 2, is derivable; an audience one person larger is refused."""
    _, store = _store()
    overlap = Release(("T", "R", "T+R"), (frozenset({0, 2}), frozenset({1, 2}), frozenset({2})))
    _stage(store, range(0, 60), range(60, 120), range(120, 180))
    store.check_staged(overlap, 50)
    store.record_staged(overlap, "overlap")
    _stage(store, range(181))
    with pytest.raises(QueryRefused):
        store.check_staged(_one(0), 50)
    _stage(store, range(230))  # 50 more than the union: fine
    store.check_staged(_one(0), 50)
    # a release made of two cells, each far from every earlier figure, whose
    # difference isolates 2 people against the overlap's region 0
    _stage(store, range(0, 58), range(58, 200))
    with pytest.raises(QueryRefused):
        store.check_staged(Release(("a", "b"), (frozenset({0, 1}), frozenset({1}))), 50)


def test_store_allows_what_one_release_alone_gives():
    """A small figure derivable within one release (people − converters) is the
    suppression rules' business; pairing it with an unrelated release is fine."""
    _, store = _store()
    lift = Release(("people", "converters"), (frozenset({0, 1}), frozenset({1})))
    _stage(store, range(3), range(3, 100))
    store.record_staged(lift, "lift")
    _stage(store, [*range(3), *range(1000, 1100)])  # shares only the 3 non-converters
    store.check_staged(_one(0), 50)
    # a released cohort of 60 that a later one splits into two pieces of 30 (< k):
    # only their sum, 60, is derivable
    _, store = _store()
    _stage(store, range(30), range(30, 60))
    store.record_staged(Release(("people",), (frozenset({0, 1}),)), "q")
    _stage(store, [*range(30), *range(1000, 1100)])
    store.check_staged(_one(0), 50)
