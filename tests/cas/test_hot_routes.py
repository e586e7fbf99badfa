"""The attestation's two requests on their lean route answer as documented.

``POST /v1/nonces`` and ``POST /v1/attest`` are served on a
:class:`sgxcloud.web.routing.DirectRoute`: the body is validated from bytes
once and the answer is JSON built by the handler, not validated again by
FastAPI.  So the answers are checked here against the response models the
OpenAPI document names, and bad input must still be a 400 ``bad-request``
naming the field (never 422, never FastAPI's own error shape).
"""

from __future__ import annotations

import base64
import json

import pytest
from fastapi import FastAPI, Query
from fastapi.testclient import TestClient
from starlette.responses import JSONResponse

from sgxcloud.cas import protocol
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.service import schemas
from sgxcloud.web.routing import DirectRoute

try:
    from tests.cas import postgres as pg
    from tests.cas.test_service import Api
except ImportError:  # run from tests/cas
    import postgres as pg  # type: ignore[no-redef]
    from test_service import Api  # type: ignore[no-redef]


@pytest.fixture
def api(tmp_path):  # type: ignore[no-untyped-def]
    api = Api(f"sqlite:///{tmp_path / 'cas.db'}")
    yield api
    api.service.stop()


def _attest_body(api: Api, identity=None) -> tuple[dict, object, str]:  # type: ignore[no-untyped-def]
    key = protocol.new_enclave_key()
    answer = api.client.post("/v1/nonces")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    nonce = schemas.NonceResponse.model_validate_json(answer.content).nonce
    evidence = make_simulated_evidence(
        identity or pg.simulated_identity(),
        protocol.report_data_for(key.public_key(), bytes.fromhex(nonce)),
    )
    body = {
        "policy": "shop",
        "service": "web",
        "nonce": nonce,
        "public_key": pg.public_pem(key),
        "evidence": base64.b64encode(evidence.raw).decode(),
    }
    return body, key, nonce


def test_answers_are_the_documented_models(api: Api) -> None:
    owner = pg.owner_key()
    assert api.apply(owner, pg.policy_text(owner)).status_code == 200
    body, key, nonce = _attest_body(api)
    answer = api.client.post("/v1/attest", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    # extra="forbid": no field more or less than documented, each of its type.
    accepted = schemas.AttestResponse.model_validate_json(answer.content)
    assert (accepted.policy, accepted.service, accepted.nonce) == ("shop", "web", nonce)
    assert accepted.hpke_suite == protocol.HPKE_SUITE_NAME and accepted.simulated is True
    config = protocol.open_configuration(
        base64.b64decode(accepted.sealed_configuration), key, bytes.fromhex(nonce)
    )
    assert config.env["API_TOKEN"]
    # The replay is rejected as every rejection is: 403, code 'rejected', the audit entry.
    replay = api.client.post("/v1/attest", json=body)
    assert replay.status_code == 403
    refused = schemas.ErrorBody.model_validate_json(replay.content)
    assert (refused.error, refused.code) == ("attestation-rejected", "rejected")
    assert refused.audit_ref and refused.audit_ref != accepted.audit_ref
    assert "audit_seq" not in replay.json() and "audit_seq" not in answer.json()


@pytest.mark.parametrize(
    ("content", "content_type", "field"),
    [
        (b'{"policy": "p"}', "application/json", "service"),  # the first field missing
        (
            json.dumps(
                {
                    "policy": "Not A Name",
                    "service": "web",
                    "nonce": "00",
                    "public_key": "k",
                    "evidence": "e",
                }
            ).encode(),
            "application/json",
            "policy",
        ),
        (
            json.dumps(
                {
                    "policy": "p",
                    "service": "web",
                    "nonce": "00",
                    "public_key": "k",
                    "evidence": "e",
                    "more": 1,
                }
            ).encode(),
            "application/json",
            "more",
        ),
        (
            json.dumps(
                {"policy": "p", "service": "web", "nonce": 7, "public_key": "k", "evidence": "e"}
            ).encode(),
            "application/vnd.x+json",
            "nonce",
        ),
        (b"not json", "application/json", None),
        (b"", "application/json", None),
        (b"[]", "application/json", None),
        (b"[" * 40_000 + b"]" * 40_000, "application/json", None),  # deep nesting
        (b'{"policy": "p"}', "text/plain", None),  # JSON only as application/json, as before
        (b'{"policy": "p"}', None, None),
    ],
    ids=[
        "missing",
        "pattern",
        "extra",
        "type",
        "not-json",
        "empty",
        "array",
        "deep",
        "text-plain",
        "no-type",
    ],
)
def test_bad_attest_bodies_are_400_naming_the_field(
    api: Api, content: bytes, content_type: str | None, field: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = api.client.post("/v1/attest", content=content, headers=headers)
    assert answer.status_code == 400, answer.text
    body = schemas.ErrorBody.model_validate_json(answer.content)
    assert body.error == "bad-request" and body.message
    if field is not None:
        assert body.field == field, body


def test_a_direct_route_takes_only_a_json_body_and_answers_a_response() -> None:
    app = FastAPI()
    with pytest.raises(TypeError, match="at most one JSON body"):
        app.router.add_api_route(
            "/q", _with_query, methods=["GET"], route_class_override=DirectRoute
        )
    app.router.add_api_route("/ok", _answers, methods=["POST"], route_class_override=DirectRoute)
    app.router.add_api_route(
        "/bad", _no_response, methods=["POST"], route_class_override=DirectRoute
    )
    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/ok").json() == {"ok": True}
    assert client.post("/bad").status_code == 500


async def _with_query(n: int = Query(1)) -> JSONResponse:
    return JSONResponse({"n": n})


def _answers() -> JSONResponse:  # sync: run in the thread pool
    return JSONResponse({"ok": True})


async def _no_response() -> dict:
    return {"ok": True}
