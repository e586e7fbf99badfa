"""Signed results: recipients verify the coordinator enclave's signature."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.errors import ResultSignatureError
from sgxcloud.cleanroom.results import Cell, Result, verify_result


@pytest.fixture
def signed(make_definition, make_engine):
    key = generate_private_key()
    engine = make_engine(make_definition(), signing_key=key)
    result = engine.run(
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": ["bank.customers", "telecom.subscribers"],
        },
        "brand",
    )
    return engine, key, result


def test_result_verifies_with_the_engine_key(signed):
    engine, key, result = signed
    assert engine.public_key == encode_public_key(key) == result.signer
    assert verify_result(result, engine.public_key) == result
    assert verify_result(result.to_json(), key.public_key()) == result
    assert (
        verify_result(
            result.to_dict(), engine.public_key, definition_hash=engine.definition.definition_hash()
        )
        == result
    )
    assert result.query["datasets"] == ["bank.customers", "telecom.subscribers"]
    assert result.recipients == ("brand", "agency")


def test_any_change_breaks_the_signature(signed):
    engine, _, result = signed
    cells = list(result.cells)
    cells[0] = replace(cells[0], value=cells[0].value + 1)
    for tampered in (
        replace(result, cells=tuple(cells)),
        replace(result, definition_hash="00" * 32),
        replace(result, query={**result.query, "analysis": "other"}),
        replace(result, released_at="2020-01-01T00:00:00+00:00"),
    ):
        with pytest.raises(ResultSignatureError):
            verify_result(tampered, engine.public_key)


def test_wrong_key_or_definition_is_rejected(signed):
    engine, _, result = signed
    with pytest.raises(ResultSignatureError, match="different key"):
        verify_result(result, encode_public_key(generate_private_key()))
    with pytest.raises(ResultSignatureError, match="different definition"):
        verify_result(result, engine.public_key, definition_hash="ab" * 32)
    with pytest.raises(ResultSignatureError):
        verify_result(result, "ed25519:not-a-key")
    # a re-signed forgery by another key is caught by the signer check
    other = generate_private_key()
    from sgxcloud.cleanroom.results import sign_result

    forged = sign_result(replace(result, cells=(Cell("people", 1),)), other)
    with pytest.raises(ResultSignatureError):
        verify_result(forged, engine.public_key)


def test_malformed_documents(signed):
    engine, _, result = signed
    with pytest.raises(ResultSignatureError):
        verify_result("{not json", engine.public_key)
    doc = result.to_dict()
    del doc["cells"]
    with pytest.raises(ResultSignatureError):
        verify_result(doc, engine.public_key)
    doc = result.to_dict()
    doc["signature"] = "%%%"
    with pytest.raises(ResultSignatureError):
        verify_result(doc, engine.public_key)


def test_json_round_trip_and_lookup(signed):
    _, _, result = signed
    again = Result.from_json(result.to_json())
    assert again == result
    assert json.loads(result.to_json())["format"] == "sgxcloud.cleanroom.result/v2"
    assert result.value("people", datasets="bank.customers") > 0
    with pytest.raises(KeyError):
        result.value("people", datasets="nobody")


def test_cached_answer_is_resigned_by_a_new_enclave_key(make_definition, make_engine, tmp_path):
    definition = make_definition()
    first_engine = make_engine(definition, tmp_path / "w")
    query = {"template": "audience_size", "analysis": "audience"}
    first = first_engine.run(query, "brand")
    first_engine.close()
    second_engine = make_engine(definition, tmp_path / "w", ingest=False)
    again = second_engine.run(query, "brand")
    assert again.cells == first.cells and again.result_id == first.result_id
    verify_result(again, second_engine.public_key)
