"""Text a requester chooses never reaches an audit entry at length or as control characters.

Red team rt9 finding F2: simulated evidence's refusal named the sender's unexpected
members, so a keyless stranger wrote ~48 KB of its own text (markup, escapes) into the
audit entry of any policy it named.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sgxcloud.bounded import MAX_TEXT, bounded, printable
from sgxcloud.cas import protocol
from sgxcloud.cas.evidence.model import SIMULATED_FORMAT, SIMULATED_WARNING
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.app import create_app

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

INJECTED = "\x1b[32mOK: accepted\x1b[0m [/x] [bold red]x[/bold red] \u202eevil\r\n" + "A" * 48_000


@pytest.fixture
def cas(tmp_path: Path):  # type: ignore[no-untyped-def]
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    client = TestClient(
        create_app(service, clock=lambda: pg.CLOCK, audiences=[pg.AUDIENCE]),
        raise_server_exceptions=False,
    )
    yield service, client
    service.stop()


def _signed_get(service, client, key, path):  # type: ignore[no-untyped-def]
    headers = auth.sign_request(
        key,
        "GET",
        path,
        b"",
        now=pg.CLOCK,
        audience=pg.AUDIENCE,
        deployment=service.deployment_id,
    )
    return client.get(path, headers=headers)


def _stranger_attests(client, policy: str, document: dict) -> int:  # type: ignore[no-untyped-def]
    nonce = client.post("/v1/nonces").json()["nonce"]
    answer = client.post(
        "/v1/attest",
        json={
            "policy": policy,
            "service": "web",
            "nonce": nonce,
            "public_key": pg.public_pem(protocol.new_enclave_key()),
            "evidence": base64.b64encode(json.dumps(document).encode()).decode(),
        },
    )
    return answer.status_code


def test_a_strangers_member_names_are_counted_not_recorded(cas) -> None:  # type: ignore[no-untyped-def]
    service, client = cas
    owner = pg.owner_key()
    headers_key = owner
    text = pg.policy_text(owner, name="shop")
    body = json.dumps({"policy": text}).encode()
    put = auth.sign_request(
        headers_key,
        "PUT",
        "/v1/policies",
        body,
        now=pg.CLOCK,
        audience=pg.AUDIENCE,
        deployment=service.deployment_id,
    )
    assert (
        client.put(
            "/v1/policies", content=body, headers={**put, "content-type": "application/json"}
        ).status_code
        == 200
    )
    document = {"format": SIMULATED_FORMAT, "WARNING": SIMULATED_WARNING, INJECTED: 1}
    assert _stranger_attests(client, "shop", document) == 403
    entry = _signed_get(service, client, owner, "/v1/audit?limit=1000").json()[-1]
    assert entry["outcome"] == "rejected"
    stored = json.dumps(entry["detail"])
    assert "AAAA" not in stored and "[/x]" not in stored and "evil" not in stored
    assert "1 unexpected" in stored
    assert len(stored) < 1000  # was 48,473 bytes


def test_whatever_a_caller_records_is_printable_and_bounded() -> None:
    detail = bounded({"reasons": [INJECTED, "fine"], "many": list(range(1000)), "n": 3})
    first = detail["reasons"][0]
    assert len(first) < MAX_TEXT + 40 and first.endswith("more characters)")
    assert "\x1b" not in first and "\u202e" not in first and "\n" not in first
    assert first.startswith("\\x1b[32mOK")  # shown escaped, not interpreted
    assert detail["reasons"][1] == "fine" and detail["n"] == 3
    assert len(detail["many"]) == 301 and detail["many"][-1] == "… (700 more)"
    assert printable("tab\there\x7f\x9b") == "tab\\there\\x7f\\x9b"
