"""The application protocol on top of attested TLS.

Frames are ``kind (1 byte) | sequence (8 bytes) | length (4 bytes) | payload``.
Each direction numbers its frames from zero; a frame whose number is not the
next one expected (a replay or a reordering by anything between the
application and TLS) ends the session.  TLS itself rejects tampered records
and replayed handshakes; the nonces exchanged in HELLO make each session's
evidence single-use.

Session opening, symmetric for both roles::

    client -> HELLO {role, definition_hash, nonce, extra}
    server -> HELLO {...}
    client -> EVIDENCE (REPORTDATA bound to client key, definition, server nonce)
    server -> EVIDENCE (... client nonce)   or ERROR if it refuses the client

after which either side may still send ERROR {code, message} and close.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sgxcloud.cleanroom.transport.binding import NONCE_SIZE, Attester, PeerPolicy, report_data
from sgxcloud.cleanroom.transport.errors import (
    PeerClosed,
    PeerRefused,
    PeerTimedOut,
    ProtocolViolation,
    RemoteError,
    TransportError,
)
from sgxcloud.cleanroom.transport.tls import TlsConnection, public_key_der
from sgxcloud.web.limits import json_values_within

PROTOCOL = "sgxcloud-cleanroom/1"
HEADER = struct.Struct(">BQI")
MAX_FRAME = 16 << 20
"""Largest payload accepted: bounds the memory one frame can take (EPC is scarce)."""
MAX_OPENING_FRAME = 1 << 20
"""Largest HELLO or EVIDENCE accepted: before attestation the peer is a stranger,
who must not make us hold a full-size frame (a DCAP quote is a few KiB)."""
MAX_OPENING_VALUES = 4096
"""JSON values and keys a HELLO or EVIDENCE may hold, checked before it is
parsed (a 1 MiB frame of empty lists cost a node ~90 ms of CPU to parse); a
real HELLO holds one approval per provider (~15 values each)."""
MAX_REQUEST_FRAME = 64 << 10
MAX_REQUEST_VALUES = 256
"""Bounds of a REQUEST to a listener (a node): requests are a few fields
(``describe``, ``send`` a dataset, ``bye``), and passing attestation proves
little (in simulated mode, holding the approvals), so a 16 MiB REQUEST of
empty lists must not cost a node seconds of CPU to parse."""

DATA_CHUNK = 1 << 20


class Kind(enum.IntEnum):
    HELLO = 1
    EVIDENCE = 2
    REQUEST = 3
    RESPONSE = 4
    DATA = 5
    END = 6
    ERROR = 7


class FramedConnection:
    """Sequenced frames over one TLS connection."""

    def __init__(self, tls: TlsConnection) -> None:
        self.tls = tls
        self._send_seq = 0
        self._recv_seq = 0

    def send(self, kind: Kind, payload: bytes) -> None:
        if len(payload) > MAX_FRAME:
            raise ProtocolViolation("frame too large to send")
        self.send_raw(kind, self._send_seq, payload)
        self._send_seq += 1

    def send_raw(self, kind: int, seq: int, payload: bytes) -> None:
        """Write a frame with an explicit sequence number (tests replay with this)."""
        self.tls.sendall(HEADER.pack(kind, seq, len(payload)) + payload)

    def send_json(self, kind: Kind, obj: dict[str, Any]) -> None:
        self.send(kind, json.dumps(obj, separators=(",", ":")).encode())

    def recv(self, limit: int = MAX_FRAME) -> tuple[Kind, bytes]:
        """The next frame; one whose declared length exceeds ``limit`` ends the
        session before its payload is read."""
        kind, seq, length = HEADER.unpack(self.tls.recv_exact(HEADER.size))
        if seq != self._recv_seq:
            raise ProtocolViolation(
                f"message out of sequence (got #{seq}, expected #{self._recv_seq}): "
                "replayed or reordered; session closed"
            )
        if length > min(limit, MAX_FRAME):
            raise ProtocolViolation("frame larger than the protocol allows")
        try:
            frame_kind = Kind(kind)
        except ValueError as exc:
            raise ProtocolViolation(f"unknown frame kind {kind}") from exc
        payload = self.tls.recv_exact(length) if length else b""
        self._recv_seq += 1
        return frame_kind, payload

    def recv_json(
        self, *expected: Kind, limit: int = MAX_FRAME, max_values: int | None = None
    ) -> tuple[Kind, dict[str, Any]]:
        """The next frame's JSON object; ``max_values`` bounds its values before parsing."""
        kind, payload = self.recv(limit)
        if kind not in expected and kind is not Kind.ERROR:
            wanted = "/".join(k.name for k in expected)
            raise ProtocolViolation(f"expected {wanted}, got {kind.name}")
        if max_values is not None and not json_values_within(payload, max_values):
            raise ProtocolViolation(f"{kind.name} message holds too many values")
        try:
            obj = json.loads(payload)
        except ValueError as exc:
            raise ProtocolViolation(f"malformed {kind.name} message") from exc
        if not isinstance(obj, dict):
            raise ProtocolViolation(f"malformed {kind.name} message")
        if kind is Kind.ERROR:
            raise RemoteError(
                str(obj.get("message", "peer reported an error"))[:500],
                str(obj.get("code", "error")),
            )
        return kind, obj

    @property
    def received(self) -> int:
        """Frames received so far (the opening's included)."""
        return self._recv_seq

    def send_error(self, code: str, message: str) -> None:
        # The peer may already be gone; the refusal stands either way.
        with contextlib.suppress(TransportError):
            self.send_json(Kind.ERROR, {"code": code, "message": message})

    def close(self) -> None:
        self.tls.close()


@dataclass
class AttestedChannel:
    """A framed connection whose peer has passed attestation for this session."""

    frames: FramedConnection
    peer: Any  # sgxcloud.cas.evidence.VerifiedEvidence
    peer_hello: dict[str, Any]
    activity: Callable[[bool], bool] | None = None
    """Set by a listener (:class:`~.server.AttestedServer`): told True when a
    request has arrived whole (in progress: never taken) and False when the
    session waits for the next one (idle: its place may go to a newcomer);
    returns False once the listener has taken the session."""

    def next_request(self, idle_timeout: float, work_timeout: float) -> dict[str, Any] | None:
        """The peer's next REQUEST, or None when it ended the session or left it
        idle for ``idle_timeout`` seconds.

        While waiting the session is idle; once the request has arrived whole it
        is in progress until the next call, and writes may then stall for
        ``work_timeout`` seconds each.
        """
        if self.activity is not None and not self.activity(False):
            return None
        self.set_timeout(idle_timeout)
        try:
            _, request = self.frames.recv_json(
                Kind.REQUEST, limit=MAX_REQUEST_FRAME, max_values=MAX_REQUEST_VALUES
            )
        except (PeerClosed, PeerTimedOut):
            return None
        except TransportError:
            if self.activity is not None and not self.activity(False):
                return None  # taken by the listener: its socket was shut
            raise
        if self.activity is not None and not self.activity(True):
            return None
        self.set_timeout(work_timeout)
        return request

    # Convenience pass-throughs so callers speak to the channel, not its parts.
    def request(self, obj: dict[str, Any]) -> None:
        self.frames.send_json(Kind.REQUEST, obj)

    def respond(self, obj: dict[str, Any]) -> None:
        self.frames.send_json(Kind.RESPONSE, obj)

    def refuse(self, code: str, message: str) -> None:
        self.frames.send_error(code, message)

    def close(self) -> None:
        self.frames.close()

    def set_timeout(self, seconds: float) -> None:
        """How long a read or write may stall from now on (openings use the default)."""
        self.frames.tls.timeout = seconds

    def send_stream(self, chunks: Iterator[bytes], trailer: dict[str, Any]) -> None:
        """Send bytes as DATA frames, then END with ``trailer``."""
        for chunk in chunks:
            for start in range(0, len(chunk), DATA_CHUNK):
                self.frames.send(Kind.DATA, chunk[start : start + DATA_CHUNK])
        self.frames.send_json(Kind.END, trailer)

    def receive_stream(self, sink) -> dict[str, Any]:
        """Copy DATA frames into ``sink.write`` until END; returns END's trailer.

        An ERROR frame mid-stream raises :class:`RemoteError`; the caller must
        then discard whatever ``sink`` received (nothing is half-ingested).
        """
        while True:
            kind, payload = self.frames.recv()
            if kind is Kind.DATA:
                sink.write(payload)
                continue
            if kind in (Kind.END, Kind.ERROR):
                try:
                    obj = json.loads(payload or b"{}")
                except ValueError as exc:
                    raise ProtocolViolation(f"malformed {kind.name} message") from exc
                if kind is Kind.ERROR:
                    raise RemoteError(
                        str(obj.get("message", "peer failed"))[:500], str(obj.get("code", "error"))
                    )
                return obj
            raise ProtocolViolation(f"unexpected {kind.name} inside a data stream")


def _hello(role: str, policy: PeerPolicy, nonce: bytes, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "role": role,
        "definition_hash": policy.definition_hash,
        "nonce": nonce.hex(),
        "extra": extra,
    }


def _read_hello(
    frames: FramedConnection, policy: PeerPolicy, *, answering: bool = False
) -> dict[str, Any]:
    """The peer's HELLO, checked; ``answering``: this side has not said its HELLO yet.

    A server refuses a HELLO for another definition before anything of its own
    is said, so its refusal names only what the peer sent: the stranger who
    asked learns no part of this side's definition hash (red team rt7 finding
    8: it told 64 bits of it, enough to tell which collaboration a host serves
    and to link its nodes).  The client has sent its hash already; its refusal
    names both, for its operator.
    """
    _, hello = frames.recv_json(Kind.HELLO, limit=MAX_OPENING_FRAME, max_values=MAX_OPENING_VALUES)
    if hello.get("protocol") != PROTOCOL:
        raise ProtocolViolation(f"peer speaks {hello.get('protocol')!r}, not {PROTOCOL}")
    try:
        nonce = bytes.fromhex(str(hello.get("nonce", "")))
    except ValueError as exc:
        raise ProtocolViolation("malformed nonce in HELLO") from exc
    if len(nonce) != NONCE_SIZE:
        raise ProtocolViolation("malformed nonce in HELLO")
    if hello.get("definition_hash") != policy.definition_hash:
        theirs = str(hello.get("definition_hash"))[:16]
        ours = "another" if answering else f"{policy.definition_hash[:16]}…"
        raise PeerRefused(
            f"peer runs collaboration definition {theirs}…, this side runs {ours}; a changed "
            "definition needs fresh approvals and a restart with the same file on every side"
        )
    hello["nonce_bytes"] = nonce
    return hello


Proof = Callable[[bytes, bytes], dict[str, Any]]
"""Extra fields for this side's EVIDENCE message, from the peer's nonce and this
side's TLS key (the coordinator's proof of its signer, ``signer.session_proof``)."""


def _evidence_message(
    attester: Attester,
    frames: FramedConnection,
    policy: PeerPolicy,
    peer_nonce: bytes,
    proof: Proof | None = None,
) -> dict[str, Any]:
    own_key = public_key_der(frames.tls.own_certificate())
    evidence = attester.evidence(report_data(own_key, policy.definition_hash, peer_nonce))
    message = {"format": evidence.format, "raw": base64.b64encode(evidence.raw).decode()}
    if proof is not None:
        message.update(proof(peer_nonce, own_key))
    return message


@dataclass(frozen=True)
class Opening:
    """What a server saw of a client's session opening, for its ``admit`` check."""

    hello: dict[str, Any]
    evidence: dict[str, Any]
    """The client's EVIDENCE message, with any fields beyond the evidence."""
    nonce: bytes
    """The nonce this side sent."""
    peer_key: bytes
    """SubjectPublicKeyInfo DER of the TLS key the client used in this handshake."""


def _check_evidence(
    frames: FramedConnection, policy: PeerPolicy, message: dict[str, Any], own_nonce: bytes
) -> Any:
    from sgxcloud.cas.evidence.model import Evidence

    try:
        evidence = Evidence(format=str(message["format"]), raw=base64.b64decode(message["raw"]))
    except (KeyError, ValueError) as exc:
        raise ProtocolViolation("malformed EVIDENCE message") from exc
    peer_key = public_key_der(frames.tls.peer_certificate())
    return policy.check(evidence, peer_key, own_nonce)


def open_client(
    tls: TlsConnection,
    role: str,
    policy: PeerPolicy,
    attester: Attester,
    extra: dict[str, Any] | None = None,
    proof: Proof | None = None,
) -> AttestedChannel:
    """Client side of the session opening; raises PeerRefused / RemoteError on refusal.
    ``proof`` adds fields to this side's EVIDENCE message (older servers ignore them)."""
    frames = FramedConnection(tls)
    try:
        nonce = os.urandom(NONCE_SIZE)
        frames.send_json(Kind.HELLO, _hello(role, policy, nonce, extra or {}))
        hello = _read_hello(frames, policy)
        frames.send_json(
            Kind.EVIDENCE, _evidence_message(attester, frames, policy, hello["nonce_bytes"], proof)
        )
        _, message = frames.recv_json(
            Kind.EVIDENCE, limit=MAX_OPENING_FRAME, max_values=MAX_OPENING_VALUES
        )
        peer = _check_evidence(frames, policy, message, nonce)
    except PeerRefused as exc:
        frames.send_error("refused", str(exc))
        frames.close()
        raise
    except TransportError:
        frames.close()
        raise
    return AttestedChannel(frames, peer, hello)


def open_server(
    tls: TlsConnection,
    role: str,
    policy: PeerPolicy,
    attester: Attester,
    extra: dict[str, Any] | None = None,
    admit: Callable[[Any, Opening], None] | None = None,
    vouch: Callable[[Opening], None] | None = None,
    working: Callable[[bool], None] | None = None,
) -> AttestedChannel:
    """Server side: refuses (with an ERROR frame and a reason) before sending anything else.

    ``vouch(opening)`` may raise :class:`PeerRefused` before the evidence is
    verified, for a cheap check that needs no verified peer (a pinned
    coordinator's signature: a stranger then costs no quote verification);
    ``admit(verified_peer, opening)`` after it, for checks beyond attestation
    (a node's approvals), still inside the opening.

    ``working(False)`` is called when this side starts waiting for the peer
    (its HELLO sent), ``working(True)`` when the peer's part has arrived
    (its EVIDENCE) and the wait is this side's: a listener counts its grace
    only while it waits on the peer.
    """
    frames = FramedConnection(tls)
    try:
        nonce = os.urandom(NONCE_SIZE)
        hello = _read_hello(frames, policy, answering=True)
        frames.send_json(Kind.HELLO, _hello(role, policy, nonce, extra or {}))
        if working:
            working(False)
        _, message = frames.recv_json(
            Kind.EVIDENCE, limit=MAX_OPENING_FRAME, max_values=MAX_OPENING_VALUES
        )
        if working:
            working(True)
        opening = Opening(hello, message, nonce, public_key_der(frames.tls.peer_certificate()))
        if vouch:
            vouch(opening)
        peer = _check_evidence(frames, policy, message, nonce)
        if admit:
            admit(peer, opening)
        frames.send_json(
            Kind.EVIDENCE, _evidence_message(attester, frames, policy, hello["nonce_bytes"])
        )
    except PeerRefused as exc:
        frames.send_error("refused", str(exc))
        frames.close()
        raise
    except TransportError:
        frames.close()
        raise
    return AttestedChannel(frames, peer, hello)
