"""The README's main demo, run as a user runs it: the installed ``sgxcloud``
command (what ``scripts/demo`` runs), in a separate process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def run_demo(tmp_path: Path, *sections: str) -> dict:
    command = Path(sys.prefix) / "bin" / "sgxcloud"
    if not command.exists():
        pytest.skip("sgxcloud is not installed in this environment (run scripts/bootstrap)")
    argv = [str(command), "demo", "--json", "--workdir", str(tmp_path)]
    for section in sections:
        argv += ["--only", section]
    # The installed package alone, as a user has it: no source tree on the path.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=840, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _why(server: dict, log: str) -> str:
    """A server's fault and the errors Nova's services logged, for a failure message."""
    errors = [
        line
        for line in Path(log).read_text().splitlines()
        if " ERROR " in line or re.match(r"[\w.]+(Error|Exception)\b", line)
    ]
    recent = "\n".join(line[:300] for line in errors[-10:])
    return f"fault: {server.get('fault')!r}\nNova's errors:\n{recent}"


# Nova boots, a simulated week, attestation and three providers' analyses: on a
# busy 2-core machine this takes longer than the suite's default limit.
@pytest.mark.timeout(900)
def test_whole_demo(tmp_path):
    summary = run_demo(tmp_path)
    assert {"nova", "usage", "cas", "cleanroom"} <= set(summary)
    servers = summary["nova"]["servers"]
    assert servers["too-big"]["status"] == "ERROR"
    for name in ("web-1", "web-2", "web-3"):
        assert servers[name]["host"].startswith("plain-")
    for name in ("enclave-1", "enclave-2", "cleanroom-node", "coordinator"):
        assert servers[name]["status"] == "ACTIVE", _why(servers[name], summary["nova"]["log"])
        assert servers[name]["host"].startswith("sgx-")
    assert servers["coordinator"]["host"] == "sgx-b"  # the only SGX2 host
    assert set(summary["nova"]["libvirt_checks"].values()) <= {"ok", "not installed here"}
    assert (tmp_path / "nova" / "cleanroom-node.xml").exists()
    assert (tmp_path / "epc-usage.png").stat().st_size > 0
    # The demo's simulated week, by hand: cleanroom-node 128 MiB x 144 h,
    # coordinator 256 x 144, enclave-2 64 x 168, enclave-3 64 x 120 (deleted),
    # enclave-1 64 x 72 then 128 x 96 (resized at hour 72).
    expected = 128 * 144 + 256 * 144 + 64 * 168 + 64 * 120 + 64 * 72 + 128 * 96
    assert summary["usage"]["epc_mb_hours"] == expected, summary["usage"].get(
        "epc_mb_hours_per_server"
    )
    assert summary["usage"]["hosts"]["sgx-c"]["used_mb"] == 0  # enclave-1 moved away
    # Attestation: accepted only because the demo policy allows simulation,
    # labelled so; the wrong-MRENCLAVE variant refused with that reason.
    cas = summary["cas"]
    assert cas["accepted"] and cas["simulated"] and cas["audit_ok"]
    assert any("MRENCLAVE" in reason for reason in cas["rejected_reasons"])
    # Clean room: an audience, a lift, a suppressed small group, a differencing
    # attempt (released with noise under DP, the default: an exact-data refusal
    # would be an oracle; refused with DP off), and an HTML report.
    room = summary["cleanroom"]
    assert room["simulated"] and room["audience"] > 0
    # Simulation only because every process was told so on its command line.
    assert room["simulation_opt_in"] == "--allow-simulated"
    assert room["small_group_suppressed"]
    assert room["differencing"] == ("released" if room["dp"] else "differencing")
    assert Path(room["report"]).stat().st_size > 0
