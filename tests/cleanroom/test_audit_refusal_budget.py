"""Red team cr8 F3: any party could grow the audit log for free (a provider's queries
refused ``not_allowed`` were each recorded, ~280 a second), and every read of the log
held the coordinator's engine lock, so readers stalled every other party's queries.

Refusals are now recorded within a budget per party (the CAS's convention: a token
bucket, the count of those left out in the next recorded entry, ``unrecorded``), and
reading the log takes neither the engine lock nor the lock its writers take."""

from __future__ import annotations

import json
import threading

import pytest

from sgxcloud.cleanroom.audit import AuditLog
from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import QueryError, QueryRefused
from sgxcloud.cleanroom.local import prepare_example

REGIONS = ("north", "south", "east", "west", "central")


def _audience(flt=None):
    query = {"template": "audience_size", "analysis": "audience"}
    return {**query, "filter": flt} if flt else query


def test_a_partys_refusals_are_recorded_within_its_budget(make_definition, make_engine):
    engine = make_engine(
        make_definition(min_group_size=20), refusals_burst=3, refusals_per_second=0.0
    )
    before = len(engine.audit.entries())
    for _ in range(10):  # bank is a provider: it may not run analyses
        with pytest.raises(QueryRefused) as err:
            engine.run(_audience(), "bank")
        assert err.value.reason == "not_allowed"  # answered the same, recorded or not
    refusals = [e for e in engine.audit.entries()[before:] if e.event == "refusal"]
    assert len(engine.audit.entries()) - before == 3  # was 10
    assert [e.actor for e in refusals] == ["bank"] * 3
    assert not any("unrecorded" in e.data for e in refusals)

    # another party's budget is its own, and releases are never limited
    engine.run(_audience(), "brand")
    assert [e.event for e in engine.audit.entries()[-2:]] == ["query", "release"]
    with pytest.raises(QueryError):
        engine.run(_audience("no_such.column = 1"), "brand")
    assert engine.audit.entries()[-1].event == "refusal"

    engine._refusals.per_second = 1e9  # the bucket refills: the next one is recorded
    with pytest.raises(QueryRefused):
        engine.run(_audience(), "bank")
    last = engine.audit.entries()[-1]
    assert (last.event, last.actor, last.data["unrecorded"]) == ("refusal", "bank", 7)
    engine.audit.verify()


def test_a_refusal_after_the_draft_leaves_neither_query_nor_refusal_past_the_budget(
    make_definition, make_engine
):
    definition = make_definition(
        dp={"enabled": True, "epsilon_per_query": 1.0, "budget_per_analyst": 1.0},
        differencing_check=False,
    )
    engine = make_engine(definition, refusals_burst=1, refusals_per_second=0.0)
    engine.run(_audience(f"telecom.subscribers.region = '{REGIONS[0]}'"), "brand")
    before = len(engine.audit.entries())
    for region in REGIONS[1:]:
        with pytest.raises(QueryRefused) as err:
            engine.run(_audience(f"telecom.subscribers.region = '{region}'"), "brand")
        assert err.value.reason in ("budget", "collaboration_budget")
    added = engine.audit.entries()[before:]
    assert [e.event for e in added] == ["query", "refusal"]  # the first one only
    assert added[1].data["query_hash"] == added[0].data["query_hash"]
    engine.audit.verify()


def test_reading_the_log_does_not_wait_for_its_writers(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(600):
        log.append("refusal", "bank", {"reason": "not_allowed", "i": i})
    done = []
    with log._lock:  # what an append holds while it writes (under the engine lock)
        reader = threading.Thread(target=lambda: done.append(log.page(0, 1000)), daemon=True)
        reader.start()
        reader.join(5)
        assert done, "the read waited for a writer"
    entries, more = done[0]
    assert [e.seq for e in entries] == list(range(1, 601)) and not more
    lines, more = log.page_lines(300, 100)
    assert [json.loads(line)["seq"] for line in lines] == list(range(301, 401)) and more


@pytest.fixture
def coordinator(tmp_path):
    collab = prepare_example(tmp_path / "ex", people=50)
    coordinator = Coordinator(
        CoordinatorConfig(
            definition=load_definition(collab.definition),
            workdir=tmp_path / "c",
            nodes={},
            simulate=True,
        )
    )
    yield coordinator
    coordinator.close()


def test_audit_reads_and_cheap_refusals_do_not_take_the_engine_lock(coordinator):
    for _ in range(5):
        coordinator.engine.record_refusal("bank", QueryRefused("not_allowed", "no"))
    done = []

    def reader():
        done.append(coordinator.audit_page(0))
        done.append(coordinator.audit_entries())
        with pytest.raises(QueryError):  # malformed: refused before the engine
            coordinator.run_query({"template": "nope"}, "bank")
        done.append("refused")
        done.append(coordinator.budget("brand"))  # the ledger is SQLite: no engine lock

    with coordinator._engine_lock:  # a long query (or ingestion) holds it
        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        thread.join(5)
        assert len(done) == 4, "an audit or budget read, or a refusal, waited for the lock"
    (entries, more), whole, _, budget = done
    assert budget["analyst"] == "brand" and budget["spent"] == 0
    assert len(entries) == len(whole) >= 5 and not more
    now = coordinator.audit_entries()
    assert len(now) == len(whole) + 1 and now[-1]["data"]["reason"] == "invalid_query"
    body, count, more = coordinator.audit_page_json(0)  # the API's body: the stored lines
    assert json.loads(body)["entries"] == now and count == len(now) and not more
