"""The CAS benchmark's harness: schedules, no coordinated omission, the verdict,
and one tiny closed- and open-loop run against a real replica (SQLite).

Not a timed test: nothing here asserts how fast the CAS is.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import warnings
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_cas  # noqa: E402
import cas_load  # noqa: E402


def test_uniform_schedules_interleave_into_one_evenly_spaced_stream():
    load = cas_load.Load(clients=16, seconds=2.0, rate=300)
    times = sorted(t for i in range(16) for t in cas_load.schedule(load, i, 100.0))
    assert len(times) == 600
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) == pytest.approx(1 / 300) and max(gaps) == pytest.approx(1 / 300)
    assert times[0] == 100.0 and times[-1] < 102.0


def test_poisson_schedules_offer_the_rate_on_average():
    load = cas_load.Load(clients=16, seconds=20.0, rate=300, arrivals="poisson")
    times = [t for i in range(16) for t in cas_load.schedule(load, i, 0.0)]
    assert abs(len(times) - 6000) < 4 * math.sqrt(6000)  # 4 sigma of a Poisson count
    assert all(0.0 <= t < 20.0 for t in times)
    assert cas_load.schedule(load, 3, 0.0) == cas_load.schedule(load, 3, 0.0)  # seeded


def test_percentile_is_nearest_rank():
    ordered = [float(i) for i in range(1, 101)]
    assert cas_load.percentile(ordered, 50) == 50.0
    assert cas_load.percentile(ordered, 99) == 99.0
    assert cas_load.percentile([7.0], 99) == 7.0
    assert math.isnan(cas_load.percentile([], 50))


def test_a_stall_counts_for_every_round_trip_it_delayed():
    """Coordinated omission: one 200 ms stall among 1 ms round trips at 100/s.

    Timed from the send, one round trip is slow (p90 ~1 ms); timed from the
    schedule, as the open loop does, the ~19 round trips queued behind it are.
    """
    calls = []

    def one() -> None:
        calls.append(None)
        time.sleep(0.2 if len(calls) == 10 else 0.001)

    start = time.monotonic() + 0.05
    times = [start + i / 100 for i in range(50)]
    samples = cas_load._open_loop(one, times, cutoff=start + 10)
    assert len(samples["ended"]) == 50 and samples["errors"] == 0 and not samples["unsent"]
    from_schedule = sorted(
        e - s for s, e in zip(samples["scheduled"], samples["ended"], strict=True)
    )
    from_send = sorted(e - b for b, e in zip(samples["began"], samples["ended"], strict=True))
    assert sum(1 for x in from_schedule if x > 0.05) >= 10
    assert sum(1 for x in from_send if x > 0.15) <= 3  # what a send-timed generator would see
    assert cas_load.percentile(from_schedule, 90) > 0.05
    # The round trips queued behind the stall are not blamed on the generator.
    assert samples["idle"][10:15] == [False] * 5


def _row(config: str, **figures: float) -> dict:
    return {
        "config": config,
        "clients": 16,
        "errors": 0,
        "unsent": 0,
        "offered_per_s": None,
        **figures,
    }


@pytest.mark.parametrize(
    ("capacity", "served", "p99", "unsent", "met"),
    [
        (320, 300, 40, 0, True),
        (320, 300, 60, 0, False),  # latency misses
        (290, 300, 40, 0, False),  # capacity misses
        (320, 280, 40, 0, False),  # the offered rate was not served
        (320, 300, 40, 3, False),  # round trips left unsent
    ],
)
def test_target_needs_both_capacity_and_latency_at_the_rate(capacity, served, p99, unsent, met):
    closed = [_row("pg2", per_s=capacity)]
    opened = [{**_row("pg2", per_s=served, p99_ms=p99), "offered_per_s": 300, "unsent": unsent}]
    verdict = bench_cas.judge(closed, opened)
    assert verdict["met"] is met
    assert verdict["configs"][0]["measured"]


def test_target_must_be_met_in_every_round_by_one_configuration():
    def cells(round_no: int, config: str, p99: float) -> list[dict]:
        return [
            {**_row(config, per_s=320), "round": round_no},
            {**_row(config, per_s=300, p99_ms=p99), "offered_per_s": 300, "round": round_no},
        ]

    main = {
        "closed": [_row("a", per_s=320), _row("b", per_s=320)],
        "open": [
            {**_row("a", per_s=300, p99_ms=20), "offered_per_s": 300},
            {**_row("b", per_s=300, p99_ms=20), "offered_per_s": 300},
        ],
    }
    plan = bench_cas.Plan(rounds=3)
    # a misses in round 2, b in round 3: each met twice, neither every time.
    flaky = cells(2, "a", 80) + cells(2, "b", 20) + cells(3, "a", 20) + cells(3, "b", 80)
    verdict = bench_cas.judge_rounds({**main, "repeats": flaky}, plan)
    assert verdict["met_first_round"] and not verdict["met"]
    assert verdict["met_in"] == {"a": 2, "b": 2} and verdict["rounds"] == 3
    steady = cells(2, "a", 80) + cells(2, "b", 20) + cells(3, "a", 20) + cells(3, "b", 20)
    verdict = bench_cas.judge_rounds({**main, "repeats": steady}, plan)
    assert verdict["met"] and verdict["met_in"] == {"a": 2, "b": 3}
    table = bench_cas._rounds_table(verdict, {})
    rows = [line for line in table.splitlines() if line.startswith(("| a ", "| b "))]
    assert [row.count("✓") for row in rows] == [2, 3] and table.count("✗") == 1


def test_target_is_not_met_when_the_open_loop_was_not_run():
    verdict = bench_cas.judge([_row("sqlite", per_s=500)], [])
    assert verdict["met"] is False and not verdict["configs"][0]["measured"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seconds", "0"], "--seconds must be between"),
        (["--clients", "0"], "enclave counts must be between"),
        (["--rate", "-5"], "rates must be positive"),
        (["--baseline", "no-such-revision-anywhere"], "no such git revision"),
        (["--configs", "mysql"], "invalid choice"),
    ],
)
def test_bad_options_are_one_line_and_exit_non_zero(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        bench_cas.main([*argv, "--no-write"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_tiny_run_against_a_real_replica(tmp_path, monkeypatch):
    from sgxcloud.cas import answers
    from sgxcloud.cas.client import owner

    plan = bench_cas.Plan(
        seconds=1.0, configs=("sqlite",), clients=(2,), open_clients=2, rate=10, sweep=(), rounds=2
    )
    monkeypatch.setattr(owner, "_warned", False)  # the once-per-process warning, afresh
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        cells = bench_cas.bench_load(tmp_path, plan)
    # The benchmark's CAS signs owner answers and its owner client pins the public key:
    # no "no CAS signing key pinned" warning, and the policy was applied through it.
    assert not [w for w in warned if issubclass(w.category, answers.UnverifiedAnswers)]
    assert "answer_signing_key_file:" in (tmp_path / "cas-sqlite.yaml").read_text()
    (closed,), (opened,) = cells["closed"], cells["open"]
    # Round 2: the target's closed- and open-loop cells again, on the same replica.
    assert [(r["round"], r["offered_per_s"]) for r in cells["repeats"]] == [(2, None), (2, 10)]
    assert all(r["round_trips"] > 0 and r["errors"] == 0 for r in cells["repeats"])
    for row in (closed, opened):
        assert row["round_trips"] > 0 and row["errors"] == 0, row.get("first_error")
        assert row["server_cpu_ms"] > 0 and row["client_cpu_ms"] > 0
        assert 0 <= row["harness_cpu_ms"] < row["client_cpu_ms"]
        assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    # The closed loop keeps its 2 enclaves busy: about 2 round trips in flight.
    assert 1.5 < closed["in_flight"] <= 2.0 + 1e-6
    assert opened["offered_per_s"] == 10 and opened["unsent"] == 0
    report = {
        "measured_at": "now",
        "machine": "here",
        "duration_s": 1.0,
        "plan": {**plan.__dict__, "configs": ["sqlite"], "clients": [2], "sweep": []},
        "machine_state": bench_cas.machine_state(
            (0.1, 0.1, 0.1), [cas_load.machine_probe(0.2)], cells["closed"], cells["open"]
        ),
        "verification": {"direct_per_s": 1000.0, "cas_per_s": 900.0, "ratio": 0.9},
        "parts": {"quote_ms": 1.0, "service_ms": 5.0},
        **cells,
        "target": bench_cas.judge_rounds(cells, plan),
    }
    text = bench_cas.markdown(report)
    assert "| configuration | round 1 | round 2 |" in text
    assert "### Capacity: closed loop" in text and "### Latency at a fixed rate" in text
    assert "NOT the target" in text  # a run at another rate never claims issue 13's target


def test_a_tiny_run_against_one_replica_of_two_workers(tmp_path):
    """The 2-worker configuration really runs 2 workers, and their CPU is counted."""
    plan = bench_cas.Plan(
        seconds=1.0,
        configs=("sqlite-w2",),
        clients=(4,),
        open_clients=4,
        rate=20,
        sweep=(),
        rounds=1,
    )
    cells = bench_cas.bench_load(tmp_path, plan)
    (closed,), (opened,) = cells["closed"], cells["open"]
    for row in (closed, opened):
        assert row["config"] == "sqlite-w2" and row["workers"] == 2 and row["replicas"] == 1
        assert row["round_trips"] > 0 and row["errors"] == 0, row.get("first_error")
        # The parent only supervises: this much CPU per round trip is the workers'.
        assert row["server_cpu_ms"] > 1.0
    assert "workers: 2" in (tmp_path / "cas-sqlite-w2.yaml").read_text()
    report = {"closed": cells["closed"], "open": cells["open"]}
    assert "| SQLite | 1 | 2 | 4 |" in bench_cas._closed_table(report["closed"])
    verdict = bench_cas.judge(cells["closed"], cells["open"], 4, 20)
    assert [v["config"] for v in verdict["configs"]] == ["sqlite-w2"]


def test_every_configuration_names_its_database_replicas_and_workers():
    assert bench_cas.CONFIGS["sqlite-w2"] == ("SQLite", 1, 2)
    assert bench_cas.CONFIGS["pg1-w2"] == ("PostgreSQL", 1, 2)
    assert all(len(value) == 3 for value in bench_cas.CONFIGS.values())
