"""Attested TLS between clean-room enclaves (nodes and coordinator).

Each process makes a fresh TLS key; its attestation evidence binds that key,
the collaboration definition hash and the peer's nonce (:mod:`.binding`).
Both sides verify the other's evidence against the definition's pins before
any application frame moves (:mod:`.channel`).
"""

from sgxcloud.cleanroom.transport.binding import (
    Attester,
    GramineAttester,
    PeerPolicy,
    SimulatedAttester,
    report_data,
    verifier_for,
)
from sgxcloud.cleanroom.transport.channel import (
    AttestedChannel,
    FramedConnection,
    Kind,
    open_client,
    open_server,
)
from sgxcloud.cleanroom.transport.errors import (
    PeerClosed,
    PeerRefused,
    PeerTimedOut,
    ProtocolViolation,
    RemoteError,
    TransportError,
)
from sgxcloud.cleanroom.transport.server import AttestedServer
from sgxcloud.cleanroom.transport.tls import (
    TlsIdentity,
    accept,
    connect,
    fetch_server_certificate,
    pinned_client_context,
    public_key_der,
)

__all__ = [
    "AttestedChannel",
    "AttestedServer",
    "Attester",
    "FramedConnection",
    "GramineAttester",
    "Kind",
    "PeerClosed",
    "PeerPolicy",
    "PeerRefused",
    "PeerTimedOut",
    "ProtocolViolation",
    "RemoteError",
    "SimulatedAttester",
    "TlsIdentity",
    "TransportError",
    "accept",
    "connect",
    "fetch_server_certificate",
    "open_client",
    "open_server",
    "pinned_client_context",
    "public_key_der",
    "report_data",
    "verifier_for",
]
