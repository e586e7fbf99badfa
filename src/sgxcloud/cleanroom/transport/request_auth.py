"""Signed HTTP requests: how a party proves who it is to the coordinator API.

Every party's Ed25519 public key is in the definition, so no passwords or
tokens exist.  A request carries six headers; the signature
(``sgxcloud.cleanroom.request/v2``) covers the method, path, a hash of the
body, the party, a one-time nonce, the time, and *where the request is for*:
the collaboration (its definition hash) and the coordinator (its
result-signing key, which the coordinator's attestation binds)::

    X-Cleanroom-Party, X-Cleanroom-Nonce, X-Cleanroom-Issued-At,
    X-Cleanroom-Definition, X-Cleanroom-Coordinator, X-Cleanroom-Signature

A party may use one key in several collaborations, and one definition may
run at several coordinators (each workdir is a coordinator of its own, with
its own used-nonce store): without the last two, a request captured at one
could be spent again at another within the clock window.  The client takes
both from what it attested (``GET /v1/attestation``), so it never signs for a
coordinator it has not verified.

The coordinator refuses a signature that does not verify, a clock more than
``MAX_SKEW_S`` away, a request for another collaboration or coordinator, one
signed in the older form (v1, which named neither) and a nonce the same party
has already used (a replayed request).  Used nonces are kept in SQLite in the
coordinator's workdir, so a request captured in transit or from a log cannot
be replayed after a restart either; each is kept until its request would
fail the clock check anyway.

The nonce form, the clock window, the body digest and the signature check
are :mod:`sgxcloud.signed_requests`, which the CAS's owner requests follow
too; the header names and the signed bytes are this service's own.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.approvals import decode_public_key
from sgxcloud.cleanroom.definition import Definition, canonical_json
from sgxcloud.cleanroom.transport.errors import NonceStoreError as NonceStoreError
from sgxcloud.cleanroom.transport.errors import RequestRejected as RequestRejected
from sgxcloud.errors import SgxcloudError
from sgxcloud.signed_requests import (
    REQUEST_ID,
    body_digest,
    is_fresh,
    new_request_id,
    sign,
    signature_verifies,
)

PURPOSE = "sgxcloud.cleanroom.request/v2"
OLD_PURPOSE = "sgxcloud.cleanroom.request/v1"
MAX_SKEW_S = 300
HEADERS = (
    "x-cleanroom-party",
    "x-cleanroom-nonce",
    "x-cleanroom-issued-at",
    "x-cleanroom-signature",
)
DEFINITION_HEADER = "x-cleanroom-definition"
COORDINATOR_HEADER = "x-cleanroom-coordinator"
UPGRADE_MESSAGE = (
    f"request is signed in the older form ({OLD_PURPOSE}), which names no collaboration "
    "and no coordinator, so it could be replayed at another coordinator where the party "
    "has the same key: upgrade sgxcloud on the party's side (SDK, CLI, console) to sign "
    f"{PURPOSE}"
)
_DEFINITION_HASH = re.compile(r"[0-9a-f]{64}")
_COORDINATOR = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")
"""A coordinator id: its Ed25519 result-signing key as definitions write keys."""


def _payload(
    method: str,
    path: str,
    body: bytes,
    party: str,
    nonce: str,
    issued_at: int,
    definition_hash: str,
    coordinator: str,
) -> bytes:
    return canonical_json(
        {
            "purpose": PURPOSE,
            "method": method.upper(),
            "path": path,
            "body_sha256": body_digest(body),
            "party": party,
            "nonce": nonce,
            "issued_at": issued_at,
            "definition_hash": definition_hash,
            "coordinator": coordinator,
        }
    )


def sign_request(
    key: Ed25519PrivateKey,
    party: str,
    method: str,
    path: str,
    body: bytes = b"",
    now: int | None = None,
    *,
    definition_hash: str,
    coordinator: str,
) -> dict[str, str]:
    """Headers that authenticate one request as ``party`` to one coordinator.

    ``definition_hash`` is the collaboration's (the client's own definition);
    ``coordinator`` is the coordinator's result-signing key (``ed25519:...``)
    as its verified attestation names it (``CleanroomClient.attestation["signer"]``).
    """
    if not _DEFINITION_HASH.fullmatch(definition_hash):
        raise ValueError("definition_hash must be 64 lower-case hex digits")
    if not _COORDINATOR.fullmatch(coordinator):
        raise ValueError("coordinator must be the coordinator's signer, ed25519:<base64>")
    nonce = new_request_id()
    issued_at = int(time.time() if now is None else now)
    signature = sign(
        key, _payload(method, path, body, party, nonce, issued_at, definition_hash, coordinator)
    )
    return {
        "X-Cleanroom-Party": party,
        "X-Cleanroom-Nonce": nonce,
        "X-Cleanroom-Issued-At": str(issued_at),
        "X-Cleanroom-Definition": definition_hash,
        "X-Cleanroom-Coordinator": coordinator,
        "X-Cleanroom-Signature": base64.b64encode(signature).decode(),
    }


class UsedNonces:
    """Nonces already accepted, per party, for as long as a replay could pass the clock.

    A request issued at ``t`` passes the clock check until ``t + MAX_SKEW_S``,
    so its nonce is kept until then and pruned after.  Claiming is one
    ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL`` before
    the caller acts on the request: a crash right after cannot forget it, and
    threads or processes sharing the file cannot both claim one nonce.
    ``path=None`` keeps them in memory only (unit tests; no restart survives it).
    """

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS used_nonce (
            party TEXT NOT NULL, nonce TEXT NOT NULL, issued_at INTEGER NOT NULL,
            PRIMARY KEY (party, nonce)) WITHOUT ROWID;
        CREATE INDEX IF NOT EXISTS used_nonce_issued_at ON used_nonce (issued_at);
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            # One connection shared by the API's threads, serialised by _lock;
            # autocommit mode so BEGIN IMMEDIATE below is ours.
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path),
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(self._SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise NonceStoreError(f"{path}: cannot open the used-nonce store ({exc})") from exc

    def claim(self, party: str, nonce: str, issued_at: int, now: int) -> bool:
        """Record ``nonce`` for ``party``; False if it was already used."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                # Those whose requests are stale (stale_from(issued_at) <= now).
                self._db.execute("DELETE FROM used_nonce WHERE issued_at < ?", (now - MAX_SKEW_S,))
                added = self._db.execute(
                    "INSERT OR IGNORE INTO used_nonce (party, nonce, issued_at) VALUES (?, ?, ?)",
                    (party, nonce, issued_at),
                ).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise NonceStoreError(f"{self.path}: cannot record a used nonce ({exc})") from exc
        return added == 1

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM used_nonce").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RequestVerifier:
    """Checks signed requests against the definition's party keys; remembers nonces.

    ``coordinator`` is this coordinator's result-signing key (``ed25519:...``),
    the id its attestation binds: a request must name it and this
    definition's hash.  ``nonce_store`` is the SQLite file that makes replay
    protection survive a restart; the coordinator always passes one.  Without
    it nonces are kept in memory only, which suits unit tests and nothing else.
    """

    def __init__(
        self, definition: Definition, coordinator: str, nonce_store: Path | None = None
    ) -> None:
        self.definition = definition
        self.definition_hash = definition.definition_hash()
        self.coordinator = coordinator
        self.nonces = UsedNonces(nonce_store)

    def close(self) -> None:
        self.nonces.close()

    def check_headers(self, headers: Mapping[str, str], now: int | None = None) -> None:
        """The checks of :meth:`verify` that need no body, made before it is read.

        An unsigned request, an unknown party, a malformed nonce or a stale
        clock is refused here, so a stranger cannot make the coordinator read
        (and hold) a body at all; the signature itself covers the body.
        """
        self._check_headers(headers, now)

    def _check_headers(
        self, headers: Mapping[str, str], now: int | None
    ) -> tuple[str, str, int, bytes, int]:
        values = {h: headers.get(h) for h in HEADERS}
        if any(v is None for v in values.values()):
            raise RequestRejected("request is not signed (X-Cleanroom-* headers missing)")
        party_name = str(values["x-cleanroom-party"])
        if self.definition.party(party_name) is None:
            raise RequestRejected(f"{party_name[:40]!r} is not a party of this collaboration")
        nonce = str(values["x-cleanroom-nonce"])
        try:
            issued_at = int(str(values["x-cleanroom-issued-at"]))
            signature = base64.b64decode(str(values["x-cleanroom-signature"]), validate=True)
        except (ValueError, binascii.Error) as exc:
            raise RequestRejected("malformed request signature headers") from exc
        if not REQUEST_ID.fullmatch(nonce):  # the shared request-id form
            raise RequestRejected("malformed request nonce (32 to 128 lower-case hex digits)")
        current = int(time.time() if now is None else now)
        if not is_fresh(issued_at, current, MAX_SKEW_S):
            raise RequestRejected("request timestamp is too far from the coordinator's clock")
        self._check_bound_here(headers)
        return party_name, nonce, issued_at, signature, current

    def _check_bound_here(self, headers: Mapping[str, str]) -> None:
        """The request names this collaboration and this coordinator.

        Only a clear early answer: the signature below is checked over *this*
        coordinator's values, never over what the headers claim.
        """
        definition = headers.get(DEFINITION_HEADER)
        coordinator = headers.get(COORDINATOR_HEADER)
        if definition is None and coordinator is None:
            raise RequestRejected(UPGRADE_MESSAGE)
        if definition is None or coordinator is None:
            raise RequestRejected(
                "request names its collaboration or its coordinator, not "
                "both (X-Cleanroom-Definition, X-Cleanroom-Coordinator)"
            )
        if not _DEFINITION_HASH.fullmatch(definition):
            raise RequestRejected(
                "X-Cleanroom-Definition is not a definition hash (64 lower-case hex digits)"
            )
        if not _COORDINATOR.fullmatch(coordinator):
            raise RequestRejected(
                "X-Cleanroom-Coordinator is not a coordinator's signing key (ed25519:<base64>)"
            )
        if definition != self.definition_hash:
            raise RequestRejected(
                f"request was signed for another collaboration (definition "
                f"{definition[:16]}…); this coordinator runs definition "
                f"{self.definition_hash[:16]}… (GET /v1/definition): sign for it"
            )
        if coordinator != self.coordinator:
            raise RequestRejected(
                f"request was signed for another coordinator ({coordinator[:24]}…); this "
                f"coordinator is {self.coordinator[:24]}… (the signer of GET /v1/attestation): "
                "attest it and sign for it"
            )

    def verify(
        self,
        headers: Mapping[str, str],
        method: str,
        path: str,
        body: bytes,
        now: int | None = None,
    ) -> str:
        """Return the authenticated party name or raise :class:`RequestRejected`.

        The nonce is recorded (durably, with a store) before this returns, so
        the caller may act on the request at once.
        """
        party_name, nonce, issued_at, signature, current = self._check_headers(headers, now)
        party = self.definition.party(party_name)
        if party is None:  # checked above; kept so the key below is never None
            raise RequestRejected(f"{party_name[:40]!r} is not a party of this collaboration")
        payload = _payload(
            method, path, body, party_name, nonce, issued_at, self.definition_hash, self.coordinator
        )
        try:
            key = decode_public_key(party.public_key)
        except SgxcloudError as exc:
            raise RequestRejected(f"signature does not verify for {party_name}") from exc
        if not signature_verifies(key, signature, payload):
            raise RequestRejected(f"signature does not verify for {party_name}")
        # Only signed requests reach the store: strangers cannot fill it.
        if not self.nonces.claim(party_name, nonce, issued_at, current):
            raise RequestRejected("request replayed (nonce already used)")
        return party_name
