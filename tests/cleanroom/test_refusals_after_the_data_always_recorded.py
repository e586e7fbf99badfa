"""Red team rt11 F2: past a party's refusal budget, queries refused *after* reaching
the data (``suppressed``, ``differencing``) left no audit entry: with DP off, exact
"is this group below k?" probes were invisible; with DP on, the ledger showed ε spent
that no entry explained.  Only refusals decided before the data is touched (shape,
rights, a budget the query cannot pay) may be left out by the budget; a query that
reached the data, or was charged ε, is always recorded."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from sgxcloud.cleanroom.errors import QueryError, QueryRefused

# narrow cohorts: most hold fewer than k people
NARROW = [
    f"telecom.subscribers.region = '{r}' AND telecom.subscribers.device = '{d}'"
    f" AND bank.customers.income_band = '{b}' AND retailer.customers.loyalty_tier = '{t}'"
    for r, d, b, t in itertools.product(
        ("north", "south", "east", "west", "central"),
        ("android", "ios", "other"),
        ("low", "middle", "high"),
        ("none", "silver", "gold"),
    )
]


def _audience(flt=None):
    query = {"template": "audience_size", "analysis": "audience"}
    return {**query, "filter": flt} if flt else query


def _spend_the_budget(engine, burst):
    """Refusals decided before the data only: malformed queries, an unknown analysis."""
    for _ in range(burst):
        with pytest.raises(QueryError):
            engine.run(_audience("no_such.column = 1"), "brand")
    for _ in range(7):  # past the budget: left out, counted
        with pytest.raises((QueryError, QueryRefused)):
            engine.run({"template": "audience_size", "analysis": "nope"}, "brand")


def _outcomes(engine, filters):
    outcomes = []
    for flt in filters:
        try:
            engine.run(_audience(flt), "brand")
            outcomes.append("released")
        except QueryRefused as exc:
            outcomes.append(exc.reason)
    return outcomes


def test_data_refusals_are_recorded_past_the_budget_without_dp(make_definition, make_engine):
    engine = make_engine(
        make_definition(min_group_size=50, dp={"enabled": False}),
        refusals_burst=3,
        refusals_per_second=0.0,
    )
    _spend_the_budget(engine, 3)
    before = len(engine.audit.entries())
    outcomes = _outcomes(engine, NARROW[:40])
    probes = [o for o in outcomes if o in ("suppressed", "differencing")]
    assert len(probes) >= 30  # exact "fewer than k?" answers
    added = engine.audit.entries()[before:]
    refusals = [e for e in added if e.event == "refusal"]
    # every query that reached the data is in the log, with its verdict (old code: none)
    assert [e.event for e in added].count("query") == len(outcomes)
    assert [e.data["reason"] for e in refusals] == probes
    assert all(e.actor == "brand" and e.data["query_hash"] for e in refusals)
    # the first one carries what the budget left out before it
    assert refusals[0].data["unrecorded"] == 7
    assert not any("unrecorded" in e.data for e in refusals[1:])
    # pre-data refusals are still limited
    with pytest.raises(QueryError):
        engine.run(_audience("no_such.column = 1"), "brand")
    assert len(engine.audit.entries()) == before + len(added)
    engine.audit.verify()


def test_every_epsilon_the_ledger_charges_is_in_the_log(make_definition, make_engine):
    definition = make_definition(
        min_group_size=20,
        differencing_check=False,
        dp={"enabled": True, "epsilon_per_query": 0.1, "budget_per_analyst": 5.0},
    )
    engine = make_engine(definition, refusals_burst=2, refusals_per_second=0.0)
    _spend_the_budget(engine, 2)
    before = len(engine.audit.entries())
    outcomes = _outcomes(engine, NARROW[:22])
    assert outcomes.count("suppressed") > 0
    added = engine.audit.entries()[before:]
    assert [e.event for e in added].count("query") == 22  # old code: only the released
    logged = sum(e.data.get("epsilon", 0.0) for e in added if e.event in ("release", "refusal"))
    assert math.isclose(engine.budget("brand").spent, 2.2)
    assert math.isclose(logged, engine.budget("brand").spent)
    engine.audit.verify()
    _match_the_published_schema(engine)


def test_what_the_budget_left_out_is_written_when_the_engine_stops(make_definition, make_engine):
    engine = make_engine(make_definition(), refusals_burst=1, refusals_per_second=0.0)
    for _ in range(5):
        with pytest.raises(QueryRefused):
            engine.run(_audience(), "bank")  # a provider: not_allowed, before the data
    assert len([e for e in engine.audit.entries() if e.event == "refusal"]) == 1
    engine.close()
    last = engine.audit.entries()[-1]
    assert (last.event, last.actor, last.data["reason"], last.data["unrecorded"]) == (
        "refusal",
        "bank",
        "unrecorded",
        4,
    )
    _match_the_published_schema(engine)


def _match_the_published_schema(engine):
    from jsonschema import Draft202012Validator

    path = Path(__file__).resolve().parents[2] / "docs/cleanroom/audit-entry.schema.json"
    validator = Draft202012Validator(json.loads(path.read_text()))
    for entry in engine.audit.entries():
        validator.validate(asdict(entry))
