"""The local default: separate processes, SIMULATED everywhere and said so;
the privacy budget survives a coordinator restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sgxcloud.cleanroom.approvals import private_key_from_pem
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import QueryRefused
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example
from sgxcloud.cleanroom.sdk import CleanroomClient
from sgxcloud.cleanroom.transport import PeerRefused

ROOT = Path(__file__).resolve().parents[2]
QUERY = {
    "template": "audience_size",
    "analysis": "audience",
    "filter": "bank.customers.premium_card = true",
}


def brand(collab, definition_path=None, party="brand"):
    key = private_key_from_pem((collab.workdir / "keys" / f"{party}.pem").read_bytes())
    return CleanroomClient.connect(
        collab.url, load_definition(definition_path or collab.definition), party, key
    )


@pytest.fixture(scope="module")
def dp_collab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local")
    # ε 0.25 per query (the example's): a budget of 0.5 is two new questions
    collab = prepare_example(workdir, people=1000, min_group_size=20, dp=True, dp_budget=0.5)
    collab.start()
    yield collab
    collab.stop()


def test_every_role_is_its_own_simulated_process(dp_collab):
    pids = dp_collab.pids()
    assert os.getpid() not in pids.values() and len(set(pids.values())) == 4
    for name in pids:
        log = (dp_collab.workdir / "logs" / f"{name}.log").read_text()
        assert "SIMULATED" in log, name
    assert dp_collab.describe()["simulated"] is True


def test_budget_and_repeat_cache_survive_a_coordinator_restart(dp_collab):
    with brand(dp_collab) as c:
        first = c.query(QUERY)
        assert first.result.cell("people").noisy
        assert c.query(QUERY).result.value("people") == first.result.value("people")
        spent = c.budget()["spent"]
    assert spent == pytest.approx(0.25)

    dp_collab.stop("coordinator")
    dp_collab.start_coordinator()  # same workdir; nodes keep running; data pulled again
    with brand(dp_collab) as c:
        assert c.budget()["spent"] == pytest.approx(spent)
        assert c.result(first.result.result_id).result == first.result  # kept across restarts
        assert c.query(QUERY).result.value("people") == first.result.value("people")
        c.query({**QUERY, "filter": "retailer.customers.baby_buyer = true"})
        with pytest.raises(QueryRefused) as info:
            c.query({**QUERY, "filter": "telecom.subscribers.device = 'ios'"})
        assert info.value.reason == "budget"

    dp_collab.stop("coordinator")
    dp_collab.start_coordinator()
    with brand(dp_collab) as c, pytest.raises(QueryRefused) as info:
        c.query({**QUERY, "filter": "telecom.subscribers.device = 'android'"})
    assert info.value.reason == "budget"


def test_sdk_refuses_a_coordinator_running_other_code(tmp_path):
    collab = prepare_example(tmp_path, people=200, min_group_size=5)
    collab.coordinator_args = ["--simulate-mrenclave", "ee" * 32]
    with collab:
        with pytest.raises(PeerRefused, match="not pinned"):
            brand(collab)
        # ...and the nodes refused it too: no data went to it.
        assert {d["state"] for d in collab.ingestion.values()} == {"unavailable"}
        assert all("not pinned" in d["reason"] for d in collab.ingestion.values())


def test_sdk_refuses_a_coordinator_with_another_definition(tmp_path):
    collab = prepare_example(tmp_path / "a", people=200, min_group_size=5)
    other = prepare_example(tmp_path / "b", people=10, min_group_size=5)
    with collab, pytest.raises(PeerRefused, match="different collaboration definition"):
        brand(collab, other.definition)


def test_local_workdir_round_trip(tmp_path):
    collab = prepare_example(tmp_path, people=50)
    again = LocalCollaboration.from_workdir(tmp_path)
    assert again.nodes == collab.nodes and again.definition == collab.definition


def test_demo_tells_the_whole_story(tmp_path):
    from rich.console import Console

    from sgxcloud.demo.cleanroom import run

    console = Console(record=True, width=120)
    summary = run(console, tmp_path, people=20_000)
    text = console.export_text()
    assert summary["simulated"] and "SIMULATED" in text
    assert summary["audience"] and summary["audience"] > 0
    assert summary["small_group_suppressed"] is True
    # DP is on in the demo: the attempt is released with noise (an exact-data
    # refusal would be an oracle, red-team attack 03), and the panel says so
    assert summary["dp"] and summary["differencing"] == "released"
    assert "released with noise" in text
    assert summary["lift"]["conversion_lift_rel"] is not None
    assert "data:image/png;base64," in Path(summary["report"]).read_text()
    assert summary["audit_entries"] > 5
    # the example's budgets (1 per analyst, 1 together; red team cr7) pay for the
    # demo's four new questions at 0.25 each; its fifth is a repeat, free from the cache
    flat = re.sub(r"[│\s]+", " ", text)
    assert "WARNING: privacy settings" not in flat
    assert summary["budget"] == {
        "spent": 1.0,
        "total": 1.0,
        "collaboration": {"total": 1.0, "spent": 1.0, "remaining": 0.0},
    }
    assert "(the audience again: answered from the cache, no ε spent)" in flat
    assert "privacy budget: brand spent ε 1 of 1 (4 new questions × 0.25" in flat


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_local_stops_its_processes_on_sigterm_and_sigint(tmp_path, signum):
    """`cleanroom local` stopped with SIGTERM left its nodes and coordinator running."""
    import psutil

    prepare_example(tmp_path, people=200, min_group_size=5)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sgxcloud.cli.main",
            "cleanroom",
            "local",
            "--workdir",
            str(tmp_path),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    pids: dict[str, int] = {}
    try:
        text = ""
        while True:
            line = proc.stdout.readline()
            assert line, "cleanroom local exited before it was ready"
            text += line
            if line.startswith("}"):
                break
        pids = json.loads(text)["pids"]
        assert len(pids) == 4 and all(psutil.pid_exists(p) for p in pids.values())
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [name for name, p in pids.items() if _alive(p)], "children left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids.values():  # on failure: what the old code left behind
            if _alive(pid):
                psutil.Process(pid).kill()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_coordinator_log_has_one_format_uvicorns_lines_included(tmp_path):
    """Red team rt7 finding 7's sibling: the coordinator's own lines (the command's
    logging, -v for info) and uvicorn's were in two formats: uvicorn set up a handler
    of its own (``WARNING:  Invalid HTTP request received.``)."""
    import re
    import socket
    import ssl
    from urllib.parse import urlsplit

    collab = prepare_example(tmp_path, people=50)
    with collab:
        address = urlsplit(collab.url)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with (
            socket.create_connection((address.hostname, address.port), timeout=10) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"NOT HTTP \x00\x01\r\n\r\n")
            tls.recv(100)
        log = tmp_path / "logs" / "coordinator.log"
        deadline = time.monotonic() + 10
        while "Invalid HTTP request received." not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
    lines = [line for line in log.read_text().splitlines() if "Invalid HTTP request" in line]
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.match(stamp + r"uvicorn\.error WARNING Invalid HTTP request received\.$", lines[0])
    assert [
        line
        for line in log.read_text().splitlines()
        if re.match(stamp + r"sgxcloud\.\S+ INFO ", line)
    ]  # the coordinator's own, -v
