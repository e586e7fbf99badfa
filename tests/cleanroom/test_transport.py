"""Attested TLS between clean-room processes, over real sockets on loopback."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sgxcloud.cleanroom.transport import (
    AttestedServer,
    GramineAttester,
    Kind,
    PeerPolicy,
    PeerRefused,
    RemoteError,
    SimulatedAttester,
    TlsIdentity,
    TransportError,
    connect,
    open_client,
    report_data,
    verifier_for,
)
from sgxcloud.sgx.identity import EnclaveIdentity

COORD = EnclaveIdentity(mrenclave="c" * 64, mrsigner="5" * 64, isvprodid=1, isvsvn=1, debug=False)
NODE = EnclaveIdentity(mrenclave="a" * 64, mrsigner="5" * 64, isvprodid=2, isvsvn=1, debug=False)
ROGUE = EnclaveIdentity(mrenclave="e" * 64, mrsigner="5" * 64, isvprodid=1, isvsvn=1, debug=False)
DEF_HASH = "sha256:" + "1" * 64


def eventually(condition, timeout=5.0) -> bool:
    """The server thread records refusals just after answering; give it a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def policy(pins, definition_hash=DEF_HASH, allow_simulation=True) -> PeerPolicy:
    return PeerPolicy(
        definition_hash=definition_hash,
        mrenclaves=frozenset(p.mrenclave for p in pins),
        allow_simulation=allow_simulation,
        verifier=verifier_for(),
    )


@dataclass
class Echo:
    """A node-like server that records what it accepted and refused."""

    requests: list = field(default_factory=list)
    refusals: list = field(default_factory=list)

    def handle(self, channel) -> None:
        while True:
            _, req = channel.frames.recv_json(Kind.REQUEST)
            self.requests.append(req)
            channel.respond({"echo": req, "peer": channel.peer.identity.mrenclave})


@pytest.fixture
def node_server():
    servers = []

    def start(server_policy=None, attester=None):
        echo = Echo()
        server = AttestedServer(
            "127.0.0.1",
            0,
            TlsIdentity.generate("node"),
            "node",
            server_policy or policy([COORD]),
            attester or SimulatedAttester(NODE),
            echo.handle,
            on_refusal=echo.refusals.append,
        )
        server.start()
        servers.append(server)
        return server, echo

    yield start
    for server in servers:
        server.stop()


def client(server, client_policy=None, attester=None, identity=None):
    tls = connect(server.address, identity or TlsIdentity.generate("coordinator"))
    return open_client(
        tls, "coordinator", client_policy or policy([NODE]), attester or SimulatedAttester(COORD)
    )


def test_mutual_attestation_and_request(node_server):
    server, _echo = node_server()
    channel = client(server)
    assert channel.peer.identity.mrenclave == NODE.mrenclave
    assert channel.peer.simulated
    channel.request({"op": "ping"})
    _, answer = channel.frames.recv_json(Kind.RESPONSE)
    assert answer == {"echo": {"op": "ping"}, "peer": COORD.mrenclave}
    channel.close()


def test_node_refuses_wrong_mrenclave(node_server):
    server, echo = node_server()
    with pytest.raises(RemoteError, match="not pinned"):
        client(server, attester=SimulatedAttester(ROGUE))
    assert echo.requests == []
    assert eventually(lambda: any("not pinned" in r for r in echo.refusals))


def test_client_refuses_wrong_node_mrenclave(node_server):
    server, _echo = node_server(attester=SimulatedAttester(ROGUE))
    with pytest.raises(PeerRefused, match="not pinned"):
        client(server)


def test_changed_definition_refused(node_server):
    server, echo = node_server()
    changed = policy([NODE], definition_hash="sha256:" + "2" * 64)
    with pytest.raises(RemoteError, match="definition"):
        client(server, client_policy=changed)
    assert echo.requests == []


def test_simulated_evidence_refused_when_hardware_required(node_server):
    server, echo = node_server(server_policy=policy([COORD], allow_simulation=False))
    with pytest.raises(RemoteError, match="SIMULATED"):
        client(server)
    assert echo.requests == []


class Recording:
    """An attester that remembers the evidence it made (to replay it later)."""

    def __init__(self, inner):
        self.inner = inner
        self.simulated = True
        self.made = []

    def evidence(self, data):
        ev = self.inner.evidence(data)
        self.made.append(ev)
        return ev


class Replaying:
    simulated = True

    def __init__(self, evidence):
        self._evidence = evidence

    def evidence(self, _data):
        return self._evidence


def test_replayed_evidence_refused(node_server):
    server, _echo = node_server()
    recorder = Recording(SimulatedAttester(COORD))
    identity = TlsIdentity.generate("coordinator")
    client(server, attester=recorder, identity=identity).close()
    # Same TLS key, same definition, genuine evidence, but from an earlier session.
    with pytest.raises(RemoteError, match="not bound"):
        client(server, attester=Replaying(recorder.made[0]), identity=identity)


def test_evidence_for_another_key_refused(node_server):
    server, _echo = node_server()
    genuine = TlsIdentity.generate("coordinator")

    class Relay:  # genuine enclave's evidence, attacker's TLS key
        simulated = True

        def evidence(self, _data):
            nonce = b"\0" * 32
            return SimulatedAttester(COORD).evidence(
                report_data(genuine.public_key_der(), DEF_HASH, nonce)
            )

    with pytest.raises(RemoteError, match="not bound"):
        client(server, attester=Relay())


def test_replayed_application_frame_rejected(node_server):
    server, echo = node_server()
    channel = client(server)
    channel.request({"op": "first"})
    channel.frames.recv_json(Kind.RESPONSE)
    # Re-send the REQUEST with the sequence number it had before (a replay).
    seq = channel.frames._send_seq - 1
    channel.frames.send_raw(Kind.REQUEST, seq, b'{"op":"first"}')
    with pytest.raises(TransportError):
        channel.frames.recv_json(Kind.RESPONSE)
    assert echo.requests == [{"op": "first"}]
    assert eventually(lambda: any("out of sequence" in r for r in echo.refusals))


class TamperingProxy:
    """Forwards TCP bytes; flips one bit in client->server traffic after ``after`` bytes."""

    def __init__(self, target, after=None, record=None):
        self.target = target
        self.after = after
        self.record = record
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._run, daemon=True).start()

    @property
    def address(self):
        return self.listener.getsockname()[:2]

    def _run(self):
        down, _ = self.listener.accept()
        up = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(up, down, False), daemon=True).start()
        self._pump(down, up, True)

    def _pump(self, src, dst, tamper):
        seen = 0
        try:
            while data := src.recv(65536):
                if tamper and self.record is not None:
                    self.record.append(data)
                if tamper and self.after is not None and seen <= self.after < seen + len(data):
                    buf = bytearray(data)
                    buf[self.after - seen] ^= 0x01
                    data = bytes(buf)
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def test_tampered_record_rejected(node_server):
    server, echo = node_server()
    # Measure how many bytes the session opening takes, then tamper right after.
    record: list[bytes] = []
    plain = TamperingProxy(server.address, record=record)
    channel = open_client(
        connect(plain.address, TlsIdentity.generate("c")),
        "coordinator",
        policy([NODE]),
        SimulatedAttester(COORD),
    )
    opened = sum(len(r) for r in record)
    channel.close()

    proxy = TamperingProxy(server.address, after=opened + 10)
    channel = open_client(
        connect(proxy.address, TlsIdentity.generate("c")),
        "coordinator",
        policy([NODE]),
        SimulatedAttester(COORD),
    )
    channel.request({"op": "pay-attention"})
    with pytest.raises(TransportError):
        channel.frames.recv_json(Kind.RESPONSE)
    assert echo.requests == []


def test_replayed_connection_rejected(node_server):
    server, echo = node_server()
    record: list[bytes] = []
    proxy = TamperingProxy(server.address, record=record)
    channel = open_client(
        connect(proxy.address, TlsIdentity.generate("c")),
        "coordinator",
        policy([NODE]),
        SimulatedAttester(COORD),
    )
    channel.request({"op": "once"})
    channel.frames.recv_json(Kind.RESPONSE)
    channel.close()
    assert echo.requests == [{"op": "once"}]
    # Replay the client's bytes verbatim on a new connection: the server's fresh
    # handshake randomness makes them worthless.
    with socket.create_connection(server.address) as raw:
        try:
            for chunk in record:
                raw.sendall(chunk)
            raw.settimeout(5)
            while raw.recv(65536):
                pass
        except OSError:
            pass
    assert echo.requests == [{"op": "once"}]


def test_unreachable_peer_is_a_clear_error():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach"):
        connect(("127.0.0.1", port), TlsIdentity.generate("c"), timeout=2)


def test_public_surface_is_sorted_and_complete():
    import sgxcloud.cleanroom.transport as transport

    assert transport.__all__ == sorted(transport.__all__)
    assert all(hasattr(transport, name) for name in transport.__all__)


# -- the hardware path: a real Intel-signed quote through Gramine's pseudo-files ---------

DCAP = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "dcap"
QUOTE_TIME = 1752919277  # inside the sample collateral's validity window
QUOTE_MRENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"


@pytest.fixture
def recorded_attestation(tmp_path):
    """A recorded /dev/attestation: whatever REPORTDATA is written, this quote
    (REPORTDATA "Hello, world!") comes back, as a replayed quote would."""
    if not (DCAP / "sgx_quote").exists():
        pytest.skip("shared DCAP test vectors not present")
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "user_report_data").write_bytes(b"")
    (root / "quote").write_bytes((DCAP / "sgx_quote").read_bytes())
    return root


# The advisories Intel lists for the recorded quote's platform (testdata README).
QUOTE_ADVISORIES = frozenset({"INTEL-SA-00289", "INTEL-SA-00615"})


def hardware_policy(tcb_status="ConfigurationAndSWHardeningNeeded", advisories=QUOTE_ADVISORIES):
    from sgxcloud.cas.collateral import FileCollateral

    return PeerPolicy(
        definition_hash=DEF_HASH,
        mrenclaves=frozenset({QUOTE_MRENCLAVE}),
        allow_simulation=False,
        verifier=verifier_for(FileCollateral(DCAP / "sgx_quote_collateral.json")),
        allowed_tcb_statuses=frozenset({tcb_status}),
        tolerated_advisories=advisories,
        clock=lambda: QUOTE_TIME,
    )


def test_genuine_quote_not_bound_to_the_session_is_refused(recorded_attestation, node_server):
    attester = GramineAttester(recorded_attestation)
    assert GramineAttester.available(recorded_attestation)
    binding = report_data(b"spki", DEF_HASH, b"\1" * 32)
    evidence = attester.evidence(binding)
    assert (recorded_attestation / "user_report_data").read_bytes() == binding
    verified = hardware_policy().verifier.verify(evidence, QUOTE_TIME)
    assert not verified.simulated and verified.identity.mrenclave == QUOTE_MRENCLAVE
    with pytest.raises(PeerRefused, match="not bound"):
        hardware_policy().check(evidence, b"spki", b"\1" * 32)
    # The same over a real connection: a node requiring hardware refuses it.
    server, echo = node_server(server_policy=hardware_policy())
    with pytest.raises(RemoteError, match="not bound"):
        client(server, attester=attester)
    assert echo.requests == []


def test_genuine_quote_with_a_disallowed_tcb_status_is_refused(recorded_attestation):
    evidence = GramineAttester(recorded_attestation).evidence(bytes(64))
    with pytest.raises(PeerRefused, match="TCB status"):
        hardware_policy(tcb_status="UpToDate").check(evidence, b"spki", b"\1" * 32)


def test_genuine_quote_with_untolerated_advisories_is_refused(recorded_attestation):
    evidence = GramineAttester(recorded_attestation).evidence(bytes(64))
    with pytest.raises(PeerRefused, match="INTEL-SA-00615"):
        hardware_policy(advisories=frozenset({"INTEL-SA-00289"})).check(
            evidence, b"spki", b"\1" * 32
        )
    # "*" tolerates any advisory; the quote then fails only on its binding.
    with pytest.raises(PeerRefused, match="not bound"):
        hardware_policy(advisories=frozenset({"*"})).check(evidence, b"spki", b"\1" * 32)


def test_no_attestation_device_and_no_simulation_is_a_clear_error(tmp_path):
    from sgxcloud.cleanroom.definition import definition_from_dict
    from sgxcloud.cleanroom.local import example_definition
    from sgxcloud.cleanroom.transport.trust import local_attester

    definition = definition_from_dict(example_definition())
    with pytest.raises(PeerRefused, match="--simulate"):
        local_attester(definition, "node", simulate=False, attestation_root=tmp_path)
