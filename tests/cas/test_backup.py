"""cas backup / restore while enclaves attest, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sgxcloud.cas import answers, audit, client, secrets
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from sgxcloud.cas.store import Database
from sgxcloud.cli.main import main as cli
from tests.cas import postgres as pg


def _url(backend: str, path: Path) -> str:
    return f"sqlite:///{path}" if backend == "sqlite" else pg.fresh_database(pg.server())


def _settings(path: Path, url: str, key_file: Path) -> Path:
    path.write_text(f"database_url: {url}\nmaster_key_file: {key_file}\n")
    return path


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_backup_taken_under_attestations_restores_to_a_verifying_chain(
    backend: str, tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    for name in ("SGXCLOUD_CAS_DATABASE_URL", "SGXCLOUD_CAS_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    key = secrets.MasterKey.generate()
    key_file = tmp_path / "master.key"
    secrets.write_master_key(key_file, key)
    live_url = _url(backend, tmp_path / "live.db")
    service = pg.make_service(live_url, secrets.Keyring(key))
    owner = pg.owner_key()
    service.apply_policy(
        public_key_id(pg.public_pem(owner).encode()), pg.policy_text(owner), int(time.time())
    )
    tls = make_loopback_tls(tmp_path / "tls")
    backup_file = tmp_path / ("cas.backup" if backend == "sqlite" else "cas.dump")
    done: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def enclave(url: str) -> None:
        while not stop.is_set():
            try:
                client.fetch_configuration(
                    url,
                    policy="shop",
                    service="web",
                    ca_file=tls.ca_cert,
                    root=tmp_path,
                    simulate=pg.simulated_identity(),
                )
                done.append(1)
            except BaseException as exc:
                failures.append(exc)
                return

    try:
        with background_https(create_app(service), tls) as url:
            workers = [threading.Thread(target=enclave, args=(url,)) for _ in range(4)]
            for worker in workers:
                worker.start()
            while len(done) < 20 and not failures:
                time.sleep(0.05)
            before = len(done)
            live_settings = _settings(tmp_path / "live.yaml", live_url, key_file)
            assert cli(["cas", "backup", "--config", str(live_settings), str(backup_file)]) == 0
            taken = capsys.readouterr().out
            while len(done) < before + 20 and not failures:
                time.sleep(0.05)  # attestations went on during and after the backup
            stop.set()
            for worker in workers:
                worker.join(timeout=60)
        assert not failures, failures[0]
        live = audit.entries(service.database)
    finally:
        stop.set()
        service.stop()
    assert backup_file.stat().st_mode & 0o777 == 0o600 or backend == "postgresql"
    if backend == "sqlite":
        assert "audit chain intact" in taken
    assert cli(["cas", "backup", "--config", str(live_settings), str(backup_file)]) == 2
    assert "exists; refusing to replace it" in capsys.readouterr().err

    restored_url = _url(backend, tmp_path / "restored.db")
    if backend == "postgresql":
        Database.open(restored_url).close()  # an existing, migrated database, as in production
    restored_settings = _settings(tmp_path / "restored.yaml", restored_url, key_file)
    restore = ["cas", "restore", "--config", str(restored_settings), str(backup_file)]
    if backend == "postgresql":
        restore.append("--replace")
    assert cli(restore) == 0
    assert "audit chain intact" in capsys.readouterr().out
    assert cli(["audit", "verify", "--config", str(restored_settings)]) == 0
    database = Database.open(restored_url, migrate=False)
    try:
        restored = audit.entries(database)
        with database.transaction() as repo:
            restored_deployment = repo.deployment_id()
    finally:
        database.close()
    # The same deployment: owners' signatures made for it are valid on the restored database
    # (PostgreSQL: the target's own id, made when it was migrated, is replaced).
    assert restored_deployment == service.deployment_id
    # A state the live chain really passed through: a prefix of it, mid-traffic.
    assert 1 < len(restored) < len(live)
    assert [e.entry_hash for e in restored] == [e.entry_hash for e in live[: len(restored)]]
    # The restored service opens with the same master key, and refuses without it.
    other_key = tmp_path / "other.key"
    secrets.write_master_key(other_key, secrets.MasterKey.generate())
    elsewhere = _settings(tmp_path / "wrong.yaml", _url(backend, tmp_path / "again.db"), other_key)
    assert cli(["cas", "restore", "--config", str(elsewhere), str(backup_file), "--replace"]) == 2
    assert "no master key with id" in capsys.readouterr().err


def test_restore_never_replaces_a_database_unasked(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SGXCLOUD_CAS_DATABASE_URL", raising=False)
    key_file = tmp_path / "master.key"
    secrets.write_master_key(key_file, secrets.MasterKey.generate())
    Database.open(f"sqlite:///{tmp_path / 'a.db'}").close()
    settings = _settings(tmp_path / "a.yaml", f"sqlite:///{tmp_path / 'a.db'}", key_file)
    assert cli(["cas", "backup", "--config", str(settings), str(tmp_path / "b")]) == 0
    assert cli(["cas", "restore", "--config", str(settings), str(tmp_path / "b")]) == 2
    assert "pass --replace" in capsys.readouterr().err
    (tmp_path / "junk").write_text("not a backup")
    assert cli(["cas", "restore", "--config", str(settings), str(tmp_path / "junk")]) == 2
    assert "neither a SQLite backup nor a pg_dump" in capsys.readouterr().err


def test_liveness_and_readiness_probes(tmp_path: Path) -> None:
    import httpx

    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    tls = make_loopback_tls(tmp_path / "tls")
    with (
        background_https(create_app(service), tls) as url,
        httpx.Client(base_url=url, verify=client.pinned_tls(tls.ca_cert)) as http,
    ):
        assert http.get("/v1/health/live").json() == {"ok": True, "check": "live"}
        assert http.get("/v1/health/ready").json() == {"ok": True, "check": "ready"}
        service.stop()  # shutting down (or a dead database): no traffic, but still alive
        ready = http.get("/v1/health/ready")
        assert ready.status_code == 503 and ready.json()["problem"] == "service is stopped"
        assert http.get("/v1/health/live").status_code == 200


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_backup_and_restore_files_are_private_from_their_first_byte(
    tmp_path: Path,
    backend: str,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    """Red-team a07: DEST.partial and *.restoring were 0644 while being written."""
    import os

    from sgxcloud.cas import backup as backup_module

    monkeypatch.delenv("SGXCLOUD_CAS_DATABASE_URL", raising=False)
    url = _url(backend, tmp_path / "a.db")
    Database.open(url).close()
    seen: list[tuple[str, int]] = []
    real_copy, real_run = backup_module._sqlite_copy, backup_module._run

    def copy(source: Path, destination: Path) -> None:
        seen.append((destination.name, destination.stat().st_mode & 0o777))
        real_copy(source, destination)
        seen.append((destination.name, destination.stat().st_mode & 0o777))

    def run(tool: str, *args: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        for arg in args:
            if arg.startswith("--file="):
                partial = Path(arg.removeprefix("--file="))
                seen.append((partial.name, partial.stat().st_mode & 0o777))
        real_run(tool, *args, **kwargs)
        for arg in args:
            if arg.startswith("--file="):
                partial = Path(arg.removeprefix("--file="))
                seen.append((partial.name, partial.stat().st_mode & 0o777))

    monkeypatch.setattr(backup_module, "_sqlite_copy", copy)
    monkeypatch.setattr(backup_module, "_run", run)
    previous = os.umask(0o000)  # the most permissive umask: nothing may depend on it
    try:
        backup_module.backup(url, tmp_path / "b")
        if backend == "sqlite":
            backup_module.restore(tmp_path / "b", url, replace=True)
    finally:
        os.umask(previous)
    names = {name for name, _ in seen}
    assert "b.partial" in names and (backend != "sqlite" or "a.db.restoring" in names)
    assert all(mode == 0o600 for _, mode in seen), seen
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600


@contextlib.contextmanager
def _cas_serve(settings_path: Path, url: str, ca: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cas serve`` in a process of its own, answering on ``url``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sgxcloud.cli.main", "cas", "serve", "--config", str(settings_path)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                with httpx.Client(verify=client.pinned_tls(ca)) as http:
                    if http.get(url + "/v1/health").status_code == 200:
                        break
            except httpx.TransportError as exc:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.kill()
                    message = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(message) from exc
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_from_backups(home: Path, where: Path, *, keys: bool) -> Path:
    """A new host for the deployment made by ``cas init`` in ``home``: its settings
    and TLS files, the key files from the key backup (``keys``), an empty data/."""
    where.mkdir()
    shutil.copytree(home / "tls", where / "tls")
    (where / "data").mkdir()
    if keys:
        shutil.copytree(home / "keys", where / "keys")
    else:  # the master key only: the answer signing key was not kept with it
        (where / "keys").mkdir(mode=0o700)
        shutil.copy2(home / "keys" / "master.key", where / "keys" / "master.key")
    port = _free_port()
    text = re.sub(r"port: \d+", f"port: {port}", (home / "cas.yaml").read_text())
    if not keys:
        text = text.replace("answer_signing_key_file:", "# answer_signing_key_file:")
    (where / "cas.yaml").write_text(text)
    return where / "cas.yaml"


def test_owners_pinning_the_signing_key_verify_answers_after_a_restore(
    tmp_path: Path, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Backups hold the database only; the answer signing key comes back from the key
    backup with the master key, and the restored CAS's answers verify against the public
    key owners pinned before.  A restore without it (or with another key) is refused
    when the published key is named, saying which file to restore."""
    for name in ("SGXCLOUD_CAS_DATABASE_URL", "SGXCLOUD_CAS_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "cas"
    assert cli(["cas", "init", str(home), "--loopback-tls"]) == 0
    port = _free_port()
    settings = home / "cas.yaml"
    settings.write_text(settings.read_text().replace("port: 8443", f"port: {port}"))
    pinned = tmp_path / "owner-pins" / "cas-signing.pub.pem"  # what owners were given
    pinned.parent.mkdir()
    shutil.copy2(home / "cas-signing.pub.pem", pinned)
    ca = home / "tls" / "ca.pem"
    owner = pg.owner_key()
    backup_file = tmp_path / "cas.backup"
    with _cas_serve(settings, f"https://127.0.0.1:{port}", ca):
        with client.OwnerClient(
            f"https://127.0.0.1:{port}", owner, ca_file=ca, cas_key=pinned
        ) as owners:
            owners.apply(pg.policy_text(owner))
            before = owners.show("shop")
        capsys.readouterr()
        assert cli(["cas", "backup", "--config", str(settings), str(backup_file)]) == 0
    assert b"answer-signing" not in backup_file.read_bytes()  # the database only

    # A host restored from the database backup without the signing key: refused up
    # front, naming the file, and nothing restored.
    bare = _host_from_backups(home, tmp_path / "bare", keys=False)
    restore = ["cas", "restore", "--signing-key-pub", str(pinned), str(backup_file)]
    assert cli([*restore, "--config", str(bare)]) == 1
    err = capsys.readouterr().err
    assert "no answer_signing_key_file" in err and "restore answer-signing.key" in err
    assert not (bare.parent / "data" / "cas.db").exists()
    # ... or with a new key in its place: refused, both fingerprints named.
    wrong = _host_from_backups(home, tmp_path / "wrong", keys=True)
    (wrong.parent / "keys" / "answer-signing.key").unlink()
    assert (
        cli(["cas", "signing-key", "--generate", str(wrong.parent / "keys" / "answer-signing.key")])
        == 0
    )
    capsys.readouterr()
    assert cli([*restore, "--config", str(wrong)]) == 1
    assert "is not the key owners pin" in capsys.readouterr().err
    assert cli(["cas", "signing-key", "--config", str(wrong), "--check", str(pinned)]) == 1
    assert "is not the key owners pin" in capsys.readouterr().err

    # The host restored with the key files from the key backup.
    restored = _host_from_backups(home, tmp_path / "restored", keys=True)
    assert cli([*restore, "--config", str(restored)]) == 0
    out = capsys.readouterr().out
    assert "audit chain intact" in out and "is the published" in out
    assert cli(["cas", "signing-key", "--config", str(restored), "--check", str(pinned)]) == 0
    new_port = int(re.search(r"port: (\d+)", restored.read_text()).group(1))  # type: ignore[union-attr]
    url = f"https://127.0.0.1:{new_port}"
    with (
        _cas_serve(restored, url, ca) as process,
        client.OwnerClient(url, owner, ca_file=ca, cas_key=pinned) as owners,
    ):
        assert owners.show("shop") == before  # a verified answer, old pin
        assert owners.verify_audit()["ok"]
    log = process.stderr.read().decode() if process.stderr else ""
    fingerprint = answers.fingerprint(answers.load_public_key(pinned))
    assert f"public key fingerprint {fingerprint}" in log
