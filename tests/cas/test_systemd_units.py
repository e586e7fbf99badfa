"""deploy/systemd: the units parse with systemd's own verifier, every key known."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy/systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_units_verify_with_systemd_analyze(tmp_path: Path) -> None:
    sgxcloud = Path(sys.executable).parent / "sgxcloud"
    for unit in UNITS.iterdir():
        # The installed path of the binary is the venv's here (verify checks it exists).
        text = unit.read_text().replace("/opt/sgxcloud/bin/sgxcloud", str(sgxcloud))
        name = unit.name.replace("@.service", "@8443.service")
        (tmp_path / name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    assert len(units) == 3
    done = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120
    )
    # verify exits 0 on unknown keys; they are mistakes all the same.
    assert done.returncode == 0 and "Unknown key" not in done.stderr, done.stderr
    assert "unknown" not in done.stderr.lower(), done.stderr
    replica = (tmp_path / "sgxcloud-cas@8443.service").read_text()
    assert "--port %i" in replica and "LoadCredential=master.key:" in replica
