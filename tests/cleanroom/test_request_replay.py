"""Replay protection that survives a coordinator restart, and custody of the
re-keying key: created 0600 in one step, never logged, refused when damaged.

The store is checked through its users: ``RequestVerifier`` instances on one
file (a restart is a new instance), the in-process ``Coordinator``, and the
real coordinator process behind its HTTPS API, stopped and started again.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from sgxcloud.cleanroom.approvals import (
    encode_public_key,
    generate_private_key,
    private_key_from_pem,
)
from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig, create_app
from sgxcloud.cleanroom.coordinator import service as coordinator_service
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import CleanroomError
from sgxcloud.cleanroom.identifiers import KEY_BYTES
from sgxcloud.cleanroom.local import example_definition, prepare_example
from sgxcloud.cleanroom.transport import fetch_server_certificate, pinned_client_context
from sgxcloud.cleanroom.transport.request_auth import (
    MAX_SKEW_S,
    NonceStoreError,
    RequestRejected,
    RequestVerifier,
    UsedNonces,
    sign_request,
)

ROOT = Path(__file__).resolve().parents[2]
KEYS = {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand", "agency")}
DEFINITION = definition_from_dict(
    example_definition({p: encode_public_key(k) for p, k in KEYS.items()})
)
T0 = 1_800_000_000
SIGNER = encode_public_key(generate_private_key())
"""Stands for the coordinator's result-signing key, the id requests name."""
HERE = {"definition_hash": DEFINITION.definition_hash(), "coordinator": SIGNER}


def signed(party: str = "brand", now: int = T0, path: str = "/v1/status") -> dict[str, str]:
    return {
        k.lower(): v
        for k, v in sign_request(KEYS[party], party, "GET", path, now=now, **HERE).items()
    }


def make_coordinator(workdir: Path) -> Coordinator:
    return Coordinator(
        CoordinatorConfig(definition=DEFINITION, workdir=workdir, nodes={}, simulate=True)
    )


# -- the used-nonce store ---------------------------------------------------------------


def test_request_accepted_before_a_restart_is_refused_after_it(tmp_path):
    store = tmp_path / "request-nonces.sqlite"
    headers = signed()
    before = RequestVerifier(DEFINITION, SIGNER, store)
    assert before.verify(headers, "GET", "/v1/status", b"", now=T0) == "brand"
    # The old instance is not closed: a crash right after accepting must not
    # lose the nonce (it was committed before verify returned).
    after = RequestVerifier(DEFINITION, SIGNER, store)
    with pytest.raises(RequestRejected, match="replayed"):
        after.verify(headers, "GET", "/v1/status", b"", now=T0 + 10)
    before.close()
    again = RequestVerifier(DEFINITION, SIGNER, store)
    with pytest.raises(RequestRejected, match="replayed"):
        again.verify(headers, "GET", "/v1/status", b"", now=T0 + MAX_SKEW_S)
    assert again.verify(signed(now=T0 + 20), "GET", "/v1/status", b"", now=T0 + 20) == "brand"
    after.close()
    again.close()


def test_outside_the_clock_window_refused_and_not_recorded(tmp_path):
    verifier = RequestVerifier(DEFINITION, SIGNER, tmp_path / "n.sqlite")
    for issued in (T0 - MAX_SKEW_S - 1, T0 + MAX_SKEW_S + 1):
        with pytest.raises(RequestRejected, match="clock"):
            verifier.verify(signed(now=issued), "GET", "/v1/status", b"", now=T0)
    assert verifier.nonces.count() == 0
    # An unsigned or badly signed request is not recorded either.
    forged = {**signed(), "x-cleanroom-party": "bank"}
    with pytest.raises(RequestRejected, match="does not verify"):
        verifier.verify(forged, "GET", "/v1/status", b"", now=T0)
    assert verifier.nonces.count() == 0
    verifier.close()


def test_nonces_pruned_only_once_their_request_is_stale(tmp_path):
    verifier = RequestVerifier(DEFINITION, SIGNER, tmp_path / "n.sqlite")
    old = signed(now=T0)
    verifier.verify(old, "GET", "/v1/status", b"", now=T0)
    # At the edge of the window the old request still passes the clock: kept.
    verifier.verify(signed(now=T0 + MAX_SKEW_S), "GET", "/v1/status", b"", now=T0 + MAX_SKEW_S)
    assert verifier.nonces.count() == 2
    with pytest.raises(RequestRejected, match="replayed"):
        verifier.verify(old, "GET", "/v1/status", b"", now=T0 + MAX_SKEW_S)
    # One second later it cannot pass the clock any more: forgotten on the next claim.
    late = T0 + MAX_SKEW_S + 1
    verifier.verify(signed(now=late), "GET", "/v1/status", b"", now=late)
    assert verifier.nonces.count() == 2
    with sqlite3.connect(tmp_path / "n.sqlite") as db:
        kept = sorted(t for (t,) in db.execute("SELECT issued_at FROM used_nonce"))
    assert kept == [T0 + MAX_SKEW_S, late]
    with pytest.raises(RequestRejected, match="clock"):
        verifier.verify(old, "GET", "/v1/status", b"", now=late)
    verifier.close()


def test_a_nonce_belongs_to_its_party(tmp_path):
    nonces = UsedNonces(tmp_path / "n.sqlite")
    nonce = "ab" * 16
    assert nonces.claim("bank", nonce, T0, T0)
    assert nonces.claim("brand", nonce, T0, T0)  # another party's nonce is not a replay
    assert not nonces.claim("bank", nonce, T0, T0)
    nonces.close()


def test_malformed_nonce_refused(tmp_path):
    verifier = RequestVerifier(DEFINITION, SIGNER, tmp_path / "n.sqlite")
    for nonce in ("", "00", "g" * 32, "A" * 32, "0" * 129):
        with pytest.raises(RequestRejected, match="nonce"):
            verifier.verify(
                {**signed(), "x-cleanroom-nonce": nonce}, "GET", "/v1/status", b"", now=T0
            )
    verifier.close()


def test_concurrent_replays_across_threads_and_instances_accept_once(tmp_path):
    store = tmp_path / "n.sqlite"
    verifiers = [RequestVerifier(DEFINITION, SIGNER, store) for _ in range(2)]  # two "processes"
    headers = signed()
    start = threading.Barrier(8)

    def attempt(i: int) -> bool:
        start.wait()
        try:
            verifiers[i % 2].verify(headers, "GET", "/v1/status", b"", now=T0)
        except RequestRejected:
            return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(8)))
    assert outcomes.count(True) == 1
    for v in verifiers:
        v.close()


def test_damaged_store_is_one_clear_error(tmp_path):
    store = tmp_path / "n.sqlite"
    store.write_bytes(b"this is not a database, it was overwritten" * 100)
    with pytest.raises(NonceStoreError, match="cannot open the used-nonce store"):
        RequestVerifier(DEFINITION, SIGNER, store)


def test_api_fails_closed_when_the_store_cannot_be_written(tmp_path):
    coordinator = make_coordinator(tmp_path / "c")
    app = create_app(coordinator)

    async def get(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cleanroom") as http:
            return await http.get("/v1/status", headers=headers)

    here = {"definition_hash": coordinator.definition_hash, "coordinator": coordinator.signer}
    try:
        accepted = asyncio.run(
            get(sign_request(KEYS["brand"], "brand", "GET", "/v1/status", **here))
        )
        assert accepted.status_code == 200
        coordinator.requests.close()  # the store is gone: nothing may be accepted unrecorded
        answer = asyncio.run(get(sign_request(KEYS["brand"], "brand", "GET", "/v1/status", **here)))
        assert answer.status_code == 500
        assert "simulated" not in answer.text
        # NonceStoreError: the operator's problem, answered as one (not a 401 or 400).
        assert answer.json()["error"]["code"] == "internal_error"
    finally:
        coordinator.close()


# -- the re-keying key ----------------------------------------------------------------------


def test_rekey_key_created_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)  # a careless umask must not widen the key's mode
    try:
        coordinator = make_coordinator(tmp_path / "c")
    finally:
        os.umask(previous)
    coordinator.close()
    keys = tmp_path / "c" / "keys"
    rekey = keys / "rekey.bin"
    assert stat.S_IMODE(rekey.stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "result-signing.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert len(rekey.read_bytes()) == KEY_BYTES
    assert sorted(p.name for p in keys.iterdir()) == ["rekey.bin", "result-signing.pem"]
    # A restart reads the same key, and the nonce store sits in the workdir.
    key = rekey.read_bytes()
    make_coordinator(tmp_path / "c").close()
    assert rekey.read_bytes() == key
    assert (tmp_path / "c" / "request-nonces.sqlite").exists()


def test_interrupted_creation_leaves_no_key_and_the_next_start_makes_a_whole_one(
    tmp_path, monkeypatch
):
    rekey = tmp_path / "keys" / "rekey.bin"

    def fail(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(coordinator_service.os, "replace", fail)
    with pytest.raises(CleanroomError, match="cannot create"):
        coordinator_service._secret_file(rekey, lambda: b"k" * KEY_BYTES)
    assert list(rekey.parent.iterdir()) == []  # neither the key nor a temporary
    monkeypatch.undo()
    # A run killed between creating and renaming leaves a temporary: ignored, removed.
    (rekey.parent / ".rekey.bin.4242.tmp").write_bytes(b"half")
    data = coordinator_service._secret_file(rekey, lambda: b"k" * KEY_BYTES)
    assert data == rekey.read_bytes() == b"k" * KEY_BYTES
    assert [p.name for p in rekey.parent.iterdir()] == ["rekey.bin"]


@pytest.mark.parametrize("content", [b"", b"\x01" * 7, b"\x02" * (KEY_BYTES + 1)])
def test_damaged_rekey_key_is_one_clear_error(tmp_path, content):
    rekey = tmp_path / "c" / "keys" / "rekey.bin"
    rekey.parent.mkdir(parents=True)
    rekey.touch(mode=0o600)
    rekey.write_bytes(content)
    with pytest.raises(CleanroomError) as info:
        make_coordinator(tmp_path / "c")
    message = str(info.value)
    assert f"{len(content)} bytes, expected {KEY_BYTES}" in message
    assert "do not delete it" in message
    assert rekey.read_bytes() == content  # never replaced behind the operator's back
    if content:
        assert content.hex() not in message and base64.b64encode(content).decode() not in message


def test_rekey_key_open_to_others_is_refused(tmp_path):
    make_coordinator(tmp_path / "c").close()
    rekey = tmp_path / "c" / "keys" / "rekey.bin"
    rekey.chmod(0o644)
    with pytest.raises(CleanroomError, match=r"open to other users \(mode 644\).*chmod 600"):
        make_coordinator(tmp_path / "c")


def test_damaged_rekey_key_stops_the_command_with_one_line(tmp_path):
    collab = prepare_example(tmp_path / "ex", people=50)
    rekey = collab.workdir / "coordinator" / "keys" / "rekey.bin"
    rekey.parent.parent.mkdir(mode=0o700)  # private, as the coordinator makes it
    rekey.parent.mkdir(mode=0o700)
    rekey.touch(mode=0o600)
    rekey.write_bytes(b"\x00" * 5)
    cli = [
        sys.executable,
        "-m",
        "sgxcloud.cli.main",
        "cleanroom",
        "coordinator",
        "--definition",
        str(collab.definition),
        "--node",
        "bank=127.0.0.1:9",
        "--workdir",
        str(collab.workdir / "coordinator"),
        "--simulate",
        "--listen",
        "127.0.0.1:0",
    ]
    for approval in collab.approvals:
        cli += ["--approvals", str(approval)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "re-keying key is damaged (5 bytes" in lines[0]


# -- end to end: the real coordinator process and its HTTPS API ---------------------------


def https(collab) -> httpx.Client:
    host, port = collab.url.removeprefix("https://").split(":")
    cert = fetch_server_certificate(host, int(port))  # a restart makes a new TLS key
    ctx = pinned_client_context(cert.public_bytes(serialization.Encoding.PEM))
    return httpx.Client(base_url=collab.url, verify=ctx)


def signed_for(collab) -> dict[str, str]:
    """What a signed request to this coordinator must name (from /v1/health)."""
    with https(collab) as http:
        health = http.get("/v1/health").json()
    return {"definition_hash": health["definition_hash"], "coordinator": health["coordinator"]}


def test_replay_refused_across_a_real_coordinator_restart_and_key_never_logged(tmp_path):
    collab = prepare_example(tmp_path, people=200, min_group_size=5)
    brand = private_key_from_pem((collab.workdir / "keys" / "brand.pem").read_bytes())
    with collab:
        here = signed_for(collab)
        captured = sign_request(brand, "brand", "GET", "/v1/status", **here)
        with https(collab) as http:
            assert http.get("/v1/status", headers=captured).status_code == 200

        collab.stop("coordinator")
        collab.start_coordinator()  # same workdir, new process
        with https(collab) as http:
            replay = http.get("/v1/status", headers=captured)
            assert replay.status_code == 401
            assert "replayed" in replay.json()["error"]["message"]
            # A restart keeps the coordinator (its signing key is in the workdir).
            assert signed_for(collab) == here
            fresh = sign_request(brand, "brand", "GET", "/v1/status", **here)
            assert http.get("/v1/status", headers=fresh).status_code == 200

        workdir = collab.workdir / "coordinator"
        rekey = workdir / "keys" / "rekey.bin"
        assert stat.S_IMODE(rekey.stat().st_mode) == 0o600
        key = rekey.read_bytes()
        forms = [
            key.hex(),
            key.hex().upper(),
            base64.b64encode(key).decode(),
            base64.urlsafe_b64encode(key).decode().rstrip("="),
        ]
        logs = list((collab.workdir / "logs").glob("*.log"))
        assert {p.name for p in logs} >= {"coordinator.log", "node-bank.log"}
        for log in logs:
            text = log.read_bytes()
            assert key not in text, log.name
            for form in forms:
                assert form.encode() not in text, log.name
