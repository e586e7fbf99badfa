"""The local default: every node and the coordinator as a separate process.

Each provider's node and the coordinator run as their own OS processes on
this machine (``sgxcloud cleanroom node`` / ``coordinator``), talking attested
TLS over loopback exactly as they would across machines.  There is no SGX
here, so every process uses SIMULATED evidence and is started with
``--allow-simulated`` (each prints the loud warning); the definition must
say ``allow_simulated: true`` too, or the processes refuse each other.

A workdir holds ``local.json``::

    {"definition": "definition.yaml",
     "approvals": ["approvals/bank.json", ...],
     "nodes": {"bank": {"customers": "data/bank_customers.parquet"}, ...}}

Relative paths are resolved against the workdir.  Logs go to ``logs/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sgxcloud
from sgxcloud.cleanroom.errors import LocalProcessError as LocalProcessError
from sgxcloud.cleanroom.workdir import private_dir
from sgxcloud.errors import InputError

LOCAL_FILE = "local.json"
START_TIMEOUT_S = 600.0


@dataclass
class LocalCollaboration:
    """Starts, describes and stops a SIMULATED collaboration on this machine."""

    workdir: Path
    definition: Path
    approvals: list[Path]
    nodes: dict[str, dict[str, str]]
    node_args: dict[str, list[str]] = field(default_factory=dict)
    coordinator_args: list[str] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    url: str = ""
    metrics_url: str = ""
    """The coordinator's loopback metrics listener, when started with --metrics-listen."""
    ingestion: dict[str, Any] = field(default_factory=dict)
    start_timeout: float = START_TIMEOUT_S
    """The coordinator is ready only after pulling all data: allow for big inputs."""

    @classmethod
    def from_workdir(cls, workdir: Path) -> LocalCollaboration:
        try:
            doc = json.loads((workdir / LOCAL_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{workdir / LOCAL_FILE}: missing or not JSON") from exc
        return cls(
            workdir=workdir,
            definition=workdir / doc["definition"],
            approvals=[workdir / a for a in doc.get("approvals", [])],
            nodes={
                p: {d: str(workdir / s) for d, s in ds.items()} for p, ds in doc["nodes"].items()
            },
        )

    def save(self) -> None:
        def rel(p: Path | str) -> str:
            return os.path.relpath(p, self.workdir)

        (self.workdir / LOCAL_FILE).write_text(
            json.dumps(
                {
                    "definition": rel(self.definition),
                    "approvals": [rel(a) for a in self.approvals],
                    "nodes": {
                        p: {d: rel(s) for d, s in ds.items()} for p, ds in self.nodes.items()
                    },
                },
                indent=2,
            )
            + "\n"
        )

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> dict[str, Any]:
        logs = private_dir(self.workdir / "logs")
        ready = private_dir(self.workdir / "run") / f"{name}.ready"
        ready.unlink(missing_ok=True)
        env = dict(os.environ)
        src = str(Path(sgxcloud.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        env.setdefault("COLUMNS", "120")
        log_fd = os.open(logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sgxcloud.cli.main",
                    "cleanroom",
                    *args,
                    "--ready-file",
                    str(ready),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self.processes[name] = proc
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists():
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
                raise LocalProcessError(
                    f"{name} exited with status {proc.returncode}: "
                    + (tail[-1] if tail else "no output")
                )
            if time.monotonic() > deadline:
                raise LocalProcessError(f"{name} did not become ready in time")
            time.sleep(0.05)
        return json.loads(ready.read_text())

    def start_nodes(self) -> None:
        for provider, datasets in self.nodes.items():
            args = [
                "node",
                "--definition",
                str(self.definition),
                "--provider",
                provider,
                "--listen",
                "127.0.0.1:0",
                "--simulate",
                "--allow-simulated",
                "--verbose",
            ]
            for name, source in datasets.items():
                args += ["--dataset", f"{name}={source}"]
            for approval in self.approvals:
                args += ["--approvals", str(approval)]
            info = self._spawn(f"node-{provider}", args + self.node_args.get(provider, []))
            self.addresses[provider] = (info["host"], info["port"])

    def start_coordinator(self) -> None:
        args = [
            "coordinator",
            "--definition",
            str(self.definition),
            "--workdir",
            str(self.workdir / "coordinator"),
            "--listen",
            "127.0.0.1:0",
            "--simulate",
            "--allow-simulated",
            "--metrics-listen",
            "127.0.0.1:0",
            "--verbose",
        ]
        for provider, (host, port) in self.addresses.items():
            args += ["--node", f"{provider}={host}:{port}"]
        for approval in self.approvals:
            args += ["--approvals", str(approval)]
        info = self._spawn("coordinator", args + self.coordinator_args)
        self.url = f"https://{info['host']}:{info['port']}"
        self.metrics_url = info.get("metrics", "")
        self.ingestion = info.get("status", {})

    def start(self) -> LocalCollaboration:
        try:
            self.start_nodes()
            self.start_coordinator()
        except BaseException:
            self.stop()
            raise
        return self

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes.items() if p.poll() is None}

    def describe(self) -> dict[str, Any]:
        return {
            "simulated": True,
            "url": self.url,
            "metrics": self.metrics_url,
            "pids": self.pids(),
            "nodes": {p: f"{h}:{port}" for p, (h, port) in self.addresses.items()},
            "datasets": self.ingestion,
        }

    def wait(self) -> None:
        try:
            while all(p.poll() is None for p in self.processes.values()):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self, name: str | None = None) -> None:
        """Stop one process (``node-bank``, ``coordinator``) or all we started."""
        names = [name] if name else list(reversed(self.processes))
        for key in names:
            proc = self.processes.pop(key, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalCollaboration:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- an example collaboration (demo, tests, benchmark) ---------------------------------

EXAMPLE_DEFINITION = Path(__file__).with_name("example_collaboration.yaml")
"""The worked definition (package data, so the installed demo finds it too;
``examples/cleanroom/collaboration.yaml`` links here); its data comes from
:mod:`sgxcloud.cleanroom.datagen`."""


def example_definition(
    public_keys: dict[str, str] | None = None,
    *,
    allow_simulated: bool = True,
    min_group_size: int | None = None,
    dp: bool | None = None,
    dp_budget: float | None = None,
) -> dict[str, Any]:
    """The worked collaboration as a document, with each party's key replaced.

    The example file carries keys derived from public strings; a real run
    (demo, tests) gives every party a fresh key instead.
    """
    import yaml

    try:
        doc = yaml.safe_load(EXAMPLE_DEFINITION.read_text())
    except OSError as exc:
        raise InputError(f"example definition not found at {EXAMPLE_DEFINITION}") from exc
    for party in doc["parties"]:
        if public_keys and party["name"] in public_keys:
            party["public_key"] = public_keys[party["name"]]
    doc["enclaves"]["allow_simulated"] = allow_simulated
    if min_group_size is not None:
        doc["privacy"]["min_group_size"] = min_group_size
    dp_doc = doc["privacy"].get("differential_privacy")
    if dp is not None and dp_doc:
        dp_doc["enabled"] = dp
    if dp_budget is not None and dp_doc:  # the example has one analyst: both budgets
        dp_doc["budget_per_analyst"] = dp_budget
        dp_doc["budget_per_collaboration"] = dp_budget
    return doc


def prepare_example(
    workdir: Path,
    people: int = 20_000,
    *,
    allow_simulated: bool = True,
    min_group_size: int | None = None,
    dp: bool | None = None,
    dp_budget: float | None = None,
    fmt: str = "parquet",
    progress=None,
) -> LocalCollaboration:
    """Fresh keys for every party, the definition, every provider's approval and
    synthetic data for ``people`` people: a ready-to-start local collaboration."""
    import yaml

    from sgxcloud.cleanroom.approvals import (
        approve,
        encode_public_key,
        generate_private_key,
        private_key_to_pem,
    )
    from sgxcloud.cleanroom.datagen import generate
    from sgxcloud.cleanroom.definition import definition_from_dict

    workdir.mkdir(parents=True, exist_ok=True)
    template = example_definition()
    keys = {p["name"]: generate_private_key() for p in template["parties"]}
    private_dir(workdir / "keys")  # every party's private key, 0600 each
    for party, key in keys.items():
        path = workdir / "keys" / f"{party}.pem"
        path.touch(mode=0o600)
        path.write_bytes(private_key_to_pem(key))
    doc = example_definition(
        {p: encode_public_key(k) for p, k in keys.items()},
        allow_simulated=allow_simulated,
        min_group_size=min_group_size,
        dp=dp,
        dp_budget=dp_budget,
    )
    (workdir / "definition.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    definition = definition_from_dict(doc)
    (workdir / "approvals").mkdir(exist_ok=True)
    approvals = []
    for provider in definition.providers:
        path = workdir / "approvals" / f"{provider}.json"
        path.write_text(
            json.dumps(approve(definition, provider, keys[provider]).to_dict(), indent=2) + "\n"
        )
        approvals.append(path)
    data = generate(workdir / "data", people=people, fmt=fmt, progress=progress)
    nodes: dict[str, dict[str, str]] = {}
    for ref, path in data.files.items():
        provider, dataset = ref.split(".")
        nodes.setdefault(provider, {})[dataset] = str(path)
    collab = LocalCollaboration(
        workdir=workdir, definition=workdir / "definition.yaml", approvals=approvals, nodes=nodes
    )
    collab.save()
    return collab
