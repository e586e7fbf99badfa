"""The CAS's metrics: attestations by verdict and reason code, latency, policies,
collateral age and expiry — valid for promtool, served apart from the API, and
nothing owners keep private (not even whether a policy exists)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from sgxcloud.cas import protocol
from sgxcloud.cas.collateral import FileCollateral, collateral_window
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.metrics import CasMetrics, ObservedCollateral, serve_metrics
from sgxcloud.cas.service.server import measured_app
from tests.metrics.promtool import check_metrics, samples

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]


def _attest(client: TestClient, *, policy: str = "shop", bind: bool = True) -> int:
    key = protocol.new_enclave_key()
    nonce = client.post("/v1/nonces").json()["nonce"]
    other = protocol.new_enclave_key()
    evidence = make_simulated_evidence(
        pg.simulated_identity(),
        protocol.report_data_for((key if bind else other).public_key(), bytes.fromhex(nonce)),
    )
    answer = client.post(
        "/v1/attest",
        json={
            "policy": policy,
            "service": "web",
            "nonce": nonce,
            "public_key": pg.public_pem(key),
            "evidence": base64.b64encode(evidence.raw).decode(),
        },
    )
    return answer.status_code


def _scrape(metrics: CasMetrics) -> httpx.Response:
    """GET /metrics from the metrics listener (loopback, a free port), as Prometheus does."""
    server = serve_metrics(metrics, "127.0.0.1", 0)
    try:
        return httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10)
    finally:
        server.shutdown()


def test_metrics_count_attestations_by_verdict_and_code(tmp_path: Path) -> None:
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        metrics = CasMetrics()
        client = TestClient(
            measured_app(service, metrics, audiences=[pg.AUDIENCE]), raise_server_exceptions=False
        )
        owner = pg.owner_key()
        secret_policy_name = "shop"
        body = json.dumps({"policy": pg.policy_text(owner)}).encode()
        # The app runs on the real clock: sign with it.
        headers = auth.sign_request(
            owner,
            "PUT",
            "/v1/policies",
            body,
            now=int(time.time()),
            audience=pg.AUDIENCE,
            deployment=service.deployment_id,
        )
        headers["content-type"] = "application/json"
        assert client.put("/v1/policies", content=body, headers=headers).status_code == 200

        assert _attest(client) == 200
        assert _attest(client) == 200
        assert _attest(client, bind=False) == 403
        assert _attest(client, policy="nope") == 403
        # Red team a02: an unbound request naming a policy that does not exist
        # counts as 'binding' too, so the counter is no existence oracle.
        assert _attest(client, policy="nope", bind=False) == 403

        assert client.get("/metrics").status_code == 404  # never on the API's port
        answer = _scrape(metrics)
        assert answer.status_code == 200
        check_metrics(answer.content)
        got = samples(answer.content)
        count = "sgxcloud_cas_attestations_total"
        assert got[(count, (("reason", "none"), ("verdict", "accepted")))] == 2
        assert got[(count, (("reason", "binding"), ("verdict", "rejected")))] == 2
        assert got[(count, (("reason", "policy"), ("verdict", "rejected")))] == 1
        histogram = "sgxcloud_cas_attestation_duration_seconds_count"
        assert got[(histogram, (("verdict", "accepted"),))] == 2
        assert got[("sgxcloud_cas_policies", ())] == 1
        assert got[("sgxcloud_cas_nonces_issued_total", ())] == 5
        assert got[("sgxcloud_cas_ready", ())] == 1
        # Owners' business stays theirs: no policy names, services or reason sentences.
        text_out = answer.text
        assert f'"{secret_policy_name}"' not in text_out and "web" not in text_out
        assert "nope" not in text_out
    finally:
        service.stop()


def test_collateral_age_and_expiry_are_those_of_the_collateral_used(
    sgx_collateral_path: Path, tmp_path: Path
) -> None:
    metrics = CasMetrics()
    source = ObservedCollateral(FileCollateral(sgx_collateral_path), metrics)
    collateral = source.get(b"", 0)
    window = collateral_window(collateral)
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        measured_app(service, metrics)
        payload = _scrape(metrics).content
    finally:
        service.stop()
    check_metrics(payload)
    got = samples(payload)
    assert got[("sgxcloud_cas_collateral_issue_timestamp_seconds", ())] == window.not_before
    assert got[("sgxcloud_cas_collateral_expiry_timestamp_seconds", ())] == window.not_after
    assert got[("sgxcloud_cas_collateral_age_seconds", ())] > 0
