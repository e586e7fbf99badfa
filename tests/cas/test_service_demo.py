"""The CAS demo runs on this SGX-less machine, labels simulation, and shows the rejection."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from sgxcloud.demo import cas as demo


def test_demo_accepts_the_workload_and_rejects_the_wrong_mrenclave(tmp_path: Path) -> None:
    out = io.StringIO()
    summary = demo.run(Console(file=out, width=140), tmp_path)
    text = out.getvalue()
    assert summary["accepted"] and summary["simulated"] and summary["audit_ok"]
    assert summary["audit_entries"] == 3
    assert any(demo.TAMPERED_MRENCLAVE in r for r in summary["rejected_reasons"])
    assert "SIMULATED — no SGX hardware, no security" in text
    assert "REJECTED" in text and "audit chain intact" in text
