"""The DP budget cannot be reset by re-approving the collaboration under another
name, or the analyst under another party name (red-team attack 14): spending is
the analyst's across the workdir, recognised by party name or public key."""

from __future__ import annotations

import copy
import json
import sqlite3

import pytest

from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import QueryRefused
from sgxcloud.cleanroom.privacy import PrivacyLedger

from .world import World

BANDS = ("low", "middle", "high")


def _doc(base_doc, name: str, budget: float = 1.0) -> dict:
    doc = copy.deepcopy(base_doc)
    doc["name"] = name
    doc["privacy"]["differential_privacy"].update(
        enabled=True, epsilon_per_query=0.5, budget_per_analyst=budget
    )
    return doc


def _ask(engine, analyst: str, band: str) -> str:
    query = {
        "template": "audience_size",
        "analysis": "audience",
        "filter": {"attribute": "bank.customers.income_band", "op": "=", "value": band},
    }
    try:
        engine.run(query, analyst)
    except QueryRefused as exc:
        return exc.reason
    return "released"


def test_renamed_collaboration_keeps_the_budget(base_doc, make_engine, tmp_path):
    workdir = tmp_path / "shared"
    world = World.random(600, 3)
    first = make_engine(
        definition_from_dict(_doc(base_doc, "baby_campaign_2026")), workdir, ingest=False
    )
    world.ingest(first)
    assert [_ask(first, "brand", b) for b in BANDS[:2]] == ["released", "released"]
    assert first.budget("brand").remaining == pytest.approx(0.0)
    first.close()
    # the same data, re-approved under a new name: the budget is still spent
    renamed = make_engine(
        definition_from_dict(_doc(base_doc, "baby_campaign_2026_v2")), workdir, ingest=False
    )
    world.ingest(renamed)
    assert renamed.budget("brand").spent == pytest.approx(1.0)
    assert _ask(renamed, "brand", "high") == "budget"
    renamed.close()
    # and the analyst renamed too (same key): still the same analyst
    doc = json.loads(json.dumps(_doc(base_doc, "v3")).replace('"brand"', '"brand_eu"'))
    again = make_engine(definition_from_dict(doc), workdir, ingest=False)
    world.ingest(again)
    assert again.budget("brand_eu").spent == pytest.approx(1.0)
    assert _ask(again, "brand_eu", "high") == "budget"


def test_a_ledger_from_before_analyst_keys_is_read(tmp_path):
    """A ledger written by the previous version (no analyst_key column) opens, and
    its spending counts for the analyst whatever the collaboration name."""
    path = tmp_path / "privacy.sqlite"
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TABLE dp_spend (id INTEGER PRIMARY KEY, collaboration VARCHAR(64) "
        "NOT NULL, analyst VARCHAR(64) NOT NULL, query_key VARCHAR(64) NOT NULL, "
        "epsilon FLOAT NOT NULL, delta FLOAT NOT NULL, at VARCHAR(40) NOT NULL)"
    )
    con.execute("INSERT INTO dp_spend VALUES (1, 'old_name', 'brand', 'q', 0.75, 0, 'now')")
    con.commit()
    con.close()
    ledger = PrivacyLedger(path)
    assert ledger.spent("brand", "ed25519:x") == pytest.approx(0.75)
    with pytest.raises(QueryRefused):
        ledger.spend("new_name", "brand", "q2", 0.5, budget=1.0, analyst_key="ed25519:x")
    assert ledger.spend(
        "new_name", "brand", "q3", 0.25, budget=1.0, analyst_key="ed25519:x"
    ) == pytest.approx(0.0)
    ledger.close()
