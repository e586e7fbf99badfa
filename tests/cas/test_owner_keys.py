"""Owner keys are bounded: a request names its own key, checked before the caller is known.

Red team (attack-cas3, finding 6): an RSA-3072 key with a 3,071-bit public
exponent made each signature check cost ~14 ms (0.1 ms with e = 65537), on the
event loop, before anything else — four connections pushed legitimate nonce
latency from 3 ms to 56 ms.
"""

from __future__ import annotations

import base64
import time

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.policy import load_policy
from sgxcloud.cas.policy.access import OwnerKeyError, check_owner_key, public_key_id
from sgxcloud.cas.service import auth

try:
    from tests.cas import postgres as pg
except ImportError:  # pragma: no cover
    import postgres as pg  # type: ignore[no-redef]

DEPLOYMENT = "ab" * 16
AUDIENCE = "https://cas.example:443"


def _rsa_public(bits: int, exponent: int) -> rsa.RSAPublicKey:
    modulus = rsa.generate_private_key(65537, bits).public_key().public_numbers().n
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _huge_exponent_key() -> rsa.RSAPublicKey:
    """The red team's key: RSA-3072 with an odd public exponent of 3,071 bits."""
    return _rsa_public(3072, (1 << 3070) | 1)


def _pem(key: object) -> str:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP521R1()).public_key(),
        lambda: rsa.generate_private_key(65537, 2048).public_key(),
        lambda: rsa.generate_private_key(65537, 4096).public_key(),
    ],
    ids=["ed25519", "p256", "p384", "p521", "rsa2048", "rsa4096"],
)
def test_keys_owners_use_are_accepted(make) -> None:  # type: ignore[no-untyped-def]
    key = make()
    check_owner_key(key)
    assert public_key_id(_pem(key)).startswith("key:sha256:")


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_huge_exponent_key, "public exponent 65537"),
        (lambda: _rsa_public(2048, 3), "public exponent 65537"),
        (lambda: _rsa_public(1024, 65537), "2048 to 4096 bits, not 1024"),
        (lambda: _rsa_public(4104, 65537), "2048 to 4096 bits, not 4104"),
        (lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), "not secp256k1"),
    ],
    ids=["rsa-huge-exponent", "rsa-e3", "rsa1024", "rsa4104", "secp256k1"],
)
def test_other_keys_are_refused_by_every_door(make, why: str) -> None:  # type: ignore[no-untyped-def]
    key = make()
    with pytest.raises(OwnerKeyError, match=why):
        check_owner_key(key)
    with pytest.raises(OwnerKeyError, match=why):
        public_key_id(_pem(key))
    # A signed request naming the key is refused before any signature check.
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    headers = _signed_headers(base64.b64encode(der).decode())
    with pytest.raises(auth.AuthenticationError, match=f"credential not accepted: .*{why}"):
        auth.authenticate(
            headers, "PUT", "/v1/policies", b"{}", now=int(time.time()), max_skew=300,
            deployment=DEPLOYMENT, audiences=frozenset({AUDIENCE}),
        )  # fmt: skip


def _signed_headers(key_b64: str) -> dict[str, str]:
    """Well-formed signature headers for ``key_b64`` with a signature that cannot verify."""
    return {
        auth.DATE_HEADER: str(int(time.time())),
        auth.DEPLOYMENT_HEADER: DEPLOYMENT,
        auth.AUDIENCE_HEADER: AUDIENCE,
        auth.REQUEST_ID_HEADER: "00" * 16,
        auth.SIGNATURE_HEADER: base64.b64encode(b"\x01" * 384).decode(),
        auth.KEY_HEADER: key_b64,
    }


def test_the_huge_exponent_request_costs_no_signature_check() -> None:
    """Refused in well under the ~14 ms one check with the red team's key costs."""
    key = _huge_exponent_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    headers = _signed_headers(base64.b64encode(der).decode())
    started = time.process_time()
    for _ in range(20):
        with pytest.raises(auth.AuthenticationError):
            auth.authenticate(
                headers, "PUT", "/v1/policies", b"{}", now=int(time.time()), max_skew=300,
                deployment=DEPLOYMENT, audiences=frozenset({AUDIENCE}),
            )  # fmt: skip
    assert (time.process_time() - started) / 20 < 0.005


def test_a_policy_naming_a_refused_owner_key_lists_why_at_its_field() -> None:
    document = yaml.safe_load(pg.policy_text(pg.owner_key()))
    document["access"]["owners"][0]["public_key"] = _pem(_rsa_public(1024, 65537))
    with pytest.raises(PolicyError) as refused:
        load_policy(yaml.safe_dump(document))
    assert any(
        p.field == "access.owners[0].public_key" and "2048 to 4096 bits, not 1024" in p.message
        for p in refused.value.problems
    ), refused.value.problems
