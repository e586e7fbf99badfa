"""The load generator of benchmarks/bench_cas.py: enclave processes, two loop kinds.

Each enclave is a separate process (``multiprocessing``, fork) running the
real client library (``sgxcloud.cas.client.fetch_configuration``) over one
keep-alive HTTPS connection.  A cell runs one of two load shapes:

- **closed loop** (``Load.rate is None``): every enclave starts its next round
  trip as soon as the previous one ends.  This measures capacity with N
  concurrent clients; by Little's law its mean latency is N / throughput, so
  it cannot say what latency clients see at a given request rate.
- **open loop** (``Load.rate``): the enclaves together offer a fixed rate of
  round trips, each enclave on its own schedule (evenly phased, or Poisson).
  Latency counts from each request's *scheduled* start: a client still busy
  with its previous request starts late and that lateness is part of the
  latency (no coordinated omission, as in wrk2).

The generator measures itself: the clients' CPU outside the library calls,
the coordinating process's CPU, and how late an idle client woke up for a
scheduled request (its own scheduling delay, not the server's).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MRENCLAVE = "ab" * 32
ARRIVALS = ("uniform", "poisson")
READY_TIMEOUT = 120.0  # forked enclaves warm up (first TLS handshake, first round trip)


@dataclass(frozen=True)
class Load:
    """What the enclaves of one cell do."""

    clients: int
    seconds: float
    rate: float | None = None  # total offered round trips/s; None: closed loop
    arrivals: str = "uniform"
    seed: int = 1

    @property
    def grace(self) -> float:
        """How long past the window an open-loop client may still catch up."""
        return min(self.seconds, 5.0)


def schedule(load: Load, index: int, start: float) -> list[float]:
    """Scheduled start times of enclave ``index`` in an open-loop cell.

    Uniform: the enclaves are evenly phased, so together they send exactly
    one round trip every 1/rate s.  Poisson: each enclave draws exponential
    gaps at rate/clients, so together they form a Poisson stream at ``rate``.
    """
    assert load.rate is not None and load.rate > 0
    end = start + load.seconds
    per_client = load.rate / load.clients
    times: list[float] = []
    if load.arrivals == "uniform":
        # Slot k of this enclave is round trip k·clients + index of the whole
        # stream; computed, not accumulated, so rounding never adds a slot.
        k = 0
        while (at := start + (k * load.clients + index) / load.rate) < end - 1e-9:
            times.append(at)
            k += 1
        return times
    rng = random.Random(load.seed * 100_003 + index)
    at = start + rng.expovariate(per_client)
    while at < end:
        times.append(at)
        at += rng.expovariate(per_client)
    return times


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left)


def _enclave(
    url: str, ca: str, root: str, load: Load, index: int,
    messages: Any, go: Any, start_at: Any,
) -> None:  # fmt: skip
    """One enclave process: warm up, report ready, run the cell, report its samples."""
    import logging

    from sgxcloud.cas import client
    from sgxcloud.sgx.identity import EnclaveIdentity
    from sgxcloud.web.heap import freeze_startup_objects

    logging.disable(logging.WARNING)
    identity = EnclaveIdentity(MRENCLAVE, "cd" * 32, 0, 0, False)
    try:
        with client.CasConnection(url, Path(ca), timeout=30) as connection:

            def one() -> None:
                client.fetch_configuration(
                    url,
                    policy="bench",
                    service="svc",
                    root=Path(root),
                    simulate=identity,
                    connection=connection,
                )

            one()  # imports, TLS handshake, first round trip: before the clock starts
            # A real enclave attests once; this process makes thousands of round
            # trips, so its start-up heap is frozen as a service's is, lest a
            # 30-60 ms full collection here count as the server's latency.
            freeze_startup_objects()
            messages.put(("ready", index, None))
            if not go.wait(READY_TIMEOUT) or start_at.value <= 0:
                return  # the cell was called off
            start = start_at.value
            _sleep_until(start)
            cpu_before = time.process_time()
            if load.rate is None:
                samples = _closed_loop(one, start + load.seconds)
            else:
                samples = _open_loop(
                    one, schedule(load, index, start), start + load.seconds + load.grace
                )
            samples["cpu"] = time.process_time() - cpu_before
            samples["pid"] = os.getpid()
        messages.put(("done", index, samples))
    except BaseException as exc:  # reported to the coordinator, which fails the cell
        messages.put(("failed", index, f"{type(exc).__name__}: {exc}"))


def _call(one: Any, samples: dict[str, Any]) -> float:
    """One round trip; returns its end time.  Errors are counted, not raised."""
    cpu = time.process_time()
    try:
        one()
    except Exception as exc:  # a failed round trip is a figure of the cell
        samples["errors"] += 1
        samples.setdefault("first_error", f"{type(exc).__name__}: {exc}"[:300])
    samples["cpu_in_calls"] += time.process_time() - cpu
    return time.monotonic()


def _closed_loop(one: Any, end: float) -> dict[str, Any]:
    samples: dict[str, Any] = {"began": [], "ended": [], "errors": 0, "cpu_in_calls": 0.0}
    while (began := time.monotonic()) < end:
        ended = _call(one, samples)
        samples["began"].append(began)
        samples["ended"].append(ended)
    return samples


def _open_loop(one: Any, times: list[float], cutoff: float) -> dict[str, Any]:
    samples: dict[str, Any] = {
        "scheduled": [], "began": [], "ended": [], "idle": [], "errors": 0,
        "cpu_in_calls": 0.0, "unsent": [],
    }  # fmt: skip
    free_since = times[0] if times else 0.0
    for position, scheduled in enumerate(times):
        _sleep_until(scheduled)
        began = time.monotonic()
        if began > cutoff:  # hopelessly behind: what was never sent is reported, not dropped
            samples["unsent"] = times[position:]
            break
        ended = _call(one, samples)
        samples["scheduled"].append(scheduled)
        samples["began"].append(began)
        samples["ended"].append(ended)
        # Idle: the previous round trip had ended by the scheduled time, so any
        # delay in starting this one is the generator's own wake-up lateness.
        samples["idle"].append(free_since <= scheduled)
        free_since = ended
    return samples


def _cpu_of(pids: list[int]) -> dict[int, float]:
    import psutil

    seconds: dict[int, float] = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[pid] = times.user + times.system
    return seconds


def _tree(pids: list[int]) -> list[int]:
    """The pids and all their descendants (PostgreSQL's backends)."""
    import psutil

    found = list(pids)
    for pid in pids:
        try:
            found += [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@dataclass
class _Snapshot:
    at: float
    servers: dict[int, float]
    database: dict[int, float]
    system: Any
    own_cpu: float

    @classmethod
    def take(cls, servers: list[int], database: list[int]) -> _Snapshot:
        import psutil

        # A server's worker processes (setting workers) are its children.
        return cls(
            time.monotonic(),
            _cpu_of(_tree(servers)),
            _cpu_of(_tree(database)),
            psutil.cpu_times(),
            time.process_time(),
        )


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    # A process that appeared meanwhile (a new PostgreSQL backend) counts whole.
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


def _busy(times: Any) -> float:
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def run_cell(
    urls: list[str], ca: Path, root: Path, load: Load,
    server_pids: list[int], database_pids: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run one cell: ``load.clients`` enclaves spread over ``urls`` by connection.

    Returns the cell's figures (latencies in ms, CPU in ms per round trip).
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    messages = context.Queue()
    go = context.Event()
    start_at = context.Value("d", 0.0)
    processes = [
        context.Process(
            target=_enclave, daemon=True,
            args=(urls[i % len(urls)], str(ca), str(root), load, i, messages, go, start_at),
        )
        for i in range(load.clients)
    ]  # fmt: skip
    for process in processes:
        process.start()
    try:
        _expect(messages, "ready", load.clients, READY_TIMEOUT)
        start = time.monotonic() + 0.2
        start_at.value = start
        go.set()
        _sleep_until(start)
        load_before = os.getloadavg()[0]
        before = _Snapshot.take(server_pids, database_pids or [])
        wait = load.seconds + (load.grace if load.rate else 0.0) + 60
        results = _expect(messages, "done", load.clients, wait)
        after = _Snapshot.take(server_pids, database_pids or [])
        load_after = os.getloadavg()[0]
    finally:
        go.set()  # releases enclaves still waiting if the cell was called off
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    return _figures(load, start, results, before, after, (load_before + load_after) / 2)


def _expect(messages: Any, kind: str, count: int, timeout: float) -> list[dict[str, Any]]:
    import queue

    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            what, index, payload = messages.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(
                f"{count - len(got)} enclave(s) did not report {kind!r} within {timeout:.0f} s"
            ) from None
        if what == "failed":
            raise RuntimeError(f"enclave {index} failed: {payload}")
        if what == kind:
            got.append(payload or {})
    return got


def _figures(
    load: Load, start: float, results: list[dict[str, Any]],
    before: _Snapshot, after: _Snapshot, load_average: float,
) -> dict[str, Any]:  # fmt: skip
    began = [t for r in results for t in r["began"]]
    ended = [t for r in results for t in r["ended"]]
    trips = len(ended)
    errors = sum(r["errors"] for r in results)
    end = start + load.seconds
    if load.rate is None:
        latencies = sorted(e - b for b, e in zip(began, ended, strict=True))
        per_s = sum(1 for e in ended if e <= end) / load.seconds
        unsent = 0
    else:
        scheduled = [t for r in results for t in r["scheduled"]]
        latencies = [e - s for s, e in zip(scheduled, ended, strict=True)]
        unsent_times = [t for r in results for t in r["unsent"]]
        unsent = len(unsent_times)
        # Never sent: counted at the latency they had reached when given up
        # (a lower bound), so they weigh on the percentiles instead of vanishing.
        latencies = sorted(latencies + [after.at - t for t in unsent_times])
        last = max(ended, default=end)
        per_s = (trips - errors) / max(load.seconds, last - start)
    wall = after.at - before.at
    server_cpu = _used(before.servers, after.servers)
    database_cpu = _used(before.database, after.database)
    client_cpu = sum(r["cpu"] for r in results)
    harness_cpu = client_cpu - sum(r["cpu_in_calls"] for r in results)
    harness_cpu += after.own_cpu - before.own_cpu
    machine_busy = _busy(after.system) - _busy(before.system)
    other = machine_busy - server_cpu - database_cpu - client_cpu - (after.own_cpu - before.own_cpu)
    steal = getattr(after.system, "steal", 0.0) - getattr(before.system, "steal", 0.0)
    per_trip = 1000 / trips if trips else math.nan
    ms = [1000 * x for x in latencies]
    figures: dict[str, Any] = {
        "mode": "closed" if load.rate is None else "open",
        "clients": load.clients,
        "seconds": load.seconds,
        "offered_per_s": load.rate,
        "arrivals": load.arrivals if load.rate else None,
        "round_trips": trips,
        "errors": errors,
        "first_error": next((r["first_error"] for r in results if "first_error" in r), None),
        "unsent": unsent,
        "per_s": per_s,
        "mean_ms": sum(ms) / len(ms) if ms else math.nan,
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1] if ms else math.nan,
        "server_cpu_ms": server_cpu * per_trip,
        # SQLite runs inside the server: no database processes to account.
        "database_cpu_ms": database_cpu * per_trip if before.database else math.nan,
        "client_cpu_ms": client_cpu * per_trip,
        "harness_cpu_ms": harness_cpu * per_trip,
        "other_cpus": max(0.0, other) / wall,  # CPUs busy with processes not of this cell
        "steal_cpus": steal / wall,
        "load": load_average,
    }
    # The mean number of round trips in flight over the window, measured
    # directly (Little's law: = throughput × mean latency).  Closed loop: it
    # should equal the clients; a shortfall is time they spent between requests.
    figures["in_flight"] = (
        sum(max(0.0, min(e, end) - max(b, start)) for b, e in zip(began, ended, strict=True))
        / load.seconds
    )
    if load.rate is not None:
        lags = sorted(
            1000 * (b - s)
            for r in results
            for s, b, idle in zip(r["scheduled"], r["began"], r["idle"], strict=True)
            if idle
        )
        figures["generator_lag_p99_ms"] = percentile(lags, 99)
        late = [b - s for r in results for s, b in zip(r["scheduled"], r["began"], strict=True)]
        # Started over 1 ms late for any reason (mostly: the client was still busy).
        figures["late_starts"] = sum(1 for x in late if x > 0.001) / len(late) if late else 0.0
    return figures


def machine_probe(seconds: float = 1.0) -> dict[str, float]:
    """How fast this machine is now: CPU cost and wall rate of two fixed workloads.

    Per CPU-second figures tell the core's speed (a slower host, a throttled
    CPU); the wall / CPU ratio tells how much of a core this process got
    (near 1.0 on a quiet machine, lower when others compete for the cores).
    """
    import dcap_qvl

    from sgxcloud.cas.collateral import FileCollateral

    dcap = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "dcap"
    quote = (dcap / "sgx_quote").read_bytes()
    collateral = FileCollateral(dcap / "sgx_quote_collateral.json").get(quote, QUOTE_TIME)

    def python_work() -> None:  # interpreter-bound: dicts, strings, calls
        table: dict[str, int] = {}
        for i in range(2000):
            table[str(i)] = len(table) + i % 7

    figures: dict[str, float] = {}
    for name, work in (
        ("verify", lambda: dcap_qvl.verify(quote, collateral, QUOTE_TIME)),
        ("python", python_work),
    ):
        work()
        count, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < seconds / 2:
            work()
            count += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        figures[f"{name}_per_cpu_s"] = count / cpu if cpu else math.nan
        figures[f"{name}_share"] = cpu / wall
    figures["share"] = min(figures.pop("verify_share"), figures.pop("python_share"))
    figures["load"] = os.getloadavg()[0]
    return figures


QUOTE_TIME = 1752919277  # inside the sample collateral's validity window
