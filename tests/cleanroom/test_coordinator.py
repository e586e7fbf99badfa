"""The coordinator over real processes: three nodes and a coordinator on
loopback, driven through the HTTPS API with the SDK; plus the ingestion
path in-process, where a file that goes bad half-way must leave nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from sgxcloud.cleanroom.approvals import approve, private_key_from_pem
from sgxcloud.cleanroom.coordinator import (
    PUBLIC_DATASET_FIELDS,
    Coordinator,
    CoordinatorConfig,
    openapi_document,
)
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import CleanroomError, QueryRefused, ResultSignatureError
from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cleanroom.node import NodeConfig, ProviderNode, Source
from sgxcloud.cleanroom.sdk import CleanroomClient, verify_bundle
from sgxcloud.cleanroom.transport import (
    PeerRefused,
    fetch_server_certificate,
    pinned_client_context,
)
from sgxcloud.cleanroom.transport.request_auth import RequestRejected, sign_request

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = {
    "template": "audience_size",
    "analysis": "audience",
    "filter": "bank.customers.premium_card = true AND retailer.customers.baby_buyer = true",
}


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("coord")
    # a budget for this module's many queries (the example's is 1: four of them)
    collab = prepare_example(workdir, people=3000, min_group_size=20, dp_budget=10.0)
    collab.start()
    yield collab
    collab.stop()


def key(collab, party):
    return private_key_from_pem((collab.workdir / "keys" / f"{party}.pem").read_bytes())


def client(collab, party="brand"):
    return CleanroomClient.connect(
        collab.url, load_definition(collab.definition), party, key(collab, party)
    )


def test_separate_processes_and_everything_ingested(running):
    pids = running.pids()
    assert set(pids) == {"node-bank", "node-telecom", "node-retailer", "coordinator"}
    assert len(set(pids.values())) == 4
    with client(running) as c:
        status = c.status()
    assert status["simulated"] is True
    assert status["approvals"]["complete"]
    assert {d["dataset"]: d["state"] for d in status["datasets"]} == {
        "bank.customers": "ingested",
        "telecom.subscribers": "ingested",
        "retailer.customers": "ingested",
        "retailer.exposures": "ingested",
        "retailer.purchases": "ingested",
    }


def test_query_result_verifies_and_recipients_can_fetch_it(running, tmp_path):
    with client(running) as brand:
        verified = brand.query(AUDIENCE)
    assert verified.simulated
    assert verified.result.value("people") > 0
    with client(running, "agency") as agency:
        again = agency.result(verified.result.result_id)
    assert again.result == verified.result
    with client(running, "bank") as bank, pytest.raises(CleanroomError, match="recipient"):
        bank.result(verified.result.result_id)
    # verify-result, the recipients' command, as a real process.
    bundle = tmp_path / "bundle.json"
    bundle.write_text(verified.to_json())
    cli = [
        sys.executable,
        "-m",
        "sgxcloud.cli.main",
        "cleanroom",
        "verify-result",
        str(bundle),
        "--definition",
        str(running.definition),
        "--json",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True
    doc = json.loads(bundle.read_text())
    doc["result"]["cells"][0]["value"] += 1
    bundle.write_text(json.dumps(doc))
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert done.returncode == 1
    assert "does not verify" in json.loads(done.stdout)["reason"]


def test_an_answer_for_another_query_or_result_is_refused(running):
    """Red team rt9 F5's question for the clean room: every answer names what it is for,
    and the SDK now compares.  A genuine, validly signed result bundle handed back for
    another result id, or for a query of another template or analysis (a confused or
    replaying server), was returned as the answer; now it is refused."""
    with client(running) as brand:
        genuine = brand.query(AUDIENCE)
        bundle = json.loads(genuine.to_json())
        brand._call = lambda method, path, body=None: bundle  # type: ignore[method-assign]
        assert brand.result(genuine.result.result_id).result == genuine.result
        with pytest.raises(ResultSignatureError, match="answered with result"):
            brand.result("another-result-id")
        with pytest.raises(ResultSignatureError, match="not the query sent"):
            brand.query({**AUDIENCE, "template": "overlap", "datasets": ["bank.customers"]})


def test_bundle_checks_definition_and_signer(running):
    with client(running) as brand:
        verified = brand.query(AUDIENCE)
    bundle = json.loads(verified.to_json())
    other = dict(
        bundle,
        signer_statement=dict(bundle["signer_statement"], signer="ed25519:" + "A" * 43 + "="),
    )
    with pytest.raises(PeerRefused, match="not bound"):
        verify_bundle(other, load_definition(running.definition))
    forged = json.loads(verified.to_json())
    forged["result"]["definition_hash"] = "0" * 64
    with pytest.raises(ResultSignatureError):
        verify_bundle(forged, load_definition(running.definition))


def test_refusals_come_back_typed(running):
    small = {
        "template": "audience_size",
        "analysis": "audience",
        "filter": "telecom.subscribers.region = 'north' AND bank.customers.income_band = "
        "'high' AND retailer.customers.loyalty_tier = 'gold' "
        "AND telecom.subscribers.device = 'other'",
    }
    with client(running) as brand:
        with pytest.raises(QueryRefused) as info:
            brand.query(small)
        assert info.value.reason == "suppressed"
        with pytest.raises(QueryRefused) as info:
            brand.query({"template": "campaign_lift", "analysis": "audience"})
    with client(running, "agency") as agency, pytest.raises(QueryRefused):
        agency.query(AUDIENCE)


PARTIES = ("bank", "telecom", "retailer", "brand", "agency")
DATASETS = {
    "bank.customers",
    "telecom.subscribers",
    "retailer.customers",
    "retailer.exposures",
    "retailer.purchases",
}


def _numbers(value):
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


def _views(collab):
    views = {}
    for party in PARTIES:
        with client(collab, party) as c:
            views[party] = {d["dataset"]: d for d in c.status()["datasets"]}
    return views


def test_status_gives_exact_counts_to_a_datasets_provider_only(running):
    """Red team attack-cas3, finding 2: every party (analysts and recipients too)
    read every provider's exact row and identifier counts in GET /v1/status.  Now a
    provider reads its own datasets in full; everyone else — other providers,
    analysts, recipients — a dataset's name, state and ingestion time only."""
    try:
        from test_privacy_disclosure import schema
    except ImportError:  # tests/cleanroom became a package
        from tests.cleanroom.test_privacy_disclosure import schema

    status_schema = schema("status")
    for party in PARTIES:
        with client(running, party) as c:
            status_schema.validate(c.status())
    views = _views(running)
    for party, datasets in views.items():
        assert set(datasets) == DATASETS
        for ref, d in datasets.items():
            assert d["state"] == "ingested" and d["ingested_at"] and d["in_use"] is True
            if ref.startswith(party + "."):  # its own: everything, as before
                report = d["identifier_report"]
                assert d["rows"] > 0 and report["rows_out"] == d["rows"]
                assert report["rows_in"] >= d["rows"] and d["bytes"] > 0
            else:
                assert set(d) == set(PUBLIC_DATASET_FIELDS), (party, d)
                assert _numbers(d) == [], (party, d)
    assert not any(ref.startswith(("brand.", "agency.")) for ref in views["brand"])
    # the audit log, which every party reads, names ingestions without counts
    with client(running, "agency") as agency:
        ingests = [e for e in agency.audit() if e["event"].startswith("ingest")]
    assert len(ingests) >= len(DATASETS)
    for entry in ingests:
        assert _numbers(entry["data"]) == [], entry


def test_a_one_person_refresh_is_seen_by_its_provider_only(running):
    """t_refresh_status.py: the bank drops one customer and refreshes; the brand
    (an analyst) read the exact difference, 1.  Now its view changes only in the
    ingestion time; the bank's own view has the new count."""
    import shutil

    import pyarrow.parquet as pq

    path = Path(running.nodes["bank"]["customers"])
    before = _views(running)
    shutil.copy(path, path.with_suffix(".orig"))
    try:
        table = pq.read_table(path)
        pq.write_table(table.slice(1), path)
        with client(running, "bank") as bank:
            mine = {d["dataset"]: d for d in bank.refresh()["datasets"]}
        assert set(mine) == {"bank.customers"}  # a provider's answer: its own only
        after = _views(running)
        rows = before["bank"]["bank.customers"]["rows"]
        assert after["bank"]["bank.customers"]["rows"] == rows - 1
        for party in ("telecom", "retailer", "brand", "agency"):
            old, new = before[party]["bank.customers"], after[party]["bank.customers"]
            assert new["ingested_at"] > old["ingested_at"]
            assert {**new, "ingested_at": None} == {**old, "ingested_at": None}
    finally:
        shutil.move(path.with_suffix(".orig"), path)
        with client(running, "bank") as bank:
            assert bank.refresh()["datasets"][0]["state"] == "ingested"


def test_a_recipient_checks_its_result_against_the_audit_log(running):
    """The log's digest is keyed by a key inside the result: the agency (a
    recipient) fetches the brand's result and finds it logged; the bank, which
    may not fetch it, reads the same entry and only an hmac-sha256 digest."""
    from sgxcloud.cleanroom.errors import ResultDigestError

    with client(running) as brand:
        verified = brand.query(AUDIENCE)
    with client(running, "agency") as agency:
        fetched = agency.result(verified.result.result_id)
        entry = agency.check_logged(fetched)
    assert entry["event"] == "release" and entry["data"]["result_id"] == fetched.result.result_id
    assert entry["data"]["result_digest"].startswith("hmac-sha256:")
    with client(running, "bank") as bank:
        seen = [
            e
            for e in bank.audit()
            if e["event"] in ("release", "cache_hit")
            and e["data"]["result_id"] == fetched.result.result_id
        ]
        assert seen and all("cells" not in json.dumps(e) for e in seen)
        assert fetched.result.digest_key not in json.dumps(bank.audit())
    import dataclasses

    other = dataclasses.replace(
        fetched,
        result=dataclasses.replace(
            fetched.result, result_id="0" * 8 + fetched.result.result_id[8:]
        ),
    )
    with client(running, "agency") as agency, pytest.raises(ResultDigestError, match="no release"):
        agency.check_logged(other)


def test_requests_must_be_signed_fresh_and_by_the_party(running):
    definition = load_definition(running.definition)
    host, port = running.url.removeprefix("https://").split(":")
    cert = fetch_server_certificate(host, int(port))
    ctx = pinned_client_context(cert.public_bytes(serialization.Encoding.PEM))
    with httpx.Client(base_url=running.url, verify=ctx) as http:
        assert http.get("/v1/status").status_code == 401
        here = signed_for(http)
        headers = sign_request(key(running, "brand"), "brand", "GET", "/v1/status", **here)
        assert http.get("/v1/status", headers=headers).status_code == 200
        replay = http.get("/v1/status", headers=headers)
        assert replay.status_code == 401 and "replayed" in replay.json()["error"]["message"]
        wrong = sign_request(key(running, "bank"), "brand", "GET", "/v1/status", **here)
        assert http.get("/v1/status", headers=wrong).status_code == 401
        body = json.dumps(AUDIENCE).encode()
        signed = sign_request(key(running, "brand"), "brand", "POST", "/v1/queries", body, **here)
        tampered = body.replace(b"true", b"false", 1)
        answer = http.post("/v1/queries", content=tampered, headers=signed)
        assert answer.status_code == 401
        assert http.get("/v1/health").json()["simulated"] is True
    assert definition.definition_hash() == http_definition_hash(running, ctx)


def test_long_and_deeply_nested_text_filters_are_clear_400s(running):
    """Red-team 08/12 on the real coordinator: 5,000 NOTs were a 500 (RecursionError);
    repeated terms were read in full (under the engine lock) before being counted."""
    host, port = running.url.removeprefix("https://").split(":")
    cert = fetch_server_certificate(host, int(port))
    ctx = pinned_client_context(cert.public_bytes(serialization.Encoding.PEM))
    same = "bank.customers.premium_card = true"
    cases = [
        ("NOT " * 5000 + same, "longer than 16384 characters"),
        ("NOT " * 3000 + same, "nested deeper than 8"),
        (" AND ".join([same] * 400), "more than 64 filter nodes"),
    ]
    with httpx.Client(base_url=running.url, verify=ctx, timeout=30) as http:
        here = signed_for(http)
        for text, message in cases:
            body = json.dumps(
                {"template": "audience_size", "analysis": "audience", "filter": text}
            ).encode()
            headers = sign_request(
                key(running, "brand"), "brand", "POST", "/v1/queries", body, **here
            )
            headers["Content-Type"] = "application/json"
            started = time.monotonic()
            answer = http.post("/v1/queries", content=body, headers=headers)
            assert answer.status_code == 400, answer.text[:200]
            assert message in answer.json()["error"]["message"]
            assert time.monotonic() - started < 5
    with client(running) as brand:  # still serving, and the refusals are audited
        assert brand.query(AUDIENCE).result
        refusals = [
            e
            for e in brand.audit()
            if e["event"] == "refusal" and "query: filter:" in e["data"].get("message", "")
        ]
    assert len(refusals) >= 3


def signed_for(http: httpx.Client) -> dict[str, str]:
    """What a signed request to this coordinator must name (from /v1/health)."""
    health = http.get("/v1/health").json()
    return {"definition_hash": health["definition_hash"], "coordinator": health["coordinator"]}


def http_definition_hash(running, ctx):
    with httpx.Client(base_url=running.url, verify=ctx) as http:
        return http.get("/v1/definition").json()["definition_hash"]


def test_audit_log_and_no_identifiers_anywhere(running):
    try:
        from test_trust import assert_absent, identifier_strings
    except ImportError:  # tests/cleanroom became a package
        from tests.cleanroom.test_trust import assert_absent, identifier_strings

    with client(running) as brand:
        lift = brand.query(
            {
                "template": "campaign_lift",
                "analysis": "lift",
                "breakdown": "telecom.subscribers.region",
            }
        )
        entries = brand.audit()
        status = brand.status()
    events = {e["event"] for e in entries}
    assert {"ingest", "query", "release"} <= events
    outputs = [json.dumps(entries), json.dumps(status), lift.to_json()]
    outputs += [p.read_text(errors="replace") for p in (running.workdir / "logs").glob("*.log")]
    identifiers = identifier_strings(running)
    assert len(identifiers) > 1000
    for text in outputs:
        assert_absent(identifiers, text)


def test_openapi_document_is_committed_and_current():
    committed = json.loads((ROOT / "docs" / "cleanroom" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document()))


# -- ingestion in-process: atomic per dataset ------------------------------------------


def test_file_going_bad_half_way_leaves_nothing_and_can_be_fixed(tmp_path):
    collab = prepare_example(tmp_path / "ex", people=600, min_group_size=5)
    definition = load_definition(collab.definition)
    approvals = [approve(definition, p, key(collab, p)) for p in definition.providers]
    csv_path = tmp_path / "customers.csv"
    header = "customer_id,email,phone,premium_card,income_band\n"
    rows = 100_000  # enough for several 1 MiB DATA frames to arrive before the bad row
    good = "".join(f"C{i:05d},p{i}@example.org,,true,low\n" for i in range(rows))
    csv_path.write_text(header + good + "C99999,late@example.org,,perhaps,low\n")
    node = ProviderNode(
        NodeConfig(
            provider="bank",
            definition=definition,
            sources={"customers": Source.parse(str(csv_path))},
            approvals=approvals,
            simulate=True,
            allow_simulated=True,
            batch_rows=1000,
        )
    )
    node.start()
    coordinator = Coordinator(
        CoordinatorConfig(
            definition=definition,
            workdir=tmp_path / "coordinator",
            nodes={"bank": node.address},
            approvals=approvals,
            simulate=True,
            allow_simulated=True,
            batch_rows=1000,
        )
    )
    try:
        seen = []
        coordinator.ingest_all(lambda kind, info: seen.append((kind, info.get("bytes"))))
        state = coordinator.status()["bank.customers"]
        assert state["state"] == "rejected"
        assert "premium_card" in state["reason"]
        assert any(kind == "receive" for kind, _ in seen)  # batches did arrive first...
        assert "bank.customers" not in coordinator.engine.datasets()  # ...and were discarded
        assert not any((tmp_path / "coordinator" / "staging").iterdir())
        rejected = [e for e in coordinator.engine.audit.entries() if e.event == "ingest_rejected"]
        assert rejected and rejected[-1].data["stage"] == "node"
        # the node's message (the file, the line, the column) is for the bank only:
        # every party reads the audit log and /v1/status
        logged = json.dumps(rejected[-1].data)
        assert "premium_card" not in logged and str(csv_path) not in logged
        public = {d["dataset"]: d for d in coordinator.status_for("brand")}["bank.customers"]
        assert public["state"] == "rejected" and "premium_card" not in public["reason"]
        assert str(csv_path) not in json.dumps(public)
        own = {d["dataset"]: d for d in coordinator.status_for("bank")}["bank.customers"]
        assert "premium_card" in own["reason"]
        csv_path.write_text(header + good)
        coordinator.ingest_provider("bank")
        assert coordinator.status()["bank.customers"]["state"] == "ingested"
        assert coordinator.engine.datasets()["bank.customers"] == rows
    finally:
        coordinator.close()
        node.stop()


def test_unreachable_node_is_reported_and_stale_staging_dropped(tmp_path):
    collab = prepare_example(tmp_path / "ex", people=100)
    definition = load_definition(collab.definition)
    stale = tmp_path / "c" / "staging" / "bank.customers.arrows"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half of a stream from a run that was killed")
    coordinator = Coordinator(
        CoordinatorConfig(
            definition=definition,
            workdir=tmp_path / "c",
            nodes={"bank": ("127.0.0.1", 9)},
            simulate=True,
        )
    )
    try:
        assert not stale.exists()
        coordinator.ingest_all()
        own = coordinator.status()["bank.customers"]
        assert own["state"] == "unavailable"
        # a session that could not be opened says nothing about the data: every
        # party reads why (without the provider's count of rows held)
        public = {d["dataset"]: d for d in coordinator.status_for("brand")}["bank.customers"]
        assert public["reason"].startswith(own["reason"].split("; ")[0])
        assert public["reason"].endswith("no data of it is held") and "rows" not in public
    finally:
        coordinator.close()


def test_unsigned_sdk_party_rejected(running):
    with client(running, "brand") as brand:
        brand.party = "agency"  # signs with brand's key but claims to be the agency
        with pytest.raises(RequestRejected):
            brand.status()


def test_metrics_are_not_on_the_api_port_and_only_on_loopback(running, tmp_path):
    """Red team: GET /metrics on the API port answered any network client with each
    analyst's budget spent and each dataset's rows and ingestion times."""
    host, port = running.url.removeprefix("https://").split(":")
    cert = fetch_server_certificate(host, int(port))
    ctx = pinned_client_context(cert.public_bytes(serialization.Encoding.PEM))
    with httpx.Client(base_url=running.url, verify=ctx) as http:
        answer = http.get("/metrics")
        assert answer.status_code in (401, 404)
        assert "sgxcloud_cleanroom" not in answer.text
    # A metrics listener others could reach is refused, in one line, before ingestion.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "sgxcloud.cli.main",
            "cleanroom",
            "coordinator",
            "--definition",
            str(running.definition),
            "--approvals",
            str(running.approvals[0]),
            "--node",
            "bank=127.0.0.1:9",
            "--workdir",
            str(tmp_path / "w"),
            "--simulate",
            "--allow-simulated",
            "--metrics-listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert run.returncode != 0
    assert "loopback only" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "w" / "engine.duckdb").exists()


def test_metrics_are_aggregates_with_no_query_content(running):
    """GET /metrics (the operator's view): outcomes by reason code, budgets per
    analyst, rows per dataset — and nothing of the queries themselves."""
    from tests.metrics.promtool import check_metrics, samples

    assert running.metrics_url.startswith("http://127.0.0.1:")

    def scrape(_c):
        answer = httpx.get(running.metrics_url)
        assert answer.status_code == 200
        check_metrics(answer.content)
        return answer.text, samples(answer.content)

    marker = {**AUDIENCE, "filter": AUDIENCE["filter"] + " AND bank.customers.premium_card = true"}
    with client(running) as brand, client(running, "agency") as agency:
        _, before = scrape(brand)
        brand.query(marker)
        with pytest.raises(CleanroomError):
            agency.query(AUDIENCE)
        text, after = scrape(brand)
        budget = brand.budget()

    def delta(name, labels=()):
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("sgxcloud_cleanroom_queries_released_total") == 1
    assert delta("sgxcloud_cleanroom_queries_refused_total", (("reason", "not_allowed"),)) == 1
    assert after[("sgxcloud_cleanroom_dataset_rows", (("dataset", "bank.customers"),))] > 0
    assert (
        after[
            (
                "sgxcloud_cleanroom_dataset_state",
                (("dataset", "bank.customers"), ("state", "ingested")),
            )
        ]
        == 1
    )
    spent = after[("sgxcloud_cleanroom_dp_budget_spent", (("analyst", "brand"),))]
    assert spent == budget["spent"]
    # Labels and values say nothing of the queries: no filter text, no attribute names.
    assert "premium_card" not in text and "baby_buyer" not in text and "audience" not in text
