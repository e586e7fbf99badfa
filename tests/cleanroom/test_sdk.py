"""SDK pieces that need no running coordinator: refusals before any trust."""

from __future__ import annotations

import httpx
import pytest

from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import CleanroomError, QueryError, QueryRefused
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.sdk import CleanroomClient, _json_or_error, verify_bundle
from sgxcloud.cleanroom.transport import PeerRefused, SimulatedAttester
from sgxcloud.cleanroom.transport.request_auth import (
    MAX_SKEW_S,
    RequestRejected,
    RequestVerifier,
    sign_request,
)
from sgxcloud.cleanroom.transport.signer import signer_statement
from sgxcloud.cleanroom.transport.trust import simulated_identity

KEYS = {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand", "agency")}


def definition(**kw):
    return definition_from_dict(
        example_definition({p: encode_public_key(k) for p, k in KEYS.items()}, **kw)
    )


def test_plain_http_refused():
    with pytest.raises(CleanroomError, match="https"):
        CleanroomClient.connect("http://127.0.0.1:1", definition(), "brand", KEYS["brand"])


@pytest.mark.parametrize(
    "status, body, error",
    [
        (
            403,
            {"error": {"code": "refused_budget", "message": "query refused (budget): spent"}},
            QueryRefused,
        ),
        (401, {"error": {"code": "unauthenticated", "message": "replayed"}}, RequestRejected),
        (400, {"error": {"code": "bad_request", "message": "query: filter: bad"}}, QueryError),
        (404, {"error": {"code": "not_found", "message": "no such result"}}, CleanroomError),
    ],
)
def test_http_errors_become_typed(status, body, error):
    with pytest.raises(error):
        _json_or_error(httpx.Response(status, json=body))


def test_bundle_from_simulated_signer_refused_when_hardware_required():
    hardware = definition(allow_simulated=False)
    statement = signer_statement(
        SimulatedAttester(simulated_identity(hardware, "coordinator")),
        "ed25519:" + "A" * 43 + "=",
        hardware.definition_hash(),
    )
    with pytest.raises(PeerRefused, match="SIMULATED"):
        verify_bundle({"result": {}, "signer_statement": statement}, hardware)
    with pytest.raises(CleanroomError, match="not a result bundle"):
        verify_bundle("[]", hardware)


SIGNER = encode_public_key(generate_private_key())
"""Stands for the coordinator's result-signing key, the id requests name."""


def test_request_signatures():
    d = definition()
    verifier = RequestVerifier(d, SIGNER)
    here = {"definition_hash": d.definition_hash(), "coordinator": SIGNER}
    headers = {
        k.lower(): v
        for k, v in sign_request(
            KEYS["brand"], "brand", "POST", "/v1/queries", b"{}", now=1000, **here
        ).items()
    }
    assert verifier.verify(headers, "POST", "/v1/queries", b"{}", now=1000) == "brand"
    with pytest.raises(RequestRejected, match="replayed"):
        verifier.verify(headers, "POST", "/v1/queries", b"{}", now=1000)
    fresh = {
        k.lower(): v
        for k, v in sign_request(
            KEYS["brand"], "brand", "POST", "/v1/queries", b"{}", now=1000, **here
        ).items()
    }
    with pytest.raises(RequestRejected, match="clock"):
        verifier.verify(fresh, "POST", "/v1/queries", b"{}", now=1000 + MAX_SKEW_S + 1)
    with pytest.raises(RequestRejected, match="does not verify"):
        verifier.verify(fresh, "POST", "/v1/other", b"{}", now=1000)
    stranger = {**fresh, "x-cleanroom-party": "mallory"}
    with pytest.raises(RequestRejected, match="not a party"):
        verifier.verify(stranger, "POST", "/v1/queries", b"{}", now=1000)
