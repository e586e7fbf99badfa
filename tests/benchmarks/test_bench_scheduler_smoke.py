"""Smoke test of benchmarks/bench_scheduler.py: its core runs Nova's real
scheduler pipeline at 10 hosts for a few rounds and yields sane figures.

Not a timed test: nothing here asserts how fast anything is.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scheduler.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scheduler", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def managers(bench):
    return bench.make_managers()


def _sane(summary: dict) -> None:
    for key in (
        "baseline_ms",
        "sgx_ms",
        "baseline_filter_ms",
        "baseline_weigh_ms",
        "sgx_filter_ms",
        "sgx_weigh_ms",
    ):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    for key in (
        "ratio",
        "ratio_cpu_time",
        "null_plugins_ratio",
        "ratio_ci95_low",
        "ratio_ci95_high",
    ):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    assert summary["ratio_ci95_low"] <= summary["ratio_ci95_high"]
    assert summary["baseline_ms"] == pytest.approx(
        summary["baseline_filter_ms"] + summary["baseline_weigh_ms"], rel=0.5
    )
    assert summary["ratio"] == pytest.approx(summary["sgx_ms"] / summary["baseline_ms"])


def test_configurations_load_nova_defaults_plus_the_sgx_plugins(bench, managers):
    def names(manager):
        return (
            [type(f).__name__ for f in manager.enabled_filters],
            [type(w).__name__ for w in manager.weighers],
        )

    base_filters, base_weighers = names(managers["baseline"])
    sgx_filters, sgx_weighers = names(managers["sgx"])
    assert base_filters == list(bench.CONF.filter_scheduler.enabled_filters)
    assert "RAMWeigher" in base_weighers and "SGXWeigher" not in base_weighers
    assert sgx_filters == [*base_filters, "SGXFilter"]
    assert sorted(sgx_weighers) == sorted([*base_weighers, "SGXWeigher"])
    # The set-up overrides do not leak into the process-wide configuration.
    assert "SGXFilter" not in bench.CONF.filter_scheduler.enabled_filters
    assert bench.CONF.service_down_time != 7 * 24 * 3600


def test_ordinary_request_at_10_hosts(bench, managers):
    summary = bench.measure(10, "ordinary", iterations=3, warmup=1, managers=managers).summary()
    _sane(summary)
    assert summary["samples"] == 3
    assert summary["requests_per_sample"] == bench.HOST_VISITS_PER_SAMPLE // 10
    # Every host has room and is up, so no filter drops one ...
    assert summary["hosts_passed_baseline"] == summary["hosts_passed_sgx"] == 10
    # ... and SGXWeigher steers the ordinary server to a host without SGX.
    assert summary["best_host_is_sgx_sgx"] is False


def test_sgx_request_at_10_hosts(bench, managers):
    summary = bench.measure(10, "sgx", iterations=3, warmup=0, managers=managers).summary()
    _sane(summary)
    # Placement's candidates for an SGX flavor: SGX hosts with enough free EPC.
    assert summary["hosts_passed_baseline"] == summary["hosts_passed_sgx"] == 10
    assert summary["best_host_is_sgx_sgx"] is True


def test_hosts_look_like_the_scheduler_sees_them(bench):
    states = bench.make_host_states(20, 0.25, seed=1)
    sgx = [s for s in states if s.stats.get("sgx") == "true"]
    assert len(sgx) == 5
    assert all(int(s.stats["sgx_epc_free_mb"]) >= bench.EPC_REQUEST_MB for s in sgx)
    assert all(
        s.free_ram_mb > 0 and s.vcpus_total > 0 and s.service["disabled"] is False for s in states
    )


def test_cli_writes_report_and_json(bench, tmp_path):
    out = tmp_path / "scheduler.md"
    result = CliRunner().invoke(
        bench.main,
        ["--sizes", "10", "--iterations", "3", "--warmup", "0", "--output", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [(r["hosts"], r["request"]) for r in report["results"]] == [
        (10, "ordinary"),
        (10, "sgx"),
    ]
    assert report["machine"]["nova"].startswith("34.")
    assert math.isnan(report["verdict"]["worst_ratio"])  # no 1,000-host case run
    text = out.read_text()
    assert "| 10 | ordinary |" in text and "| 10 | sgx |" in text
    assert "Not measured at 1,000 hosts" in text


def test_cli_rejects_bad_sizes(bench, tmp_path):
    result = CliRunner().invoke(bench.main, ["--sizes", "ten", "--output", str(tmp_path / "x.md")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.md").exists()
