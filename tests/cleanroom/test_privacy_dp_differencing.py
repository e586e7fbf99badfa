"""Under DP no release or refusal is decided on exact data beyond what the DP
mechanism accounts for (red-team attack 03): the differencing check is decided
on exact cohorts, so with DP on its verdict "refused: differencing" was a
noise-free oracle for "this cell holds 1 … k−1 people".  With DP on the check no
longer refuses; every figure derivable from releases is then a difference of
noisy figures, covered by composition over the analyst's budget."""

from __future__ import annotations

import pytest

from sgxcloud.cleanroom.errors import QueryRefused

from .world import Person, World

BOB_BANK = {"premium_card": True, "income_band": "high"}
BOB_TELECOM = {"region": "central", "device": "other"}


def _world(bob_baby: bool, seed: int) -> World:
    world = World.random(1500, seed)
    for person in world.people:  # nobody else has Bob's bank + telecom combination
        if person.bank == BOB_BANK and person.telecom == BOB_TELECOM:
            person.telecom = {"region": "north", "device": "other"}
    world.people.append(
        Person(
            len(world.people),
            bank=dict(BOB_BANK),
            telecom=dict(BOB_TELECOM),
            retailer={"baby_buyer": bob_baby, "loyalty_tier": "gold"},
        )
    )
    return world


def _not_bob_with(baby: bool) -> dict:
    return {
        "not": {
            "and": [
                {"attribute": "bank.customers.premium_card", "op": "=", "value": True},
                {"attribute": "bank.customers.income_band", "op": "=", "value": "high"},
                {"attribute": "telecom.subscribers.region", "op": "=", "value": "central"},
                {"attribute": "telecom.subscribers.device", "op": "=", "value": "other"},
                {"attribute": "retailer.customers.baby_buyer", "op": "=", "value": baby},
            ]
        }
    }


def _probe(engine, baby: bool) -> str:
    query = {"template": "audience_size", "analysis": "audience", "filter": _not_bob_with(baby)}
    try:
        engine.run(query, "brand")
    except QueryRefused as exc:
        return exc.reason
    return "released"


@pytest.mark.parametrize("truth", [True, False])
def test_differencing_refusal_is_no_oracle_under_dp(make_definition, make_engine, truth):
    """Everyone, then everyone but (Bob and baby_buyer = x) for both x: on the old
    code exactly the probe matching Bob's hidden value was refused (4/4 in the
    red-team run); now both are released, whatever Bob's value."""
    definition = make_definition(
        min_group_size=50,
        differencing_check=True,
        dp={"enabled": True, "epsilon_per_query": 0.5, "budget_per_analyst": 10.0},
    )
    engine = make_engine(definition, ingest=False)
    _world(truth, seed=100 + truth).ingest(engine)
    everyone = engine.run({"template": "audience_size", "analysis": "audience"}, "brand")
    assert everyone.privacy["differencing_check"] is False  # said honestly in the result
    verdicts = {baby: _probe(engine, baby) for baby in (True, False)}
    assert verdicts == {True: "released", False: "released"}
    assert engine.budget("brand").spent == pytest.approx(1.5)


def test_differencing_check_still_refuses_without_dp(make_definition, make_engine):
    """DP off: the check is the protection and refuses the probe that matches."""
    definition = make_definition(min_group_size=50, differencing_check=True, dp={"enabled": False})
    engine = make_engine(definition, ingest=False)
    _world(True, seed=7).ingest(engine)
    engine.run({"template": "audience_size", "analysis": "audience"}, "brand")
    assert _probe(engine, True) == "differencing"
    assert _probe(engine, False) == "released"
