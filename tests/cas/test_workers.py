"""One ``cas serve`` with two worker processes (setting ``workers``), real processes.

On SQLite and on PostgreSQL: concurrent enclaves attest through the one port
while a worker is killed with SIGKILL.  The supervisor replaces it (and says
so), the enclaves' retries succeed, a nonce issued by one worker is spent at
the other and refused on replay, the one audit chain verifies, /metrics (served
by the parent) sums the workers' counts, dead worker's included, and passes
promtool, and SIGTERM leaves no process behind.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sgxcloud.cas import audit, client, protocol, secrets
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.service.server import make_loopback_tls
from sgxcloud.cas.store import Database
from sgxcloud.cli.main import main as cli
from tests.cas import postgres as pg
from tests.metrics.promtool import check_metrics, samples

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = "https://cas.workers.test:8443"
ENCLAVES = 8
ROUNDS = 6


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Served:
    """A ``cas serve --workers 2`` process and what the test needs to reach it."""

    def __init__(self, tmp_path: Path, url: str, workers: int = 2) -> None:
        self.tls = make_loopback_tls(tmp_path / "tls")
        key_file = tmp_path / "master.key"
        secrets.write_master_key(key_file, secrets.MasterKey.generate())
        self.port, self.metrics_port = _free_port(), _free_port()
        settings = tmp_path / "cas.yaml"
        settings.write_text(
            f"database_url: {url}\nmaster_key_file: {key_file}\ntls_cert: {self.tls.cert}\n"
            f"tls_key: {self.tls.key}\nlog_level: info\npublic_urls: [{PUBLIC}]\n"
            f"metrics_port: {self.metrics_port}\n"
        )
        self.log = tmp_path / "serve.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        env.pop("SGXCLOUD_CAS_DATABASE_URL", None)
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sgxcloud.cli.main",
                    "cas",
                    "serve",
                    "--config",
                    str(settings),
                    "--port",
                    str(self.port),
                    "--workers",
                    str(workers),
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.url = f"https://127.0.0.1:{self.port}"
        self.seen: set[int] = set()  # every worker pid ever seen (for the orphan check)

    def workers(self) -> list[int]:
        """The worker processes (not multiprocessing's resource tracker)."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            self.seen.add(child.pid)  # multiprocessing's resource tracker too
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child.pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def wait_workers(self, count: int, *, exclude: int | None = None) -> list[int]:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            pids = [p for p in self.workers() if p != exclude]
            log = self.log.read_text()
            serving = [p for p in pids if f"Started server process [{p}]" in log]
            if len(serving) == count and self._ready():
                return pids
            time.sleep(0.1)
        raise AssertionError(f"{count} workers not ready: {self.log.read_text()[-3000:]}")

    def _ready(self) -> bool:
        try:
            with httpx.Client(verify=client.pinned_tls(self.tls.ca_cert), timeout=2) as http:
                return http.get(f"{self.url}/v1/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self) -> bytes:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).content

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise


def _describe(pid: int) -> str:
    try:
        process = psutil.Process(pid)
        return f"{pid} {process.status()} {' '.join(process.cmdline())[:120]}"
    except psutil.NoSuchProcess:
        return f"{pid} gone"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _worker_connections(
    served: Served, workers: list[int]
) -> dict[int, http.client.HTTPSConnection]:
    """One open HTTPS connection to each worker.

    Which worker accepts a connection is the kernel's choice (an idle worker
    tends to win every time): connections are opened in bursts, kept open
    so the handshakes keep the winner busy, until every worker has one.
    """
    from concurrent.futures import ThreadPoolExecutor

    context = ssl.create_default_context(cafile=str(served.tls.ca_cert))

    def connect(_: int) -> http.client.HTTPSConnection:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", served.port, context=context, timeout=10
        )
        connection.request("GET", "/v1/health/live")
        connection.getresponse().read()
        return connection

    opened: list[http.client.HTTPSConnection] = []
    found: dict[int, http.client.HTTPSConnection] = {}
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            opened += pool.map(connect, range(8))
            served_by = _connections_of(workers)
            for connection in opened:
                owner = served_by.get(connection.sock.getsockname())
                if owner is not None and owner not in found:
                    found[owner] = connection
            if len(found) == len(workers):
                break
    for connection in opened:
        if connection not in found.values():
            connection.close()
    assert len(found) == len(workers), "the kernel never gave a connection to every worker"
    return found


def _connections_of(workers: list[int]) -> dict[tuple[str, int], int]:
    """The worker serving each client address (ip, port) connected to the service."""
    return {
        tuple(c.raddr): pid
        for pid in workers  # type: ignore[misc]
        for c in psutil.Process(pid).net_connections()
        if c.raddr
    }


def _post(connection: http.client.HTTPSConnection, path: str, body: dict | None = None):  # type: ignore[no-untyped-def]
    payload = json.dumps(body or {}).encode()
    connection.request("POST", path, body=payload, headers={"content-type": "application/json"})
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read() or b"{}")


def _nonce_single_use_across_workers(served: Served, workers: list[int]) -> None:
    first, second = _worker_connections(served, workers).values()
    try:
        status, grant = _post(first, "/v1/nonces")
        assert status == 200
        nonce = bytes.fromhex(grant["nonce"])
        key = protocol.new_enclave_key()
        evidence = make_simulated_evidence(
            pg.simulated_identity(), protocol.report_data_for(key.public_key(), nonce)
        ).raw
        body = {
            "policy": "shop",
            "service": "web",
            "nonce": nonce.hex(),
            "public_key": pg.public_pem(key),
            "evidence": base64.b64encode(evidence).decode(),
        }
        assert _post(second, "/v1/attest", body)[0] == 200  # issued by one, spent at the other
        for connection in (first, second):  # then refused by both
            status, answer = _post(connection, "/v1/attest", body)
            assert status == 403 and answer["code"] == "rejected", answer
    finally:
        first.close()
        second.close()


def _counter(exposition: bytes, name: str, **labels: str) -> float:
    wanted = tuple(sorted(labels.items()))
    return sum(
        v
        for (n, got), v in samples(exposition).items()
        if n == name and all(item in got for item in wanted)
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_one_killed_nothing_lost(tmp_path: Path, backend: str) -> None:
    if backend == "postgresql":
        url = pg.fresh_database(pg.server())
    else:
        url = f"sqlite:///{tmp_path / 'cas.db'}"
    served = Served(tmp_path, url)
    try:
        workers = served.wait_workers(2)
        owner = pg.owner_key()
        with client.OwnerClient(
            served.url, owner, ca_file=served.tls.ca_cert, audience=PUBLIC
        ) as owners:
            applied = owners.apply(pg.policy_text(owner))
        _nonce_single_use_across_workers(served, workers)

        results: list[str] = []
        failures: list[BaseException] = []
        started = threading.Barrier(ENCLAVES + 1)

        def enclave() -> None:
            started.wait()
            with client.CasConnection(served.url, served.tls.ca_cert, timeout=20) as connection:
                for _ in range(ROUNDS):
                    try:
                        fetched = client.fetch_configuration(
                            served.url,
                            policy="shop",
                            service="web",
                            root=tmp_path,
                            simulate=pg.simulated_identity(),
                            connection=connection,
                            attempts=8,
                            backoff=0.2,
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
        clients_of = list(_connections_of(workers).values())
        victim = max(workers, key=clients_of.count)  # the worker serving the most enclaves
        assert clients_of.count(victim) > 0
        os.kill(victim, signal.SIGKILL)  # mid-traffic: its enclaves' connections break
        for thread in threads:
            thread.join(timeout=300)
        assert not failures, repr(failures[0])
        assert results == [applied["policy_hash"]] * (ENCLAVES * ROUNDS)

        replaced = served.wait_workers(2, exclude=victim)
        assert victim not in replaced and not _alive(victim)
        assert f"CAS worker {victim} was killed by SIGKILL" in served.log.read_text()

        exposition = served.metrics()
        check_metrics(exposition)
        assert _counter(exposition, "sgxcloud_cas_worker_restarts_total") == 1
        assert _counter(exposition, "sgxcloud_cas_workers") == 2
        assert _counter(exposition, "sgxcloud_cas_ready") == 1
        assert _counter(exposition, "sgxcloud_cas_policies") == 1
        counted = _counter(exposition, "sgxcloud_cas_attestations_total", verdict="accepted")
        nonces = _counter(exposition, "sgxcloud_cas_nonces_issued_total")
        per_worker = _counting_processes(served)
    finally:
        served.stop()
    # SIGTERM: the parent, every worker it ever ran, and its helpers are gone.
    assert served.process.returncode == 0
    deadline = time.monotonic() + 10  # the resource tracker leaves once its pipe closes
    while any(_alive(pid) for pid in served.seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in served.seen if _alive(pid)]
    assert "Stopping parent process" in served.log.read_text()

    database = Database.open(url, migrate=False)
    try:
        entries = audit.entries(database)
        report = audit.verify_chain(database)
    finally:
        database.close()
    assert report.ok and [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert cli(["audit", "verify", "--database-url", url]) == 0
    accepted = [e for e in entries if e.kind == "attestation" and e.outcome == "accepted"]
    # /metrics is the whole service: every worker's counts, the killed one's too.
    # (An attestation committed by the victim just before SIGKILL is on the record
    # but may have missed its count: never more counted than recorded.)
    successes = ENCLAVES * ROUNDS + 1  # + the cross-worker nonce test's
    assert successes <= counted <= len(accepted)
    assert counted >= len(accepted) - ENCLAVES
    assert nonces >= successes  # each success spent a nonce of its own
    assert str(victim) in per_worker and len(per_worker) >= 2  # the killed one's counts stay


def _counting_processes(served: Served) -> set[str]:
    """The pids that wrote attestation counts into the service's metrics directory."""
    environ = psutil.Process(served.workers()[0]).environ()
    directory = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
    assert directory.stat().st_mode & 0o077 == 0  # private to the service's user
    return {f.stem.rsplit("_", 1)[1] for f in directory.glob("counter_*.db")}


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    served = Served(tmp_path, f"sqlite:///{tmp_path / 'cas.db'}")
    try:
        workers = served.wait_workers(2)
        # Left behind by a parent killed outright (systemd's PrivateTmp removes it).
        metrics_dir = psutil.Process(workers[0]).environ()["PROMETHEUS_MULTIPROC_DIR"]
        served.process.send_signal(signal.SIGKILL)  # no chance to stop its workers itself
        served.process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in served.seen) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [_describe(pid) for pid in served.seen if _alive(pid)]
        shutil.rmtree(metrics_dir)
    finally:
        for pid in served.seen:  # what the test started and the kernel did not stop
            try:
                leftover = psutil.Process(pid)
                if "multiprocessing" in " ".join(leftover.cmdline()):
                    leftover.kill()
            except psutil.NoSuchProcess:
                continue


def test_a_bad_workers_setting_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--workers", "0"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--workers" in done.stderr
    settings = tmp_path / "cas.yaml"
    settings.write_text("workers: 100\n")
    done = subprocess.run(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--config", str(settings)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "invalid setting workers" in done.stderr
