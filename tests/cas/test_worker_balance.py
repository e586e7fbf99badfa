"""Connections evened out between the workers of one ``cas serve`` (web.balance).

Real processes on loopback: a ``cas serve --workers 2`` and HTTPS clients that
keep their connections, as an enclave fleet behind a pool does.  Without the
balancer an idle worker's event loop accepts every connection waiting at
once, and clients that keep their connections stay on one worker while the
other idles (16 of 16 on one worker, measured in the CAS benchmark).
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.cas.test_workers import Served, _counter
from tests.metrics.promtool import check_metrics

CLIENTS = 16


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    temporary = tmp_path / "tmp"  # where the service makes its directories
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))
    served = Served(tmp_path, f"sqlite:///{tmp_path / 'cas.db'}")
    served.temporary = temporary  # type: ignore[attr-defined]
    try:
        yield served
    finally:
        served.stop()


def _balance_dir(served: Served) -> Path:
    (found,) = served.temporary.glob("sgxcloud-cas-workers-*")  # type: ignore[attr-defined]
    return found


def _wait_balancing(served: Served, workers: list[int]) -> None:
    """Until every worker takes handovers (its socket is in the directory)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = {p.name for p in _balance_dir(served).iterdir()}
        if all(f"{pid}.sock" in names for pid in workers):
            return
        time.sleep(0.1)
    raise AssertionError(f"workers {workers} never took handovers: {names}")


def _split(served: Served) -> list[int]:
    """Established connections to the service, per live worker."""
    counts = []
    for pid in served.workers():
        try:
            connections = psutil.Process(pid).net_connections("tcp")
        except psutil.NoSuchProcess:
            continue
        counts.append(
            sum(
                1
                for c in connections
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == served.port
            )
        )
    return sorted(counts)


def _connect(served: Served) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(served.tls.ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", served.port, context=context, timeout=20)
    connection.request("GET", "/v1/health/live")
    connection.getresponse().read()
    return connection


def _settle(served: Served, expected: list[int], seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while (split := _split(served)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return split


def test_kept_connections_are_even_between_workers(served: Served) -> None:
    workers = served.wait_workers(2)
    _wait_balancing(served, workers)
    directory = _balance_dir(served)
    assert directory.stat().st_mode & 0o077 == 0  # private to the service's user
    assert all(p.stat().st_mode & 0o077 == 0 for p in directory.glob("*.load"))

    # One after another (each connected and answered before the next): the
    # kernel tends to give every one to the same idle worker.
    opened = [_connect(served) for _ in range(CLIENTS)]
    assert _settle(served, [CLIENTS // 2] * 2) == [CLIENTS // 2] * 2
    for connection in opened:
        connection.close()
    assert _settle(served, [0, 0]) == [0, 0]

    # All at once: one worker's event loop accepts the whole wave.
    with ThreadPoolExecutor(CLIENTS) as pool:
        opened = list(pool.map(lambda _: _connect(served), range(CLIENTS)))
    assert _settle(served, [CLIENTS // 2] * 2) == [CLIENTS // 2] * 2
    for connection in opened:
        connection.close()

    served.stop()
    assert not directory.exists()  # the parent removes it


def test_connections_move_to_a_replacement_worker_without_errors(served: Served) -> None:
    """A worker killed: its clients reconnect to the survivor, which then holds
    all of them; once the replacement is up the survivor closes one connection
    at a time after an answer (``Connection: close``), so the clients' next
    connections are placed evenly — and no client sees an error for it."""
    workers = served.wait_workers(2)
    _wait_balancing(served, workers)
    context = ssl.create_default_context(cafile=str(served.tls.ca_cert))
    stop = threading.Event()
    errors: list[tuple[float, str]] = []
    answered = [0]

    def client() -> None:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", served.port, context=context, timeout=20
        )
        while not stop.is_set():
            try:
                connection.request("GET", "/v1/health/live")
                answer = connection.getresponse()
                answer.read()
                assert answer.status == 200
                answered[0] += 1
            except (OSError, http.client.HTTPException) as exc:
                errors.append((time.monotonic(), repr(exc)))
                connection.close()  # the next request connects again
                time.sleep(0.05)
            time.sleep(0.01)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        assert _settle(served, [CLIENTS // 2] * 2) == [CLIENTS // 2] * 2
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        replaced = served.wait_workers(2, exclude=victim)
        _wait_balancing(served, replaced)
        settled_from = time.monotonic()
        assert _settle(served, [CLIENTS // 2] * 2, seconds=30) == [CLIENTS // 2] * 2
        before = answered[0]
        time.sleep(1)
        assert answered[0] > before  # still answering
        exposition = served.metrics()
        check_metrics(exposition)
        moved = {
            outcome: _counter(exposition, "sgxcloud_cas_connections_total", outcome=outcome)
            for outcome in ("handed_over", "shed")
        }
        assert moved["shed"] >= 1 and moved["handed_over"] >= 1, moved
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    late = [error for at, error in errors if at >= settled_from]
    assert not late, late  # moving connections cost the clients nothing
