"""CloudKitty rates EPC MB-hours from the node metrics: its own code loads
deploy/cloudkitty/metrics.yml, and its Prometheus collector, run against a real
Prometheus holding a known scenario, collects the hand-computed MiB-hours.

CloudKitty cannot share .venv with Nova (its pins would downgrade packages),
so it runs in a venv of its own built by scripts/cloudkitty-venv (pinned,
cached per machine).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from tests.metrics.promtool import promtool

ROOT = Path(__file__).resolve().parents[2]
METRICS_YML = ROOT / "deploy/cloudkitty/metrics.yml"
PROBE = Path(__file__).with_name("probe.py")
MIB = 1024 * 1024
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)

# The worked example of docs/operations/usage.md ("Billing with CloudKitty"),
# scraped every 60 s (samples at hh:mm:30):
#   project P: A 64 MiB 10:00-12:00, resized to 128 MiB 12:00-13:00, then deleted;
#              B 32 MiB 10:30-13:00;
#   project Q: C 256 MiB 10:00-13:00 (must not appear in P's rating).
SCENARIO = [
    ("A", "P", "sgx1", [(0, 120, 64), (120, 180, 128)]),
    ("B", "P", "sgx2", [(30, 180, 32)]),
    ("C", "Q", "sgx1", [(0, 180, 256)]),
]
EXPECTED_P = {  # (hour, instance): MiB-hours
    (10, "A"): Decimal(64), (11, "A"): Decimal(64), (12, "A"): Decimal(128),
    (10, "B"): Decimal(16), (11, "B"): Decimal(32), (12, "B"): Decimal(32),
}  # fmt: skip
PRICE = Decimal("0.005")  # per MiB-hour (hashmap flat rate on service sgx_epc)


@pytest.fixture(scope="module")
def cloudkitty_python() -> str:
    built = subprocess.run(
        [str(ROOT / "scripts/cloudkitty-venv")], capture_output=True, text=True, timeout=1800
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return str(Path(built.stdout.strip()) / "bin" / "python")


def probe(python: str, *args: str) -> object:
    done = subprocess.run(
        [python, str(PROBE), *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_metrics_yml_is_loaded_and_validated_by_cloudkitty(cloudkitty_python: str) -> None:
    conf = probe(cloudkitty_python, "validate", str(METRICS_YML))
    ((key, metric),) = conf.items()
    assert key.startswith("sgxcloud_instance_epc_bytes")
    assert metric["alt_name"] == "sgx_epc" and metric["unit"] == "MiB-hours"
    assert set(metric["groupby"]) == {"instance_id", "project_id"}
    assert metric["metadata"] == ["host"]
    assert metric["extra_args"]["aggregation_method"] == "sum"
    assert Decimal(metric["factor"].split("/")[0]) / Decimal(metric["factor"].split("/")[1]) == (
        Decimal(60) / 3600 / MIB
    )


def test_a_wrong_metrics_yml_is_refused_by_cloudkitty(cloudkitty_python: str, tmp_path) -> None:
    bad = tmp_path / "metrics.yml"
    text = METRICS_YML.read_text()
    bad.write_text(text.replace("aggregation_method: sum", "aggregation_method: total"))
    done = subprocess.run(
        [cloudkitty_python, str(PROBE), "validate", str(bad)], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode != 0 and "aggregation_method" in done.stderr


def _openmetrics() -> str:
    lines = ["# TYPE sgxcloud_instance_epc_bytes gauge"]
    for instance, project, host, spans in SCENARIO:
        for start, stop, mib in spans:
            for minute in range(start, stop):
                at = (T0 + dt.timedelta(minutes=minute, seconds=30)).timestamp()
                labels = f'host="{host}",instance_id="{instance}",project_id="{project}"'
                lines.append(f"sgxcloud_instance_epc_bytes{{{labels}}} {mib * MIB} {at:.0f}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture
def prometheus(tmp_path: Path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: install the Debian package 'prometheus'"
    data = tmp_path / "data"
    source = tmp_path / "epc.om"
    source.write_text(_openmetrics())
    made = subprocess.run(
        [promtool(), "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {}\n")
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if _ready(url):
                break
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_cloudkitty_collects_the_worked_example(cloudkitty_python: str, prometheus: str) -> None:
    # CloudKitty's own processor passes timezone-aware times (Prometheus needs the offset).
    start, end = T0.isoformat(), (T0 + dt.timedelta(hours=3)).isoformat()
    # CloudKitty takes the API base: [collector_prometheus] prometheus_url = http://HOST:9090/api/v1
    api = f"{prometheus}/api/v1"
    points = probe(cloudkitty_python, "collect", str(METRICS_YML), api, "P", start, end)
    got = {
        (dt.datetime.fromisoformat(p["begin"]).hour, p["instance_id"]): Decimal(p["qty"])
        for p in points
    }
    assert got == EXPECTED_P
    assert {p["project_id"] for p in points} == {"P"}
    assert {p["unit"] for p in points} == {"MiB-hours"}
    total = sum(got.values())
    assert total == 336
    assert total * PRICE == Decimal("1.680")  # the charge for project P, 10:00-13:00
