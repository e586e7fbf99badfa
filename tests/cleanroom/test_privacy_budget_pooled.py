"""The collaboration-wide DP budget and δ accounting (red team cr7, finding 1).

Budgets per analyst add up when analysts collude or pool their answers:
``budget_per_collaboration`` caps every analyst together.  It is charged in
the same SQLite transaction as the analyst's own budget, so concurrent
queries (processes, each with its own connection) cannot overspend either.
Under the Gaussian mechanism each query also spends δ; Σδ is checked as Σε is.
"""

from __future__ import annotations

import copy
import multiprocessing
from pathlib import Path

import pytest

from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import DefinitionError, QueryRefused
from sgxcloud.cleanroom.privacy import PrivacyLedger

from .world import World

BANDS = ("low", "middle", "high")
DP = "privacy.differential_privacy"


def _doc(base_doc, name: str = "pooled", **dp) -> dict:
    """The example with the agency an analyst of ``audience`` too: two analysts."""
    doc = copy.deepcopy(base_doc)
    doc["name"] = name
    for party in doc["parties"]:
        if party["name"] == "agency":
            party["roles"] = ["analyst", "result_recipient"]
    for analysis in doc["analyses"]:
        if analysis["name"] == "audience":
            analysis["analysts"] = ["brand", "agency"]
    doc["privacy"]["differential_privacy"].update(enabled=True, **dp)
    return doc


def _ask(engine, analyst: str, band: str, region: str | None = None) -> str:
    clauses = [{"attribute": "bank.customers.income_band", "op": "=", "value": band}]
    if region:
        clauses.append({"attribute": "telecom.subscribers.region", "op": "!=", "value": region})
    where = {"and": clauses} if len(clauses) > 1 else clauses[0]
    query = {"template": "audience_size", "analysis": "audience", "filter": where}
    try:
        engine.run(query, analyst)
    except QueryRefused as exc:
        return f"{exc.reason}: {exc.message}"
    return "released"


def test_pooled_analysts_cannot_add_their_budgets(base_doc, make_engine):
    doc = _doc(
        base_doc, epsilon_per_query=0.25, budget_per_analyst=1.0, budget_per_collaboration=1.0
    )
    engine = make_engine(definition_from_dict(doc), ingest=False)
    World.random(600, 5).ingest(engine)
    # two analysts, 1.0 each, but 1.0 together: four questions between them
    asked = [
        _ask(engine, "brand", "low"),
        _ask(engine, "brand", "middle"),
        _ask(engine, "agency", "high"),
        _ask(engine, "agency", "low", "north"),
    ]
    assert asked == ["released"] * 4
    for who in ("agency", "brand"):
        refused = _ask(engine, who, "middle", "south")
        assert refused == (
            "collaboration_budget: the collaboration's budget is spent: every analyst "
            "together has 0 of ε=1 left; this query needs ε=0.25"
        )
    brand, agency = engine.budget("brand"), engine.budget("agency")
    assert (brand.spent, brand.remaining, agency.spent, agency.remaining) == (0.5, 0.5, 0.5, 0.5)
    assert brand.collaboration_total == 1.0 and brand.collaboration_spent == 1.0
    assert brand.available == 0.0 == agency.available
    assert engine.ledger.collaboration_spent() == (1.0, 0.0)
    # a refused question recorded nothing; a repeat is still answered, free, from the cache
    assert _ask(engine, "brand", "low") == "released"
    assert engine.ledger.collaboration_spent() == (1.0, 0.0)


def test_the_analysts_own_budget_is_said_first(base_doc, make_engine):
    doc = _doc(
        base_doc, epsilon_per_query=0.5, budget_per_analyst=0.5, budget_per_collaboration=1.0
    )
    engine = make_engine(definition_from_dict(doc), ingest=False)
    World.random(600, 6).ingest(engine)
    assert _ask(engine, "brand", "low") == "released"
    assert _ask(engine, "brand", "high").startswith("budget: brand has 0 of ε=0.5 left")
    assert _ask(engine, "agency", "high") == "released"
    assert _ask(engine, "agency", "middle").startswith("budget: agency has 0 of ε=0.5 left")


def _spender(path: str, analyst: str, barrier, out) -> None:
    ledger = PrivacyLedger(path)
    barrier.wait()
    outcomes = []
    for i in range(6):
        try:
            ledger.spend(
                "c",
                analyst,
                f"{analyst}-{i}",
                0.25,
                1.0,
                1e-6,
                collaboration_budget=2.0,
                delta_budget=4e-6,
                collaboration_delta_budget=8e-6,
            )
            outcomes.append("spent")
        except QueryRefused as exc:
            outcomes.append(exc.reason)
    ledger.close()
    out.put((analyst, outcomes))


def test_concurrent_analysts_cannot_overspend_the_collaboration(tmp_path: Path):
    """Eight processes, one analyst each, each its own connection, start together:
    8 × 1.0 of own budget, but 2.0 together.  Exactly 8 charges land, whatever the
    interleaving, and every other attempt is refused with a budget reason."""
    path = str(tmp_path / "privacy.sqlite")
    PrivacyLedger(path).close()  # the tables exist before the race
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_spender, args=(path, f"a{n}", barrier, out)) for n in range(8)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    outcomes = [o for per in results.values() for o in per]
    assert outcomes.count("spent") == 8
    assert set(outcomes) <= {"spent", "collaboration_budget", "budget"}
    ledger = PrivacyLedger(path)
    epsilon, delta = ledger.collaboration_spent()
    ledger.close()
    assert epsilon == pytest.approx(2.0) and delta == pytest.approx(8e-6)


def test_gaussian_delta_is_budgeted_across_reapprovals(base_doc, make_engine, tmp_path):
    """(ε, δ) compose additively: the ledger sums δ as it sums ε.  A definition
    re-approved on the same workdir with a smaller δ budget refuses once Σδ would
    pass it, though ε is left."""
    workdir = tmp_path / "shared"
    world = World.random(600, 7)
    loose = _doc(
        base_doc,
        mechanism="gaussian",
        delta=9e-4,
        epsilon_per_query=0.1,
        budget_per_analyst=1.0,
        budget_per_collaboration=2.0,
    )
    first = make_engine(definition_from_dict(loose), workdir, ingest=False)
    world.ingest(first)
    assert [_ask(first, "brand", b) for b in BANDS[:2]] == ["released", "released"]
    status = first.budget("brand")
    assert status.delta_spent == pytest.approx(1.8e-3)
    assert status.delta_total == pytest.approx(9e-3)  # 10 queries of 9e-4
    first.close()
    tight = copy.deepcopy(loose)
    tight["name"] = "pooled_v2"
    tight["privacy"]["differential_privacy"]["delta"] = 1e-4  # 10 queries: δ 1e-3
    second = make_engine(definition_from_dict(tight), workdir, ingest=False)
    world.ingest(second)
    assert second.budget("brand").remaining == pytest.approx(0.8)
    refused = _ask(second, "brand", "high")
    assert refused.startswith("budget: brand has 0 of δ=0.001 left; this query needs 0.0001")
    # laplace spends no δ, and no δ budget is shown
    laplace = copy.deepcopy(loose)
    laplace["name"] = "pooled_v3"
    del laplace["privacy"]["differential_privacy"]["delta"]
    laplace["privacy"]["differential_privacy"]["mechanism"] = "laplace"
    second.close()
    third = make_engine(definition_from_dict(laplace), workdir, ingest=False)
    world.ingest(third)
    assert _ask(third, "brand", "high") == "released"
    assert third.budget("brand").delta_total == 0.0
    assert third.ledger.collaboration_spent()[1] == pytest.approx(1.8e-3)


@pytest.mark.parametrize(
    "dp, field, message",
    [
        (
            {"epsilon_per_query": 0.5, "budget_per_collaboration": 0.25},
            f"{DP}.budget_per_collaboration",
            "smaller than epsilon_per_query",
        ),
        (
            {"budget_per_analyst": 1.0, "budget_per_collaboration": 3.0},
            f"{DP}.budget_per_collaboration",
            "larger than the analysts' budgets added up (2 × 1): it would never apply",
        ),
        ({"budget_per_collaboration": 0}, f"{DP}.budget_per_collaboration", ""),
        ({"budget_per_collaboration": "1"}, f"{DP}.budget_per_collaboration", ""),
        ({"budget_per_collaboration": 101}, f"{DP}.budget_per_collaboration", ""),
    ],
)
def test_a_bad_collaboration_budget_is_a_typed_error(base_doc, dp, field, message):
    doc = _doc(base_doc, **{"epsilon_per_query": 0.25, **dp})
    with pytest.raises(DefinitionError) as err:
        definition_from_dict(doc)
    assert err.value.field == field and message in str(err.value)


def test_a_large_collaboration_budget_warns(base_doc):
    doc = _doc(base_doc, budget_per_analyst=1.0, budget_per_collaboration=2.0)
    (warning,) = definition_from_dict(doc).privacy.warnings()
    assert warning.startswith("differential-privacy budget_per_collaboration is 2, above 1")
    assert "correctly with probability up to 88 % " in warning
    doc = _doc(base_doc, budget_per_analyst=1.0, budget_per_collaboration=1.0)
    assert definition_from_dict(doc).privacy.warnings() == []


@pytest.mark.parametrize(
    "dp, together, figure",
    [
        ({"budget_per_analyst": 1.0}, "ε=2 together", "88 %"),  # the red team's (cr8 F2)
        ({"budget_per_analyst": 0.75}, "ε=1.5 together", "82 %"),
        ({"budget_per_analyst": 0.5}, None, None),  # 1 together: strong, silent
        ({"budget_per_analyst": 1.0, "budget_per_collaboration": 1.0}, None, None),
    ],
)
def test_analysts_pooling_without_a_collaboration_budget_are_warned(base_doc, dp, together, figure):
    """Red team cr8 F2: a DP section without budget_per_collaboration has no pooled
    cap, and two analysts at 1 each (ε 2 together) were approved without a word.  The
    warning now bounds what pooled analysts can spend: the cap, or the budgets added up."""
    from sgxcloud.cleanroom.definition import budget_summary

    doc = _doc(base_doc, epsilon_per_query=0.25, **dp)
    assert "budget_per_collaboration" not in base_doc["privacy"]["differential_privacy"]
    privacy = definition_from_dict(doc).privacy
    assert privacy.dp.analysts == 2
    if together is None:
        assert privacy.warnings() == []
        return
    (warning,) = privacy.warnings()
    assert "sets no budget_per_collaboration: the 2 analysts" in warning
    assert together in warning and f"correctly with probability up to {figure} " in warning
    assert f"{figure} by analysts pooling their answers (2 analysts" in budget_summary(privacy.dp)


def test_one_analyst_without_a_collaboration_budget_is_not_warned(base_doc):
    """Nobody to pool with: a budget of 1 for the only analyst stays silent."""
    doc = copy.deepcopy(base_doc)
    doc["privacy"]["differential_privacy"].update(enabled=True, budget_per_analyst=1.0)
    privacy = definition_from_dict(doc).privacy
    assert privacy.dp.analysts == 1 and privacy.warnings() == []
