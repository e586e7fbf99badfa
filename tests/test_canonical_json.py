"""Canonical JSON is written one way (sgxcloud.canonical); every caller keeps its bytes.

Stored policy hashes, the CAS audit chain, definition hashes, approvals and
signed results were all computed over these bytes: the expected values
below were produced by each caller's own serialiser before they shared one.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from sgxcloud import canonical
from sgxcloud.cas import audit
from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.policy import canonical_bytes, policy_hash
from sgxcloud.cleanroom.definition import canonical_json as cleanroom_canonical_json

# Keys out of order (upper case, non-ASCII), a line separator and an astral character.
DOCUMENT = {
    "zeta": "é\u2028😀",
    "B": [1, 2.5, None, True, False],
    "a": {"y": -0.0, "x": 10**18},
    "é": "",
}
UTF8 = (
    b'{"B":[1,2.5,null,true,false],"a":{"x":1000000000000000000,"y":-0.0},'
    b'"zeta":"\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80","\xc3\xa9":""}'
)
ASCII = (
    '{"B":[1,2.5,null,true,false],"a":{"x":1000000000000000000,"y":-0.0},'
    '"zeta":"\\u00e9\\u2028\\ud83d\\ude00","\\u00e9":""}'
)


def test_policy_documents_hash_their_utf8_bytes() -> None:
    assert canonical_bytes(DOCUMENT) == UTF8
    assert policy_hash("name: café\nversion: 1\n") == (
        "5786840670d93abf9914aca6e9278f3fcaec727dd16a1d7dbb62a8c323a6635c"
    )


def test_the_cas_audit_log_keeps_its_ascii_escapes() -> None:
    assert audit.canonical_json(DOCUMENT) == ASCII
    digest = audit.entry_hash(
        seq=7,
        at=1700000000,
        kind="policy.apply",
        subject="café",
        actor="ö",
        outcome="applied",
        detail=audit.canonical_json({"reasons": ["naïve"]}),
        prev_hash="0" * 64,
    )
    assert digest == "ac293887012846e0a8a1f25b7cf2d321443446ba1a656da60b4d006daae304a6"


def test_clean_room_documents_use_utf8_bytes() -> None:
    assert cleanroom_canonical_json(DOCUMENT) == UTF8
    assert cleanroom_canonical_json(["é"]) == '["é"]'.encode()


def test_one_serialiser_behind_all_three() -> None:
    assert canonical.canonical_json(DOCUMENT) == UTF8
    assert canonical.canonical_json(DOCUMENT, ascii_only=True) == ASCII.encode()
    assert cleanroom_canonical_json is canonical.canonical_json
    assert hashlib.sha256(UTF8).hexdigest() == hashlib.sha256(canonical_bytes(DOCUMENT)).hexdigest()


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused_everywhere(number: float) -> None:
    with pytest.raises(PolicyError, match="NaN"):
        canonical_bytes({"x": number})
    with pytest.raises(ValueError):
        cleanroom_canonical_json({"x": [number]})
    # The audit log wrote a bare NaN before (not JSON, so no other reader could
    # recompute the hash); no caller passes a float, and now none can.
    with pytest.raises(ValueError):
        audit.canonical_json({"x": number})
