"""The enclave side as it ships: the wheel's ``client`` extra alone, a fake Gramine tree.

A fresh venv gets nothing but ``pip install --target app/site-packages
'sgxcloud-*.whl[client]'`` (what deploy/gramine/README.md tells enclave
builders to do), and the launcher runs from there against a fake
``/dev/attestation`` (tests/cas/fake_gramine.py) and a real CAS over HTTPS.
The example workload (deploy/gramine/example) then serves with what it was
given: its TLS key and certificate, the database password, the policy CA.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from sgxcloud.cas import audit
from sgxcloud.cas.client import pinned_tls
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from tests.cas import postgres as pg
from tests.cas.fake_gramine import FakeAttestationDevice

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy/gramine/example"
SERVER_SIDE = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "dcap_qvl", "pydantic")


@pytest.fixture(scope="module")
def enclave_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python of a fresh venv, app/site-packages holding the wheel's client extra only)."""
    work = tmp_path_factory.mktemp("client-extra")
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    (wheel,) = dist.glob("sgxcloud-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin/python"
    site = work / "app/site-packages"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(site),
            f"{wheel}[client]",
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return python, site


def _enclave_env(site: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {**keep, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def test_the_client_extra_holds_nothing_server_side(enclave_python) -> None:  # type: ignore[no-untyped-def]
    python, site = enclave_python
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"sgxcloud", "cryptography", "httpx"} <= installed
    assert not installed & {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "dcap_qvl"}
    probe = (
        "import sys, sgxcloud.cas.client as c\n"
        "import sgxcloud.cas.client.launcher\n"
        f"print(sorted(m for m in {SERVER_SIDE!r} if m in sys.modules))\n"
        "print(sorted(m for m in sys.modules if m.startswith('sgxcloud.cas.')))\n"
        "print(sorted(m for m in ('httpx', 'httpcore', 'h11', 'anyio') if m in sys.modules))"
    )
    answer = subprocess.run(
        [str(python), "-c", probe],
        env=_enclave_env(site),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    server_modules, ours, http_clients = answer.stdout.splitlines()
    assert server_modules == "[]"
    # The launcher speaks http.client; httpx (the owners' client) stays unloaded.
    assert http_clients == "[]"
    # The enclave loads the protocol and its client, never policy/store/service/evidence.
    for area in ("service", "store", "policy", "evidence", "collateral", "secrets"):
        assert f"sgxcloud.cas.{area}" not in ours


def test_launcher_has_a_real_help(enclave_python) -> None:  # type: ignore[no-untyped-def]
    python, site = enclave_python
    helped = subprocess.run(
        [str(python), "-m", "sgxcloud.cas.client", "launch", "--help"],
        env=_enclave_env(site),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0
    for word in (
        "--url",
        "--ca-file",
        "--root",
        "--attempts",
        "SGXCLOUD_CAS_CA",
        "Exit",
        "--policy-owner",
        "--no-owner-pin",
    ):
        assert word in helped.stdout
    missing = subprocess.run(
        [str(python), "-m", "sgxcloud.cas.client", "launch"],
        env=_enclave_env(site),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == (
        "error: missing launcher settings: SGXCLOUD_CAS_URL, SGXCLOUD_CAS_POLICY, "
        "SGXCLOUD_CAS_SERVICE, SGXCLOUD_CAS_CA, SGXCLOUD_CAS_POLICY_OWNERS "
        "(or --no-owner-pin, insecure)"
    )


def _example_policy(owner, tree: dict[str, Path]) -> str:  # type: ignore[no-untyped-def]
    """The shipped example policy, with a test owner, identity and loopback addresses."""
    document = yaml.safe_load((EXAMPLE / "policy.yaml").read_text())
    document["access"]["owners"][0]["public_key"] = pg.public_pem(owner)
    for name, service in document["services"].items():
        service["identities"] = [{"mrenclave": pg.MRENCLAVE}]
        service["allow_simulated"] = True  # the fake device's evidence is SIMULATED
        del service["tolerated_tcb_statuses"]  # simulated evidence has no TCB level
        service["environment"]["NOTES_CONFIG_DIR"] = str(tree[name] / "etc/app")
        command = service["command"]
        command[1] = str(EXAMPLE / "notes.py")
        command[command.index("--listen") + 1] = "127.0.0.1:0"
        command += ["--port-file", str(tree[name] / "port")]
    document["secrets"]["db_tls_cert"]["sans"].append("127.0.0.1")
    document["secrets"]["web_tls_cert"]["sans"].append("127.0.0.1")
    return yaml.safe_dump(document, sort_keys=False)


def _wait_for_port(path: Path, process: subprocess.Popen) -> int:  # type: ignore[type-arg]
    deadline = time.monotonic() + 240  # a shared, loaded CI machine
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        if process.poll() is not None:
            raise AssertionError(f"launcher exited {process.returncode}: {process.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no port in {path}")


def test_launcher_installs_files_env_argv_and_keys_and_the_example_serves(
    enclave_python, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    python, site = enclave_python
    tree = {"db": tmp_path / "db-enclave", "web": tmp_path / "web-enclave"}
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner).encode())
    service.apply_policy(owner_id, _example_policy(owner, tree), int(time.time()))
    policy_ca = service.read_policy(owner_id, "notes").ca_certificate_pem
    (tmp_path / "policy-ca.pem").write_text(policy_ca)
    tls = make_loopback_tls(tmp_path / "tls")
    processes: list[subprocess.Popen] = []  # type: ignore[type-arg]
    identity = pg.simulated_identity()
    try:
        with (
            background_https(create_app(service), tls) as url,
            FakeAttestationDevice(tree["db"], identity) as db_device,
            FakeAttestationDevice(tree["web"], identity) as web_device,
        ):
            settings = {
                "SGXCLOUD_CAS_URL": url,
                "SGXCLOUD_CAS_POLICY": "notes",
                "SGXCLOUD_CAS_CA": str(tls.ca_cert),
                "SGXCLOUD_CAS_POLICY_OWNERS": owner_id,
            }

            def launch(name: str) -> subprocess.Popen:  # type: ignore[type-arg]
                process = subprocess.Popen(
                    [str(python), "-m", "sgxcloud.cas.client", "launch", "--root", str(tree[name])],
                    env=_enclave_env(site, **settings, SGXCLOUD_CAS_SERVICE=name),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                processes.append(process)
                return process

            db_port = _wait_for_port(tree["db"] / "port", launch("db"))
            # The web service's --database comes from the policy; point it at this port.
            web_policy = yaml.safe_load(service.read_policy(owner_id, "notes").text)
            assert web_policy["services"]["web"]["command"][-3] == "https://notes-db.internal:9443"
            _retarget_database(service, owner_id, f"https://127.0.0.1:{db_port}")
            web_port = _wait_for_port(tree["web"] / "port", launch("web"))
            assert db_device.quotes_served == 1 and web_device.quotes_served == 1

            # Files: mode 0600, in the enclave's tree; the encrypted-mount key is 16 raw bytes.
            for name in ("db", "web"):
                key = tree[name] / "etc/app/tls.key"
                assert key.stat().st_mode & 0o777 == 0o600
                assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
            assert len((tree["db"] / "dev/attestation/keys/data").read_bytes()) == 16
            assert not (tree["web"] / "dev/attestation/keys/data").exists()  # not the web's

            # The web service answers over TLS with the delivered certificate (policy CA),
            # and stores through the database using the delivered password.
            with httpx.Client(verify=pinned_tls(tmp_path / "policy-ca.pem"), timeout=10) as web:
                base = f"https://127.0.0.1:{web_port}"
                assert web.get(base + "/health").json() == {"ok": True}
                assert web.post(base + "/note-1", content=b"hello").status_code == 201
                assert web.get(base + "/").json() == {"note-1": "hello"}
                wrong = web.get(
                    f"https://127.0.0.1:{db_port}/", headers={"Authorization": "Bearer guessed"}
                )
                assert wrong.status_code == 401
            entries = [e for e in audit.entries(service.database) if e.kind == "attestation"]
            assert [(e.subject, e.outcome) for e in entries] == [
                ("notes/db", "accepted"),
                ("notes/web", "accepted"),
            ]
            assert all(e.detail["simulated"] for e in entries)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        service.stop()


def _retarget_database(service, owner_id: str, database_url: str) -> None:  # type: ignore[no-untyped-def]
    current = service.read_policy(owner_id, "notes")
    document = yaml.safe_load(current.text)
    document["services"]["web"]["command"][-3] = database_url
    document["predecessor"] = current.policy_hash
    service.apply_policy(owner_id, yaml.safe_dump(document, sort_keys=False), int(time.time()))


def test_a_refused_enclave_starts_nothing(enclave_python, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    python, site = enclave_python
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner).encode())
    tree = {"db": tmp_path / "db", "web": tmp_path / "web"}
    service.apply_policy(owner_id, _example_policy(owner, tree), int(time.time()))
    tls = make_loopback_tls(tmp_path / "tls")
    other_build = pg.simulated_identity("ee" * 32)
    try:
        with (
            background_https(create_app(service), tls) as url,
            FakeAttestationDevice(tree["db"], other_build),
        ):
            answer = subprocess.run(
                [
                    str(python),
                    "-m",
                    "sgxcloud.cas.client",
                    "launch",
                    "--root",
                    str(tree["db"]),
                    "--url",
                    url,
                    "--policy",
                    "notes",
                    "--service",
                    "db",
                    "--ca-file",
                    str(tls.ca_cert),
                    "--policy-owner",
                    owner_id,
                ],
                env=_enclave_env(site),
                capture_output=True,
                text=True,
                timeout=300,
            )
        assert answer.returncode == 1
        assert "Traceback" not in answer.stderr
        assert re.search("audit entry [A-Za-z0-9_-]{22}$", answer.stderr.strip())
        assert "MRENCLAVE" not in answer.stderr
        assert not (tree["db"] / "etc/app/tls.key").exists()
        assert not (tree["db"] / "port").exists()
    finally:
        service.stop()


def test_json_probe_of_fetch_from_client_only_install(enclave_python, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The library call an application makes itself (not the launcher) works from the extra."""
    python, site = enclave_python
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner).encode())
    service.apply_policy(owner_id, pg.policy_text(owner), int(time.time()))
    tls = make_loopback_tls(tmp_path / "tls")
    root = tmp_path / "enclave"
    script = (
        "import json, sys\nfrom pathlib import Path\n"
        "from sgxcloud.cas.client import fetch_configuration\n"
        "f = fetch_configuration(sys.argv[1], policy='shop', service='web', "
        "ca_file=Path(sys.argv[2]), root=Path(sys.argv[3]))\n"
        "print(json.dumps({'env': sorted(f.configuration.env), 'argv0': f.configuration.argv[0],"
        " 'files': sorted(f.configuration.files), 'simulated': f.simulated}))\n"
    )
    try:
        with (
            background_https(create_app(service), tls) as url,
            FakeAttestationDevice(root, pg.simulated_identity()),
        ):
            answer = subprocess.run(
                [str(python), "-c", script, url, str(tls.ca_cert), str(root)],
                env=_enclave_env(site),
                capture_output=True,
                text=True,
                timeout=300,
            )
        assert answer.returncode == 0, answer.stderr
        got = json.loads(answer.stdout)
        assert got == {
            "env": ["API_TOKEN", "MODE"],
            "argv0": "/usr/bin/python3",
            "files": ["/dev/attestation/keys/data", "/etc/app/tls.crt", "/etc/app/tls.key"],
            "simulated": True,
        }
    finally:
        service.stop()


@pytest.mark.parametrize("path", ["/../escaped", "/a/../../escaped", "/link/escaped"])
def test_install_writes_nothing_outside_its_root(tmp_path: Path, path: str) -> None:
    """A file the CAS sends is written under --root or not at all (``..`` or a symlink out)."""
    from sgxcloud.cas import protocol
    from sgxcloud.cas.client.enclave import FetchedConfiguration
    from sgxcloud.cas.client.errors import ClientError
    from sgxcloud.cas.client.launcher import install

    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    configuration = protocol.Configuration(argv=["x"], env={}, files={path: b"outside"})
    fetched = FetchedConfiguration(configuration, None, None, None, "h", True, "Simulated")  # type: ignore[arg-type]
    with pytest.raises(ClientError, match="outside the file-system root"):
        install(fetched, root)
    assert not (tmp_path / "escaped").exists()
    inside = protocol.Configuration(argv=["x"], env={}, files={"/etc/app.conf": b"ok"})
    fetched = FetchedConfiguration(inside, None, None, None, "h", True, "Simulated")  # type: ignore[arg-type]
    (written,) = install(fetched, root)
    assert written.read_bytes() == b"ok" and written.stat().st_mode & 0o777 == 0o600
