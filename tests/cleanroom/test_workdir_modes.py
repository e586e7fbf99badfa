"""The coordinator's workdir is the owner's alone: directories 0700, files 0600.

It holds the engine database (keyed identifiers and attributes), the audit
log, results, staged data and keys; before, it was created 0755/0644
(issue 9, finding 8).  Checked on real processes (the ``coordinator`` and
``node`` commands, as ``cleanroom local`` starts them) after ingestion and a
query, and in-process for a workdir an older version left open.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sgxcloud.cleanroom.approvals import private_key_from_pem
from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cleanroom.sdk import CleanroomClient

AUDIENCE = {
    "template": "audience_size",
    "analysis": "audience",
    "filter": "bank.customers.premium_card = true AND retailer.customers.baby_buyer = true",
}


def loose(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that group or others can access."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode & 0o077 or (mode | want) != want:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def test_everything_the_coordinator_writes_is_private(tmp_path):
    collab = prepare_example(tmp_path, people=2000, min_group_size=5)
    with collab:
        key = private_key_from_pem((tmp_path / "keys" / "brand.pem").read_bytes())
        with CleanroomClient.connect(
            collab.url, load_definition(collab.definition), "brand", key
        ) as brand:
            assert brand.query(AUDIENCE).result.value("people") > 0
            brand.audit()
    workdir = tmp_path / "coordinator"
    written = {p.name for p in workdir.rglob("*")}
    # The files that matter are there: engine DB, ledger, audit log, result, keys.
    assert {
        "engine.duckdb",
        "privacy.sqlite",
        "audit.jsonl",
        "rekey.bin",
        "request-nonces.sqlite",
    } <= written
    assert any(p.suffix == ".json" for p in (workdir / "results").iterdir())
    assert loose(workdir) == []
    assert loose(tmp_path / "logs") == []


def test_an_open_workdir_is_restricted_at_start_with_a_warning(tmp_path, caplog):
    collab = prepare_example(tmp_path / "ex", people=50)
    workdir = tmp_path / "old"
    (workdir / "results").mkdir(parents=True, mode=0o755)
    workdir.chmod(0o755)
    old_result = workdir / "results" / "0000.json"
    old_result.write_text("{}")
    old_result.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        coordinator = Coordinator(
            CoordinatorConfig(
                definition=load_definition(collab.definition),
                workdir=workdir,
                nodes={},
                simulate=True,
            )
        )
    try:
        assert any("open to other users" in r.getMessage() for r in caplog.records)
        assert stat.S_IMODE(old_result.stat().st_mode) == 0o600
        assert stat.S_IMODE((workdir / "results").stat().st_mode) == 0o700
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    finally:
        coordinator.close()


def test_files_the_coordinator_writes_itself_are_private_whatever_the_umask(tmp_path):
    collab = prepare_example(tmp_path / "ex", people=50)
    previous = os.umask(0o022)  # a library caller's usual umask
    try:
        coordinator = Coordinator(
            CoordinatorConfig(
                definition=load_definition(collab.definition),
                workdir=tmp_path / "c",
                nodes={},
                simulate=True,
            )
        )
        try:
            coordinator.keep_result({"result": {"result_id": "1234abcd"}}, "brand")
            for name in (
                "results/1234abcd.json",
                "request-nonces.sqlite",
                "engine/privacy.sqlite",
                "engine/audit.jsonl",
                "keys/rekey.bin",
                "tls/tls-key.pem",
            ):
                path = tmp_path / "c" / name
                if path.exists():
                    assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
            for directory in ("", "engine", "keys", "results"):
                path = tmp_path / "c" / directory
                assert stat.S_IMODE(path.stat().st_mode) == 0o700, directory
        finally:
            coordinator.close()
    finally:
        os.umask(previous)
