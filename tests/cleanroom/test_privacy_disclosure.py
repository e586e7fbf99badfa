"""What a party reads that is not its own: red team attack-cas3.

Finding 1: the audit log's ``result_digest`` was an unkeyed SHA-256 of the
result's content, every field of which but the figures is public or in the log,
so a party that was not a recipient recovered audience sizes by trying each
value (< 0.5 s).  Finding 2: exact dataset sizes reached every party through
the audit log's ``ingest`` entries (and ``/v1/status``, tested live in
test_coordinator.py).  These tests fail on the code before the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from sgxcloud.cleanroom.definition import canonical_json
from sgxcloud.cleanroom.errors import IngestError, ResultDigestError, ResultSignatureError
from sgxcloud.cleanroom.results import (
    RESULT_FORMAT,
    RESULT_FORMAT_V1,
    Result,
    check_result_digest,
    result_digest,
    sign_result,
    verify_result,
)

DP = {"enabled": True, "epsilon_per_query": 0.5, "budget_per_analyst": 10}
QUERIES = [
    {"template": "audience_size", "analysis": "audience"},
    {
        "template": "audience_size",
        "analysis": "audience",
        "filter": "bank.customers.premium_card = true",
    },
    {
        "template": "overlap",
        "analysis": "reach",
        "datasets": ["bank.customers", "telecom.subscribers"],
    },
    {"template": "campaign_lift", "analysis": "lift", "breakdown": "bank.customers.premium_card"},
]


@pytest.fixture
def dp_engine(make_definition, make_engine):
    return make_engine(make_definition(dp=DP, min_group_size=20, differencing_check=False))


def _guesses(content: bytes) -> set[str]:
    """Every digest a party without the result's key can compute from a guessed
    content: the unkeyed SHA-256 the red team used, and keyed forms with the
    keys it could guess (none, the empty one)."""
    return {
        "sha256:" + hashlib.sha256(content).hexdigest(),
        "hmac-sha256:" + hashlib.sha256(content).hexdigest(),
        "hmac-sha256:" + hmac.new(b"", content, hashlib.sha256).hexdigest(),
        "hmac-sha256:" + hmac.new(bytes(32), content, hashlib.sha256).hexdigest(),
    }


def _public_content(result: Result) -> dict[str, Any]:
    """The result's content without what a digest leaves out (signer, signature)
    and without the key only recipients get."""
    doc = result.to_dict()
    for name in ("signer", "signature", "digest_key"):
        doc.pop(name, None)
    return doc


def _red_team_candidates(definition, entries, release, values) -> dict[bytes, int]:
    """t_digest_bruteforce.py: rebuild an audience result from the definition and
    the audit log alone, for each guessed figure, release time (the entry's time
    minus up to 400 ms) and result format; content -> the figure guessed."""
    queries = {e.data["query_hash"]: e.data["query"] for e in entries if e.event == "query"}
    earlier = [
        e
        for e in entries
        if e.seq < release.seq
        and e.actor == release.actor
        and (
            e.event == "release" or (e.event == "refusal" and e.data.get("reason") == "suppressed")
        )
    ]
    dp = definition.privacy.dp
    remaining = round(dp.budget_per_analyst - dp.epsilon_per_query * (len(earlier) + 1), 10)
    data = release.data
    at = datetime.fromisoformat(release.at)
    out = {}
    for fmt in (RESULT_FORMAT, RESULT_FORMAT_V1):
        base = {
            "result_id": data["result_id"],
            "collaboration": definition.name,
            "definition_hash": definition.definition_hash(),
            "analysis": data["analysis"],
            "template": "audience_size",
            "query": queries[data["query_hash"]],
            "query_hash": data["query_hash"],
            "recipients": data["recipients"],
            "format": fmt,
            "privacy": {
                "min_group_size": definition.privacy.min_group_size,
                "differencing_check": False,
                "differential_privacy": {
                    "mechanism": dp.mechanism,
                    "epsilon": dp.epsilon_per_query,
                    "delta": dp.delta,
                    "epsilon_per_measure": dp.epsilon_per_query,
                },
                "budget_remaining_at_release": remaining,
            },
        }
        for ms in range(0, 400):
            base["released_at"] = (at - timedelta(milliseconds=ms)).isoformat(
                timespec="milliseconds"
            )
            for value in values:
                cells = [
                    {
                        "metric": "people",
                        "value": value,
                        "dims": {},
                        "suppressed": False,
                        "noisy": True,
                    }
                ]
                out[canonical_json({**base, "cells": cells})] = value
                if fmt == RESULT_FORMAT:  # the key's field present but guessed empty
                    out[canonical_json({**base, "cells": cells, "digest_key": ""})] = value
    return out


def test_a_non_recipient_brute_forcing_the_audit_digest_finds_nothing(dp_engine):
    """The red team's brute force, over a candidate range that holds the true
    figure and a candidate set that provably holds the true content: no
    candidate's digest is what the log records (the old code's was found)."""
    results = [dp_engine.run(q, "brand") for q in QUERIES[:2]]
    entries = dp_engine.audit.entries()  # what telecom, no recipient, reads
    releases = [e for e in entries if e.event == "release"]
    assert len(releases) == 2
    for result, release in zip(results, releases, strict=True):
        truth = result.value("people")
        candidates = _red_team_candidates(
            dp_engine.definition, entries, release, range(max(0, truth - 25), truth + 26)
        )
        # control: the rebuild is exact — the true content (figures and all, less
        # the key) is among the candidates, so only the key stands in the way
        assert canonical_json(_public_content(result)) in candidates
        logged = release.data["result_digest"]
        found = [v for content, v in candidates.items() if logged in _guesses(content)]
        assert found == [], f"recovered people = {found} from the audit digest"


def test_no_digest_in_the_log_is_a_hash_of_what_others_could_rebuild(dp_engine):
    """Audience, overlap and lift (and a cache hit): given every field of the result
    but the key — more than a non-recipient has — no guessable digest matches."""
    results = [dp_engine.run(q, "brand") for q in QUERIES]
    dp_engine.run(QUERIES[0], "brand")  # a cache hit: same result, same digest
    by_id = {r.result_id: r for r in results}
    logged = [e for e in dp_engine.audit.entries() if e.event in ("release", "cache_hit")]
    assert [e.event for e in logged] == ["release"] * 4 + ["cache_hit"]
    for entry in logged:
        result = by_id[entry.data["result_id"]]
        assert entry.data["result_digest"].startswith("hmac-sha256:")
        for variant in (
            _public_content(result),
            {**_public_content(result), "digest_key": ""},
            {**_public_content(result), "format": RESULT_FORMAT_V1},
        ):
            assert entry.data["result_digest"] not in _guesses(canonical_json(variant))


def test_each_result_has_its_own_random_digest_key(dp_engine):
    first = dp_engine.run(QUERIES[0], "brand")
    second = dp_engine.run(QUERIES[1], "brand")
    again = dp_engine.run(QUERIES[0], "brand")  # cached: the same result, the same key
    assert len(bytes.fromhex(first.digest_key)) == 32
    assert first.digest_key != second.digest_key
    assert again.digest_key == first.digest_key
    assert result_digest(again) == result_digest(first)


def test_recipients_check_the_result_they_hold_against_the_log(dp_engine):
    result = dp_engine.run(QUERIES[2], "brand")
    dp_engine.run(QUERIES[2], "brand")
    logged = [e for e in dp_engine.audit.entries() if e.event in ("release", "cache_hit")]
    for entry in logged:
        check_result_digest(result, entry.data["result_digest"])
    # the fetched copy (JSON round trip, re-signed by a new enclave key) still matches
    copy = Result.from_json(result.to_json())
    from sgxcloud.cleanroom.approvals import generate_private_key

    resigned = sign_result(dataclasses.replace(copy, signature=""), generate_private_key())
    check_result_digest(resigned, logged[0].data["result_digest"])
    # any other figure does not; nor does a forged key (the key is signed with the rest)
    cell = result.cells[0]
    edited = dataclasses.replace(
        result, cells=(dataclasses.replace(cell, value=cell.value + 1), *result.cells[1:])
    )
    with pytest.raises(ResultDigestError, match="does not match"):
        check_result_digest(edited, logged[0].data["result_digest"])
    with pytest.raises(ResultSignatureError):
        verify_result(dataclasses.replace(result, digest_key="00" * 32), result.signer)


def test_older_unkeyed_digests_and_v1_results_are_refused_with_a_reason(dp_engine):
    result = dp_engine.run(QUERIES[0], "brand")
    legacy = "sha256:" + hashlib.sha256(canonical_json(_public_content(result))).hexdigest()
    with pytest.raises(ResultDigestError, match=r"unkeyed sha256: digest.*older coordinator"):
        check_result_digest(result, legacy)
    with pytest.raises(ResultDigestError, match="unknown result digest format"):
        check_result_digest(result, "md5:00")
    # a v1 result (saved before the change) still verifies by its signature...
    key = dp_engine._signing_key
    v1 = sign_result(
        dataclasses.replace(result, format=RESULT_FORMAT_V1, digest_key="", signature=""), key
    )
    assert "digest_key" not in json.loads(v1.to_json())
    assert verify_result(v1.to_json(), dp_engine.public_key) == v1
    # ...but has no key to check a digest with
    with pytest.raises(ResultDigestError, match="format v1"):
        result_digest(v1)
    # a v2 result without its key is not a valid result, even correctly signed
    keyless = sign_result(dataclasses.replace(result, digest_key="", signature=""), key)
    with pytest.raises(ResultDigestError, match="digest_key is not 32 bytes"):
        verify_result(keyless, dp_engine.public_key)


def test_a_stored_v1_answer_is_upgraded_before_its_cache_hit_is_logged(dp_engine):
    """An answer stored by an older coordinator (v1, no key) is given a key when it
    is next repeated, and stored back: no cache-hit entry carries an unkeyed digest."""
    result = dp_engine.run(QUERIES[0], "brand")
    v1 = sign_result(
        dataclasses.replace(result, format=RESULT_FORMAT_V1, digest_key="", signature=""),
        dp_engine._signing_key,
    )
    dp_engine.ledger.replace_release(result.query_hash, v1.to_json())
    again = dp_engine.run(QUERIES[0], "brand")
    assert again.format == RESULT_FORMAT and len(bytes.fromhex(again.digest_key)) == 32
    assert again.cells == result.cells and again.result_id == result.result_id
    verify_result(again, dp_engine.public_key)
    hit = dp_engine.audit.entries()[-1]
    assert hit.event == "cache_hit"
    check_result_digest(again, hit.data["result_digest"])
    assert dp_engine.run(QUERIES[0], "brand") == again  # stored back: the same from now on


# -- finding 2: exact counts in the audit log ----------------------------------------


def _numbers(value: Any) -> list[int | float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def test_audit_entries_carry_no_exact_counts_of_anyones_data(
    make_definition, make_engine, prepared
):
    """Ingestions, refreshes and rejected ingestions: every party reads the log, so
    no entry names a number of rows (ingested, replaced, seen, bad) or a row
    number; the old code logged ``rows`` and ``replaced_rows`` of every ingestion."""
    engine = make_engine(make_definition(dp=DP, min_group_size=20))
    sizes = {ref: batch.num_rows for ref, batch in prepared.items()}
    engine.ingest("bank", "customers", prepared["bank.customers"].slice(1))  # one person less
    bad = prepared["bank.customers"].to_pylist()
    bad[7]["income_band"] = "enormous"
    with pytest.raises(IngestError) as err:  # the provider gets the details...
        engine.ingest(
            "bank", "customers", pa.Table.from_pylist(bad, schema=prepared["bank.customers"].schema)
        )
    assert err.value.report["problems"]  # ...counts and row numbers, in the error
    ingests = [e for e in engine.audit.entries() if e.event.startswith("ingest")]
    assert [e.event for e in ingests] == ["ingest"] * 6 + ["ingest_rejected"]
    for entry in ingests:
        assert _numbers(entry.data) == [], entry.data
        assert "income_band" not in json.dumps(entry.data) and "7" not in json.dumps(entry.data)
    assert ingests[0].data == {"dataset": "bank.customers"}
    assert ingests[-1].data["stage"] == "engine"
    everything = json.dumps([e.data for e in engine.audit.entries()])
    for n in {*sizes.values(), sizes["bank.customers"] - 1}:
        assert f": {n}," not in everything and f": {n}}}" not in everything


# -- the published formats ----------------------------------------------------------------


def schema(name: str):
    from pathlib import Path

    from jsonschema import Draft202012Validator

    path = Path(__file__).resolve().parents[2] / "docs" / "cleanroom" / f"{name}.schema.json"
    doc = json.loads(path.read_text())
    Draft202012Validator.check_schema(doc)
    return Draft202012Validator(doc)


def test_results_and_audit_entries_match_their_published_schemas(dp_engine, prepared):
    results = [dp_engine.run(q, "brand") for q in QUERIES]
    dp_engine.run(QUERIES[0], "brand")
    bad = prepared["bank.customers"].to_pylist()
    bad[0]["income_band"] = "enormous"
    with pytest.raises(IngestError):
        dp_engine.ingest(
            "bank", "customers", pa.Table.from_pylist(bad, schema=prepared["bank.customers"].schema)
        )
    result_schema, entry_schema = schema("result"), schema("audit-entry")
    for result in results:
        result_schema.validate(json.loads(result.to_json()))
    v1 = dataclasses.replace(results[0], format=RESULT_FORMAT_V1, digest_key="")
    result_schema.validate(json.loads(v1.to_json()))
    assert not result_schema.is_valid({**json.loads(v1.to_json()), "digest_key": "00" * 32})
    entries = [dataclasses.asdict(e) for e in dp_engine.audit.entries()]
    assert {e["event"] for e in entries} == {
        "ingest",
        "ingest_rejected",
        "query",
        "release",
        "cache_hit",
    }
    for entry in entries:
        entry_schema.validate(entry)
    old = {**entries[0], "data": {"dataset": "bank.customers", "rows": 10, "replaced_rows": 0}}
    assert not entry_schema.is_valid(old)  # the older entries' counts are not in the format
