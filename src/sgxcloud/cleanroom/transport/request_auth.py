"""Signed HTTP requests: how a party proves who it is to the coordinator API.

Every party's Ed25519 public key is in the definition, so no passwords or
tokens exist.  A request carries four headers; the signature covers the
method, path, a hash of the body, the party, a one-time nonce and the time::

    X-Cleanroom-Party, X-Cleanroom-Nonce, X-Cleanroom-Issued-At, X-Cleanroom-Signature

The coordinator refuses a signature that does not verify, a clock more than
``MAX_SKEW_S`` away, and a nonce it has already seen (a replayed request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.approvals import decode_public_key
from sgxcloud.cleanroom.definition import Definition, canonical_json
from sgxcloud.errors import SgxcloudError

PURPOSE = "sgxcloud.cleanroom.request/v1"
MAX_SKEW_S = 300
HEADERS = ("x-cleanroom-party", "x-cleanroom-nonce", "x-cleanroom-issued-at",
           "x-cleanroom-signature")


class RequestRejected(SgxcloudError):
    """The request's signature, party, time or nonce is not acceptable (HTTP 401)."""

    exit_code = 4


def _payload(method: str, path: str, body: bytes, party: str, nonce: str, issued_at: int) -> bytes:
    return canonical_json({
        "purpose": PURPOSE, "method": method.upper(), "path": path,
        "body_sha256": hashlib.sha256(body).hexdigest(), "party": party,
        "nonce": nonce, "issued_at": issued_at,
    })


def sign_request(key: Ed25519PrivateKey, party: str, method: str, path: str,
                 body: bytes = b"", now: int | None = None) -> dict[str, str]:
    """Headers that authenticate one request as ``party``."""
    nonce = os.urandom(16).hex()
    issued_at = int(time.time() if now is None else now)
    signature = key.sign(_payload(method, path, body, party, nonce, issued_at))
    return {
        "X-Cleanroom-Party": party,
        "X-Cleanroom-Nonce": nonce,
        "X-Cleanroom-Issued-At": str(issued_at),
        "X-Cleanroom-Signature": base64.b64encode(signature).decode(),
    }


class RequestVerifier:
    """Checks signed requests against the definition's party keys; remembers nonces."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def verify(self, headers: Mapping[str, str], method: str, path: str, body: bytes,
               now: int | None = None) -> str:
        """Return the authenticated party name or raise :class:`RequestRejected`."""
        values = {h: headers.get(h) for h in HEADERS}
        if any(v is None for v in values.values()):
            raise RequestRejected("request is not signed (X-Cleanroom-* headers missing)")
        party_name = str(values["x-cleanroom-party"])
        party = self.definition.party(party_name)
        if party is None:
            raise RequestRejected(f"{party_name[:40]!r} is not a party of this collaboration")
        try:
            issued_at = int(str(values["x-cleanroom-issued-at"]))
            signature = base64.b64decode(str(values["x-cleanroom-signature"]), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise RequestRejected("malformed request signature headers") from exc
        current = int(time.time() if now is None else now)
        if abs(current - issued_at) > MAX_SKEW_S:
            raise RequestRejected("request timestamp is too far from the coordinator's clock")
        nonce = str(values["x-cleanroom-nonce"])
        payload = _payload(method, path, body, party_name, nonce, issued_at)
        try:
            decode_public_key(party.public_key).verify(signature, payload)
        except (InvalidSignature, SgxcloudError) as exc:
            raise RequestRejected(f"signature does not verify for {party_name}") from exc
        with self._lock:
            self._seen = {n: t for n, t in self._seen.items() if current - t <= MAX_SKEW_S}
            if nonce in self._seen:
                raise RequestRejected("request replayed (nonce already used)")
            self._seen[nonce] = issued_at
        return party_name
