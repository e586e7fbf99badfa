"""Clean room benchmark: end to end through enclaves-as-processes vs plain DuckDB.

Three providers (bank, telecom, retailer) with synthetic data for ``--rows``
people (datagen: each provider holds its share of them; the row counts per
file are printed).  Timed end to end:

* the clean room: three node processes and a coordinator process on
  loopback (SIMULATED attestation: no SGX here), each node reading its
  Parquet files in record batches, normalising and HMAC re-keying
  identifiers, streaming Arrow over mutually attested TLS 1.3; the
  coordinator staging, ingesting into DuckDB under ``--memory-limit``,
  resolving people across identifiers; then an audience-size query and a
  campaign-lift query through the HTTPS API with signed requests, signed
  results and verification of them;
* the baseline (benchmarks/cleanroom_baseline.py): the same two questions in
  plain DuckDB, one process, on the plaintext files, with the same answers —
  identifiers normalised in SQL, people linked across e-mail, phone and
  customer id, the same audience and lift semantics — and none of the clean
  room's other work (attestation, re-keying, transport, suppression,
  differencing, signatures).  The script checks both give the same audience
  and the same per-arm lift figures, and says so.

Reported as ratios, with the peak resident memory (sum over all processes,
sampled every 100 ms) of each side.  Writes a Markdown section to stdout and
to docs/benchmarks/cleanroom.md.

Run: .venv/bin/python benchmarks/bench_cleanroom.py [--rows N] [--memory-limit 512MB]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sgxcloud.cleanroom.approvals import private_key_from_pem  # noqa: E402
from sgxcloud.cleanroom.definition import load_definition  # noqa: E402
from sgxcloud.cleanroom.errors import QueryRefused  # noqa: E402
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example  # noqa: E402
from sgxcloud.cleanroom.sdk import CleanroomClient  # noqa: E402

LIFT_FIGURES = ("people", "converters", "purchases", "revenue")
AUDIENCE_FILTER = (
    "bank.customers.premium_card = true AND retailer.customers.baby_buyer = true "
    "AND telecom.subscribers.region = 'north'"
)


class PeakRss:
    """Samples the summed RSS of a set of processes (found by a callback)."""

    def __init__(self, pids) -> None:
        self._pids = pids
        self.peak_total = 0
        self.peak_each: dict[str, int] = {}
        self.phase_peaks: dict[str, dict[str, int]] = {}  # phase -> process -> peak
        self._phase: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for name, pid in list(self._pids().items()):
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peak_each[name] = max(self.peak_each.get(name, 0), rss)
                self._phase[name] = max(self._phase.get(name, 0), rss)
            self.peak_total = max(self.peak_total, total)
            self._stop.wait(0.1)

    def end_phase(self, phase: str) -> None:
        """Close a phase: its peaks per process are kept, and a new phase starts."""
        self.phase_peaks[phase], self._phase = self._phase, {}

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def run_baseline(data: Path, memory_limit: str) -> tuple[dict, int]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "benchmarks/cleanroom_baseline.py"),
            str(data),
            "--memory-limit",
            memory_limit,
            "--no-breakdown",
            "--audience",
            AUDIENCE_FILTER,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    start = time.perf_counter()
    with PeakRss(lambda: {"baseline": proc.pid}) as rss:
        out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit("baseline failed")
    result = json.loads(out.strip().splitlines()[-1])
    result["query_seconds"] = result["seconds"]
    result["seconds"] = time.perf_counter() - start  # end to end, like the clean room's
    return result, rss.peak_total


def run_cleanroom(collab, memory_limit: str, batch_rows: int) -> tuple[dict, PeakRss]:
    collab.coordinator_args = ["--memory-limit", memory_limit, "--batch-rows", str(batch_rows)]
    collab.node_args = {p: ["--batch-rows", str(batch_rows)] for p in collab.nodes}
    collab.start_timeout = 6 * 3600.0  # ingestion of tens of millions of rows takes a while
    timings: dict[str, float] = {}
    with PeakRss(collab.pids) as rss:
        start = time.perf_counter()
        collab.start()
        timings["start_attest_transfer_ingest"] = time.perf_counter() - start
        rss.end_phase("ingestion")
        timings["datasets"] = collab.ingestion
        try:
            definition = load_definition(collab.definition)
            key = private_key_from_pem((collab.workdir / "keys" / "brand.pem").read_bytes())
            with CleanroomClient.connect(collab.url, definition, "brand", key) as brand:
                t = time.perf_counter()
                try:
                    answer = brand.query(
                        {
                            "template": "audience_size",
                            "analysis": "audience",
                            "filter": AUDIENCE_FILTER,
                        }
                    ).result.value("people")
                except QueryRefused as exc:  # small --rows: the segment is below k
                    answer = f"refused ({exc.reason})"
                timings["audience_query"] = time.perf_counter() - t
                t = time.perf_counter()
                lift = brand.query({"template": "campaign_lift", "analysis": "lift"}).result
                timings["lift_query"] = time.perf_counter() - t
                timings["lift"] = {
                    arm: {m: lift.value(m, arm=arm, segment="(all)") for m in LIFT_FIGURES}
                    for arm in ("test", "control")
                }
                rss.end_phase("queries")
        finally:
            collab.stop()
    timings["total"] = time.perf_counter() - start
    timings["audience"] = answer
    return timings, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=10_000_000,
        help="people in the synthetic population (default 10 million)",
    )
    parser.add_argument(
        "--memory-limit",
        default="512MB",
        help="DuckDB memory limit in the coordinator and the baseline",
    )
    parser.add_argument(
        "--also-memory-limits",
        default="128MB,256MB",
        help="comma-separated further coordinator limits to run the clean "
        "room under, for the memory-bound table ('' for none)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="interleaved baseline/clean-room pairs; the median ratio counts",
    )
    parser.add_argument(
        "--batch-rows", type=int, default=65_536, help="record batch size the nodes stream"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep data here and reuse it if already generated (default: a temp dir)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs/benchmarks/cleanroom.md")
    args = parser.parse_args()
    extra_limits = [x.strip() for x in args.also_memory_limits.split(",") if x.strip()]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-cleanroom-"))
    pairs: list[tuple[dict, int, dict, PeakRss]] = []
    bounded: list[tuple[str, dict | None, PeakRss | None, str]] = []
    try:
        t = time.perf_counter()
        if args.workdir and (workdir / "local.json").exists():
            collab = LocalCollaboration.from_workdir(workdir)  # same data, new processes
        else:
            # exact answers (DP off), so that they can be checked against the baseline
            collab = prepare_example(workdir, people=args.rows, min_group_size=50, dp=False)
        generation = time.perf_counter() - t
        rows = {
            f"{p}.{d}": pq_rows(path) for p, ds in collab.nodes.items() for d, path in ds.items()
        }
        print(f"generated {args.rows:,} people in {generation:.1f}s: {rows}", file=sys.stderr)
        for run in range(max(1, args.repeat)):
            baseline, baseline_rss = run_baseline(workdir / "data", args.memory_limit)
            fresh_engine(collab)
            timings, rss = run_cleanroom(collab, args.memory_limit, args.batch_rows)
            pairs.append((baseline, baseline_rss, timings, rss))
            print(
                f"run {run + 1}: clean room {timings['total']:.1f} s, baseline "
                f"{baseline['seconds']:.1f} s",
                file=sys.stderr,
            )
        for limit in extra_limits:
            fresh_engine(collab)
            try:
                extra, extra_rss = run_cleanroom(collab, limit, args.batch_rows)
                bounded.append((limit, extra, extra_rss, ""))
            except Exception as exc:  # the refusal is the finding
                bounded.append((limit, None, None, str(exc).splitlines()[0][:160]))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    ratios = sorted(t["total"] / b["seconds"] for b, _, t, _ in pairs)
    median = ratios[len(ratios) // 2]
    baseline, baseline_rss, timings, rss = sorted(
        pairs, key=lambda x: x[2]["total"] / x[0]["seconds"]
    )[len(pairs) // 2]
    queries = timings["audience_query"] + timings["lift_query"]
    total, base = timings["total"], baseline["seconds"]
    phases = baseline.get("phases", {})
    machine = (
        f"{cpu_name()}, {os.cpu_count()} logical CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    per_file = ", ".join(f"{k} {v:,}" for k, v in rows.items())
    per_process = ", ".join(f"{k} {mib(v)}" for k, v in sorted(rss.peak_each.items()))
    datasets = timings["datasets"]
    sent = sum(d.get("bytes", 0) for d in datasets.values())
    per_dataset = "\n".join(
        f"| {ref} | {d.get('state')} | {d.get('rows', 0):,} | {mib(d.get('bytes', 0))} "
        f"| {d.get('seconds', 0):.1f} s |"
        for ref, d in datasets.items()
    )
    read_norm = phases.get("read_normalise", 0.0)
    link_query = sum(phases.get(k, 0.0) for k in ("link", "audience", "lift"))
    table = [
        "| phase | clean room | plain DuckDB baseline |",
        "|---|---|---|",
        f"| read and normalise identifiers (clean room: + start processes, attest, re-key, "
        f"transfer over TLS, stage, ingest) | {timings['start_attest_transfer_ingest']:.1f} s "
        f"| {read_norm:.1f} s |",
        f"| link people, audience size, campaign lift (clean room: + suppression, "
        f"differencing, signed results over HTTPS, verified) | {queries:.1f} s "
        f"| {link_query:.1f} s |",
        f"| **end to end** (processes started to last answer) | **{total:.1f} s** "
        f"| **{base:.1f} s** |",
        f"| peak RSS, all processes | {mib(rss.peak_total)} | {mib(baseline_rss)} |",
    ]
    runs = ", ".join(
        f"{t['total']:.1f} s / {b['seconds']:.1f} s = {t['total'] / b['seconds']:.2f}×"
        for b, _, t, _ in pairs
    )
    memory_rows = [memory_row(args.memory_limit, timings, rss, baseline)]
    for limit, extra, extra_rss, error in bounded:
        memory_rows.append(
            memory_row(limit, extra, extra_rss, baseline)
            if extra and extra_rss
            else f"| {limit} | refused: {error} | | | | |"
        )
    memory_header = (
        "| coordinator memory limit | end to end "
        "| peak RSS coordinator (ingestion / queries) "
        "| peak RSS largest node | all processes | audience vs baseline |"
    )
    section = f"""## Clean room

Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine},
by `.venv/bin/python benchmarks/bench_cleanroom.py --rows {args.rows}` (memory limit
{args.memory_limit}, {args.batch_rows:,}-row batches).  No SGX on this machine: enclaves are
processes with SIMULATED attestation, so EPC paging and quote verification costs are not
included.  The machine is shared by other jobs; figures are indicative.

Population: {args.rows:,} people; rows per file: {per_file}.

The baseline (`benchmarks/cleanroom_baseline.py`) answers the same two questions in plain
DuckDB in one process on the plaintext files, with the same identifier normalisation,
person linking and semantics, so both sides must give the same answers (checked below);
it does none of the clean room's other work.

**Clean room / baseline, end to end: {median:.2f}× (median of {len(pairs)} interleaved
runs: {runs}).  Target ≤ 1.5×: {verdict(median)}**

The median run, by phase:

{chr(10).join(table)}

Peak RSS per clean-room process: {per_process}.

Per dataset (re-key in the node, stream over attested TLS, stage, ingest; providers run
concurrently, {mib(sent)} in all):

| dataset | state | rows kept | bytes sent | seconds |
|---|---|---|---|---|
{per_dataset}

Same answers: {agreement(timings, baseline)}

### Memory bound

The coordinator's DuckDB works under its configured limit and spills to disk beyond it;
a node holds one record batch at a time.  The same population under several
coordinator limits (nodes unchanged):

{memory_header}
|---|---|---|---|---|---|
{chr(10).join(memory_rows)}

About 240 MiB of each process is the Python runtime and its libraries (measured: importing
the coordinator's modules alone); the rest of the coordinator follows its limit.
"""
    print(section)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(section)
    return 0


def memory_row(limit: str, timings: dict, rss: PeakRss, baseline: dict) -> str:
    nodes = max((v for k, v in rss.peak_each.items() if k != "coordinator"), default=0)
    same = (
        "suppressed (< k)"
        if isinstance(timings["audience"], str)
        else "equal"
        if timings["audience"] == baseline["audience"]
        else "DIFFERENT"
    )
    phases = " / ".join(
        mib(rss.phase_peaks.get(phase, {}).get("coordinator", 0))
        for phase in ("ingestion", "queries")
    )
    return (
        f"| {limit} | {timings['total']:.1f} s | {mib(rss.peak_each.get('coordinator', 0))} "
        f"({phases}) | {mib(nodes)} | {mib(rss.peak_total)} | {same} |"
    )


def fresh_engine(collab: LocalCollaboration) -> None:
    """Each run ingests from scratch (released answers would otherwise be served again)."""
    shutil.rmtree(collab.workdir / "coordinator" / "engine", ignore_errors=True)
    shutil.rmtree(collab.workdir / "coordinator" / "results", ignore_errors=True)


def agreement(timings: dict, baseline: dict) -> str:
    """Whether both sides answered alike (the comparison means nothing otherwise)."""
    lines = []
    if isinstance(timings["audience"], str):  # refused: below k at a small --rows
        lines.append(f"audience {timings['audience']} (baseline {baseline['audience']}, k = 50)")
    else:
        same = timings["audience"] == baseline["audience"]
        lines.append(
            f"audience {timings['audience']} vs {baseline['audience']} "
            f"({'equal' if same else 'DIFFERENT'})"
        )
    for arm in ("test", "control"):
        ours, theirs = timings.get("lift", {}).get(arm, {}), baseline["lift"].get(arm, {})
        equal = all(
            ours.get(m) is not None
            and abs(float(ours[m]) - float(theirs.get(m, -1)))
            <= 1e-6 * max(1.0, abs(float(theirs.get(m, 0))))
            for m in LIFT_FIGURES
        )
        figures = ", ".join(f"{m} {ours.get(m)}" for m in LIFT_FIGURES)
        lines.append(f"lift {arm}: {figures} ({'equal' if equal else 'DIFFERENT: ' + str(theirs)})")
    return "; ".join(lines) + "."


def verdict(ratio: float) -> str:
    if ratio <= 1.5:
        return "Met."
    return (
        "Not met: the clean room's extra work (re-keying in the nodes, attested transport, "
        "staging and ingestion, privacy checks) costs more than half the plain query."
    )


def pq_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
