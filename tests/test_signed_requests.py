"""The CAS and the clean-room coordinator verify signed requests by one set of
rules (sgxcloud.signed_requests): the same clock window to the second, the
same request-id form, the same record-keeping horizon, each over its own
wire format."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas.policy import public_key_id
from sgxcloud.cas.service import auth
from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.transport import request_auth
from sgxcloud.signed_requests import REQUEST_ID, sign, stale_from

T0 = 1_800_000_000
SKEW = 300
DEPLOYMENT = "d" * 32
AUDIENCE = "https://cas.test:443"
OWNER = ec.generate_private_key(ec.SECP256R1())
PARTY_KEY = generate_private_key()
DEFINITION = definition_from_dict(example_definition({"brand": encode_public_key(PARTY_KEY)}))
SIGNER = encode_public_key(generate_private_key())
HERE = {"definition_hash": DEFINITION.definition_hash(), "coordinator": SIGNER}


def cas_accepts(now: int, request_id: str | None = None, body: bytes = b"{}") -> auth.Caller:
    headers = auth.sign_request(
        OWNER,
        "PUT",
        "/v1/policies",
        b"{}",
        now=T0,
        deployment=DEPLOYMENT,
        audience=AUDIENCE,
        request_id=request_id,
    )
    return auth.authenticate(
        headers,
        "PUT",
        "/v1/policies",
        body,
        now=now,
        max_skew=SKEW,
        deployment=DEPLOYMENT,
        audiences=frozenset({AUDIENCE}),
    )


def coordinator_accepts(now: int, nonce: str | None = None, body: bytes = b"{}") -> str:
    headers = {
        k.lower(): v
        for k, v in request_auth.sign_request(
            PARTY_KEY, "brand", "POST", "/v1/queries", b"{}", now=T0, **HERE
        ).items()
    }
    if nonce is not None:  # signed over this nonce, as a client making it would
        headers["x-cleanroom-nonce"] = nonce
        payload = request_auth._payload(
            "POST", "/v1/queries", b"{}", "brand", nonce, T0, HERE["definition_hash"], SIGNER
        )
        headers["x-cleanroom-signature"] = base64.b64encode(sign(PARTY_KEY, payload)).decode()
    verifier = request_auth.RequestVerifier(DEFINITION, SIGNER)
    try:
        return verifier.verify(headers, "POST", "/v1/queries", body, now=now)
    finally:
        verifier.close()


@pytest.mark.parametrize("offset", [-SKEW, 0, SKEW])
def test_both_accept_a_request_within_the_clock_window(offset: int) -> None:
    assert cas_accepts(T0 + offset).spend_until == stale_from(T0, SKEW)
    assert coordinator_accepts(T0 + offset) == "brand"


@pytest.mark.parametrize("offset", [-SKEW - 1, SKEW + 1])
def test_both_refuse_a_request_a_second_outside_it(offset: int) -> None:
    assert request_auth.MAX_SKEW_S == SKEW  # the coordinator's window is fixed; the CAS default
    with pytest.raises(auth.AuthenticationError, match="from the service's clock"):
        cas_accepts(T0 + offset)
    with pytest.raises(request_auth.RequestRejected, match="too far from the coordinator"):
        coordinator_accepts(T0 + offset)


@pytest.mark.parametrize("request_id", ["a" * 32, "0" * 128])
def test_both_take_the_same_request_ids(request_id: str) -> None:
    assert REQUEST_ID.fullmatch(request_id)
    assert cas_accepts(T0, request_id).id
    assert coordinator_accepts(T0, request_id) == "brand"


@pytest.mark.parametrize("request_id", ["a" * 31, "0" * 129, "A" * 32, "g" * 32])
def test_both_refuse_the_same_request_ids(request_id: str) -> None:
    with pytest.raises(auth.AuthenticationError, match="valid x-sgxcloud-request-id"):
        cas_accepts(T0, request_id)
    with pytest.raises(request_auth.RequestRejected, match="malformed request nonce"):
        coordinator_accepts(T0, request_id)


def test_both_refuse_a_changed_body() -> None:
    with pytest.raises(auth.AuthenticationError, match="does not verify"):
        cas_accepts(T0, body=b"{ }")
    with pytest.raises(request_auth.RequestRejected, match="does not verify"):
        coordinator_accepts(T0, body=b"{ }")


def test_the_coordinator_keeps_a_used_nonce_exactly_until_its_request_is_stale() -> None:
    nonces = request_auth.UsedNonces(None)
    try:
        assert nonces.claim("brand", "a" * 32, T0, now=T0)
        assert not nonces.claim("brand", "a" * 32, T0, now=stale_from(T0, SKEW) - 1)
        # From stale_from on the clock check refuses it, so the record may go.
        assert nonces.claim("brand", "b" * 32, T0 + SKEW + 1, now=stale_from(T0, SKEW))
        assert nonces.count() == 1
    finally:
        nonces.close()


def test_both_services_sign_the_query_string_with_the_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A parameter added to a signed request is refused by both (the coordinator
    signed the path alone: it took one it was never signed with); a request
    signed with its query string is accepted by both, one without as before."""
    from fastapi.testclient import TestClient

    from sgxcloud.cas.service.app import create_app as cas_app
    from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig
    from sgxcloud.cleanroom.coordinator import create_app as coordinator_app
    from tests.cas import postgres as pg

    room = Coordinator(
        CoordinatorConfig(definition=DEFINITION, workdir=tmp_path / "room", nodes={}, simulate=True)
    )
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        party = TestClient(coordinator_app(room))

        def as_brand(path: str) -> dict[str, str]:
            return request_auth.sign_request(
                PARTY_KEY,
                "brand",
                "GET",
                path,
                definition_hash=room.definition_hash,
                coordinator=room.signer,
            )

        assert party.get("/v1/budget", headers=as_brand("/v1/budget")).status_code == 200
        added = party.get("/v1/budget?analysis=audience", headers=as_brand("/v1/budget"))
        assert added.status_code == 401, added.text
        assert "does not verify" in added.json()["error"]["message"]
        signed_with = as_brand("/v1/budget?analysis=audience")
        assert party.get("/v1/budget?analysis=audience", headers=signed_with).status_code == 200

        owner = pg.owner_key()
        service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
        cas = TestClient(cas_app(service, clock=lambda: pg.CLOCK, audiences=[pg.AUDIENCE]))

        def as_owner(path: str) -> dict[str, str]:
            return auth.sign_request(
                owner,
                "GET",
                path,
                b"",
                now=pg.CLOCK,
                audience=pg.AUDIENCE,
                deployment=service.deployment_id,
            )

        added = cas.get("/v1/policies/shop?x=1", headers=as_owner("/v1/policies/shop"))
        assert added.status_code == 401 and "does not verify" in added.json()["message"]
        assert (
            cas.get("/v1/policies/shop?x=1", headers=as_owner("/v1/policies/shop?x=1")).status_code
            == 200
        )
    finally:
        room.close()
        service.stop()


def test_a_record_of_used_requests_that_cannot_be_written_is_503_at_both(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """No signed request can be accepted until the record is back: 'retry later',
    not a bug (the coordinator answered 500 internal_error)."""
    import sqlite3

    from fastapi.testclient import TestClient

    from sgxcloud.cas.service.app import create_app as cas_app
    from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig
    from sgxcloud.cleanroom.coordinator import create_app as coordinator_app
    from tests.cas import postgres as pg

    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        owner = pg.owner_key()
        service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
        cas = TestClient(
            cas_app(service, clock=lambda: pg.CLOCK, audiences=[pg.AUDIENCE]),
            raise_server_exceptions=False,
        )
        headers = auth.sign_request(
            owner,
            "GET",
            "/v1/policies/shop",
            b"",
            now=pg.CLOCK,
            audience=pg.AUDIENCE,
            deployment=service.deployment_id,
        )
        with sqlite3.connect(tmp_path / "cas.db") as other:
            other.execute("DROP TABLE spent_signatures")
        answer = cas.get("/v1/policies/shop", headers=headers)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"
    finally:
        service.stop()

    room = Coordinator(
        CoordinatorConfig(definition=DEFINITION, workdir=tmp_path / "room", nodes={}, simulate=True)
    )
    try:
        party = TestClient(coordinator_app(room))
        headers = request_auth.sign_request(
            PARTY_KEY,
            "brand",
            "GET",
            "/v1/budget",
            definition_hash=room.definition_hash,
            coordinator=room.signer,
        )
        # The store's file damaged under the running coordinator (its table gone).
        with sqlite3.connect(room.requests.nonces.path) as other:
            other.execute("DROP TABLE used_nonce")
        answer = party.get("/v1/budget", headers=headers)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "unavailable"
    finally:
        room.close()
