"""A signed request is for one collaboration at one coordinator, and nowhere else.

A party may use one key in several collaborations, and one definition may run
at more than one coordinator (each with its own workdir, hence its own
used-nonce store).  Requests are recorded as the real SDK sends them and
replayed byte for byte at the other coordinator, over HTTPS on loopback to
real coordinator processes:

* ``A``  — the example collaboration (nodes and coordinator);
* ``A2`` — a second coordinator running the *same* definition, with a workdir
  of its own, pulling from A's nodes;
* ``B``  — another collaboration (another name, so another definition hash)
  whose parties use the same keys as A's, with nodes and a coordinator of its own.

Before requests named their collaboration and coordinator, B answered a query
captured at A with the analyst's result (and charged the analyst's budget at
B), and A2 answered a captured status request.
"""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from sgxcloud.cleanroom.approvals import approve, private_key_from_pem
from sgxcloud.cleanroom.definition import definition_from_dict, load_definition
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example
from sgxcloud.cleanroom.sdk import CleanroomClient
from sgxcloud.cleanroom.transport import fetch_server_certificate, pinned_client_context

QUERY = {
    "template": "audience_size",
    "analysis": "audience",
    "filter": "bank.customers.premium_card = true",
}


def _key(collab: LocalCollaboration, party: str):
    return private_key_from_pem((collab.workdir / "keys" / f"{party}.pem").read_bytes())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("binding")
    a = prepare_example(root / "a", people=1000, min_group_size=5, dp=True, dp_budget=5.0)
    started: list[LocalCollaboration] = []
    try:
        a.start()
        started.append(a)
        # The same definition at a second coordinator with its own workdir.
        a2 = LocalCollaboration(
            workdir=root / "a2", definition=a.definition, approvals=a.approvals, nodes=a.nodes
        )
        (root / "a2").mkdir()
        a2.addresses = dict(a.addresses)
        a2.start_coordinator()
        started.append(a2)
        # Another collaboration of the same parties with the same keys.
        doc = yaml.safe_load(a.definition.read_text())
        doc["name"] = "baby_campaign_2026_autumn"
        other = definition_from_dict(doc)
        (root / "b" / "approvals").mkdir(parents=True)
        (root / "b" / "definition.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        approvals = []
        for provider in other.providers:
            path = root / "b" / "approvals" / f"{provider}.json"
            path.write_text(json.dumps(approve(other, provider, _key(a, provider)).to_dict()))
            approvals.append(path)
        b = LocalCollaboration(
            workdir=root / "b",
            definition=root / "b" / "definition.yaml",
            approvals=approvals,
            nodes=a.nodes,
        )
        b.start()
        started.append(b)
        yield {"a": a, "a2": a2, "b": b}
    finally:
        for collab in reversed(started):
            collab.stop()


def connect(collab: LocalCollaboration, party: str = "brand", key_from=None) -> CleanroomClient:
    return CleanroomClient.connect(
        collab.url, load_definition(collab.definition), party, _key(key_from or collab, party)
    )


def recording(client: CleanroomClient) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Every request the SDK sends, as sent: method, path, headers, body."""
    sent: list[tuple[str, str, dict[str, str], bytes]] = []

    def record(request: httpx.Request) -> None:
        sent.append((request.method, request.url.path, dict(request.headers), request.read()))

    client._http.event_hooks["request"].append(record)
    return sent


def replay(collab: LocalCollaboration, captured) -> httpx.Response:
    method, path, headers, body = captured
    host, port = collab.url.removeprefix("https://").split(":")
    cert = fetch_server_certificate(host, int(port))
    ctx = pinned_client_context(cert.public_bytes(serialization.Encoding.PEM))
    keep = {
        k: v
        for k, v in headers.items()
        if k.lower().startswith("x-cleanroom-") or k.lower() == "content-type"
    }
    with httpx.Client(base_url=collab.url, verify=ctx, timeout=120) as http:
        return http.request(method, path, headers=keep, content=body)


def spent(collab: LocalCollaboration, key_from: LocalCollaboration) -> float:
    with connect(collab, key_from=key_from) as client:
        return float(client.budget()["spent"])


def test_a_query_captured_at_one_collaboration_is_refused_by_another_with_the_same_key(world):
    """The regression: B (another collaboration, same brand key) used to run a
    query the brand sent to A, hand the result to whoever replayed it, and
    charge the brand's budget at B."""
    a, b = world["a"], world["b"]
    before = spent(b, key_from=a)
    with connect(a) as client:
        sent = recording(client)
        client.query(QUERY)
    (query,) = [s for s in sent if s[1] == "/v1/queries"]
    answer = replay(b, query)
    assert answer.status_code == 401, answer.text[:300]
    error = answer.json()["error"]
    assert error["code"] == "unauthenticated"
    assert "another collaboration" in error["message"]
    assert "result" not in answer.json()
    assert spent(b, key_from=a) == before  # nothing charged at B


def test_a_request_captured_at_one_coordinator_is_refused_by_another_running_the_same_definition(
    world,
):
    """Same definition hash, two coordinators (two workdirs, two nonce stores):
    the definition alone cannot tell them apart; the coordinator's attested
    result-signing key does."""
    a, a2 = world["a"], world["a2"]
    with connect(a) as client:
        sent = recording(client)
        client.status()
    (status,) = [s for s in sent if s[1] == "/v1/status"]
    answer = replay(a2, status)
    assert answer.status_code == 401, answer.text[:300]
    assert "another coordinator" in answer.json()["error"]["message"]


def test_the_refusal_elsewhere_spends_nothing_the_request_still_works_once_where_meant(world):
    """A request signed for A but kept from A (the hook below stops it after
    recording it): B and A2 refuse it without recording its nonce, and A
    still accepts it, once."""
    a, a2, b = world["a"], world["a2"], world["b"]
    with connect(a) as client:
        sent = recording(client)
        client._http.event_hooks["request"].append(_cancel)
        with pytest.raises(_NotDelivered):
            client.budget()
    (undelivered,) = sent
    assert replay(b, undelivered).status_code == 401
    assert replay(a2, undelivered).status_code == 401
    first = replay(a, undelivered)
    assert first.status_code == 200, first.text[:300]
    assert first.json()["analyst"] == "brand"
    again = replay(a, undelivered)
    assert again.status_code == 401 and "replayed" in again.json()["error"]["message"]


class _NotDelivered(Exception):
    pass


def _cancel(_request: httpx.Request) -> None:
    raise _NotDelivered("not delivered (the test keeps the signed request instead)")


def test_a_request_signed_in_the_older_form_is_refused_naming_the_upgrade(world):
    """A client of the previous release signs ``sgxcloud.cleanroom.request/v1``
    (no collaboration, no coordinator): refused on its headers, with the fix."""
    import base64
    import hashlib
    import os
    import time

    from sgxcloud.cleanroom.definition import canonical_json

    a = world["a"]
    body = json.dumps(QUERY).encode()
    nonce, issued_at = os.urandom(16).hex(), int(time.time())
    payload = canonical_json(
        {
            "purpose": "sgxcloud.cleanroom.request/v1",
            "method": "POST",
            "path": "/v1/queries",
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "party": "brand",
            "nonce": nonce,
            "issued_at": issued_at,
        }
    )
    headers = {
        "x-cleanroom-party": "brand",
        "x-cleanroom-nonce": nonce,
        "x-cleanroom-issued-at": str(issued_at),
        "x-cleanroom-signature": base64.b64encode(_key(a, "brand").sign(payload)).decode(),
        "content-type": "application/json",
    }
    answer = replay(a, ("POST", "/v1/queries", headers, body))
    assert answer.status_code == 401, answer.text[:300]
    message = answer.json()["error"]["message"]
    assert "older form" in message and "upgrade" in message
    assert "sgxcloud.cleanroom.request/v1" in message


def test_the_cli_and_sdk_sign_for_the_collaboration_and_coordinator_they_attested(world):
    """The SDK (which the CLI and the console use) names what it attested."""
    a = world["a"]
    with connect(a) as client:
        sent = recording(client)
        client.status()
        signer = client.attestation["signer"]
    headers = {k.lower(): v for k, v in sent[0][2].items()}
    assert headers["x-cleanroom-definition"] == load_definition(a.definition).definition_hash()
    assert headers["x-cleanroom-coordinator"] == signer


# -- the verifier on its own: what is refused, and that it is refused on the headers ----


def _verifier_world():
    from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
    from sgxcloud.cleanroom.local import example_definition
    from sgxcloud.cleanroom.transport.request_auth import RequestVerifier

    keys = {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand", "agency")}
    definition = definition_from_dict(
        example_definition({p: encode_public_key(k) for p, k in keys.items()})
    )
    here = encode_public_key(generate_private_key())
    return keys, definition, here, RequestVerifier(definition, here)


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def test_the_verifier_refuses_other_collaborations_and_coordinators_on_the_headers_alone():
    from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
    from sgxcloud.cleanroom.transport.request_auth import RequestRejected, sign_request

    keys, definition, here, verifier = _verifier_world()
    elsewhere = encode_public_key(generate_private_key())
    ours = definition.definition_hash()
    cases = [
        ({"definition_hash": "ab" * 32, "coordinator": here}, "another collaboration"),
        ({"definition_hash": ours, "coordinator": elsewhere}, "another coordinator"),
    ]
    for names, message in cases:
        headers = _lower(sign_request(keys["brand"], "brand", "GET", "/v1/status", **names))
        with pytest.raises(RequestRejected, match=message):
            verifier.check_headers(headers)  # before any body is read
        with pytest.raises(RequestRejected, match=message):
            verifier.verify(headers, "GET", "/v1/status", b"")
    assert verifier.nonces.count() == 0  # refusals record nothing
    # Headers edited to name this coordinator do not help: the signature covers
    # the coordinator it was made for, and is checked over this one's values.
    moved = _lower(
        sign_request(
            keys["brand"], "brand", "GET", "/v1/status", definition_hash=ours, coordinator=elsewhere
        )
    )
    moved["x-cleanroom-coordinator"] = here
    with pytest.raises(RequestRejected, match="does not verify"):
        verifier.verify(moved, "GET", "/v1/status", b"")
    good = _lower(
        sign_request(
            keys["brand"], "brand", "GET", "/v1/status", definition_hash=ours, coordinator=here
        )
    )
    assert verifier.verify(good, "GET", "/v1/status", b"") == "brand"
    verifier.close()


def test_the_verifier_refuses_the_older_form_and_half_named_requests_on_the_headers():
    from sgxcloud.cleanroom.transport.request_auth import RequestRejected, sign_request

    keys, definition, here, verifier = _verifier_world()
    full = _lower(
        sign_request(
            keys["brand"],
            "brand",
            "GET",
            "/v1/status",
            definition_hash=definition.definition_hash(),
            coordinator=here,
        )
    )
    old = {
        k: v
        for k, v in full.items()
        if k not in ("x-cleanroom-definition", "x-cleanroom-coordinator")
    }
    with pytest.raises(
        RequestRejected,
        match=r"older form \(sgxcloud.cleanroom.request/v1\).*"
        r"upgrade sgxcloud",
    ):
        verifier.check_headers(old)
    half = {k: v for k, v in full.items() if k != "x-cleanroom-coordinator"}
    with pytest.raises(RequestRejected, match="not both"):
        verifier.check_headers(half)
    with pytest.raises(ValueError, match="64 lower-case hex"):
        sign_request(
            keys["brand"], "brand", "GET", "/v1/status", definition_hash="x", coordinator=here
        )
    verifier.close()


def test_malformed_names_are_refused_without_being_echoed():
    from sgxcloud.cleanroom.transport.request_auth import RequestRejected, sign_request

    keys, definition, here, verifier = _verifier_world()
    good = _lower(
        sign_request(
            keys["brand"],
            "brand",
            "GET",
            "/v1/status",
            definition_hash=definition.definition_hash(),
            coordinator=here,
        )
    )
    for header, value, message in (
        ("x-cleanroom-definition", "<script>" * 20, "not a definition hash"),
        ("x-cleanroom-coordinator", "<script>" * 20, "not a coordinator's signing key"),
    ):
        with pytest.raises(RequestRejected, match=message) as info:
            verifier.check_headers({**good, header: value})
        assert "<script>" not in str(info.value)
    with pytest.raises(ValueError, match="coordinator's signer"):
        sign_request(
            keys["brand"],
            "brand",
            "GET",
            "/v1/status",
            definition_hash=definition.definition_hash(),
            coordinator="ed25519:x",
        )
    verifier.close()
