"""The local default: every node and the coordinator as a separate process.

Each provider's node and the coordinator run as their own OS processes on
this machine (``sgxcloud cleanroom node`` / ``coordinator``), talking attested
TLS over loopback exactly as they would across machines.  There is no SGX
here, so every process uses SIMULATED evidence, and the definition must say
``allow_simulated: true`` or the processes refuse each other.

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
from sgxcloud.errors import InputError, SgxcloudError

LOCAL_FILE = "local.json"
START_TIMEOUT_S = 600.0


class LocalProcessError(SgxcloudError):
    """A local node or coordinator process failed to start."""

    exit_code = 3


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
    ingestion: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_workdir(cls, workdir: Path) -> LocalCollaboration:
        try:
            doc = json.loads((workdir / LOCAL_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{workdir / LOCAL_FILE}: missing or not JSON") from exc
        return cls(workdir=workdir, definition=workdir / doc["definition"],
                   approvals=[workdir / a for a in doc.get("approvals", [])],
                   nodes={p: {d: str(workdir / s) for d, s in ds.items()}
                          for p, ds in doc["nodes"].items()})

    def save(self) -> None:
        def rel(p: Path | str) -> str:
            return os.path.relpath(p, self.workdir)

        (self.workdir / LOCAL_FILE).write_text(json.dumps({
            "definition": rel(self.definition), "approvals": [rel(a) for a in self.approvals],
            "nodes": {p: {d: rel(s) for d, s in ds.items()} for p, ds in self.nodes.items()},
        }, indent=2) + "\n")

    # -- processes -----------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> dict[str, Any]:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "run" / f"{name}.ready"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        env = dict(os.environ)
        src = str(Path(sgxcloud.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        env.setdefault("COLUMNS", "120")
        with (logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sgxcloud.cli.main", "cleanroom", *args,
                 "--ready-file", str(ready)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.processes[name] = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.exists():
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()
                raise LocalProcessError(f"{name} exited with status {proc.returncode}: "
                                        + (tail[-1] if tail else "no output"))
            if time.monotonic() > deadline:
                raise LocalProcessError(f"{name} did not become ready in time")
            time.sleep(0.05)
        return json.loads(ready.read_text())

    def start_nodes(self) -> None:
        for provider, datasets in self.nodes.items():
            args = ["node", "--definition", str(self.definition), "--provider", provider,
                    "--listen", "127.0.0.1:0", "--simulate", "--verbose"]
            for name, source in datasets.items():
                args += ["--dataset", f"{name}={source}"]
            for approval in self.approvals:
                args += ["--approvals", str(approval)]
            info = self._spawn(f"node-{provider}", args + self.node_args.get(provider, []))
            self.addresses[provider] = (info["host"], info["port"])

    def start_coordinator(self) -> None:
        args = ["coordinator", "--definition", str(self.definition), "--workdir",
                str(self.workdir / "coordinator"), "--listen", "127.0.0.1:0", "--simulate",
                "--verbose"]
        for provider, (host, port) in self.addresses.items():
            args += ["--node", f"{provider}={host}:{port}"]
        for approval in self.approvals:
            args += ["--approvals", str(approval)]
        info = self._spawn("coordinator", args + self.coordinator_args)
        self.url = f"https://{info['host']}:{info['port']}"
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
        return {"simulated": True, "url": self.url, "pids": self.pids(),
                "nodes": {p: f"{h}:{port}" for p, (h, port) in self.addresses.items()},
                "datasets": self.ingestion}

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

EXAMPLE_PROVIDERS = ("bank", "telecom", "retailer")
EXAMPLE_COORDINATOR_MRENCLAVE = "c0" * 32
EXAMPLE_NODE_MRENCLAVE = "a1" * 32


def example_definition(public_keys: dict[str, str], *, allow_simulated: bool = True,
                       min_group_size: int = 50, dp: bool = False) -> dict[str, Any]:
    """The bank / telecom / retailer / brand collaboration of the demo, as a document."""
    def email_ds(provider: str, name: str, kind: str, **extra: Any) -> dict[str, Any]:
        return {"provider": provider, "name": name, "kind": kind,
                "identifiers": [{"column": "email", "kind": "email"}], **extra}

    privacy: dict[str, Any] = {"min_group_size": min_group_size, "differencing_check": True}
    if dp:
        privacy["differential_privacy"] = {"epsilon_per_query": 0.5, "budget_per_analyst": 5.0}
    return {
        "format": "sgxcloud.cleanroom/v1",
        "name": "baby_products_campaign",
        "description": "Bank, telecom and retailer measure a brand's campaign (example).",
        "parties": [
            *({"name": p, "roles": ["data_provider"], "public_key": public_keys[p]}
              for p in EXAMPLE_PROVIDERS),
            {"name": "brand", "roles": ["analyst", "result_recipient"],
             "public_key": public_keys["brand"]},
        ],
        "enclaves": {"coordinator": {"mrenclave": EXAMPLE_COORDINATOR_MRENCLAVE},
                     "node": {"mrenclave": EXAMPLE_NODE_MRENCLAVE},
                     "allow_simulated": allow_simulated},
        "datasets": [
            email_ds("bank", "customers", "attributes", attributes=[
                {"column": "premium_card", "type": "boolean"},
                {"column": "age_band", "type": "category", "values": ["18-34", "35-54", "55+"]}]),
            email_ds("telecom", "subscribers", "attributes", attributes=[
                {"column": "region", "type": "category",
                 "values": ["north", "south", "east", "west"]}]),
            email_ds("retailer", "buyers", "attributes", attributes=[
                {"column": "baby_products", "type": "boolean"}]),
            email_ds("retailer", "exposures", "exposures", group_column="arm",
                     timestamp_column="exposed_at"),
            email_ds("retailer", "purchases", "purchases", timestamp_column="purchased_at",
                     amount_column="amount"),
        ],
        "analyses": [
            {"name": "reach", "template": "audience_size", "analysts": ["brand"],
             "attributes": ["bank.customers.premium_card", "bank.customers.age_band",
                            "telecom.subscribers.region", "retailer.buyers.baby_products"]},
            {"name": "overlap", "template": "overlap", "analysts": ["brand"],
             "datasets": ["bank.customers", "telecom.subscribers", "retailer.buyers"]},
            {"name": "lift", "template": "campaign_lift", "analysts": ["brand"],
             "recipients": ["brand"], "exposures": "retailer.exposures",
             "purchases": "retailer.purchases", "attribution_window_days": 14,
             "attributes": ["retailer.buyers.baby_products", "bank.customers.premium_card"],
             "breakdowns": ["telecom.subscribers.region"]},
        ],
        "privacy": privacy,
    }


def write_example_data(datadir: Path, people: int, seed: int = 7,
                       chunk: int = 250_000) -> dict[str, dict[str, str]]:
    """Synthetic provider files (Parquet), written in chunks so memory stays flat.

    Each provider knows an overlapping ~70% of ``people``; the test arm converts
    more than control, so the lift analysis has a real effect to find.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    datadir.mkdir(parents=True, exist_ok=True)
    files = {"bank": {"customers": "bank_customers.parquet"},
             "telecom": {"subscribers": "telecom_subscribers.parquet"},
             "retailer": {"buyers": "retailer_buyers.parquet",
                          "exposures": "retailer_exposures.parquet",
                          "purchases": "retailer_purchases.parquet"}}
    writers: dict[str, pq.ParquetWriter] = {}
    start = np.datetime64("2026-09-01T00:00:00", "us")

    def write(name: str, table: pa.Table) -> None:
        if name not in writers:
            writers[name] = pq.ParquetWriter(datadir / name, table.schema)
        writers[name].write_table(table)

    for lo in range(0, people, chunk):
        ids = np.arange(lo, min(lo + chunk, people))
        n = len(ids)
        emails = pa.array([f"  Person.{i:09d}@Example.ORG " if i % 17 == 0
                           else f"person.{i:09d}@example.org" for i in ids])
        baby = rng.random(n) < 0.3
        premium = rng.random(n) < 0.25
        for provider, dataset, share, extra in (
            ("bank", "customers", 0.7, {
                "premium_card": pa.array(premium),
                "age_band": pa.array(rng.choice(["18-34", "35-54", "55+"], n))}),
            ("telecom", "subscribers", 0.75, {
                "region": pa.array(rng.choice(["north", "south", "east", "west"], n))}),
            ("retailer", "buyers", 0.8, {"baby_products": pa.array(baby)}),
        ):
            keep = rng.random(n) < share
            table = pa.table({"email": emails.filter(pa.array(keep)),
                              **{k: v.filter(pa.array(keep)) for k, v in extra.items()}})
            write(files[provider][dataset], table)
        exposed = rng.random(n) < 0.5
        arm = np.where(rng.random(n) < 0.5, "test", "control")
        exposed_at = start + rng.integers(0, 14 * 86_400, n).astype("timedelta64[s]")
        write(files["retailer"]["exposures"], pa.table({
            "email": emails.filter(pa.array(exposed)),
            "arm": pa.array(arm[exposed]),
            "exposed_at": pa.array(exposed_at[exposed].astype("datetime64[us]"))}))
        rate = np.where(arm == "test", 0.12, 0.08) + np.where(baby, 0.04, 0.0)
        buys = exposed & (rng.random(n) < rate)
        delay = rng.integers(-3 * 86_400, 20 * 86_400, n).astype("timedelta64[s]")
        write(files["retailer"]["purchases"], pa.table({
            "email": emails.filter(pa.array(buys)),
            "purchased_at": pa.array((exposed_at + delay)[buys].astype("datetime64[us]")),
            "amount": pa.array(np.round(rng.gamma(2.0, 20.0, n)[buys], 2))}))
    for w in writers.values():
        w.close()
    return {p: {d: str(datadir / f) for d, f in ds.items()} for p, ds in files.items()}


def prepare_example(workdir: Path, people: int = 20_000, *, allow_simulated: bool = True,
                    min_group_size: int = 50, dp: bool = False) -> LocalCollaboration:
    """Keys for every party, the definition, every provider's approval and the data."""
    import yaml

    from sgxcloud.cleanroom.approvals import (
        approve,
        encode_public_key,
        generate_private_key,
        private_key_to_pem,
    )
    from sgxcloud.cleanroom.definition import definition_from_dict

    workdir.mkdir(parents=True, exist_ok=True)
    keys = {p: generate_private_key() for p in (*EXAMPLE_PROVIDERS, "brand")}
    (workdir / "keys").mkdir(exist_ok=True)
    for party, key in keys.items():
        path = workdir / "keys" / f"{party}.pem"
        path.touch(mode=0o600)
        path.write_bytes(private_key_to_pem(key))
    doc = example_definition({p: encode_public_key(k) for p, k in keys.items()},
                             allow_simulated=allow_simulated, min_group_size=min_group_size,
                             dp=dp)
    (workdir / "definition.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    definition = definition_from_dict(doc)
    (workdir / "approvals").mkdir(exist_ok=True)
    approvals = []
    for provider in EXAMPLE_PROVIDERS:
        path = workdir / "approvals" / f"{provider}.json"
        path.write_text(json.dumps(approve(definition, provider, keys[provider]).to_dict(),
                                   indent=2) + "\n")
        approvals.append(path)
    nodes = write_example_data(workdir / "data", people)
    collab = LocalCollaboration(workdir=workdir, definition=workdir / "definition.yaml",
                                approvals=approvals, nodes=nodes)
    collab.save()
    return collab
