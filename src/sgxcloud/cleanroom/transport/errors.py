"""Verdicts of the attested channel.

At the trust boundary every low-level failure (TLS alert, bad frame, failed
quote check) becomes one of these, with a message that names what was wrong
but never carries key material or data.  The signed-request verdicts of the
coordinator's HTTP API (:mod:`.request_auth`, which re-exports them) are here
too: ``RequestRejected`` (HTTP 401, exit status 4) and ``NonceStoreError``
(exit status 3).
"""

from __future__ import annotations

from sgxcloud.errors import SgxcloudError


class TransportError(SgxcloudError):
    """The channel failed: peer unreachable, closed, or spoke nonsense."""

    exit_code = 3


class PeerClosed(TransportError):
    """The peer closed the connection (the normal end of a session, or a crash)."""


class PeerTimedOut(TransportError):
    """The peer sent (or took) nothing for as long as this side waits."""


class PeerRefused(TransportError):
    """The peer's attestation, definition or approvals are not acceptable."""

    exit_code = 4


class ProtocolViolation(TransportError):
    """A frame arrived out of sequence, twice, too large, or of the wrong kind."""

    exit_code = 3


class RemoteError(TransportError):
    """The peer reported a refusal or failure; ``str(err)`` is its one-line reason."""

    exit_code = 3

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


class RequestRejected(TransportError):
    """The request's signature, party, time or nonce is not acceptable (HTTP 401)."""

    exit_code = 4


class NonceStoreError(TransportError):
    """The used-nonce store cannot be opened or written: no request is accepted."""

    exit_code = 3
