"""The coordinator's HTTP API answers every error as it is documented
(docs/cleanroom/api.md, "Errors"): status, ``{"error": {"code", "message"}}``.

In process, over a real :class:`Coordinator` (simulated, no node running).
These pin what the split of the coordinator into service / app / server
must keep: they pass on the single module before it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

import sgxcloud.cleanroom.coordinator as package
from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig, create_app
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import CleanroomError
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.transport.request_auth import sign_request

KEYS = {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand", "agency")}
DEFINITION = definition_from_dict(
    example_definition({p: encode_public_key(k) for p, k in KEYS.items()})
)
AUDIENCE = json.dumps({"template": "audience_size", "analysis": "audience"}).encode()
MAX_QUERY_BYTES = 2048


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    # The bank's node is declared (so it may ask for ingestion) but never reached.
    c = Coordinator(
        CoordinatorConfig(
            definition=DEFINITION,
            workdir=tmp_path_factory.mktemp("coordinator"),
            nodes={"bank": ("127.0.0.1", 9)},
            simulate=True,
        )
    )
    yield c
    c.close()


@pytest.fixture(scope="module")
def client(coordinator: Coordinator) -> TestClient:
    return TestClient(create_app(coordinator, max_query_bytes=MAX_QUERY_BYTES))


def signed(
    coordinator: Coordinator, party: str, method: str, path: str, body: bytes = b""
) -> dict[str, str]:
    return sign_request(
        KEYS[party],
        party,
        method,
        path,
        body,
        definition_hash=coordinator.definition_hash,
        coordinator=coordinator.signer,
    )


ERRORS = [
    # party, method, path, body, status, code, words of the message
    (
        "brand",
        "POST",
        "/v1/queries",
        b"not json",
        400,
        "bad_request",
        "body must be a JSON query document (body is not a JSON document)",
    ),
    (
        "brand",
        "POST",
        "/v1/queries",
        b'{"template": "nope"}',
        400,
        "bad_request",
        "query: template: must be one of",
    ),
    (
        "agency",
        "POST",
        "/v1/queries",
        AUDIENCE,
        403,
        "refused_not_allowed",
        "query refused (not_allowed): agency may not run analysis audience",
    ),
    (
        "brand",
        "POST",
        "/v1/queries",
        AUDIENCE,
        403,
        "refused_suppressed",
        "query refused (suppressed)",
    ),
    (
        "brand",
        "POST",
        "/v1/ingest",
        b"",
        403,
        "not_allowed",
        "brand runs no node known to this coordinator",
    ),
    (
        "bank",
        "POST",
        "/v1/ingest",
        b'{"datasets": 5}',
        400,
        "bad_request",
        'body must be {"datasets": ["NAME", ...]} or empty',
    ),
    (
        "bank",
        "POST",
        "/v1/ingest",
        b"[1]",
        400,
        "bad_request",
        'body must be {"datasets": ["NAME", ...]} or empty',
    ),
    (
        "bank",
        "POST",
        "/v1/ingest",
        b'{"datasets": ["nope"]}',
        400,
        "bad_request",
        "bank has no dataset nope in the definition; its datasets: customers",
    ),
    ("brand", "GET", "/v1/results/0123-abcd", b"", 404, "not_found", "no such result"),
    ("brand", "POST", "/v1/queries", b" " * (MAX_QUERY_BYTES + 1), 413, "too_large", ""),
]


@pytest.mark.parametrize(
    ("party", "method", "path", "body", "status", "code", "words"),
    ERRORS,
    ids=[f"{e[1]} {e[2]} {e[5]}" for e in ERRORS],
)
def test_each_error_has_its_documented_status_code_and_shape(
    coordinator, client, party, method, path, body, status, code, words
) -> None:
    response = client.request(
        method, path, content=body, headers=signed(coordinator, party, method, path, body)
    )
    assert response.status_code == status
    assert list(response.json()) == ["error"]
    error = response.json()["error"]
    assert sorted(error) == ["code", "message"]
    assert error["code"] == code and words in error["message"]


def test_a_request_without_a_signature_is_refused_before_its_handler(client) -> None:
    response = client.get("/v1/status")
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "unauthenticated",
            "message": "request is not signed (X-Cleanroom-* headers missing)",
        }
    }


def test_a_library_error_of_no_narrower_kind_is_a_400_error(
    coordinator, client, monkeypatch
) -> None:
    def failing(*_args):
        raise CleanroomError("the engine cannot run it")

    monkeypatch.setattr(coordinator, "run_query", failing)
    response = client.post(
        "/v1/queries",
        content=AUDIENCE,
        headers=signed(coordinator, "brand", "POST", "/v1/queries", AUDIENCE),
    )
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "error", "message": "the engine cannot run it"}}


def test_the_public_names_are_importable_from_the_package() -> None:
    # Every name imported from sgxcloud.cleanroom.coordinator in src/, tests/ and
    # benchmarks/ when it was one module.
    for name in (
        "Coordinator",
        "CoordinatorConfig",
        "PUBLIC_DATASET_FIELDS",
        "create_app",
        "openapi_document",
        "serve",
    ):
        assert name in package.__all__
    assert all(hasattr(package, name) for name in package.__all__)


@pytest.mark.parametrize("nonce", ["NOT-A-NONCE-SECRET", "ab" * 31, ""])
def test_a_malformed_parameter_is_a_400_in_the_api_shape(client: TestClient, nonce: str) -> None:
    """FastAPI's own checks (the attestation's nonce pattern) answer like every other
    error, 400 ``bad_request``, not 422 ``{"detail": [...]}``; the value is not echoed."""
    answer = client.get("/v1/attestation", params={"nonce": nonce})
    assert answer.status_code == 400
    body = answer.json()
    assert set(body) == {"error"} and body["error"]["code"] == "bad_request"
    assert body["error"]["message"].startswith("query.nonce: ")
    if nonce:
        assert nonce not in answer.text


def test_the_published_document_names_no_422(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    responses = [
        op.get("responses", {}) for ops in document["paths"].values() for op in ops.values()
    ]
    assert not any("422" in r for r in responses)
    assert "HTTPValidationError" not in document["components"]["schemas"]
