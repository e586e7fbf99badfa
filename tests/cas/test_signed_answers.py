"""Red team rt10 F1: a proxy that ends TLS could alter every answer an owner reads.

A real ``cas serve`` (made by ``cas init``) on loopback HTTPS, and in front of
it a small TLS-terminating proxy holding a certificate of the CA the owner
pins (as a re-encrypting load balancer does).  The proxy rewrites answers:
an audit page entry, the verify verdict, the policy text, the continuation
header.  An owner client pinning the CAS's answer signing key refuses each
altered answer and takes the unaltered ones.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from sgxcloud.cas import answers, client
from sgxcloud.cas.answers import AnswerNotVerified
from sgxcloud.cas.config import load_settings
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.cli.main import main as cli

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

Rewrite = Callable[[str, int, list[tuple[str, str]], bytes], tuple[list[tuple[str, str]], bytes]]
AlterRequest = Callable[[dict[str, str], bytes | None], tuple[dict[str, str], bytes | None]]


def _untouched(
    _path: str, _status: int, headers: list[tuple[str, str]], body: bytes
) -> tuple[list[tuple[str, str]], bytes]:
    return headers, body


class TerminatingProxy:
    """Ends TLS with the CAS's own certificate, forwards to the CAS over TLS, and
    passes each answer through ``rewrite`` (path, status, headers, body)."""

    def __init__(
        self, port: int, upstream: tuple[str, int], ca: Path, cert: Path, key: Path
    ) -> None:
        self.rewrite: Rewrite = _untouched
        self.copies = 1  # the request sent this many times, the last answer returned
        self.alter_request: AlterRequest = lambda headers, body: (headers, body)
        self.statuses: list[int] = []
        outer = self
        upstream_tls = ssl.create_default_context(cafile=str(ca))

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def forward(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(size) if size else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                headers["Host"] = f"{upstream[0]}:{upstream[1]}"
                headers, body = outer.alter_request(headers, body)
                for _ in range(outer.copies):
                    connection = http.client.HTTPSConnection(*upstream, context=upstream_tls)
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    connection.close()
                    outer.statuses.append(answer.status)
                kept = [
                    (k, v)
                    for k, v in answer.getheaders()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                ]
                kept, data = outer.rewrite(self.path, answer.status, kept, data)
                self.send_response(answer.status)
                for k, v in kept:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(str(cert), str(key))
        self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, TerminatingProxy]]:
    """``cas init --loopback-tls`` and ``cas serve`` in a process of its own; the proxy."""
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home), "--loopback-tls"]) == 0
    port, proxy_port = _free_port(), _free_port()
    process, url = _start(home, port, proxy_port)
    settings = load_settings(home / "cas.yaml", environ={})
    ca = home / "tls" / "ca.pem"
    assert settings.tls_cert is not None and settings.tls_key is not None
    proxy = TerminatingProxy(
        proxy_port, ("127.0.0.1", port), ca, settings.tls_cert, settings.tls_key
    )
    try:
        yield url, home, proxy
    finally:
        proxy.close()
        process.terminate()
        process.wait(timeout=30)


def _start(home: Path, port: int, proxy_port: int) -> tuple[subprocess.Popen[bytes], str]:
    """``cas serve`` of ``home`` on ``port`` (also reached as ``proxy_port``), ready."""
    settings_path = home / "cas.yaml"
    # Owners reach the CAS directly and through the proxy: both origins are its own.
    text = re.sub(r"(?m)^public_urls:.*\n", "", settings_path.read_text())
    settings_path.write_text(
        re.sub(r"(?m)^port: \d+", f"port: {port}", text)
        + f"public_urls: [https://127.0.0.1:{port}, https://127.0.0.1:{proxy_port}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--config", str(settings_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"https://127.0.0.1:{port}"
    ca = home / "tls" / "ca.pem"
    deadline = time.monotonic() + 30
    while True:
        try:
            with httpx.Client(verify=client.pinned_tls(ca)) as http:
                if http.get(url + "/v1/health").status_code == 200:
                    break
        except httpx.TransportError as exc:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                message = process.stderr.read().decode() if process.stderr else ""
                raise AssertionError(message) from exc
            time.sleep(0.2)
    return process, url


def _json_rewrite(path_prefix: str, change: Callable[[object], object]) -> Rewrite:
    def rewrite(
        path: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[list[tuple[str, str]], bytes]:
        if path.split("?")[0] == path_prefix and status == 200:
            return headers, json.dumps(change(json.loads(body))).encode()
        return headers, body

    return rewrite


def test_owner_client_refuses_answers_a_terminating_proxy_altered(served) -> None:  # type: ignore[no-untyped-def]
    url, home, proxy = served
    owner = pg.owner_key()
    pin = home / "cas-signing.pub.pem"
    assert pin.exists()
    direct = client.OwnerClient(url, owner, ca_file=home / "tls" / "ca.pem", cas_key=pin)
    text = pg.policy_text(owner)
    applied = direct.apply(text)
    with httpx.Client(verify=client.pinned_tls(home / "tls" / "ca.pem")) as http:
        body = {"policy": applied["name"], "service": "web", "nonce": "00", "public_key": "x"}
        for _ in range(2):  # refusals the owner should see (audit entries)
            assert (
                http.post(url + "/v1/attest", json={**body, "evidence": "AA=="}).status_code == 400
            )
    via = client.OwnerClient(proxy.url, owner, ca_file=home / "tls" / "ca.pem", cas_key=pin)

    # Unaltered (through the proxy): every answer verifies and is the CAS's own.
    entries = via.audit()
    assert entries == direct.audit() and len(entries) == 3
    assert [e["outcome"] for e in entries][1:] != ["accepted", "accepted"]
    assert via.verify_audit()["ok"] is True
    assert via.show(applied["name"])["text"] == text

    # An audit entry hidden, a refusal turned into an acceptance.
    def doctor(page: object) -> object:
        assert isinstance(page, list)
        return [{**e, "outcome": "accepted"} for e in page[:-1]]

    proxy.rewrite = _json_rewrite("/v1/audit", doctor)
    with pytest.raises(AnswerNotVerified, match="does not verify"):
        via.audit()
    # The verify verdict.
    proxy.rewrite = _json_rewrite(
        "/v1/audit/verify",
        lambda a: {**a, "ok": True, "problems": [], "round_complete": True},  # type: ignore[dict-item]
    )
    with pytest.raises(AnswerNotVerified, match="does not verify"):
        via.verify_audit()
    # The policy text.
    proxy.rewrite = _json_rewrite(
        f"/v1/policies/{applied['name']}",
        lambda a: {**a, "text": text.replace("allow_simulated: true", "allow_simulated: false")},  # type: ignore[dict-item]
    )
    with pytest.raises(AnswerNotVerified, match="does not verify"):
        via.show(applied["name"])

    # The signature stripped (an answer as an older CAS would give): refused too.
    def strip(
        _path: str, _status: int, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[list[tuple[str, str]], bytes]:
        return [(k, v) for k, v in headers if k.lower() != answers.ANSWER_HEADER], body

    proxy.rewrite = strip
    with pytest.raises(AnswerNotVerified, match="carries no CAS answer signature"):
        via.audit()

    # An answer from another CAS (another signing key) is refused as well.
    other = home / "other.pub.pem"
    other.write_bytes(answers.public_pem(answers.generate_key().public_key()))
    proxy.rewrite = _untouched
    with pytest.raises(AnswerNotVerified):
        client.OwnerClient(proxy.url, owner, ca_file=home / "tls" / "ca.pem", cas_key=other).audit()


def test_cli_refuses_an_altered_answer_with_one_line(  # type: ignore[no-untyped-def]
    served, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, home, proxy = served
    owner = pg.owner_key()
    key_file = home / "owner.pem"
    key_file.write_bytes(pg.private_pem(owner))
    ca = str(home / "tls" / "ca.pem")
    pin = str(home / "cas-signing.pub.pem")
    policy_file = home / "p.yaml"
    policy_file.write_text(pg.policy_text(owner))
    signed = ["--url", url, "--ca-file", ca, "--key", str(key_file), "--cas-key", pin]
    assert cli(["policy", *signed, "apply", str(policy_file)]) == 0
    capsys.readouterr()
    owner_args = ["--url", proxy.url, "--ca-file", ca, "--key", str(key_file)]
    monkeypatch.setenv("SGXCLOUD_CAS_SIGNING_KEY", pin)
    assert cli(["audit", "verify", *owner_args, "--once"]) == 0  # unaltered: accepted
    capsys.readouterr()
    proxy.rewrite = _json_rewrite("/v1/audit/verify", lambda a: {**a, "problems": []})  # type: ignore[dict-item]
    assert cli(["audit", "verify", *owner_args, "--once"]) == 1
    err = capsys.readouterr().err
    assert "does not verify with the pinned CAS signing key" in err
    assert len(err.strip().splitlines()) == 1


def test_signing_key_command_prints_the_pinned_public_key(served, capsys) -> None:  # type: ignore[no-untyped-def]
    _url, home, _proxy = served
    capsys.readouterr()
    assert cli(["cas", "signing-key", "--config", str(home / "cas.yaml")]) == 0
    assert capsys.readouterr().out == (home / "cas-signing.pub.pem").read_text()


def test_without_a_pin_the_client_warns_once(served) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas.client import owner as owner_module

    url, home, _proxy = served
    owner_module._warned = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            client.OwnerClient(url, pg.owner_key(), ca_file=home / "tls" / "ca.pem")
    assert [type(w.message) for w in seen] == [answers.UnverifiedAnswers]
    assert re.search("not verified", str(seen[0].message))


def test_a_removed_continuation_header_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page the CAS stopped at its byte bound says so (X-Audit-More-After); a proxy
    dropping the header would make it look like the last page.  The CAS's app as
    ``cas serve`` builds it (build_app), over HTTPS, with the bound made small."""
    from sgxcloud.cas.service import core
    from sgxcloud.cas.service.server import TlsFiles, background_https, build_app, build_service

    monkeypatch.setattr(core, "AUDIT_PAGE_BYTES", 300)
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home), "--loopback-tls"]) == 0
    settings_path = home / "cas.yaml"
    proxy_port = _free_port()
    settings_path.write_text(
        settings_path.read_text() + f"public_urls: [https://127.0.0.1:{proxy_port}]\n"
    )
    settings = load_settings(settings_path, environ={})
    assert settings.tls_cert is not None and settings.tls_key is not None
    service = build_service(settings)
    tls = TlsFiles(home / "tls" / "ca.pem", settings.tls_cert, settings.tls_key)
    owner = pg.owner_key()
    pin = home / "cas-signing.pub.pem"
    try:
        with background_https(build_app(settings, service), tls) as url:
            port = int(url.rsplit(":", 1)[1])
            proxy = TerminatingProxy(
                proxy_port, ("127.0.0.1", port), tls.ca_cert, tls.cert, tls.key
            )
            try:
                via = client.OwnerClient(proxy.url, owner, ca_file=tls.ca_cert, cas_key=pin)
                via.apply(pg.policy_text(owner))
                with httpx.Client(verify=client.pinned_tls(tls.ca_cert)) as http:
                    body = {"policy": "shop", "service": "web", "nonce": "00", "public_key": "x"}
                    for _ in range(3):
                        http.post(url + "/v1/attest", json={**body, "evidence": "AA=="})
                page, more = via.audit_page()
                assert more == page[-1]["ref"] and len(page) < 4  # stopped at the bound

                def drop(
                    _path: str, _status: int, headers: list[tuple[str, str]], body: bytes
                ) -> tuple[list[tuple[str, str]], bytes]:
                    return [(k, v) for k, v in headers if k.lower() != "x-audit-more-after"], body

                proxy.rewrite = drop
                with pytest.raises(AnswerNotVerified, match="does not verify"):
                    via.audit_page()
            finally:
                proxy.close()
    finally:
        service.stop()


def _shifted_date(
    headers: dict[str, str], body: bytes | None
) -> tuple[dict[str, str], bytes | None]:
    """One byte the request's signature covers but the old answer binding did not."""
    out = dict(headers)
    for name in out:
        if name.lower() == "x-sgxcloud-date":
            out[name] = str(int(out[name]) + 1)
    return out, body


def _flipped_body_byte(
    headers: dict[str, str], body: bytes | None
) -> tuple[dict[str, str], bytes | None]:
    if not body:
        return headers, body
    return headers, body.replace(b"test policy", b"test polica", 1)


def test_an_answer_to_an_altered_request_does_not_verify(served) -> None:  # type: ignore[no-untyped-def]
    """Red team rt11 F1 (b): a proxy alters one byte of the owner's request (its date, its
    body); the CAS refuses it (401 "does not verify"), and that signed refusal used to
    verify as the answer to the owner's request.  Now the answer binds the request as the
    CAS received it: the owner's client cannot verify it and says so."""
    url, home, proxy = served
    owner = pg.owner_key()
    pin = home / "cas-signing.pub.pem"
    ca = home / "tls" / "ca.pem"
    text = pg.policy_text(owner)
    direct = client.OwnerClient(url, owner, ca_file=ca, cas_key=pin)
    via = client.OwnerClient(proxy.url, owner, ca_file=ca, cas_key=pin)
    proxy.alter_request = _flipped_body_byte
    with pytest.raises(AnswerNotVerified, match="does not verify"):
        via.apply(text)
    assert proxy.statuses[-1] == 401  # the CAS refused the altered copy
    applied = direct.apply(text)
    proxy.alter_request = _shifted_date
    for call in (
        lambda: via.show(applied["name"]),
        lambda: via.audit(),
        lambda: via.delete(applied["name"], applied["policy_hash"]),
    ):
        with pytest.raises(AnswerNotVerified, match="does not verify"):
            call()
        assert proxy.statuses[-1] == 401
    assert direct.show(applied["name"])["text"] == text  # the delete never happened
    # Unaltered, through the same proxy: verified.
    proxy.alter_request = lambda headers, body: (headers, body)
    assert via.show(applied["name"])["text"] == text


def test_a_second_copy_of_the_owners_request_is_not_shown_as_a_refusal(  # type: ignore[no-untyped-def]
    served, capsys
) -> None:
    """Red team rt11 F1 (a): a proxy sends the owner's signed PUT/DELETE twice and returns
    the CAS's answer to the second copy.  It used to be a verified 401 "already used":
    the owner was told an apply/delete that happened was refused.  Now it is the signed
    409 already-received, which the client reports as OutcomeUnknown (CLI exit 6)."""
    url, home, proxy = served
    owner = pg.owner_key()
    pin = home / "cas-signing.pub.pem"
    ca = home / "tls" / "ca.pem"
    text = pg.policy_text(owner)
    direct = client.OwnerClient(url, owner, ca_file=ca, cas_key=pin)
    via = client.OwnerClient(proxy.url, owner, ca_file=ca, cas_key=pin)
    proxy.copies = 2
    with pytest.raises(client.OutcomeUnknown, match="may have been carried out") as raised:
        via.apply(text)
    assert not isinstance(raised.value, AccessDenied)
    assert proxy.statuses[-2:] == [200, 409]
    shown = direct.show("shop")  # it was carried out
    assert shown["text"] == text
    with pytest.raises(client.OutcomeUnknown):
        via.delete("shop", shown["policy_hash"])
    with pytest.raises(client.PolicyNotFound):
        direct.show("shop")  # carried out too

    # The CLI: one line, its own exit code (not 1, a refusal).
    key_file = home / "owner.pem"
    key_file.write_bytes(pg.private_pem(owner))
    policy_file = home / "p.yaml"
    policy_file.write_text(text)
    args = ["--url", proxy.url, "--ca-file", str(ca), "--key", str(key_file), "--cas-key", str(pin)]
    capsys.readouterr()
    assert cli(["policy", *args, "apply", str(policy_file)]) == 6
    err = capsys.readouterr().err
    assert "outcome unknown" in err and len(err.strip().splitlines()) == 1
    assert direct.show("shop")["text"] == text


def test_a_renewed_copy_signs_with_a_key_of_its_own(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Red team rt11 F3: a staging CAS made from production (copy + 'cas deployment
    --renew', as the operator guide says) kept production's answer signing key, so a
    proxy could route an owner pinning production's key to the stale copy and every
    answer verified.  --renew now gives the copy a new key: production's pin refuses
    the copy's answers; the copy's owners pin the new public key --renew writes."""
    production = tmp_path / "production"
    assert cli(["cas", "init", str(production), "--loopback-tls"]) == 0
    production_pin = production / "cas-signing.pub.pem"
    pinned = production_pin.read_bytes()
    process, _ = _start(production, _free_port(), _free_port())  # production ran (its database)
    process.terminate()
    process.wait(timeout=30)
    staging = tmp_path / "staging"
    shutil.copytree(production, staging)  # keys included, as the guide's copy has them
    settings_path = staging / "cas.yaml"
    settings_path.write_text(settings_path.read_text().replace(str(production), str(staging)))
    capsys.readouterr()
    assert cli(["cas", "deployment", "--renew", "--json", "--config", str(settings_path)]) == 0
    renewed = json.loads(capsys.readouterr().out)
    staging_pin = Path(renewed["public_key_file"])
    assert staging_pin == staging / "cas-signing.pub.pem"
    assert staging_pin.read_bytes() != pinned and production_pin.read_bytes() == pinned
    assert renewed["fingerprint"] == answers.fingerprint(answers.load_public_key(staging_pin))
    port = _free_port()
    process, url = _start(staging, port, _free_port())
    try:
        owner = pg.owner_key()
        ca = staging / "tls" / "ca.pem"
        fooled = client.OwnerClient(url, owner, ca_file=ca, cas_key=production_pin)
        with pytest.raises(AnswerNotVerified, match="does not verify"):
            fooled.audit()
        own = client.OwnerClient(url, owner, ca_file=ca, cas_key=staging_pin)
        with pytest.raises(AccessDenied, match="own or read no policy"):  # verified
            own.audit()
    finally:
        process.terminate()
        process.wait(timeout=30)
