"""What a real ``cas serve`` logs: ``log_level`` governs the service's own lines too.

Red team rt7 finding 7: ``log_level`` reached uvicorn only, so the service's
``info`` lines (start-up, policy changes, each attestation decision with its
audit position and ref) never appeared in the log of ``cas serve``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sgxcloud.cas import client
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cli.main import main as cli

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

SRC = Path(__file__).resolve().parents[2] / "src"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \[\d+\] \S+: ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(
    home: Path, *, log_level: str, workers: int
) -> tuple[str, str, client.FetchedConfiguration]:
    """Start ``cas serve``, apply a policy, attest once, stop: (log, applier id, answer)."""
    settings = home / "cas.yaml"
    port = _free_port()
    text = settings.read_text().replace("port: 8443", f"port: {port}")
    settings.write_text(text + f"log_level: {log_level}\nworkers: {workers}\n")
    url, ca = f"https://127.0.0.1:{port}", home / "tls" / "ca.pem"
    process = subprocess.Popen(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--config", str(settings)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with httpx.Client(verify=client.pinned_tls(ca)) as http:
                    if http.get(url + "/v1/health").status_code == 200:
                        break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "cas serve did not start"
            time.sleep(0.2)
        owner = pg.owner_key()
        with client.OwnerClient(url, owner, ca_file=ca) as owner_client:
            owner_client.apply(pg.policy_text(owner))
        fetched = client.fetch_configuration(
            url, policy="shop", service="web", ca_file=ca, root=home,
            simulate=pg.simulated_identity(),
        )  # fmt: skip
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    return err.decode(), public_key_id(pg.public_pem(owner)), fetched


@pytest.fixture
def home(tmp_path: Path) -> Path:
    assert cli(["cas", "init", str(tmp_path / "cas"), "--loopback-tls"]) == 0
    return tmp_path / "cas"


def test_info_logs_every_attestation_with_its_ref_in_one_format_from_every_worker(
    home: Path,
) -> None:
    log, owner_id, fetched = _run(home, log_level="info", workers=2)
    assert fetched.audit_ref
    # The operator's trail: the decision, its position and the ref the enclave was told.
    assert re.search(
        rf"attestation accepted for shop/web \(audit #\d+, ref {re.escape(fetched.audit_ref)}\)",
        log,
    ), log
    assert f"policy shop version 1 applied by {owner_id}" in log
    # The parent and each of the two workers start a service, each logging it.
    ready = {m.group(1) for m in re.finditer(r"\[(\d+)\] \S+: CAS ready", log)}
    assert len(ready) == 3, log
    # One format: uvicorn's lines and the service's alike.
    # (the command's own start-up checks print "warning: ..." before serving)
    lines = [
        line
        for line in log.splitlines()
        if line.strip() and not line.startswith(("warning: ", "  "))
    ]
    assert any("uvicorn" in line for line in lines)
    assert all(LINE.match(line) for line in lines), log
    # Never a secret value: not those the enclave received, not its key.
    configuration = fetched.configuration
    password = next(a for a in configuration.argv if a.startswith("--db-password="))
    pems = [configuration.files["/etc/app/tls.key"].decode(), fetched.private_key_pem().decode()]
    secrets = [password.split("=", 1)[1], configuration.env["API_TOKEN"]]
    secrets += [line for pem in pems for line in pem.splitlines() if "-----" not in line]
    assert all(len(s) >= 16 for s in secrets)
    assert not [s for s in secrets if s in log]


def test_warning_drops_the_info_lines(home: Path) -> None:
    log, _, fetched = _run(home, log_level="warning", workers=1)
    assert fetched.audit_ref
    assert "attestation accepted" not in log and fetched.audit_ref not in log
    assert "applied by" not in log and "CAS ready" not in log
