"""Collateral from files and from a PCCS: a real HTTP server on loopback, no mocks.

The server speaks the Intel PCS v4 API shape and serves the real collateral of
../shared/testdata/dcap, so everything the client fetches still has to pass
dcap-qvl's signature checks.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sgxcloud.cas import pck
from sgxcloud.cas.collateral import (
    FileCollateral,
    PccsCollateral,
    collateral_window,
    raw_member,
)
from sgxcloud.cas.errors import CollateralError, EvidenceError, MalformedEvidenceError
from sgxcloud.cas.evidence import DcapVerifier, Evidence

DAY = 86_400  # PccsCollateral's default max_age: a cached piece is asked for again


class LoopbackPccs:
    """A real HTTP server on loopback serving real collateral, recording requests."""

    def __init__(self, collateral: dict[str, str], tee: str, fmspc: str, ca: str,
                 pck_crl_encoding: str = "der", tls=None) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
        self.requests: list[str] = []
        self.broken: dict[str, int] = {}  # path -> status to answer instead
        self.drop_headers = False
        self.hold: dict[str, threading.Event] = {}  # query text -> gate the answer waits for
        self.held = threading.Event()  # set when a request starts waiting at a gate
        v4 = "certification/v4"
        tcb_body = (f'{{"tcbInfo": {collateral["tcb_info"]},\n "signature": '
                    f'"{collateral["tcb_info_signature"]}"}}')  # fmt: skip
        qe_body = (f'{{"enclaveIdentity":{collateral["qe_identity"]},"signature":'
                   f'"{collateral["qe_identity_signature"]}"}}')  # fmt: skip
        pck_der = bytes.fromhex(collateral["pck_crl"])
        pck_body = pck_der
        if pck_crl_encoding == "pem":
            pck_body = x509.load_der_x509_crl(pck_der).public_bytes(Encoding.PEM)
        self.routes: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {
            (f"/{tee}/{v4}/tcb", f"fmspc={fmspc}"): (
                tcb_body.encode(),
                {"TCB-Info-Issuer-Chain": quote(collateral["tcb_info_issuer_chain"])},
            ),
            (f"/{tee}/{v4}/qe/identity", ""): (
                qe_body.encode(),
                {
                    "SGX-Enclave-Identity-Issuer-Chain": quote(
                        collateral["qe_identity_issuer_chain"]
                    )
                },
            ),
            (f"/sgx/{v4}/pckcrl", f"ca={ca}&encoding=der"): (
                pck_body,
                {"SGX-PCK-CRL-Issuer-Chain": quote(collateral["pck_crl_issuer_chain"])},
            ),
            (f"/sgx/{v4}/rootcacrl", ""): (collateral["root_ca_crl"].encode(), {}),  # hex, as PCCS
        }
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = "&".join(f"{k}={v[0]}" for k, v in sorted(parse_qs(url.query).items()))
                server.requests.append(url.path)
                for needle, gate in server.hold.items():
                    if needle in url.query:
                        server.held.set()
                        gate.wait(60)  # a PCCS slow to answer, until the test opens the gate
                status = server.broken.get(url.path)
                route = server.routes.get((url.path, query))
                if status or route is None:
                    self.send_response(status or 404)
                    self.end_headers()
                    return
                body, headers = route
                self.send_response(200)
                for name, value in headers.items():
                    if not server.drop_headers:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:  # a PCCS behind a private CA
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _pccs(testdata: Path, name: str, tee: str, fmspc: str, ca: str, **kw):
    collateral = json.loads((testdata / f"{name}_collateral.json").read_text())
    server = LoopbackPccs(collateral, tee, fmspc, ca, **kw)
    return server


@pytest.fixture
def pccs(testdata):
    server = _pccs(testdata, "sgx_quote", "sgx", "00A067110000", "processor")
    yield server
    server.close()


# -- files ------------------------------------------------------------------------


def test_file_collateral_window_is_the_readme_window(sgx_collateral_path, vectors):
    window = collateral_window(FileCollateral(sgx_collateral_path).get(b"", 0))
    assert (window.not_before, window.not_after) == vectors.sgx_window


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read collateral file"),
        ("not json", "not JSON"),
        ("[]", "expected a JSON object"),
        ('{"tcb_info": "x"}', "missing collateral fields"),
    ],
)
def test_bad_collateral_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "collateral.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CollateralError, match=message) as caught:
        FileCollateral(path)
    assert "\n" not in str(caught.value) and caught.value.exit_code == 2


def test_collateral_with_garbage_values_is_refused(sgx_collateral_path, tmp_path):
    document = json.loads(sgx_collateral_path.read_text())
    document["pck_crl"] = "zz"
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(CollateralError):
        FileCollateral(path)
    document = json.loads(sgx_collateral_path.read_text())
    document["tcb_info"] = '{"id": "SGX"}'  # no validity dates
    path.write_text(json.dumps(document))
    with pytest.raises(CollateralError, match="issueDate"):
        FileCollateral(path)


# -- raw member extraction (what Intel signed, byte for byte) ----------------------------


def test_raw_member_returns_the_exact_source_text():
    body = '{ "a" : [1, {"b": "}"}] ,"tcbInfo":{"x":"\\u00e9\\"", "y" : 1.50},"z":null}'
    assert raw_member(body, "tcbInfo") == '{"x":"\\u00e9\\"", "y" : 1.50}'
    assert raw_member(body, "a") == '[1, {"b": "}"}]'
    assert raw_member(body, "z") == "null"
    with pytest.raises(KeyError):
        raw_member(body, "missing")
    with pytest.raises(ValueError):
        raw_member("[1]", "a")


# -- PCCS ---------------------------------------------------------------------------


def test_pccs_collateral_verifies_like_the_file(pccs, tmp_path, sgx_quote, sgx_collateral_path,
                                                vectors):  # fmt: skip
    evidence = Evidence("dcap", sgx_quote)
    from_pccs = DcapVerifier(PccsCollateral(pccs.url, tmp_path)).verify(evidence, vectors.sgx_now)
    from_file = DcapVerifier(FileCollateral(sgx_collateral_path)).verify(evidence, vectors.sgx_now)
    assert from_pccs == from_file
    assert sorted(pccs.requests) == [
        "/sgx/certification/v4/pckcrl",
        "/sgx/certification/v4/qe/identity",
        "/sgx/certification/v4/rootcacrl",
        "/sgx/certification/v4/tcb",
    ]


def test_pccs_cache_serves_while_valid_and_survives_restart(pccs, tmp_path, sgx_quote, vectors):
    start = vectors.sgx_window[0]
    verifier = DcapVerifier(PccsCollateral(pccs.url, tmp_path))
    evidence = Evidence("dcap", sgx_quote)
    for now in (start, start + 3600, start + DAY - 1):
        verifier.verify(evidence, now)
    assert len(pccs.requests) == 4  # fetched once, then served from the cache (for a day)
    restarted = DcapVerifier(PccsCollateral(pccs.url, tmp_path))
    assert restarted.verify(evidence, start + 7200).tcb_status == vectors.status
    assert len(pccs.requests) == 4  # the on-disk cache was enough
    assert {p.name for p in tmp_path.glob("*.json")} == {
        "tcb-sgx-00A067110000.json", "qe-sgx.json", "pckcrl-processor.json", "rootcacrl.json",
    }  # fmt: skip


def test_a_cached_piece_is_asked_for_again_after_a_day_and_serves_while_the_pccs_is_down(
    pccs, tmp_path, sgx_quote, vectors
):
    """Red team rt9 F8's sibling: a cached piece (the PCK CRL, the TCB info...) served until
    its own nextUpdate, ~a month, so a newer one Intel published before then (a PCK revoked
    mid-cycle) was never fetched: the older collateral decided.  Now each piece is asked
    for again once a day old; if the PCCS cannot answer, the cached piece, still valid,
    keeps serving (asked again once per failure_ttl), also after a restart."""
    start = vectors.sgx_window[0]
    source = PccsCollateral(pccs.url, tmp_path)
    source.get(sgx_quote, start)
    source.get(sgx_quote, start + DAY - 1)
    assert len(pccs.requests) == 4
    source.get(sgx_quote, start + DAY)
    assert sorted(pccs.requests[4:]) == sorted(pccs.requests[:4])  # every piece asked again
    for path in {*pccs.requests}:
        pccs.broken[path] = 503
    later = start + 2 * DAY
    for _ in range(5):
        assert collateral_window(source.get(sgx_quote, later)).contains(later)
    assert len(pccs.requests) == 12  # each piece once (the failure is remembered)
    restarted = DcapVerifier(PccsCollateral(pccs.url, tmp_path))
    assert restarted.verify(Evidence("dcap", sgx_quote), later).tcb_status == vectors.status
    assert len(pccs.requests) == 16


def test_pccs_cache_is_never_used_past_next_update(pccs, tmp_path, sgx_quote, vectors):
    """At the QE identity's nextUpdate only that piece is refetched; the PCCS still
    has the same (now expired) one, so the answer is an error, not stale collateral."""
    source = PccsCollateral(pccs.url, tmp_path)
    source.get(sgx_quote, vectors.sgx_now)
    assert len(pccs.requests) == 4
    with pytest.raises(CollateralError, match="expired"):
        source.get(sgx_quote, vectors.sgx_window[1])
    assert pccs.requests[4:] == ["/sgx/certification/v4/qe/identity"]
    # A verifier over the same source gives no verdict it cannot stand behind.
    with pytest.raises(CollateralError):
        DcapVerifier(source).verify(Evidence("dcap", sgx_quote), vectors.sgx_window[1] + 10)


def test_damaged_cache_entries_are_refetched(pccs, tmp_path, sgx_quote, vectors):
    PccsCollateral(pccs.url, tmp_path).get(sgx_quote, vectors.sgx_now)
    (tmp_path / "qe-sgx.json").write_text("{broken")
    (tmp_path / "rootcacrl.json").write_text('{"fields": {}, "not_before": "0", "not_after": 1}')
    source = PccsCollateral(pccs.url, tmp_path)
    DcapVerifier(source).verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    assert sorted(pccs.requests[4:]) == [
        "/sgx/certification/v4/qe/identity",
        "/sgx/certification/v4/rootcacrl",
    ]


def test_pccs_pem_encoded_crl_is_accepted(testdata, tmp_path, sgx_quote, vectors):
    server = _pccs(testdata, "sgx_quote", "sgx", "00A067110000", "processor",
                   pck_crl_encoding="pem")  # fmt: skip
    try:
        verifier = DcapVerifier(PccsCollateral(server.url, tmp_path))
        assert verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now).tcb_status
    finally:
        server.close()


def test_pccs_serves_tdx_paths_for_tdx_quotes(testdata, tmp_path, vectors):
    server = _pccs(testdata, "tdx_quote", "tdx", "B0C06F000000", "platform")
    try:
        verifier = DcapVerifier(PccsCollateral(server.url, tmp_path))
        with pytest.raises(EvidenceError) as caught:
            verifier.verify(Evidence("dcap", (testdata / "tdx_quote").read_bytes()),
                            vectors.tdx_now)  # fmt: skip
        assert caught.value.code == "not-sgx-enclave"
        assert "/tdx/certification/v4/tcb" in server.requests
    finally:
        server.close()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("tcb-500", "answered 500"),
        ("qe-404", "answered 404"),
        ("headers", "lacks the"),
    ],
)
def test_pccs_failures_are_collateral_errors(pccs, tmp_path, sgx_quote, vectors, breakage,
                                             message):  # fmt: skip
    if breakage == "tcb-500":
        pccs.broken["/sgx/certification/v4/tcb"] = 500
    elif breakage == "qe-404":
        pccs.broken["/sgx/certification/v4/qe/identity"] = 404
    else:
        pccs.drop_headers = True
    with pytest.raises(CollateralError, match=message):
        PccsCollateral(pccs.url, tmp_path).get(sgx_quote, vectors.sgx_now)


def test_unreachable_pccs_is_a_collateral_error(tmp_path, sgx_quote, vectors):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(CollateralError, match="unreachable"):
        PccsCollateral(f"http://127.0.0.1:{port}", tmp_path).get(sgx_quote, vectors.sgx_now)


def test_quote_without_readable_pck_certificate(pccs, tmp_path, sgx_quote, vectors):
    with pytest.raises(CollateralError, match="platform"):
        PccsCollateral(pccs.url, tmp_path).get(sgx_quote[:600], vectors.sgx_now)
    assert pccs.requests == []


def test_attest_verify_cli_fetches_from_a_pccs(pccs, tmp_path, testdata, vectors, capsys):
    from sgxcloud.cli.main import main

    args = [
        "attest", "verify", "--quote", str(testdata / "sgx_quote"), "--pccs", pccs.url,
        "--pccs-cache", str(tmp_path), "--time", str(vectors.sgx_now), "--json",
    ]  # fmt: skip
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "accepted" and data["tcb_status"] == vectors.status
    assert main(args) == 0 and len(pccs.requests) == 4  # second run: from the disk cache


def test_pccs_behind_a_private_ca_from_the_settings_file(testdata, tmp_path, sgx_quote, vectors):
    """cas.yaml's pccs_ca_file: without it every attestation failed (503), with it they verify."""
    from sgxcloud.cas.config import load_settings
    from sgxcloud.cas.evidence import DefaultVerifier
    from sgxcloud.cas.service.server import make_loopback_tls

    tls = make_loopback_tls(tmp_path / "pccs-tls")
    server = _pccs(testdata, "sgx_quote", "sgx", "00A067110000", "processor", tls=tls)
    try:
        settings_file = tmp_path / "cas.yaml"
        base = f"collateral: pccs\npccs_url: {server.url}\npccs_timeout_seconds: 5\n"
        settings_file.write_text(base + "collateral_cache_dir: cache-a\n")
        untrusted = DefaultVerifier(load_settings(settings_file, environ={}).collateral_source())
        with pytest.raises(CollateralError):
            untrusted.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
        settings_file.write_text(
            base + f"collateral_cache_dir: cache-b\npccs_ca_file: {tls.ca_cert.name}\n"
            f"pccs_root_ca_crl_url: {server.url}/sgx/certification/v4/rootcacrl\n"
        )
        (tmp_path / tls.ca_cert.name).write_bytes(tls.ca_cert.read_bytes())  # relative to the file
        settings = load_settings(settings_file, environ={})
        assert settings.pccs_ca_file == tmp_path / tls.ca_cert.name
        verified = DefaultVerifier(settings.collateral_source()).verify(
            Evidence("dcap", sgx_quote), vectors.sgx_now
        )
        assert verified.identity.mrenclave == vectors.mrenclave
        settings_file.write_text(base + "pccs_ca_file: missing.pem\n")
        with pytest.raises(Exception, match="invalid setting pccs_ca_file"):
            load_settings(settings_file, environ={}).collateral_source()
    finally:
        server.close()


# -- denial of service through collateral (red team: forged FMSPCs, slow PCCS) -------


def _forged_fmspc(quote: bytes, fmspc: bytes) -> bytes:
    """The real quote with 6 other FMSPC bytes in its PCK leaf (same length, PEM re-encoded)."""
    import base64

    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = quote.index(begin) + len(begin)
    stop = quote.index(end, start)
    body = quote[start:stop]
    der = base64.b64decode(b"".join(body.split()))
    at = der.index(bytes.fromhex("00A067110000"))
    encoded = base64.b64encode(der[:at] + fmspc + der[at + 6 :])
    width = max(len(line) for line in body.split(b"\n"))
    lines = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    forged = quote[:start] + b"\n" + lines + b"\n" + quote[stop:]
    assert len(forged) == len(quote)
    return forged


def test_forged_fmspc_quotes_are_rejected_without_any_pccs_request(pccs, tmp_path, sgx_quote,
                                                                    vectors):  # fmt: skip
    """Before: each forged FMSPC cost one PCCS request (and a LAZY PCCS one to Intel),
    under a lock every attestation waited for, and ended in a 503 (CollateralError)."""
    import os

    source = PccsCollateral(pccs.url, tmp_path)
    verifier = DcapVerifier(source)
    for _ in range(20):
        forged = Evidence("dcap", _forged_fmspc(sgx_quote, os.urandom(6)))
        with pytest.raises(EvidenceError) as caught:
            verifier.verify(forged, vectors.sgx_now)
        assert caught.value.code == "certificate-invalid"  # a verdict, not "no verdict" (503)
    with pytest.raises(CollateralError, match="platform"):  # the source alone refuses too
        source.get(_forged_fmspc(sgx_quote, bytes(6)), vectors.sgx_now)
    assert pccs.requests == []
    assert verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now).tcb_status == (
        vectors.status
    )  # and the genuine quote still verifies
    assert list(tmp_path.iterdir()) and not list(tmp_path.glob("tcb-*-0000*"))


def test_a_failed_fetch_is_remembered_not_repeated_per_request(pccs, tmp_path, sgx_quote,
                                                              vectors):  # fmt: skip
    """Before: a failed fetch was not cached, so every request for that key fetched again."""
    pccs.broken["/sgx/certification/v4/tcb"] = 404
    source = PccsCollateral(pccs.url, tmp_path)
    for _ in range(10):
        with pytest.raises(CollateralError, match="answered 404"):
            source.get(sgx_quote, vectors.sgx_now)
    assert pccs.requests == ["/sgx/certification/v4/tcb"]


def test_a_remembered_failure_expires_after_its_ttl(pccs, tmp_path, sgx_quote, vectors):
    clock = [1000.0]
    pccs.broken["/sgx/certification/v4/tcb"] = 500
    source = PccsCollateral(pccs.url, tmp_path, failure_ttl=15, clock=lambda: clock[0])
    with pytest.raises(CollateralError):
        source.get(sgx_quote, vectors.sgx_now)
    clock[0] += 14.9
    with pytest.raises(CollateralError, match="answered 500"):
        source.get(sgx_quote, vectors.sgx_now)
    assert len(pccs.requests) == 1
    del pccs.broken["/sgx/certification/v4/tcb"]
    clock[0] += 0.2  # past the TTL: fetched again, and now it works
    assert collateral_window(source.get(sgx_quote, vectors.sgx_now)).contains(vectors.sgx_now)
    assert pccs.requests.count("/sgx/certification/v4/tcb") == 2


def test_cached_and_simulated_attestations_complete_while_a_fetch_hangs(pccs, tmp_path,
                                                                       testdata, sgx_quote,
                                                                       vectors):  # fmt: skip
    """Before: one global lock, held across the fetch, serialised every attestation
    behind it (cache hits included), and blocked threads filled every attest slot.

    A genuine quote from another platform (Cosmian's, FMSPC 30606A000000) makes the
    PCCS hang; six of them are sent through the service (4 attest slots).  Meanwhile
    a quote whose collateral is cached, and a simulated attestation, must complete.
    No timing is measured: the PCCS gate stays shut until both have finished (the
    joins' 30 s bound is only there so that the old code fails instead of hanging).
    """
    import base64
    from concurrent.futures import ThreadPoolExecutor

    from sgxcloud.cas import protocol, secrets
    from sgxcloud.cas.evidence import DefaultVerifier, make_simulated_evidence
    from sgxcloud.cas.policy import public_key_id
    from sgxcloud.cas.service.core import AttestRequest, CasService
    from sgxcloud.cas.store import Database

    try:
        from tests.cas import postgres as pg
    except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
        import postgres as pg  # type: ignore[no-redef]

    now = vectors.sgx_now
    source = PccsCollateral(pccs.url, tmp_path / "cache")
    verifier = DefaultVerifier(source)
    verifier.verify(Evidence("dcap", sgx_quote), now)  # SGX collateral now cached
    service = CasService(
        Database.open(f"sqlite:///{tmp_path / 'cas.db'}"),
        secrets.Keyring(secrets.MasterKey.generate()),
        verifier,
        attest_concurrency=4,
    )
    service.start()
    owner = pg.owner_key()
    service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), now)

    def request(raw: bytes, key) -> AttestRequest:  # type: ignore[no-untyped-def]
        nonce = service.issue_nonce(now).nonce
        return AttestRequest("shop", "web", nonce, pg.public_pem(key),
                             base64.b64encode(raw).decode())  # fmt: skip

    cosmian = (testdata / "sgx_quote_cosmian.dat").read_bytes()
    gate = threading.Event()
    pccs.hold["fmspc=30606A000000"] = gate
    pool = ThreadPoolExecutor(8)
    try:
        slow = [
            pool.submit(service.attest, request(cosmian, protocol.new_enclave_key()), now)
            for _ in range(6)
        ]
        assert pccs.held.wait(30)  # a fetch for the other platform is in flight, and hangs

        def simulated() -> protocol.Configuration:
            key = protocol.new_enclave_key()
            attest = request(b"", key)
            evidence = make_simulated_evidence(
                pg.simulated_identity(),
                protocol.report_data_for(key.public_key(), bytes.fromhex(attest.nonce)),
            )
            raw = base64.b64encode(evidence.raw).decode()
            attest = AttestRequest(attest.policy, attest.service, attest.nonce,
                                   attest.public_key, raw)  # fmt: skip
            result = service.attest(attest, now)
            return protocol.open_configuration(
                result.sealed_configuration, key, bytes.fromhex(attest.nonce)
            )

        cached = pool.submit(verifier.verify, Evidence("dcap", sgx_quote), now)
        assert cached.result(timeout=30).tcb_status == vectors.status
        assert pool.submit(simulated).result(timeout=30).argv
        assert not gate.is_set() and pccs.requests.count("/sgx/certification/v4/tcb") == 2
    finally:
        gate.set()
        for future in slow:
            with pytest.raises(CollateralError):  # no verdict: the PCCS never had it (404)
                future.result(timeout=60)
        pool.shutdown()
        service.stop()


# -- what is cached is Intel's (red team attack-cas3, finding 5) -----------------------


def _redated_tcb(pccs: LoopbackPccs) -> tuple[tuple[str, str], bytes, bytes, dict[str, str]]:
    """Intel's real TCB info with nextUpdate moved to 2099: its signature no longer verifies."""
    key = next(k for k in pccs.routes if k[0].endswith("/tcb"))
    good, headers = pccs.routes[key]
    bad = good.replace(b'"nextUpdate":"2025-07-19', b'"nextUpdate":"2099-07-19')
    assert bad != good
    return key, good, bad, headers


def test_a_bad_pccs_answer_is_never_cached(pccs, tmp_path, sgx_quote, vectors):
    """Refused when fetched, kept neither in memory nor on disk: once the PCCS
    serves Intel's collateral again (after ``failure_ttl``), attestations pass."""
    key, good, bad, headers = _redated_tcb(pccs)
    pccs.routes[key] = (bad, headers)
    source = PccsCollateral(pccs.url, tmp_path, failure_ttl=0)
    verifier = DcapVerifier(source)
    with pytest.raises(CollateralError, match="Intel's signature does not verify"):
        verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    assert not (tmp_path / "tcb-sgx-00A067110000.json").exists()
    pccs.routes[key] = (good, headers)
    assert verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now).tcb_status == (
        vectors.status
    )
    restarted = DcapVerifier(PccsCollateral(pccs.url, tmp_path, failure_ttl=0))
    assert restarted.verify(Evidence("dcap", sgx_quote), vectors.sgx_now).tcb_status == (
        vectors.status
    )


@pytest.mark.parametrize(
    ("piece", "field", "change"),
    [
        ("tcb-sgx-00A067110000", "tcb_info", lambda v: v.replace("2025-07-19", "2099-07-19", 1)),
        ("qe-sgx", "qe_identity_signature", lambda v: ("0" * 8) + v[8:]),
        ("pckcrl-processor", "pck_crl_issuer_chain", lambda v: v.split("-----END")[0][:-40]),
        ("rootcacrl", "root_ca_crl", lambda v: v[:-8] + "00000000"),
    ],
)
def test_an_altered_cache_file_is_refetched_not_trusted(
    pccs, tmp_path, sgx_quote, vectors, piece, field, change
):
    PccsCollateral(pccs.url, tmp_path).get(sgx_quote, vectors.sgx_now)
    path = tmp_path / f"{piece}.json"
    stored = json.loads(path.read_text())
    stored["fields"][field] = change(stored["fields"][field])
    path.write_text(json.dumps(stored))
    restarted = PccsCollateral(pccs.url, tmp_path)
    assert DcapVerifier(restarted).verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    assert len(pccs.requests) == 5  # the altered piece, and only it, fetched again
    assert json.loads(path.read_text())["fields"][field] != stored["fields"][field]


@pytest.mark.parametrize("member", ["tcb_info", "qe_identity"])
def test_an_altered_collateral_file_is_named_for_what_it_is(
    sgx_collateral_path, tmp_path, sgx_quote, vectors, member
):
    """A file whose TCB info / QE identity Intel did not sign: ``collateral-invalid``,
    not a platform mismatch (dcap-qvl's "Signature is invalid for tcb_info")."""
    collateral = json.loads(sgx_collateral_path.read_text())
    collateral[member] = collateral[member].replace('"version":', '"version": ', 1)
    altered = tmp_path / "collateral.json"
    altered.write_text(json.dumps(collateral))
    with pytest.raises(EvidenceError) as refused:
        DcapVerifier(FileCollateral(altered)).verify(Evidence("dcap", sgx_quote), vectors.sgx_now)
    assert refused.value.code == "collateral-invalid", refused.value.detail


# -- the piece that was asked for, in a form dcap-qvl reads (red team attack-cas4, 1, 3) --

_PLATFORM_AT = 1752919200  # inside the windows of both sample collaterals


def _tdx_routes(testdata: Path) -> dict[tuple[str, str], tuple[bytes, dict[str, str]]]:
    """Intel-signed TDX pieces (the TD_QE identity, FMSPC B0C06F000000's TCB info, the
    Platform CA's CRL), routed by path suffix so they can be served for SGX requests."""
    server = _pccs(testdata, "tdx_quote", "sgx", "00A067110000", "processor")
    server.close()
    return server.routes


def _serve_instead(pccs: LoopbackPccs, routes, suffix: str) -> None:  # type: ignore[no-untyped-def]
    mine = next(k for k in pccs.routes if k[0].endswith(suffix))
    theirs = next(k for k in routes if k[0].endswith(suffix))
    pccs.routes[mine] = routes[theirs]


def _edit(pccs: LoopbackPccs, suffix: str, change) -> None:  # type: ignore[no-untyped-def]
    key = next(k for k in pccs.routes if k[0].endswith(suffix))
    body, headers = pccs.routes[key]
    pccs.routes[key] = change(body, dict(headers))


def _space_in_signature(body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    head, _, rest = body.rpartition(b'"signature":')
    text = rest.decode()
    at = text.index('"') + 11  # ten digits into the hex
    return head + b'"signature":' + (text[:at] + " " + text[at:]).encode(), headers


def _root_first(header: str):  # type: ignore[no-untyped-def]
    def change(body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        pem = unquote(headers[header])
        end = "-----END CERTIFICATE-----"
        signer, root = [c + end for c in pem.split(end)[:2]]
        headers[header] = quote(root.strip() + "\n" + signer.strip() + "\n")
        return body, headers

    return change


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("TD_QE identity for SGX's", "not the SGX QE identity"),
        ("another FMSPC's TCB info", "not SGX TCB info"),
        ("the Platform CA's CRL for the Processor CA's", "not the CRL of the PCK processor CA"),
        ("a space in the TCB info signature", "not 128 hex digits"),
        ("the root first in the QE identity chain", "not [signing certificate, Intel SGX Root"),
    ],
)
def test_a_signed_piece_for_another_request_or_unreadable_is_never_kept(
    pccs, testdata, tmp_path, sgx_quote, vectors, case, expect
):
    """Intel-signed, yet not what was asked for (or not readable by dcap-qvl): refused
    when fetched, not stored; the corrected PCCS is used after ``failure_ttl``."""
    good = dict(pccs.routes)
    tdx = _tdx_routes(testdata)
    change = {
        "TD_QE identity for SGX's": lambda: _serve_instead(pccs, tdx, "/qe/identity"),
        "another FMSPC's TCB info": lambda: _serve_instead(pccs, tdx, "/tcb"),
        "the Platform CA's CRL for the Processor CA's": lambda: _serve_instead(
            pccs, tdx, "/pckcrl"
        ),
        "a space in the TCB info signature": lambda: _edit(pccs, "/tcb", _space_in_signature),
        "the root first in the QE identity chain": lambda: _edit(
            pccs, "/qe/identity", _root_first("SGX-Enclave-Identity-Issuer-Chain")
        ),
    }[case]
    change()
    source = PccsCollateral(pccs.url, tmp_path, failure_ttl=0)
    with pytest.raises(CollateralError, match=re.escape(expect)):
        source.get(sgx_quote, _PLATFORM_AT)
    pccs.routes.clear()
    pccs.routes.update(good)
    verifier = DcapVerifier(source)
    assert verifier.verify(Evidence("dcap", sgx_quote), _PLATFORM_AT).tcb_status == vectors.status
    restarted = DcapVerifier(PccsCollateral(pccs.url, tmp_path, failure_ttl=0))
    assert restarted.verify(Evidence("dcap", sgx_quote), _PLATFORM_AT).tcb_status == (
        vectors.status
    )


def test_a_clock_behind_the_pcs_fetches_once_per_failure_ttl_not_per_attestation(
    pccs, tmp_path, sgx_quote
):
    """Collateral not yet valid by this host's clock is not kept, and the refusal is
    remembered: 20 attestations 5 s before the TCB info's issue date fetch it once."""
    issued = 1750330571  # the SGX TCB info's issueDate
    source = PccsCollateral(pccs.url, tmp_path, failure_ttl=60)
    for _ in range(20):
        with pytest.raises(CollateralError, match="check this host's clock"):
            source.get(sgx_quote, issued - 5)
    assert pccs.requests.count("/sgx/certification/v4/tcb") == 1


def _padded_chain(quote: bytes, padding: int) -> bytes:
    """``quote`` with text appended to its PCK certificate data (PEM readers skip it)."""
    qe_auth = struct.unpack_from("<H", quote, 1012)[0]
    at = 1014 + qe_auth
    _, size = struct.unpack_from("<HI", quote, at)
    certification = quote[at + 6 : at + 6 + size] + b"x" * padding + b"\n"
    padded = bytearray(quote[:at]) + struct.pack("<HI", 5, len(certification)) + certification
    struct.pack_into("<I", padded, 432, len(padded) - 436)  # the signature data's length
    return bytes(padded)


def test_a_padded_pck_chain_pins_no_memory(sgx_quote, sgx_collateral_path, vectors):
    """Red team attack-cas4, finding 2: the chain cache kept the sender's certification
    text (up to the 1 MiB evidence limit) as its key.  Now a chain larger than
    ``MAX_PCK_CHAIN_BYTES`` is malformed evidence, and keys are 32-byte digests."""
    verifier = DcapVerifier(FileCollateral(sgx_collateral_path))
    with pytest.raises(MalformedEvidenceError, match="PCK certificate chain is"):
        verifier.verify(Evidence("dcap", _padded_chain(sgx_quote, 1 << 20)), vectors.sgx_now)
    small = _padded_chain(sgx_quote, 4000)
    assert verifier.verify(Evidence("dcap", small), vectors.sgx_now).tcb_status == vectors.status
    assert all(len(key) == 32 for key in pck._CHAINS)
