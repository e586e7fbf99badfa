"""Three ``cas serve`` processes on one PostgreSQL behind a TCP load balancer.

Real processes, a real PostgreSQL, real HTTPS: many enclaves attest through
the balancer while one replica is killed with SIGKILL mid-traffic.  Nothing
is lost (every enclave gets its configuration; the launcher's retry covers
the dead replica), nonces are single-use across replicas, concurrent policy
updates through different replicas serialise (exactly one wins), and the one
audit chain verifies with no gap.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from sgxcloud.cas import audit, client, secrets
from sgxcloud.cas.errors import ConflictError
from sgxcloud.cas.service.server import make_loopback_tls
from sgxcloud.cas.store import Database
from sgxcloud.cli.main import main as cli
from tests.cas import postgres as pg
from tests.cas.loadbalancer import RoundRobinBalancer

ROOT = Path(__file__).resolve().parents[2]
ENCLAVES = 12
PUBLIC = "https://cas.replicas.test:8443"
"""The origin owners sign for: the replicas' one public name (setting public_urls)."""
ROUNDS = 6


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_replicas(settings: Path, count: int, log_dir: Path) -> list[tuple[subprocess.Popen, int]]:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("SGXCLOUD_CAS_DATABASE_URL", None)
    replicas = []
    for i in range(count):
        port = _free_port()
        log = (log_dir / f"replica-{i}.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sgxcloud.cli.main",
                "cas",
                "serve",
                "--config",
                str(settings),
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        replicas.append((process, port))
    return replicas


def stop_replicas(replicas: list[tuple[subprocess.Popen, int]]) -> None:  # type: ignore[type-arg]
    for process, _ in replicas:
        if process.poll() is None:
            process.terminate()
    for process, _ in replicas:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def wait_ready(port: int, ca: Path, process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + 90
    with httpx.Client(verify=client.pinned_tls(ca), timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"replica on {port} exited {process.returncode}")
            try:
                if http.get(f"https://127.0.0.1:{port}/v1/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"replica on {port} not ready")


def test_three_replicas_one_killed_nothing_lost(tmp_path: Path) -> None:
    url = pg.fresh_database(pg.server())
    Database.open(url).close()  # migrate once, before the replicas race to
    tls = make_loopback_tls(tmp_path / "tls")
    key_file = tmp_path / "master.key"
    secrets.write_master_key(key_file, secrets.MasterKey.generate())
    settings = tmp_path / "cas.yaml"
    settings.write_text(
        f"database_url: {url}\nmaster_key_file: {key_file}\ntls_cert: {tls.cert}\n"
        f"tls_key: {tls.key}\nlog_level: warning\npublic_urls: [{PUBLIC}]\n"
    )
    replicas = start_replicas(settings, 3, tmp_path)
    try:
        for process, port in replicas:
            wait_ready(port, tls.ca_cert, process)
        ports = [port for _, port in replicas]
        owner = pg.owner_key()
        with RoundRobinBalancer([("127.0.0.1", p) for p in ports]) as balancer:
            with client.OwnerClient(
                balancer.url, owner, ca_file=tls.ca_cert, audience=PUBLIC
            ) as owner_client:
                v1 = owner_client.apply(pg.policy_text(owner))

            # Policy updates through three different replicas at once: exactly one wins.
            def update(port: int) -> str:
                text = pg.policy_text(
                    owner, description=f"via {port}", predecessor=v1["policy_hash"]
                )
                with client.OwnerClient(
                    f"https://127.0.0.1:{port}", owner, ca_file=tls.ca_cert, audience=PUBLIC
                ) as direct:
                    try:
                        return direct.apply(text)["policy_hash"]
                    except ConflictError:
                        return "conflict"

            with ThreadPoolExecutor(3) as pool:
                outcomes = list(pool.map(update, ports))
            assert sorted(o == "conflict" for o in outcomes) == [False, True, True]

            # A nonce from one replica is spent at another and refused at the third.
            _nonce_single_use_across(ports, tls.ca_cert, tmp_path)

            results: list[str] = []
            failures: list[BaseException] = []
            started = threading.Barrier(ENCLAVES + 1)

            def enclave() -> None:
                started.wait()
                with client.CasConnection(balancer.url, tls.ca_cert, timeout=20) as connection:
                    for _ in range(ROUNDS):
                        try:
                            fetched = client.fetch_configuration(
                                balancer.url,
                                policy="shop",
                                service="web",
                                root=tmp_path,
                                simulate=pg.simulated_identity(),
                                connection=connection,
                                attempts=8,
                                backoff=0.1,
                            )
                            results.append(fetched.policy_hash)
                        except BaseException as exc:
                            failures.append(exc)
                            return

            threads = [threading.Thread(target=enclave) for _ in range(ENCLAVES)]
            for thread in threads:
                thread.start()
            started.wait()
            while len(results) < ENCLAVES * ROUNDS // 3 and not failures:
                time.sleep(0.01)
            victim = replicas[1][0]
            victim.send_signal(signal.SIGKILL)  # mid-traffic, mid-request for some
            victim.wait(timeout=10)
            for thread in threads:
                thread.join(timeout=300)
            assert not failures, repr(failures[0])
            assert len(results) == ENCLAVES * ROUNDS
            assert set(results) == {h for h in outcomes if h != "conflict"}
            assert balancer.connections[1] > 0  # the killed replica did serve traffic
    finally:
        stop_replicas(replicas)
    # One chain, every append serialised across the replicas: it verifies, no gaps.
    assert cli(["audit", "verify", "--database-url", url]) == 0
    database = Database.open(url, migrate=False)
    try:
        entries = audit.entries(database)
        report = audit.verify_chain(database)
    finally:
        database.close()
    assert report.ok and [e.seq for e in entries] == list(range(1, len(entries) + 1))
    accepted = [e for e in entries if e.kind == "attestation" and e.outcome == "accepted"]
    # Every enclave's success is on the record; a reply lost with the killed replica
    # leaves one more accepted entry than successes, never one less.
    assert len(accepted) >= ENCLAVES * ROUNDS


def _nonce_single_use_across(ports: list[int], ca: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    from sgxcloud.cas import protocol
    from sgxcloud.cas.evidence import make_simulated_evidence

    def at(port: int) -> httpx.Client:
        return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=client.pinned_tls(ca))

    with at(ports[0]) as a, at(ports[1]) as b, at(ports[2]) as c:
        nonce = bytes.fromhex(a.post("/v1/nonces").json()["nonce"])
        key = protocol.new_enclave_key()
        evidence = make_simulated_evidence(
            pg.simulated_identity(), protocol.report_data_for(key.public_key(), nonce)
        ).raw
        import base64

        body = {
            "policy": "shop",
            "service": "web",
            "nonce": nonce.hex(),
            "public_key": key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
            "evidence": base64.b64encode(evidence).decode(),
        }
        assert b.post("/v1/attest", json=body).status_code == 200
        replay = c.post("/v1/attest", json=body)
        assert replay.status_code == 403 and replay.json()["code"] == "rejected"
