"""Composition root: settings → database, keyring, verifier → service → HTTPS server.

This is the one place that chooses implementations (which collateral source,
which verifier), in the manner of Marblerun's composition root; the service
layer and the handlers only see interfaces.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import functools
import ipaddress
import logging
import logging.config
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from sgxcloud.cas import files
from sgxcloud.cas.config import ConfigError, Settings
from sgxcloud.cas.evidence import DefaultVerifier
from sgxcloud.cas.service.app import add_audience, create_app
from sgxcloud.cas.service.auth import PEER_CERTIFICATE_STATE, OwnerCertificates
from sgxcloud.cas.service.core import CasService
from sgxcloud.cas.service.metrics import (
    MULTIPROCESS_DIR,
    CasMetrics,
    MeasuredService,
    ObservedCollateral,
    WorkerMetrics,
    serve_metrics,
)
from sgxcloud.cas.store import Database
from sgxcloud.errors import SgxcloudError
from sgxcloud.web.balance import ConnectionBalancer
from sgxcloud.web.connections import ConnectionGate, tls_context
from sgxcloud.web.heap import freeze_startup_objects
from sgxcloud.web.limits import LimitedHttpToolsProtocol, RequestLimits, uvicorn_options

log = logging.getLogger(__name__)


def count_connections(gate: ConnectionGate, metrics: CasMetrics) -> None:
    """``sgxcloud_cas_connections_total``: what the connection gate refused,
    evicted, handed to another worker or closed to even the workers out."""
    counters = {
        outcome: metrics.connections.labels(outcome=outcome)
        for outcome in ("refused", "evicted", "handed_over", "shed")
    }
    gate.observe = lambda outcome: counters[outcome].inc()


def build_service(
    settings: Settings, metrics: CasMetrics | None = None, *, migrate: bool = True
) -> CasService:
    """A started service for ``settings`` (migrates the database, checks the master key).

    ``migrate=False`` (the workers of a ``cas serve``, whose parent migrated):
    a database whose schema is not current is refused instead.
    """
    keyring = settings.keyring()
    source = settings.collateral_source()
    if metrics is not None and source is not None:
        source = ObservedCollateral(source, metrics)  # collateral age/expiry on /metrics
    verifier = DefaultVerifier(source)
    database = Database.open(settings.database_url, migrate=migrate)
    creators = settings.policy_creators
    service = CasService(
        database,
        keyring,
        verifier,
        nonce_ttl=settings.nonce_ttl_seconds,
        attest_concurrency=settings.attest_concurrency,
        policy_creators=frozenset(creators) if creators is not None else None,
        max_policy_bytes=settings.max_policy_bytes,
        rejections_burst=settings.rejections_burst,
        rejections_per_second=settings.rejections_per_second,
    )
    try:
        service.start()
    except BaseException:
        database.close()
        raise
    return service


def build_app(
    settings: Settings, service: CasService | None = None, metrics: CasMetrics | None = None
) -> FastAPI:
    metrics = metrics or CasMetrics()
    service = service or build_service(settings, metrics)
    return measured_app(
        service, metrics, max_skew=settings.request_max_skew_seconds,
        audiences=settings.audiences(), owner_certificates=owner_certificates(settings),
        limits=settings.request_limits(),
        max_attest_bytes=settings.max_attest_body_bytes,
        max_policy_bytes=settings.max_policy_body_bytes,
        answer_key=answer_key(settings),
    )  # fmt: skip


def answer_key(settings: Settings) -> Ed25519PrivateKey | None:
    """The key signing owner answers (``answer_signing_key_file``), or None."""
    if settings.answer_signing_key_file is None:
        log.warning(
            "no answer_signing_key_file: answers to owners are not signed, and owners who "
            "pin this deployment's signing key refuse them (restore keys/answer-signing.key "
            "from the key backup and set it)"
        )
        return None
    from sgxcloud.cas.answers import fingerprint, load_private_key

    try:
        key = load_private_key(settings.answer_signing_key_file)
    except SgxcloudError as exc:
        raise ConfigError(str(exc)) from exc
    # The line an operator compares with the published key after a restore
    # ('sgxcloud cas signing-key --check cas-signing.pub.pem' does it for them).
    log.info(
        "answer signing key %s, public key fingerprint %s",
        settings.answer_signing_key_file,
        fingerprint(key.public_key()),
    )
    return key


def owner_certificates(settings: Settings) -> OwnerCertificates:
    """The owner-certificate checks the settings ask for (owner CA, CRLs)."""
    try:
        return OwnerCertificates(settings.owner_ca_file, settings.owner_crl_files)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def measured_app(
    service: CasService, metrics: CasMetrics, *, max_skew: int = 300, **app_options: Any
) -> FastAPI:
    """The CAS app with attestations counted and timed into ``metrics``.

    The metrics are served apart (:func:`serve_metrics`), never by this app.
    ``app_options`` go to :func:`create_app` unchanged (e.g. ``audiences``).
    """
    metrics.watch(service)
    return create_app(
        MeasuredService(service, metrics),  # type: ignore[arg-type]
        max_skew=max_skew,
        **app_options,
    )


class PeerCertificateProtocol(LimitedHttpToolsProtocol):
    """The limited HTTP/1.1 protocol, passing the TLS client certificate to the app.

    uvicorn does not implement the ASGI TLS extension; the verified peer
    certificate (DER) is put into each request's ``scope["state"]`` instead,
    which this connection owns (a per-connection copy of the app state).
    """

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def,override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, PEER_CERTIFICATE_STATE: peer}


def _server_options(
    cert: Path, key: Path, owner_ca: Path | None, limits: RequestLimits
) -> dict[str, Any]:
    """uvicorn options for TLS and the limits; with ``owner_ca``, client certificates
    are requested (mTLS).  TLS is the connection gate's, not uvicorn's: a
    connection is counted and admitted before its handshake (web.connections)."""
    protocol = LimitedHttpToolsProtocol
    if owner_ca is not None:
        tls = tls_context(str(cert), str(key), ca_certs=str(owner_ca), cert_reqs=ssl.CERT_OPTIONAL)
        protocol = PeerCertificateProtocol
    else:
        tls = tls_context(str(cert), str(key))
    return uvicorn_options(limits, protocol, tls=tls)


LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
"""The one format of a ``cas serve``'s log: its own lines and uvicorn's (the
process id tells the workers apart)."""


def log_config(level: str) -> dict[str, Any]:
    """The logging of a ``cas serve`` at ``level`` (setting ``log_level``), for dictConfig.

    The ``sgxcloud`` loggers (start-up, policy changes, attestation decisions
    with their audit position and ref) and uvicorn's, in one format on stderr.
    Before, ``log_level`` reached uvicorn only: the service's own ``info``
    lines were dropped (red team rt7 finding 7).  :func:`serve` applies it
    before the service starts, and uvicorn applies it again in every worker it
    spawns (it is part of the worker's uvicorn configuration).  Other libraries'
    loggers are left alone (Python prints their warnings as before).
    """
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"cas": {"format": LOG_FORMAT}},
        # Exact repeats (uvicorn's one warning per refused request) thinned out.
        "filters": {"repeats": {"()": "sgxcloud.web.logs.RepeatsThinned"}},
        "handlers": {
            "cas": {
                "class": "logging.StreamHandler",
                "formatter": "cas",
                "stream": "ext://sys.stderr",
                "filters": ["repeats"],
            }
        },
        "loggers": {
            name: {"handlers": ["cas"], "level": upper, "propagate": False}
            for name in ("sgxcloud", "uvicorn", "uvicorn.access")
        },
    }


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Everything uvicorn is told for ``settings``: address, logs, TLS, limits."""
    assert settings.tls_cert is not None and settings.tls_key is not None
    return dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        access_log=settings.log_level == "debug",
        **_server_options(
            settings.tls_cert, settings.tls_key, settings.owner_ca_file,
            settings.request_limits(),
        ),
    )  # fmt: skip


def _listen(settings: Settings) -> socket.socket:
    """The API's listening socket, bound here rather than by uvicorn.

    uvicorn would announce ``http://``: TLS is done by the connection gate
    (web.connections), after a connection is admitted, so uvicorn's own
    settings carry none.  Inheritable, for the workers of :func:`serve_workers`.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    sock.set_inheritable(True)
    host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    logging.getLogger("uvicorn.error").info(
        "CAS serving on https://%s:%d (Press CTRL+C to quit)", host, sock.getsockname()[1]
    )
    return sock


def serve(settings: Settings) -> None:
    """Run the HTTPS API until interrupted (``sgxcloud cas serve``).

    With ``workers`` above 1, :func:`serve_workers`; otherwise this process
    serves.
    """
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("tls_cert and tls_key are required: the CAS only speaks HTTPS")
    logging.config.dictConfig(log_config(settings.log_level))  # before "CAS ready"
    if settings.workers > 1:
        serve_workers(settings)
        return
    metrics = CasMetrics()
    service = build_service(settings, metrics)
    app = build_app(settings, service, metrics)
    metrics_server = None
    try:
        if settings.metrics_port is not None:
            metrics_server = serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
        options = _uvicorn_options(settings)
        count_connections(options["http"], metrics)
        config = uvicorn.Config(app, **options)
        sock = _listen(settings)
        freeze_startup_objects()
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        service.stop()


# -- several worker processes ------------------------------------------------------
#
# One Python process serves on about one core (the GIL).  With ``workers: N``
# the parent does what must happen once (migrations, the deployment id, the
# master-key check: build_service), binds the listening socket, and hands it
# to N workers started by uvicorn's own supervisor (spawned, so each builds
# its own service, database engine and event loop; none inherits a
# connection or a lock of the parent's).  The kernel spreads connections
# over the workers accepting on the shared socket.  Everything replicas on
# one database already guarantee holds between workers: nonces are spent in
# the database, the audit chain's head is locked there, and SQLite writers
# queue on a lock file (store.db.SqliteWriterLock).


def serve_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM/SIGINT stops them all.

    A worker that dies is logged, counted (``sgxcloud_cas_worker_restarts``)
    and replaced; one that stops answering the supervisor's pings is killed
    and replaced.  SIGHUP replaces the workers one by one; SIGTTIN/SIGTTOU
    add or remove one (uvicorn's supervisor).
    """
    builder = build_service  # looked up now: a harness (the benchmark) may substitute it
    metrics_dir = Path(tempfile.mkdtemp(prefix="sgxcloud-cas-metrics-"))  # 0700, this start's
    balance_dir = Path(tempfile.mkdtemp(prefix="sgxcloud-cas-workers-"))  # 0700: web.balance
    previous = os.environ.get(MULTIPROCESS_DIR)
    os.environ[MULTIPROCESS_DIR] = str(metrics_dir)  # inherited by the workers only
    service: CasService | None = None
    metrics_server = None
    sock: socket.socket | None = None
    try:
        service = builder(settings)  # once, before any worker: migrations, deployment id
        answer_key(settings)  # an unreadable answer signing key stops the start, not a worker
        config = WorkerConfig(settings, builder, balance_dir)
        sock = _listen(settings)
        supervisor = WorkerSupervisor(config, [sock])
        metrics = WorkerMetrics(service, metrics_dir, supervisor.live_workers)
        supervisor.on_death = lambda _pid: metrics.restarts.inc()
        if settings.metrics_port is not None:
            metrics_server = serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
        freeze_startup_objects()
        supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if sock is not None:
            sock.close()
        if service is not None:
            service.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(balance_dir, ignore_errors=True)
        if previous is None:
            os.environ.pop(MULTIPROCESS_DIR, None)
        else:
            os.environ[MULTIPROCESS_DIR] = previous


# How long a worker may leave the supervisor's ping unanswered before it is
# killed and replaced.  uvicorn's 5 s is too short here: a new worker answers
# only once it has imported the service's modules, which took 6-8 s on the
# 2-core test machine under load (and the supervisor then killed every
# worker it started, over and over).
WORKER_HEALTHCHECK_SECONDS = 30
DRAIN_SECONDS = 10
"""How long a stopping worker lets its connections finish their requests."""


class WorkerConfig(uvicorn.Config):
    """The uvicorn configuration of the workers of :func:`serve_workers`.

    Rebuilt from the settings in each worker (it travels as its settings and
    builder, both picklable; the limited protocol class made for the limits
    is not), with an app factory that builds the worker's own service there.
    """

    def __init__(
        self, settings: Settings, builder: Callable[..., CasService], balance_dir: Path
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.balance_dir = balance_dir
        options = _uvicorn_options(settings)
        gate: ConnectionGate = options["http"]
        # Connections evened out between the workers (web.balance): otherwise
        # enclaves that keep their connections may all sit on one worker.
        gate.balance(ConnectionBalancer(balance_dir), self)
        super().__init__(
            functools.partial(worker_app, settings, builder, gate),
            factory=True,
            workers=settings.workers,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
            **options,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerConfig, (self.settings, self.builder, self.balance_dir))


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor, saying which worker died and how, and counting it."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.on_death: Callable[[int], None] = lambda _pid: None

    def live_workers(self) -> int:
        return sum(1 for process in list(self.processes) if process.process.is_alive())

    def keep_subprocess_alive(self) -> None:
        before = list(self.processes)
        super().keep_subprocess_alive()  # kills a hung worker, replaces a dead one
        for old, new in zip(before, self.processes, strict=False):
            if old is not new:
                log.warning(
                    "CAS worker %s %s; worker %s replaces it",
                    old.pid, _how_it_ended(old.exitcode), new.pid,
                )  # fmt: skip
                self.on_death(old.pid or 0)


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def worker_app(
    settings: Settings, builder: Callable[..., CasService], gate: ConnectionGate
) -> ASGIApp:
    """The app of one worker, built in the worker (uvicorn calls this factory there)."""
    _stop_with_parent()
    metrics = CasMetrics()  # counts into the parent's multiprocess directory
    count_connections(gate, metrics)
    try:
        service = builder(settings, metrics, migrate=False)  # the parent migrated
    except Exception as exc:  # the parent started with the same settings: a passing failure
        log.error("CAS worker %d could not start: %s", os.getpid(), exc)
        time.sleep(2)  # the supervisor starts another: not in a tight loop
        raise SystemExit(1) from None
    return _StopsService(build_app(settings, service, metrics), service, gate)


class _StopsService:
    """An app whose service stops (database closed) when uvicorn shuts the worker
    down, after the connections its gate balances have drained; the gate starts
    taking handovers from the other workers at startup."""

    def __init__(self, app: ASGIApp, service: CasService, gate: ConnectionGate) -> None:
        self.app = app
        self.service = service
        self.gate = gate

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.gate.start_balancing(asyncio.get_running_loop())
                freeze_startup_objects()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gate.drain(DRAIN_SECONDS)
                self.service.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> None:
    """Have Linux send this worker SIGTERM when its parent dies, even by SIGKILL.

    Otherwise the workers of a parent killed outright would keep serving,
    unsupervised, on the socket they inherited.
    """
    parent = multiprocessing.parent_process()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's pipe is all there is
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def make_loopback_tls(directory: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (demo, tests, bench)."""
    now = now or dt.datetime.now(dt.UTC)
    files.make_dir(directory, files.PRIVATE_DIR)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sgxcloud CAS loopback CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    made = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.write_file(made.ca_cert, ca.public_bytes(serialization.Encoding.PEM), files.PUBLIC)
    files.write_file(made.cert, cert.public_bytes(serialization.Encoding.PEM), files.PUBLIC)
    files.write_file(
        made.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        files.PRIVATE,
    )
    return made


@contextmanager
def background_https(
    app: FastAPI,
    tls: TlsFiles,
    *,
    host: str = "127.0.0.1",
    log_level: str = "warning",
    owner_ca: Path | None = None,
    limits: RequestLimits | None = None,
) -> Iterator[str]:
    """Serve ``app`` over HTTPS on a free loopback port in a thread; yields the base URL.

    On asyncio's own loop, never uvloop: the thread may live in a process that
    eventlet has monkey-patched (the demo runs Nova's harness), where asyncio's
    selector is green and yields to eventlet's hub, while uvloop's blocks the
    whole OS thread — every other green thread of the demo stopped with it.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=0,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="asyncio",
        **_server_options(tls.cert, tls.key, owner_ca, limits or RequestLimits()),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="cas-https", daemon=True)
    thread.start()
    _wait_for(lambda: server.started or not thread.is_alive(), timeout=20)
    if not server.started:
        raise RuntimeError("the HTTPS server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"https://{host}:{port}"
    add_audience(app, url)  # the port was only known now
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_for(condition: Callable[[], bool], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
