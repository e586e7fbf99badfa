"""Signed result documents: the only thing that leaves the coordinator enclave.

A result names the definition hash and the canonical query it answers, lists
the released cells (each with its suppression flag), the privacy parameters
applied, and is signed with the coordinator enclave's Ed25519 key over the
canonical JSON of everything but the signature.  Recipients check it with
:func:`verify_result` against the key bound into the coordinator's
attestation.

Result digests (what the audit log, read by every party, records of a
release) are keyed: HMAC-SHA256 under the result's own random 256-bit
``digest_key``, which only the result's recipients receive (inside the signed
result).  An unkeyed hash would let anyone who reads the log test guesses of
the figures, since every other field of a result is public or in the log
(red team attack-cas3, finding 1: audience sizes recovered in < 0.5 s).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sgxcloud.cleanroom.approvals import decode_public_key, encode_public_key
from sgxcloud.cleanroom.definition import canonical_json
from sgxcloud.cleanroom.errors import CleanroomError, ResultDigestError, ResultSignatureError

RESULT_FORMAT = "sgxcloud.cleanroom.result/v2"
"""v2 added ``digest_key``; a v1 result (written before) still verifies."""
RESULT_FORMAT_V1 = "sgxcloud.cleanroom.result/v1"
RESULT_FORMATS = (RESULT_FORMAT, RESULT_FORMAT_V1)
DIGEST_PREFIX = "hmac-sha256:"
"""Result digest v2: ``hmac-sha256:<hex>`` keyed by the result's ``digest_key``."""
LEGACY_DIGEST_PREFIX = "sha256:"
"""Result digest v1 (unkeyed SHA-256): refused, its figures could be brute-forced."""
DIGEST_KEY_BYTES = 32


@dataclass(frozen=True)
class Cell:
    """One released number.  ``dims`` says which slice (arm, segment, dataset
    set...); ``value`` is None when ``suppressed``; ``noisy`` when DP noise
    was added to it or to the counts it is derived from."""

    metric: str
    value: float | int | None
    dims: dict[str, str] = field(default_factory=dict)
    suppressed: bool = False
    noisy: bool = False

    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.metric, tuple(sorted(self.dims.items()))


@dataclass(frozen=True)
class Result:
    result_id: str
    collaboration: str
    definition_hash: str
    analysis: str
    template: str
    query: dict[str, Any]
    query_hash: str
    cells: tuple[Cell, ...]
    privacy: dict[str, Any]
    recipients: tuple[str, ...]
    released_at: str
    signer: str = ""  # ed25519:<base64> of the coordinator enclave's key
    signature: str = ""  # base64
    format: str = RESULT_FORMAT
    # hex of 32 random bytes, signed with the rest; the key of the result's digest,
    # so only those who hold the result can compute or test it ("" in a v1 result)
    digest_key: str = ""

    def cell(self, metric: str, **dims: str) -> Cell:
        """The cell for ``metric`` at exactly ``dims``; KeyError if absent."""
        for c in self.cells:
            if c.metric == metric and c.dims == dims:
                return c
        raise KeyError((metric, dims))

    def value(self, metric: str, **dims: str) -> float | int | None:
        return self.cell(metric, **dims).value

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["cells"] = [asdict(c) for c in self.cells]
        doc["recipients"] = list(self.recipients)
        if self.format == RESULT_FORMAT_V1:  # v1 had no such field: keep its signature valid
            doc.pop("digest_key")
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

    def signed_payload(self) -> bytes:
        doc = self.to_dict()
        doc.pop("signature")
        return canonical_json(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> Result:
        try:
            cells = tuple(Cell(**c) for c in doc["cells"])
            body = {
                k: doc[k]
                for k in (
                    "result_id",
                    "collaboration",
                    "definition_hash",
                    "analysis",
                    "template",
                    "query",
                    "query_hash",
                    "privacy",
                    "released_at",
                    "signer",
                    "signature",
                    "format",
                )
            }
            return cls(
                cells=cells,
                recipients=tuple(doc["recipients"]),
                digest_key=doc.get("digest_key", ""),
                **body,
            )
        except (KeyError, TypeError) as exc:
            raise ResultSignatureError("not a clean room result document") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> Result:
        try:
            if isinstance(text, bytes):
                text = text.decode("utf-8")
            return cls.from_dict(json.loads(text))
        except UnicodeDecodeError as exc:  # never echo the bytes
            raise ResultSignatureError("not a clean room result document (not UTF-8)") from exc
        except json.JSONDecodeError as exc:
            raise ResultSignatureError("not a clean room result document (bad JSON)") from exc
        except RecursionError as exc:
            raise ResultSignatureError(
                "not a clean room result document (nested too deeply)"
            ) from exc


def load_result(path: str | Path) -> Result:
    """Read a result file; any unreadable or malformed file is a ResultSignatureError
    with a one-line message (never a traceback, never the file's content)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ResultSignatureError(f"cannot read {path}: {exc.strerror}") from exc
    return Result.from_json(data)


def new_digest_key() -> str:
    return os.urandom(DIGEST_KEY_BYTES).hex()


def _digest_key(result: Result) -> bytes:
    if result.format == RESULT_FORMAT_V1:
        raise ResultDigestError(
            f"result {result.result_id} is of format v1 (written before keyed digests) and has "
            "no digest key; only its signature can be checked"
        )
    try:
        key = bytes.fromhex(result.digest_key)
    except ValueError:
        key = b""
    if len(key) != DIGEST_KEY_BYTES:
        raise ResultDigestError(
            f"result {result.result_id}: digest_key is not {DIGEST_KEY_BYTES} bytes of hex"
        )
    return key


def result_digest(result: Result) -> str:
    """``hmac-sha256:<hex>`` of the result's content (everything but the signer,
    the signature and the digest key itself, so a cached result re-signed by a
    new enclave key keeps it), keyed by the result's ``digest_key``.

    The audit log records this, never the figures: a recipient checks that the
    result it fetched is the one the log says was released
    (:func:`check_result_digest`), while a party without the result cannot test
    guessed figures against it.  Raises ResultDigestError for a v1 result."""
    key = _digest_key(result)
    doc = result.to_dict()
    for name in ("signature", "signer", "digest_key"):
        doc.pop(name, None)
    return DIGEST_PREFIX + hmac.new(key, canonical_json(doc), hashlib.sha256).hexdigest()


def check_result_digest(result: Result, digest: object) -> None:
    """Raise ResultDigestError unless ``digest`` (from an audit entry) is this
    result's digest.  Unkeyed ``sha256:`` digests of older coordinators are
    refused, not compared: they were a brute-force oracle for the figures."""
    if isinstance(digest, str) and digest.startswith(LEGACY_DIGEST_PREFIX):
        raise ResultDigestError(
            "the audit entry holds an unkeyed sha256: digest (result digest v1, written by an "
            "older coordinator); it is not checked — v1 digests let any party test guessed "
            "figures — rely on the result's signature instead"
        )
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
        raise ResultDigestError(f"unknown result digest format (expected {DIGEST_PREFIX}…)")
    if not hmac.compare_digest(result_digest(result).encode(), digest.encode()):
        raise ResultDigestError(
            f"result {result.result_id} does not match the digest the audit log records for it"
        )


def new_result_id() -> str:
    return str(uuid.uuid4())


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def sign_result(result: Result, private_key: Ed25519PrivateKey) -> Result:
    unsigned = replace(result, signer=encode_public_key(private_key), signature="")
    signature = private_key.sign(unsigned.signed_payload())
    return replace(unsigned, signature=base64.b64encode(signature).decode("ascii"))


def verify_result(
    result: Result | dict[str, Any] | str | bytes,
    coordinator_public_key: str | Ed25519PublicKey,
    *,
    definition_hash: str | None = None,
) -> Result:
    """Return the result if it is signed by ``coordinator_public_key`` (and,
    when given, answers ``definition_hash``); raise ResultSignatureError."""
    if isinstance(result, str | bytes):
        result = Result.from_json(result)
    elif isinstance(result, dict):
        result = Result.from_dict(result)
    try:
        key = (
            decode_public_key(coordinator_public_key)
            if isinstance(coordinator_public_key, str)
            else coordinator_public_key
        )
    except CleanroomError as exc:
        raise ResultSignatureError(str(exc)) from exc
    if result.format not in RESULT_FORMATS:
        raise ResultSignatureError("unknown result format")
    if result.format == RESULT_FORMAT:
        _digest_key(result)  # a v2 result carries its 32-byte digest key
    if result.signer != encode_public_key(key):
        raise ResultSignatureError("result was signed by a different key")
    try:
        key.verify(base64.b64decode(result.signature, validate=True), result.signed_payload())
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise ResultSignatureError("result signature does not verify") from exc
    if definition_hash is not None and result.definition_hash != definition_hash:
        raise ResultSignatureError("result answers a different definition")
    return result
