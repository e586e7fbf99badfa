"""Enclave nonces that any replica can check, stored only once they are spent.

A nonce is 32 bytes: ``expires_at`` (8, big-endian) ‖ 8 random bytes ‖ a
16-byte HMAC-SHA256 tag over the first 16 under a key derived from the
master key.  Every replica holds the master key, so a nonce issued by one is
checked by another without a database round trip, and issuing one costs no
write.  Single use is enforced where it matters: attesting inserts the spent
nonce in the same transaction as the audit entry, and the table's primary
key lets exactly one attestation per nonce commit, whichever replica it
reaches.  Tags under retired master keys still check (a rotation in progress).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _random
import struct

from sgxcloud.cas import secrets
from sgxcloud.cas.protocol import NONCE_SIZE

_LABEL = b"sgxcloud-cas enclave nonce v1\0"
_TAG_SIZE = 16

NOT_ISSUED = "nonce was not issued by this service"
EXPIRED = "nonce expired"
REPLAYED = "nonce was already used (replay)"


class NonceMinter:
    """Issues and checks nonces of one deployment.

    ``deployment`` (the deployment id) is part of the tag key: a copy of the
    database renewed as a deployment of its own shares the master key but
    not the nonces.
    """

    def __init__(self, keyring: secrets.Keyring, ttl: int, deployment: str = "") -> None:
        keys = (keyring.current, *keyring.retired)
        label = _LABEL + deployment.encode() + b"\0"
        self._keys = [hmac.new(k.key, label, hashlib.sha256).digest() for k in keys]
        self.ttl = ttl

    def issue(self, now: int) -> tuple[bytes, int]:
        expires = now + self.ttl
        body = struct.pack(">Q", expires) + _random.token_bytes(8)
        return body + self._tag(self._keys[0], body), expires

    def check(self, nonce: bytes, now: int) -> tuple[str | None, int]:
        """(problem or None, expires_at) of a nonce presented back."""
        if len(nonce) != NONCE_SIZE:
            return NOT_ISSUED, 0
        body, tag = nonce[:16], nonce[16:]
        if not any(hmac.compare_digest(tag, self._tag(k, body)) for k in self._keys):
            return NOT_ISSUED, 0
        (expires,) = struct.unpack(">Q", body[:8])
        if now >= expires:
            return EXPIRED, expires
        return None, expires

    @staticmethod
    def _tag(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:_TAG_SIZE]
