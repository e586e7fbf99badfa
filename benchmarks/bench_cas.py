"""CAS benchmark: attest-and-fetch capacity (closed loop) and latency at a fixed rate (open loop).

What it measures, each attestation also verifying a real Intel-signed SGX
quote (benchmarks/cas_bench_server.py; the enclaves' evidence is SIMULATED,
there is no SGX here, but the verification cost is real):

1. Quote verification: the CAS verifier against ``dcap_qvl.verify`` directly
   (target ≥ 0.8×), and a machine-speed probe at the start and the end.
2. Closed loop, capacity: 1, 4 and 16 enclaves (separate processes, the real
   client library, one keep-alive HTTPS connection each) against SQLite with
   1 replica and one PostgreSQL (durable defaults) with 1 and 2 replicas, and
   one ``cas serve`` with 2 worker processes (setting ``workers``) on each:
   round trips/s, p50/p99, server (all its processes), database and client
   CPU per round trip.
3. Open loop, latency: 16 enclaves together offering 300 round trips/s, each
   on its own schedule, latency counted from each request's scheduled start
   (no coordinated omission), on every configuration; then a rate sweep on
   the configuration with the most capacity.

Target (issue 13): ≥ 300 round trips/s at 16 clients with p99 ≤ 50 ms, judged
as capacity ≥ 300/s in the 16-client closed loop AND p99 ≤ 50 ms while 300/s
are offered and served in the open loop.  The method is in docs/benchmarks.md.

Writes a Markdown section to docs/benchmarks/cas.md (``benchmarks/run_all.py
--skip-run`` folds it into docs/benchmarks.md) and prints it, or JSON (--json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # tests.cas.postgres starts the PostgreSQL server
sys.path.insert(0, str(ROOT / "benchmarks"))  # cas_load, when imported as a module

from cas_load import QUOTE_TIME, Load, machine_probe, run_cell  # noqa: E402

from sgxcloud.cas import client, secrets  # noqa: E402
from sgxcloud.cas.collateral import FileCollateral  # noqa: E402
from sgxcloud.cas.evidence import DefaultVerifier, load_evidence  # noqa: E402
from sgxcloud.cas.service.server import make_loopback_tls  # noqa: E402
from sgxcloud.sgx.identity import EnclaveIdentity  # noqa: E402

DCAP = ROOT.parent / "shared" / "testdata" / "dcap"
VERIFY_SECONDS = 3.0
CLIENT_COUNTS = (1, 4, 16)
# key: (database, replicas, worker processes per replica)
CONFIGS = {
    "sqlite": ("SQLite", 1, 1),
    "sqlite-w2": ("SQLite", 1, 2),
    "pg1": ("PostgreSQL", 1, 1),
    "pg2": ("PostgreSQL", 2, 1),
    "pg1-w2": ("PostgreSQL", 1, 2),
}
TARGET_CLIENTS = 16
TARGET_PER_S = 300
TARGET_P99_MS = 50
SWEEP = (150, 225, 375)
# The target's two cells are measured this many times on every configuration
# (the first with the rest of the run, the others after it): one run of 6 s
# cells on a shared 2-core machine says little about how reliably it holds.
ROUNDS = 3
# The offered rate counts as served when the achieved rate is within this
# fraction of it (the last round trips' own latency alone costs ~0.5 % of 6 s).
RATE_TOLERANCE = 0.98
# This machine's speed when quiet (2026-12-03, load < 1.5): per CPU-second,
# so competition for the cores does not move it much; a slower host does.
REFERENCE_SPEED = {"verify_per_cpu_s": 1200.0, "python_per_cpu_s": 2400.0}
MRENCLAVE = "ab" * 32


def _rate(call, seconds: float) -> float:  # type: ignore[no-untyped-def]
    call()  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        call()
        count += 1
    return count / elapsed


def bench_verification() -> dict[str, float]:
    """Quotes verified per second: dcap-qvl alone, and the CAS verifier as production pays.

    One real quote stands for many: before each CAS verification the verifier
    forgets the quote (a new quote of a known platform: PCK chain and dcap-qvl's
    verdict on the platform reused, the quote's own signatures checked), or the
    platform too (a platform's first quote: chain, signatures and dcap-qvl).
    """
    import dcap_qvl

    from sgxcloud.cas.pck import forget_checked_chains, forget_checked_quotes

    raw = (DCAP / "sgx_quote").read_bytes()
    collateral_source = FileCollateral(DCAP / "sgx_quote_collateral.json")
    collateral = collateral_source.get(raw, QUOTE_TIME)
    verifier = DefaultVerifier(collateral_source)
    evidence = load_evidence(raw)
    assert verifier.verify(evidence, QUOTE_TIME).identity.mrenclave.startswith("33d8736d")

    def known_platform() -> None:
        forget_checked_quotes()
        verifier.verify(evidence, QUOTE_TIME)

    def first_of_platform() -> None:
        forget_checked_chains()
        DefaultVerifier(collateral_source).verify(evidence, QUOTE_TIME)

    direct, ours, cold = [], [], []
    for _ in range(3):  # interleave to share the machine's noise fairly
        direct.append(
            _rate(lambda: dcap_qvl.verify(raw, collateral, QUOTE_TIME), VERIFY_SECONDS / 3)
        )
        ours.append(_rate(known_platform, VERIFY_SECONDS / 3))
        cold.append(_rate(first_of_platform, VERIFY_SECONDS / 6))
    d, o, c = statistics.median(direct), statistics.median(ours), statistics.median(cold)
    return {"direct_per_s": d, "cas_per_s": o, "ratio": o / d, "cold_per_s": c}


def bench_parts(workdir: Path) -> dict[str, float]:
    """CPU milliseconds of the pieces of a round trip, measured in this process."""
    import base64

    from cryptography.hazmat.primitives import serialization

    from sgxcloud.cas import protocol
    from sgxcloud.cas.evidence import make_simulated_evidence
    from sgxcloud.cas.policy import public_key_id
    from sgxcloud.cas.service.core import AttestRequest, CasService
    from sgxcloud.cas.store import Database

    def cpu_ms(call, n: int = 200) -> float:  # type: ignore[no-untyped-def]
        call()
        start = time.process_time()
        for _ in range(n):
            call()
        return 1000 * (time.process_time() - start) / n

    verifier = DefaultVerifier(FileCollateral(DCAP / "sgx_quote_collateral.json"))
    quote = load_evidence((DCAP / "sgx_quote").read_bytes())
    service = CasService(
        Database.open(f"sqlite:///{workdir / 'parts.db'}"),
        secrets.Keyring(secrets.MasterKey.generate()),
        verifier,
    )
    service.start()
    owner = secrets.new_private_key("ec-p256")
    pem = (
        owner.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    service.apply_policy(public_key_id(pem), _policy(pem), int(time.time()))
    identity = EnclaveIdentity(MRENCLAVE, "cd" * 32, 0, 0, False)

    def attest() -> None:
        now = int(time.time())
        nonce = service.issue_nonce(now).nonce
        key = protocol.new_enclave_key()
        evidence = make_simulated_evidence(
            identity, protocol.report_data_for(key.public_key(), bytes.fromhex(nonce))
        ).raw
        public = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        service.attest(
            AttestRequest("bench", "svc", nonce, public, base64.b64encode(evidence).decode()), now
        )

    from sgxcloud.cas.pck import forget_checked_quotes

    def new_quote() -> None:  # of a known platform, as in cas_bench_server
        forget_checked_quotes()
        verifier.verify(quote, QUOTE_TIME)

    try:
        return {
            "quote_ms": cpu_ms(new_quote),
            "service_ms": cpu_ms(attest),
        }
    finally:
        service.stop()


def _policy(owner_pem: str) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "name": "bench",
            "access": {"owners": [{"name": "bench", "public_key": owner_pem}]},
            "services": {
                "svc": {
                    "identities": [{"mrenclave": MRENCLAVE}],
                    "allow_simulated": True,
                    "command": ["app", "--key={{secret:k}}"],
                    "environment": {"TOKEN": "{{secret:t:base64}}"},
                    "files": {
                        "/etc/tls.crt": "{{secret:cert:chain-pem}}",
                        "/etc/tls.key": "{{secret:pk}}",
                    },
                }
            },
            "secrets": {
                "k": {"kind": "random", "size": 32},
                "t": {"kind": "random", "size": 32},
                "pk": {"kind": "private-key", "algorithm": "ec-p256"},
                "cert": {"kind": "x509", "key": "pk", "subject": "CN=svc", "sans": ["svc.local"]},
            },
        }
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_replica(
    settings: Path, ca: Path, src: Path = ROOT / "src"
) -> tuple[subprocess.Popen, str]:  # type: ignore[type-arg]
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(src), "SGXCLOUD_BENCH_SRC": str(src)}
    # Its log goes to a file: a pipe nobody reads would stall a replica that logs a lot.
    log = settings.with_name(f"replica-{port}.log")
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "cas_bench_server.py"),
                str(settings),
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    url = f"https://127.0.0.1:{port}"
    with httpx.Client(base_url=url, verify=client.pinned_tls(ca), timeout=2) as http:
        for _ in range(600):
            if server.poll() is not None:
                raise RuntimeError(f"replica exited: {log.read_text(errors='replace')[-500:]}")
            try:
                # /v1/health, not /ready: the baseline's code has no readiness probe.
                if http.get("/v1/health").json().get("state") == "ready":
                    return server, url
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("replica did not become ready")


@dataclass
class Setup:
    """One configuration under test: a database and its replicas (and their workers)."""

    key: str  # a CONFIGS key or baseline
    backend: str
    replicas: int
    database_url: str
    src: Path = ROOT / "src"
    workers: int = 1
    database_pids: list[int] = field(default_factory=list)
    servers: list[tuple[subprocess.Popen, str]] = field(default_factory=list)  # type: ignore[type-arg]

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.servers]

    @property
    def pids(self) -> list[int]:
        """The replicas' processes (run_cell counts their workers' CPU too)."""
        return [server.pid for server, _ in self.servers]

    def label(self) -> dict[str, Any]:
        return {
            "config": self.key,
            "backend": self.backend,
            "replicas": self.replicas,
            "workers": self.workers,
        }

    def start(self, workdir: Path, tls: Any, key_path: Path, owner: Any) -> None:
        settings = workdir / f"cas-{self.key}.yaml"
        # The deployment's answer signing key (as 'cas init' makes one), when the tree
        # served has signed answers: its owner client pins the public key, no warning.
        signs = (self.src / "sgxcloud" / "cas" / "answers.py").exists()
        answer_key, answer_public = _answer_key(workdir) if signs else (None, None)
        settings.write_text(
            f"database_url: {self.database_url}\nmaster_key_file: {key_path}\n"
            f"tls_cert: {tls.cert}\ntls_key: {tls.key}\nlog_level: warning\n"
            "nonce_ttl_seconds: 600\n"
            + (f"workers: {self.workers}\n" if self.workers > 1 else "")
            + (f"answer_signing_key_file: {answer_key}\n" if answer_key else "")
        )
        for _ in range(self.replicas):
            self.servers.append(_start_replica(settings, tls.ca_cert, self.src))
        policy = _policy(_public_pem(owner))
        if self.src == ROOT / "src":
            with client.OwnerClient(
                self.urls[0], owner, ca_file=tls.ca_cert, cas_key=answer_public
            ) as owners:
                owners.apply(policy)
        else:  # another tree's server speaks that tree's owner protocol
            _apply_with_tree(
                self.src, workdir, self.urls[0], tls.ca_cert, owner, policy, answer_public
            )

    def stop(self) -> None:
        for server, _ in self.servers:
            server.terminate()
        for server, _ in self.servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        self.servers.clear()


def _answer_key(workdir: Path) -> tuple[Path, Path]:
    """The benchmark deployment's answer signing key and its public key (made once)."""
    from sgxcloud.cas import answers

    private, public = workdir / "answer-signing.key", workdir / "cas-signing.pub.pem"
    if not private.exists():
        key = answers.generate_key()
        private.write_bytes(answers.private_pem(key))
        private.chmod(0o600)
        public.write_bytes(answers.public_pem(key.public_key()))
    return private, public


def _apply_with_tree(
    src: Path,
    workdir: Path,
    url: str,
    ca: Path,
    owner: Any,
    policy: str,
    cas_key: Path | None = None,
) -> None:
    """Apply ``policy`` with the owner client of the tree at ``src`` (a baseline's),
    pinning ``cas_key`` when that tree's CAS signs answers."""
    from cryptography.hazmat.primitives import serialization

    key_file, policy_file = workdir / "baseline-owner.pem", workdir / "baseline-policy.yaml"
    key_file.write_bytes(
        owner.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    policy_file.write_text(policy)
    code = (
        "import sys; from pathlib import Path\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from sgxcloud.cas import client\n"
        "key = serialization.load_pem_private_key(Path(sys.argv[1]).read_bytes(), None)\n"
        "pin = {'cas_key': Path(sys.argv[5])} if len(sys.argv) > 5 else {}\n"
        "with client.OwnerClient(sys.argv[2], key, ca_file=Path(sys.argv[3]), **pin) as owners:\n"
        "    owners.apply(Path(sys.argv[4]).read_text())\n"
    )
    pin = [str(cas_key)] if cas_key is not None else []
    done = subprocess.run(
        [sys.executable, "-c", code, str(key_file), url, str(ca), str(policy_file), *pin],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the baseline's owner client failed: {done.stderr[-500:]}")


def _public_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _baseline_tree(workdir: Path, revision: str) -> Path:
    """A detached checkout of ``revision`` (the code before this work) for comparison."""
    tree = workdir / "baseline"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        capture_output=True,
    )
    return tree


def _durable_postgres(workdir: Path):  # type: ignore[no-untyped-def]
    """A PostgreSQL server with its durable defaults (the tests' server runs fsync=off)."""
    from tests.cas import postgres as pg

    class Durable(pg.PostgresServer):
        def _pg_ctl_start(self) -> None:
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir} "
                "-c max_connections=200"
            )
            subprocess.run(
                self._cmd(
                    "pg_ctl",
                    "-D",
                    str(self.datadir),
                    "-o",
                    options,
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ),
                check=True,
                capture_output=True,
                timeout=90,
            )

    base = Path(tempfile.mkdtemp(prefix="bench-cas-pg-"))
    run_as = None
    if os.geteuid() == 0:
        import pwd

        run_as = "postgres"
        entry = pwd.getpwnam(run_as)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    bindir = pg.find_bindir()
    assert bindir is not None
    server = Durable(bindir, base / "data", _free_port(), run_as, base / "server.log")
    server.start()
    return server


def _postmaster_pid(datadir: Path) -> list[int]:
    try:
        return [int((datadir / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        return []


@dataclass
class Plan:
    """What to run (the command line's choices)."""

    seconds: float = 6.0
    configs: tuple[str, ...] = tuple(CONFIGS)
    clients: tuple[int, ...] = CLIENT_COUNTS
    open_clients: int = TARGET_CLIENTS
    rate: float = TARGET_PER_S
    sweep: tuple[float, ...] = SWEEP
    arrivals: str = "uniform"
    baseline: str | None = None
    rounds: int = ROUNDS


def _log(kind: str, setup: Setup, row: dict[str, Any]) -> None:
    offered = f" offered {row['offered_per_s']:g}/s" if row["offered_per_s"] else ""
    print(
        f"  {kind:6} {setup.backend} ×{setup.replicas}{_workers_text(setup.workers)} "
        f"{row['clients']:2} enclaves{offered}: "
        f"{row['per_s']:.0f}/s p50 {row['p50_ms']:.1f} p99 {row['p99_ms']:.1f} ms, server "
        f"{row['server_cpu_ms']:.1f} client {row['client_cpu_ms']:.1f} ms CPU/trip, "
        f"other {row['other_cpus']:.2f} CPUs, errors {row['errors']}",
        file=sys.stderr,
        flush=True,
    )


def _workers_text(workers: int) -> str:
    return f" ({workers} workers)" if workers > 1 else ""


def bench_load(workdir: Path, plan: Plan) -> dict[str, Any]:
    """Every closed-loop and open-loop cell of ``plan``; also what was skipped and why."""
    from tests.cas.postgres import find_bindir, fresh_database

    tls = make_loopback_tls(workdir / "tls")
    key_path = workdir / "master.key"
    secrets.write_master_key(key_path, secrets.MasterKey.generate())
    owner = secrets.new_private_key("ec-p256")
    wants_pg = any(CONFIGS[key][0] == "PostgreSQL" for key in plan.configs)
    skipped: list[str] = []
    setups: list[Setup] = []
    closed: list[dict[str, Any]] = []
    opened: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    postgres = baseline_tree = None
    try:
        postgres = _durable_postgres(workdir) if wants_pg and find_bindir() else None
        if plan.baseline:
            baseline_tree = _baseline_tree(workdir, plan.baseline)
            setups.append(
                Setup(
                    "baseline",
                    f"SQLite, baseline {plan.baseline[:10]}",
                    1,
                    f"sqlite:///{workdir / 'base.db'}",
                    baseline_tree / "src",
                )
            )
        for key in plan.configs:
            backend, replicas, workers = CONFIGS[key]
            if backend == "SQLite":
                setups.append(
                    Setup(
                        key,
                        backend,
                        replicas,
                        f"sqlite:///{workdir / f'{key}.db'}",
                        workers=workers,
                    )
                )
            elif postgres is None:
                skipped.append(f"{key}: no PostgreSQL binaries found")
            else:
                setups.append(
                    Setup(
                        key,
                        backend,
                        replicas,
                        fresh_database(postgres),
                        database_pids=_postmaster_pid(postgres.datadir),
                        workers=workers,
                    )
                )
        for setup in setups:
            setup.start(workdir, tls, key_path, owner)
            for clients in plan.clients:
                row = run_cell(
                    setup.urls,
                    tls.ca_cert,
                    workdir,
                    Load(clients, plan.seconds),
                    setup.pids,
                    setup.database_pids,
                )
                closed.append({**setup.label(), **row})
                _log("closed", setup, row)
        ours = [s for s in setups if s.key != "baseline"]
        for setup in ours:
            row = run_cell(
                setup.urls,
                tls.ca_cert,
                workdir,
                Load(plan.open_clients, plan.seconds, plan.rate, plan.arrivals),
                setup.pids,
                setup.database_pids,
            )
            opened.append({**setup.label(), **row})
            _log("open", setup, row)
        best = _most_capacity(closed, ours)
        for rate in sorted(set(plan.sweep) - {plan.rate}) if best is not None else []:
            saturated = [
                r["offered_per_s"]
                for r in opened
                if r["config"] == best.key and r["offered_per_s"] <= rate and _saturated(r)
            ]
            if saturated:  # a higher rate would only queue longer: spend the minutes elsewhere
                skipped.append(
                    f"open loop at {rate:g}/s on {best.key}: already saturated at "
                    f"{min(saturated):g}/s"
                )
                continue
            row = run_cell(
                best.urls,
                tls.ca_cert,
                workdir,
                Load(plan.open_clients, plan.seconds, rate, plan.arrivals),
                best.pids,
                best.database_pids,
            )
            opened.append({**best.label(), **row})
            _log("open", best, row)
        repeats = _repeat_target(plan, ours, tls.ca_cert, workdir)
    finally:
        for setup in setups:
            setup.stop()
        if postgres is not None:
            postgres.stop()
        if baseline_tree is not None:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                check=False,
                capture_output=True,
            )
    order = [s.key for s in setups]
    opened.sort(key=lambda r: (order.index(r["config"]), r["offered_per_s"]))
    return {"closed": closed, "open": opened, "repeats": repeats, "skipped": skipped}


def _repeat_target(
    plan: Plan,
    setups: list[Setup],
    ca: Path,
    workdir: Path,
) -> list[dict[str, Any]]:
    """Rounds 2.. of the target's two cells (closed loop and open loop at the
    rate, ``plan.open_clients`` enclaves) on every configuration, in turn."""
    rows: list[dict[str, Any]] = []
    for round_no in range(2, plan.rounds + 1):
        for setup in setups:
            for load in (
                Load(plan.open_clients, plan.seconds),
                Load(plan.open_clients, plan.seconds, plan.rate, plan.arrivals),
            ):
                row = run_cell(setup.urls, ca, workdir, load, setup.pids, setup.database_pids)
                rows.append({**setup.label(), **row, "round": round_no})
                _log(f"{'closed' if load.rate is None else 'open'}#{round_no}", setup, row)
    return rows


def judge_rounds(cells: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The target in each round (round 1: the main cells) and overall: met only
    when one configuration met it in every round."""
    rounds = [judge(cells["closed"], cells["open"], plan.open_clients, plan.rate)]
    for round_no in range(2, plan.rounds + 1):
        these = [r for r in cells["repeats"] if r["round"] == round_no]
        rounds.append(
            judge(
                [r for r in these if r["offered_per_s"] is None],
                [r for r in these if r["offered_per_s"] is not None],
                plan.open_clients,
                plan.rate,
            )
        )
    configs = [v["config"] for v in rounds[0]["configs"]]
    met_in = {
        c: sum(1 for r in rounds for v in r["configs"] if v["config"] == c and v["met"])
        for c in configs
    }
    first = rounds[0]
    return {
        **first,
        "met": any(n == len(rounds) for n in met_in.values()),
        "met_first_round": first["met"],
        "rounds": len(rounds),
        "met_in": met_in,
        "by_round": rounds,
    }


def _saturated(row: dict[str, Any]) -> bool:
    """An open-loop cell whose offered rate was clearly not served."""
    return row["unsent"] > 0 or row["per_s"] < 0.9 * row["offered_per_s"]


def _most_capacity(closed: list[dict[str, Any]], setups: list[Setup]) -> Setup | None:
    """The configuration with the most round trips/s at the most clients measured."""
    rows = [r for r in closed if r["config"] != "baseline"]
    if not rows:
        return None
    most = max(r["clients"] for r in rows)
    best = max((r for r in rows if r["clients"] == most), key=lambda r: r["per_s"])
    return next(s for s in setups if s.key == best["config"])


def judge(
    closed: list[dict[str, Any]], opened: list[dict[str, Any]],
    clients: int = TARGET_CLIENTS, rate: float = TARGET_PER_S, p99_ms: float = TARGET_P99_MS,
) -> dict[str, Any]:  # fmt: skip
    """The target, per configuration: capacity (closed loop at ``clients``) ≥ ``rate``
    AND, with ``rate`` offered (open loop, ``clients`` enclaves), every round trip
    served without error, the rate achieved and p99 ≤ ``p99_ms``.  Met when one
    configuration meets both."""
    verdicts = []
    for config in dict.fromkeys(r["config"] for r in closed + opened if r["config"] != "baseline"):
        capacity = next(
            (r for r in closed if r["config"] == config and r["clients"] == clients), None
        )
        latency = next(
            (
                r
                for r in opened
                if r["config"] == config and r["clients"] == clients and r["offered_per_s"] == rate
            ),
            None,
        )
        capacity_ok = capacity is not None and capacity["errors"] == 0 and capacity["per_s"] >= rate
        latency_ok = (
            latency is not None
            and latency["errors"] == 0
            and latency["unsent"] == 0
            and latency["per_s"] >= RATE_TOLERANCE * rate
            and latency["p99_ms"] <= p99_ms
        )
        verdicts.append(
            {
                "config": config,
                "capacity_per_s": capacity["per_s"] if capacity else None,
                "capacity_ok": capacity_ok,
                "open_per_s": latency["per_s"] if latency else None,
                "open_p99_ms": latency["p99_ms"] if latency else None,
                "latency_ok": latency_ok,
                "met": capacity_ok and latency_ok,
                "measured": capacity is not None and latency is not None,
            }
        )
    return {
        "clients": clients,
        "per_s": rate,
        "p99_ms": p99_ms,
        "met": any(v["met"] for v in verdicts),
        "configs": verdicts,
    }


def machine_state(
    load_start: tuple[float, float, float], probes: list[dict[str, float]],
    closed: list[dict[str, Any]], opened: list[dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Was the machine shared, and how fast was it: the reasons, plainly."""
    reasons = []
    if load_start[0] >= 0.5:
        reasons.append(f"load average {load_start[0]:.1f} before the benchmark started")
    other = [r["other_cpus"] for r in closed + opened]
    if other and statistics.median(other) >= 0.15:
        reasons.append(
            f"other processes kept {statistics.median(other):.2f} of the 2 CPUs "
            "busy during the cells (median)"
        )
    steal = [r["steal_cpus"] for r in closed + opened]
    if steal and statistics.median(steal) >= 0.05:
        reasons.append(f"the hypervisor took {statistics.median(steal):.2f} CPUs (steal)")
    share = min(p["share"] for p in probes)
    if share < 0.9:
        reasons.append(f"a single-threaded probe got only {share:.0%} of a core")
    speed = min(p["verify_per_cpu_s"] / REFERENCE_SPEED["verify_per_cpu_s"] for p in probes)
    if speed < 0.85:
        reasons.append(
            f"the speed probe ran at {speed:.0%} of its quiet speed per CPU-second "
            "(a slower host, or cores and caches shared with others)"
        )
    return {
        "load_at_start": list(load_start),
        "probes": probes,
        "reference": REFERENCE_SPEED,
        "speed_ratio": speed,
        "shared": bool(reasons),
        "reasons": reasons,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def run(plan: Plan) -> dict[str, Any]:
    """The whole benchmark; a JSON-ready report."""
    import dcap_qvl  # noqa: F401 - fail early if the cas extra is missing

    began = time.monotonic()
    load_start = os.getloadavg()
    probes = [machine_probe()]
    verification = bench_verification()
    with tempfile.TemporaryDirectory(prefix="bench-cas-") as tmp:
        parts = bench_parts(Path(tmp))
        cells = bench_load(Path(tmp), plan)
    probes.append(machine_probe())
    return {
        "measured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine(),
        "plan": {
            **plan.__dict__,
            "configs": list(plan.configs),
            "clients": list(plan.clients),
            "sweep": list(plan.sweep),
        },
        "machine_state": machine_state(load_start, probes, cells["closed"], cells["open"]),
        "verification": verification,
        "parts": parts,
        **cells,
        "target": judge_rounds(cells, plan),
        "duration_s": time.monotonic() - began,
    }


# -- the report ---------------------------------------------------------------


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _command(plan: Plan) -> str:
    words = [".venv/bin/python benchmarks/bench_cas.py"]
    if plan.seconds != Plan.seconds:
        words.append(f"--seconds {plan.seconds:g}")
    if plan.arrivals != Plan.arrivals:
        words.append(f"--arrivals {plan.arrivals}")
    if plan.configs != Plan.configs:
        words.append("--configs " + " ".join(plan.configs))
    if plan.clients != Plan.clients:
        words.append("--clients " + " ".join(map(str, plan.clients)))
    if plan.rate != Plan.rate:
        words.append(f"--rate {plan.rate:g}")
    if plan.sweep != Plan.sweep:
        words.append(" ".join(["--sweep", *(f"{r:g}" for r in plan.sweep)]))
    if plan.rounds != Plan.rounds:
        words.append(f"--rounds {plan.rounds}")
    if plan.baseline:
        words.append(f"--baseline {plan.baseline}")
    return " ".join(words)


def _state_paragraph(report: dict[str, Any]) -> str:
    state = report["machine_state"]
    first, last = state["probes"][0], state["probes"][-1]
    load = ", ".join(f"{x:.2f}" for x in state["load_at_start"])
    speed = (
        f"Machine-speed probe: {first['verify_per_cpu_s']:,.0f} → "
        f"{last['verify_per_cpu_s']:,.0f} quote verifications and "
        f"{first['python_per_cpu_s']:,.0f} → {last['python_per_cpu_s']:,.0f} Python loops "
        f"per CPU-second at the start → end (quiet reference "
        f"{REFERENCE_SPEED['verify_per_cpu_s']:,.0f} and "
        f"{REFERENCE_SPEED['python_per_cpu_s']:,.0f}); the probe got "
        f"{first['share']:.0%} → {last['share']:.0%} of a core.  Load average at the "
        f"start {load} (1, 5, 15 min) on 2 CPUs."
    )
    if state["shared"]:
        verdict = (
            "**The machine was SHARED during this run**: "
            + "; ".join(state["reasons"])
            + ".  Rates and latencies understate a quiet machine; CPU per round trip is "
            "the figure competition moves least."
        )
    else:
        verdict = "The machine was quiet during this run (no other load seen, full speed)."
    return f"{speed}\n{verdict}"


def _target_paragraph(report: dict[str, Any]) -> str:
    target = report["target"]
    issue = target["per_s"] == TARGET_PER_S and target["clients"] == TARGET_CLIENTS
    head = (
        f"**{'Target' if issue else 'Check at the chosen rate, NOT the target'}** "
        f"(≥ {target['per_s']:g} round trips/s at {target['clients']} clients with p99 ≤ "
        f"{target['p99_ms']:g} ms{'' if issue else '; issue 13 asks 300/s at 16'}): "
    )
    if not target["configs"] or not any(v["measured"] for v in target["configs"]):
        return head + "**not measured** in this run."
    rounds = target.get("rounds", 1)
    head += "**MET**" if target["met"] else "**NOT MET**"
    lines = [
        head
        + (
            " (capacity ≥ the rate in the closed loop AND, at that rate offered "
            "in the open loop, every round trip served with p99 within the bound"
            + (f", by one configuration in each of {rounds} rounds" if rounds > 1 else "")
            + ")."
        ),
        "",
    ]
    names = {
        r["config"]: f"{r['backend']}, {r['replicas']} replica(s)"
        f"{_workers_text(r.get('workers', 1))}"
        for r in report["closed"] + report["open"]
    }
    for v in target["configs"]:
        capacity = (
            f"capacity {_f(v['capacity_per_s'], 0)}/s "
            f"({'≥' if v['capacity_ok'] else 'below'} {target['per_s']:g})"
        )
        latency = (
            f"at {target['per_s']:g}/s offered: {_f(v['open_per_s'], 0)}/s served, "
            f"p99 {_f(v['open_p99_ms'])} ms ({'holds' if v['latency_ok'] else 'fails'})"
        )
        lines.append(
            f"- {names.get(v['config'], v['config'])}: {capacity}; {latency}"
            f" → {'met' if v['met'] else 'not met'}"
            + (f"; met in {target['met_in'][v['config']]} of {rounds} rounds" if rounds > 1 else "")
        )
    if rounds > 1:
        lines += ["", _rounds_table(target, names)]
    return "\n".join(lines)


def _rounds_table(target: dict[str, Any], names: dict[str, str]) -> str:
    """Each round's two target cells per configuration: capacity / p99 at the rate."""
    header = (
        "| configuration | "
        + " | ".join(f"round {n}" for n in range(1, target["rounds"] + 1))
        + " |\n|---|"
        + "---|" * target["rounds"]
    )
    rows = []
    for config in target["met_in"]:
        cells = []
        for judged in target["by_round"]:
            v = next((v for v in judged["configs"] if v["config"] == config), None)
            cells.append(
                "–"
                if v is None or not v["measured"]
                else f"{_f(v['capacity_per_s'], 0)}/s, p99 {_f(v['open_p99_ms'])} ms "
                f"{'✓' if v['met'] else '✗'}"
            )
        rows.append(f"| {names.get(config, config)} | " + " | ".join(cells) + " |")
    return (
        f"Each round: {target['clients']}-enclave capacity (closed loop), then p99 with "
        f"{target['per_s']:g}/s offered (open loop); ✓ both hold.\n\n"
        + header
        + "\n"
        + "\n".join(rows)
    )


def _closed_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| database | replicas | workers | enclaves | round trips/s | p50 ms | p99 ms | "
        "in flight | server CPU ms | DB CPU ms | client CPU ms | "
        "CPU-bound ceiling /s | other CPUs | load | errors |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    body = []
    for r in rows:
        database = 0.0 if math.isnan(r["database_cpu_ms"]) else r["database_cpu_ms"]
        cpu = r["server_cpu_ms"] + database + r["client_cpu_ms"]
        ceiling = 2000 / cpu if cpu > 0 else math.nan  # 2 CPUs' worth of round trips
        body.append(
            f"| {r['backend']} | {r['replicas']} | {r.get('workers', 1)} | {r['clients']} | "
            f"{_f(r['per_s'], 0)} | {_f(r['p50_ms'])} | {_f(r['p99_ms'])} | {_f(r['in_flight'])} | "
            f"{_f(r['server_cpu_ms'])} | {_f(r['database_cpu_ms'])} | {_f(r['client_cpu_ms'])} | "
            f"{_f(ceiling, 0)} | {_f(r['other_cpus'], 2)} | {_f(r['load'])} | {r['errors']} |"
        )
    return "\n".join([head, *body])


def _open_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| database | replicas | workers | enclaves | offered /s | served /s | p50 ms | "
        "p90 ms | p99 ms | max ms | late starts | generator lag p99 ms | server CPU ms | "
        "client CPU ms | other CPUs | load | errors / unsent |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {r['backend']} | {r['replicas']} | {r.get('workers', 1)} | {r['clients']} | "
        f"{r['offered_per_s']:g} | "
        f"{_f(r['per_s'], 0)} | {_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['p99_ms'])} | "
        f"{_f(r['max_ms'])} | {r['late_starts']:.0%} | {_f(r['generator_lag_p99_ms'], 2)} | "
        f"{_f(r['server_cpu_ms'])} | {_f(r['client_cpu_ms'])} | {_f(r['other_cpus'], 2)} | "
        f"{_f(r['load'])} | {r['errors']} / {r['unsent']} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def _generator_note(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    harness = max(r["harness_cpu_ms"] for r in rows)
    lags = [
        r["generator_lag_p99_ms"]
        for r in rows
        if not math.isnan(r.get("generator_lag_p99_ms", math.nan))
    ]
    woke = (
        (
            f"; idle enclaves woke for their schedule within {max(lags):.2f} ms (p99, worst "
            "open-loop cell)"
        )
        if lags
        else ""
    )
    return (
        f"\nThe load generator's own CPU (outside the client library, plus the coordinating "
        f"process): at most {harness:.2f} ms per round trip in any cell{woke}.\n"
    )


def _baseline_note(closed: list[dict[str, Any]]) -> str:
    ratios = []
    for clients in dict.fromkeys(r["clients"] for r in closed):
        old = [r for r in closed if r["clients"] == clients and r["config"] == "baseline"]
        new = [r for r in closed if r["clients"] == clients and r["config"] == "sqlite"]
        if old and new and old[0]["per_s"] and old[0]["server_cpu_ms"]:
            ratios.append(
                f"{clients} enclave(s): {new[0]['per_s'] / old[0]['per_s']:.2f}× the round "
                f"trips/s, {new[0]['server_cpu_ms'] / old[0]['server_cpu_ms']:.2f}× the server "
                "CPU per round trip"
            )
    if not ratios:
        return ""
    return (
        "\nThis code against the baseline's, same harness, same minutes (SQLite, 1 "
        f"replica, closed loop): {'; '.join(ratios)}.  Under load one starved cell swings a "
        "throughput ratio; the server-CPU ratio is the robust comparison.\n"
    )


def _parts_paragraph(report: dict[str, Any]) -> str:
    parts = report["parts"]
    ours = [r for r in report["closed"] if r["config"] == "sqlite"]
    if not ours:
        return ""
    server_ms = statistics.median(r["server_cpu_ms"] for r in ours)
    client_ms = statistics.median(r["client_cpu_ms"] for r in ours)
    return f"""
Where the time goes (CPU per round trip, this run): a SQLite replica spent
{server_ms:.1f} ms per round trip (median of its closed-loop cells); of that,
the service layer alone (nonce, verification, decision, audit append,
rendering, HPKE, certificate; in-process, no HTTP) takes
{parts["service_ms"]:.1f} ms, of which verifying the real quote is
{parts["quote_ms"]:.1f} ms.  The rest — about
{max(0.0, server_ms - parts["service_ms"]):.1f} ms — is HTTP/TLS and request
handling (two requests per round trip).  Each enclave spent {client_ms:.1f} ms
of CPU per round trip (key generation, evidence, HPKE opening, HTTP) on the
same 2 CPUs.
"""


METHOD = """\
### Method

A **round trip** is what an enclave does at start-up: `POST /v1/nonces` (an
authenticated nonce, no database write), then `POST /v1/attest` (quote
verification, binding, nonce spent and audit entry appended in one
transaction, configuration rendered from sealed secrets, HPKE sealing to the
enclave key, an X.509 certificate for that key), through the real client
library (`sgxcloud.cas.client.fetch_configuration`).  Each enclave is its own
process with one keep-alive HTTPS connection (the TLS handshake happens once,
before the clock starts); enclaves are spread over replicas by connection, as
an L4 balancer does.  The server is production's `serve()`
(benchmarks/cas_bench_server.py) whose verifier also verifies a real
Intel-signed SGX quote with warm collateral on every attestation, paying
what a new quote of a platform already seen costs (its two ECDSA signatures;
the PCK chain and dcap-qvl's verdict on the platform are reused, as in
production; a platform's first quote is in the quote verification table): the
enclaves' evidence is SIMULATED (no SGX here), the verification cost is real.
PostgreSQL runs with its durable defaults (fsync and synchronous_commit on);
SQLite in WAL mode with `synchronous=FULL`.  Clients, server and database
share the same 2 CPUs.

**Closed loop** (capacity): each of N enclaves starts its next round trip the
moment the previous one ends.  This finds how many round trips/s N concurrent
clients get, but not the latency at a given rate: by **Little's law**
(L = λ·W: mean requests in flight = throughput × mean latency) a closed loop
with N clients and no think time always has N requests in flight, so its mean
latency is N / throughput — 16 clients at 300/s means 53 ms on average
whatever the server does.  "300/s with p99 ≤ 50 ms" can therefore never hold
in a 16-client closed loop.  The column *in flight* (round trips in flight,
averaged over the window) should equal the enclaves: less would mean the
generator kept clients idle between round trips.

**Open loop** (latency at a rate): the 16 enclaves together offer a fixed
rate — each on its own schedule, evenly phased by default (together one round
trip every 1/rate s, like wrk2 or k6's constant-arrival-rate) or Poisson
(`--arrivals poisson`) — whether or not earlier round trips have come back.
(With Poisson arrivals an enclave's next round trip may fall due before its
previous one has ended; with one connection each it then waits, and that
wait counts: slightly pessimistic against independent enclaves.)
Latency is measured from each round trip's **scheduled** start, not from when
it was sent: a client still busy with its previous round trip sends late, and
that wait counts.  Measuring from the send instead would hide exactly the
queueing a slow server causes (**coordinated omission**: the generator backs
off when the server stalls, so the stall is sampled once instead of for every
request it delayed).  A client too far behind (past the window plus
min(window, 5 s)) stops; what it never sent is reported as *unsent* and
counted in the percentiles at the delay it had reached.  *Late starts* is the
share of round trips sent over 1 ms after their schedule.  *Served /s* is the
successful round trips divided by the time from the first schedule to the
last answer (at least the window).  Every configuration is run at 300/s;
then the one with the most 16-enclave capacity at a few more rates (150, 225
and 375/s by default, `--sweep`) to show where latency turns up — a rate
above one already saturated is skipped.

**Target** (issue 13, ≥ 300 round trips/s at 16 clients with p99 ≤ 50 ms): met
only when one configuration both has a 16-client closed-loop capacity of at
least 300/s, and, with 300/s offered by 16 enclaves in the open loop, served
every round trip without error, achieved at least 98 % of the offered rate
and kept p99 within 50 ms — and did so in every **round**: the target's two
cells (the 16-enclave closed loop and 300/s offered) are measured `--rounds`
times (default 3) on every configuration, the first with the rest of the run
and the others after it, one configuration after another, so that one lucky
or unlucky 6-second cell on a shared machine does not decide the verdict.

**The generator measures itself**: *client CPU* is the enclaves' whole CPU
per round trip; the generator's own share (scheduling and bookkeeping outside
the client library, plus the coordinating process) is stated under the
open-loop table (per cell: `harness_cpu_ms` in the JSON).  *Generator lag p99* is how
late an idle enclave woke for a scheduled round trip — the generator's own
delay, not the server's.  *Other CPUs* is the machine's busy time (from
/proc/stat) minus that of the server, database, enclaves and coordinator, per
second of the cell: other people's work on the machine.  The machine-speed
probe (a real quote verification and a fixed Python loop, per CPU-second, at
the start and the end) separates a slower machine from a busier one.

Server, database (all PostgreSQL processes; SQLite runs inside the server:
"–") and client CPU per round trip come from the kernel's per-process
accounting over the cell, divided by the round trips completed: the figures
competition distorts least.  The *CPU-bound ceiling* is 2 CPUs divided by
server + database + client CPU per round trip: the most this machine could
serve with every core busy and the clients on it too.

Run: `.venv/bin/python benchmarks/bench_cas.py` (about 7 minutes; `--seconds`
per cell, `--json` for machine-readable output, `--baseline REV` to measure a
git revision's server in the same run, `--help` for the rest).
"""


def _verification_table(v: dict[str, float]) -> str:
    rows = [
        (
            "`dcap_qvl.verify` directly, real SGX quote, warm collateral (baseline)",
            f"{v['direct_per_s']:,.0f} verifications/s",
        ),
        (
            "CAS verifier, a new quote of a known platform (its signatures checked, "
            "dcap-qvl's verdict on the platform and collateral reused)",
            f"{v['cas_per_s']:,.0f} verifications/s ({1000 / v['cas_per_s']:.2f} ms each)",
        ),
        (
            "ratio CAS / direct (target ≥ 0.8×)",
            f"**{v['ratio']:.2f}×** ({'meets' if v['ratio'] >= 0.8 else 'MISSES'} the target)",
        ),
    ]
    if "cold_per_s" in v:  # reports written before the verdict cache have no such figure
        rows.append(
            (
                "CAS verifier, a platform's first quote (PCK chain, signatures, dcap-qvl)",
                f"{v['cold_per_s']:,.0f} verifications/s ({1000 / v['cold_per_s']:.2f} ms each)",
            )
        )
    return "\n".join(
        [
            "| quote verification | figure |",
            "|---|---|",
            *(f"| {name} | {figure} |" for name, figure in rows),
        ]
    )


def markdown(report: dict[str, Any]) -> str:
    plan = Plan(
        **{
            **report["plan"],
            "configs": tuple(report["plan"]["configs"]),
            "clients": tuple(report["plan"]["clients"]),
            "sweep": tuple(report["plan"]["sweep"]),
        }
    )
    skipped = f"\nNot measured: {'; '.join(report['skipped'])}.\n" if report["skipped"] else ""
    return f"""## Attestation and configuration service (CAS)

Measured {report["measured_at"]} on {report["machine"]}, by `{_command(plan)}`
({plan.seconds:g} s per cell, {report["duration_s"]:.0f} s in all).  No SGX here.
{_state_paragraph(report)}

{_target_paragraph(report)}
{skipped}
{_verification_table(report["verification"])}

### Capacity: closed loop

{_closed_table(report["closed"])}
{_baseline_note(report["closed"])}
### Latency at a fixed rate: open loop ({plan.arrivals} arrivals)

{_open_table(report["open"])}
{_generator_note(report["closed"] + report["open"])}{_parts_paragraph(report)}
{METHOD}"""


def _json_safe(value: Any) -> Any:
    """NaN (a figure with no samples) becomes null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        seconds=args.seconds,
        configs=tuple(args.configs),
        clients=tuple(args.clients),
        open_clients=args.open_clients,
        rate=args.rate,
        sweep=tuple(args.sweep),
        arrivals=args.arrivals,
        baseline=args.baseline,
        rounds=args.rounds,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench_cas.py",
        description="Measure CAS attest-and-fetch capacity (closed loop: 1, 4, 16 enclaves; "
        "SQLite 1 replica, PostgreSQL 1 and 2 replicas, each database also "
        "with 1 replica of 2 worker processes) and latency at a fixed "
        "offered rate (open loop, no coordinated omission), each attestation "
        "also verifying a real SGX quote.  Writes docs/benchmarks/cas.md and "
        "prints it (or JSON).  The default run takes about 7 minutes.",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=Plan.seconds,
        help="measured time per cell (default %(default)g)",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(CONFIGS),
        metavar="CONFIG",
        help="configurations: sqlite (1 replica), sqlite-w2 (1 replica, 2 "
        "workers), pg1, pg2 (PostgreSQL, 1 or 2 replicas), pg1-w2 "
        "(PostgreSQL, 1 replica, 2 workers); default all",
    )
    parser.add_argument(
        "--clients",
        nargs="+",
        type=int,
        default=list(CLIENT_COUNTS),
        metavar="N",
        help="closed-loop enclave counts (default 1 4 16)",
    )
    parser.add_argument(
        "--open-clients",
        type=int,
        default=TARGET_CLIENTS,
        metavar="N",
        help="enclaves sharing the open-loop rate (default %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=TARGET_PER_S,
        help="open-loop offered round trips/s, on every configuration "
        "(default %(default)g, the target)",
    )
    parser.add_argument(
        "--sweep",
        nargs="*",
        type=float,
        default=list(SWEEP),
        metavar="RATE",
        help="further open-loop rates on the configuration with the most "
        "capacity (default 150 225 375; none: --sweep alone)",
    )
    parser.add_argument(
        "--arrivals",
        choices=["uniform", "poisson"],
        default="uniform",
        help="open-loop schedule: evenly phased enclaves or Poisson (default %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=ROUNDS,
        metavar="N",
        help="measure the target's two cells N times on every configuration "
        "(the target is met when one configuration meets it in every "
        "round; default %(default)s)",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also measure the server of git revision REV (SQLite, closed "
        "loop, same harness) for ratios",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of Markdown"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not update docs/benchmarks/cas.md"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600:
        parser.error("--seconds must be between 0 and 600")
    if any(n < 1 or n > 64 for n in [*args.clients, args.open_clients]):
        parser.error("enclave counts must be between 1 and 64")
    if any(r <= 0 for r in [args.rate, *args.sweep]):
        parser.error("rates must be positive")
    if not 1 <= args.rounds <= 20:
        parser.error("--rounds must be between 1 and 20")
    if args.baseline:
        found = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "rev-parse",
                "--verify",
                "--quiet",
                f"{args.baseline}^{{commit}}",
            ],
            capture_output=True,
            check=False,
        )
        if found.returncode != 0:
            parser.error(f"--baseline {args.baseline}: no such git revision")
    try:
        import dcap_qvl  # noqa: F401
    except ImportError:
        parser.error("dcap-qvl is not installed (the cas extra): pip install -e '.[cas]'")
    try:
        report = run(_plan(args))
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench_cas.py: error: {exc}", file=sys.stderr)
        return 1
    section = markdown(report)
    if not args.no_write:
        out = ROOT / "docs" / "benchmarks" / "cas.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(section)
    print(json.dumps(_json_safe(report), indent=2) if args.json else section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
