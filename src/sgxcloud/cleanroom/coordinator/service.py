"""The coordinator as a service: ingestion from attested nodes, queries run
by the engine, results signed and kept.  No HTTP here (:mod:`.app` serves it).

Everything it keeps (the re-keying key, the result-signing key, staged data,
the engine's tables, budgets and audit log) lives under ``workdir``, which in
production is an encrypted mount whose key only the attested enclave gets;
the two keys are files there, created once (:func:`_secret_file`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from sgxcloud.bounded import bounded
from sgxcloud.cleanroom.approvals import (
    Approval,
    generate_private_key,
    private_key_from_pem,
    private_key_to_pem,
    verify_approvals,
)
from sgxcloud.cleanroom.audit import PAGE_ENTRIES
from sgxcloud.cleanroom.definition import Definition
from sgxcloud.cleanroom.engine import Engine, parse_query
from sgxcloud.cleanroom.errors import CleanroomError, IngestError, QueryError
from sgxcloud.cleanroom.identifiers import KEY_BYTES, new_key
from sgxcloud.cleanroom.results import now_iso
from sgxcloud.cleanroom.transport import (
    AttestedChannel,
    Kind,
    PeerRefused,
    PeerTimedOut,
    ProtocolViolation,
    RemoteError,
    TlsIdentity,
    TransportError,
    connect,
    open_client,
    report_data,
)
from sgxcloud.cleanroom.transport.request_auth import RequestVerifier
from sgxcloud.cleanroom.transport.signer import session_proof, signer_statement
from sgxcloud.cleanroom.transport.trust import SIMULATION_WARNING, local_attester, peer_policy
from sgxcloud.cleanroom.workdir import prepare_workdir, private_dir, private_file
from sgxcloud.errors import InputError

log = logging.getLogger("sgxcloud.cleanroom.coordinator")  # one name for the package's log

Progress = Callable[[str, dict[str, Any]], None]

STREAM_TIMEOUT_S = 600.0
"""How long a node may take to produce the next chunk (re-keying is CPU-bound)."""
NODE_RETRY_PAUSES_S = (0.2, 1.0, 2.5)
"""Pauses before each new session when one was lost before the node answered.
A full node gives a newcomer the place of a session idle for 2 s at most
(transport.server), so the last attempt comes after that grace."""

T = TypeVar("T")


def _transient(exc: TransportError) -> bool:
    """A lost connection, worth a new session; not a refusal (attestation,
    approvals, the node's verdict), a broken protocol, or a peer that stalled."""
    return not isinstance(exc, (PeerRefused, RemoteError, ProtocolViolation, PeerTimedOut))


def _goodbye(channel: AttestedChannel) -> None:
    """End a session politely; the answer is already in hand, so a node that has
    gone meanwhile changes nothing."""
    with contextlib.suppress(TransportError):
        channel.request({"op": "bye"})
    channel.close()


@dataclass
class CoordinatorConfig:
    definition: Definition
    workdir: Path
    nodes: dict[str, tuple[str, int]]
    approvals: list[Approval] = field(default_factory=list)
    simulate: bool = False
    simulate_mrenclave: str | None = None
    allow_simulated: bool = False
    """Accept SIMULATED nodes (only if the definition allows it too): they receive
    the re-keying key, so never by accident."""
    memory_limit: str = "512MB"
    batch_rows: int = 65_536
    collateral_source: Any = None

    def validate(self) -> None:
        unknown = sorted(set(self.nodes) - set(self.definition.providers))
        if unknown:
            raise InputError(
                f"node(s) for {', '.join(unknown)}: not data providers in the definition"
            )


def _secret_file(
    path: Path, make: Callable[[], bytes], check: Callable[[bytes], str | None] = lambda _: None
) -> bytes:
    """Read a key kept in the (enclave-encrypted) workdir, creating it once.

    ``check`` returns what is wrong with the bytes read, or None.  Errors name
    the file and the problem, never the key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = _create_secret(path, make())
    except OSError as exc:
        raise CleanroomError(f"{path}: cannot read ({exc.strerror})") from exc
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:  # as ssh does: a key others could read may already be known
        raise CleanroomError(
            f"{path}: open to other users (mode {mode:o}); restrict it with 'chmod 600 {path}'"
        )
    problem = check(data)
    if problem:
        raise CleanroomError(f"{path}: {problem}")
    return data


def _create_secret(path: Path, data: bytes) -> bytes:
    """Write ``path`` complete or not at all, never readable by anyone else.

    A temporary file in the same directory is created with O_EXCL and mode
    0600 (no window with wider permissions, no following a planted link),
    written, flushed to disk, then renamed over ``path``: a crash leaves
    either no key or the whole key, never a short one.  Temporaries of a run
    that died are removed first.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CleanroomError(f"{path}: cannot create ({exc.strerror})") from exc
    with contextlib.suppress(OSError):  # make the rename durable where the FS allows
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    return data


def _rekey_problem(data: bytes) -> str | None:
    if len(data) == KEY_BYTES:
        return None
    # Replacing the key is no fix: released cohorts were recorded under it and
    # the differencing check could no longer compare new ones with them.
    return (
        f"the re-keying key is damaged ({len(data)} bytes, expected {KEY_BYTES}); "
        "restore this file from a backup of the workdir, do not delete it"
    )


class Coordinator:
    """Ingestion from nodes and query execution, shared by the API and tests."""

    def __init__(self, config: CoordinatorConfig) -> None:
        config.validate()
        self.config = config
        self.definition = config.definition
        self.definition_hash = self.definition.definition_hash()
        self.workdir = config.workdir
        # 0700 and 0600 throughout; loose keys are refused below, not tightened.
        prepare_workdir(self.workdir, refused_elsewhere=("keys",))
        self._discard_staging()
        keys = self.workdir / "keys"
        self._rekey = _secret_file(keys / "rekey.bin", new_key, _rekey_problem)
        signing = private_key_from_pem(
            _secret_file(
                keys / "result-signing.pem", lambda: private_key_to_pem(generate_private_key())
            )
        )
        self._signing = signing  # also proves to nodes pinned to it who this is
        self.attester = local_attester(
            self.definition,
            "coordinator",
            simulate=config.simulate,
            mrenclave=config.simulate_mrenclave,
        )
        self.simulated = bool(self.attester.simulated)
        if config.allow_simulated and self.definition.enclaves.allow_simulated:
            log.warning(SIMULATION_WARNING)
        self.tls = TlsIdentity.generate("coordinator")
        engine_dir = private_dir(self.workdir / "engine")
        for name in ("privacy.sqlite", "audit.jsonl"):  # SQLite's journals take this mode
            private_file(engine_dir / name)
        self.engine = Engine(
            self.definition, engine_dir, signing_key=signing, memory_limit=config.memory_limit
        )
        self.signer = self.engine.public_key
        self.signer_statement = signer_statement(self.attester, self.signer, self.definition_hash)
        # Requests must name this definition and this coordinator's attested
        # signer, so one captured here is refused by any other coordinator.
        self.requests = RequestVerifier(
            self.definition, self.signer, private_file(self.workdir / "request-nonces.sqlite")
        )
        self._engine_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self.datasets: dict[str, dict[str, Any]] = {
            ds.ref: {
                "dataset": ds.ref,
                "state": "pending",
                "rows": 0,
                "reason": "",
                "public_reason": None,
                "in_use": False,
                "ingested_at": None,
            }
            for ds in self.definition.datasets
            if ds.provider in config.nodes
        }

    def _discard_staging(self) -> None:
        """Data half-received when a previous run died is never ingested: drop it."""
        for leftover in (self.workdir / "staging").glob("*.arrows"):
            leftover.unlink(missing_ok=True)

    # -- attestation -----------------------------------------------------------------

    def attestation(self, nonce: bytes) -> dict[str, Any]:
        """Evidence binding the HTTPS key, the signer and the definition to ``nonce``."""
        binding = report_data(
            self.tls.public_key_der(), self.definition_hash, nonce, self.signer.encode()
        )
        evidence = self.attester.evidence(binding)
        return {
            "definition_hash": self.definition_hash,
            "simulated": self.simulated,
            "signer": self.signer,
            "tls_public_key": base64.b64encode(self.tls.public_key_der()).decode(),
            "evidence": {"format": evidence.format, "raw": base64.b64encode(evidence.raw).decode()},
            "signer_statement": self.signer_statement,
        }

    def approval_status(self) -> dict[str, Any]:
        status = verify_approvals(self.definition, self.config.approvals)
        return {
            "valid": list(status.valid),
            "missing": list(status.missing),
            "invalid": list(status.invalid),
            "complete": status.complete,
        }

    # -- ingestion ---------------------------------------------------------------------

    def ingest_all(self, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
        """Pull every dataset from every node; a failing node or file affects only itself.

        Every dataset comes over its own attested session, all at once, so the
        nodes re-key in parallel — a provider with several datasets is not
        left working alone at the end; the engine takes one dataset at a time
        (its own lock), staged on disk meanwhile.
        """
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, len(self.config.nodes))) as pool:
            available = {p: pool.submit(self._available, p) for p in self.config.nodes}
            wanted = [(p, name) for p, future in available.items() for name in future.result()]
        with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
            for future in [
                pool.submit(self.ingest_dataset, p, name, progress) for p, name in wanted
            ]:
                future.result()
        return self.status()

    def ingest_provider(
        self, provider: str, progress: Progress | None = None, datasets: list[str] | None = None
    ) -> None:
        """Pull (again) one provider's datasets, or only ``datasets`` of them, one
        after another.  A refresh replaces a dataset atomically: a rejected one
        leaves the previous data in use."""
        declared = [ds.name for ds in self.definition.datasets_of(provider)]
        unknown = sorted(set(datasets or ()) - set(declared))
        if unknown:
            raise InputError(
                f"{provider} has no dataset {', '.join(unknown)} in the definition; "
                f"its datasets: {', '.join(declared)}"
            )
        for name in self._available(provider):
            if datasets is None or name in datasets:
                self.ingest_dataset(provider, name, progress)

    def _open(self, provider: str) -> AttestedChannel:
        channel = open_client(
            connect(self.config.nodes[provider], self.tls),
            "coordinator",
            peer_policy(
                self.definition,
                "node",
                self.config.collateral_source,
                allow_simulated=self.config.allow_simulated,
            ),
            self.attester,
            extra={"approvals": [a.to_dict() for a in self.config.approvals]},
            proof=lambda nonce, tls_key: session_proof(
                self._signing, self.definition_hash, nonce, tls_key
            ),
        )
        channel.set_timeout(STREAM_TIMEOUT_S)
        return channel

    def _node_call(
        self, provider: str, refs: list[str], work: Callable[[AttestedChannel], T]
    ) -> T | None:
        """``work`` over an attested session with ``provider``'s node; None when
        no session could be opened (``refs`` marked unavailable, refusal audited).

        A session lost before the node's answer began (a full node takes an
        idle session's place for a newcomer, ours too; it closes a connection
        it has no place for) is opened again after a pause, up to
        ``len(NODE_RETRY_PAUSES_S)`` times: every call to a node is idempotent.
        Other failures of ``work`` are raised.
        """
        for pause in (*NODE_RETRY_PAUSES_S, None):
            try:
                channel = self._open(provider)
            except TransportError as exc:
                if pause is not None and _transient(exc):
                    log.info("node %s: %s; opening a session again", provider, exc)
                    time.sleep(pause)
                    continue
                for ref in refs:
                    # the attested session failed (unreachable, approvals, evidence):
                    # nothing about the data, so every party may read why
                    self._not_ingested(ref, "unavailable", str(exc), public=True)
                self._audit(
                    "ingest_rejected",
                    provider,
                    {"datasets": refs, "stage": "session", "message": str(exc)},
                )
                log.warning("node %s: %s", provider, exc)
                return None
            opened = channel.frames.received
            try:
                return work(channel)
            except TransportError as exc:
                if pause is None or not _transient(exc) or channel.frames.received != opened:
                    raise
                log.info(
                    "node %s: session lost before the answer (%s); asking again", provider, exc
                )
            finally:
                channel.close()
            time.sleep(pause)
        return None  # not reached: the last attempt returns or raises

    def _available(self, provider: str) -> list[str]:
        """The datasets ``provider``'s node has files for (the others are marked)."""
        refs = [ds.ref for ds in self.definition.datasets_of(provider)]

        def describe(channel: AttestedChannel) -> dict[str, Any]:
            channel.request({"op": "describe"})
            _, described = channel.frames.recv_json(Kind.RESPONSE)
            _goodbye(channel)
            return described

        try:
            described = self._node_call(provider, refs, describe)
        except TransportError as exc:
            for ref in refs:
                self._not_ingested(ref, "failed", str(exc))
            return []
        if described is None:
            return []
        names = []
        for entry in described.get("datasets", []):
            ref = f"{provider}.{entry.get('dataset')}"
            if ref not in self.datasets:
                continue
            if not entry.get("available"):
                self._not_ingested(ref, "unavailable", "the node has no file for it", public=True)
                continue
            names.append(str(entry["dataset"]))
        return names

    def ingest_dataset(self, provider: str, dataset: str, progress: Progress | None = None) -> None:
        """Pull one dataset over a session of its own."""
        ref = f"{provider}.{dataset}"
        try:
            self._node_call(
                provider,
                [ref],
                lambda channel: self._ingest_dataset(channel, provider, dataset, progress),
            )
        except TransportError as exc:
            if self.datasets[ref]["state"] in ("pending", "ingesting"):
                self._not_ingested(ref, "failed", str(exc))

    def _ingest_dataset(
        self, channel, provider: str, dataset: str, progress: Progress | None
    ) -> None:
        ref = f"{provider}.{dataset}"
        self._set(ref, state="ingesting", reason="", public_reason=None)
        staging = private_dir(self.workdir / "staging")
        staged = staging / f"{ref}.arrows"
        channel.request(
            {
                "op": "send",
                "dataset": dataset,
                "key": base64.b64encode(self._rekey).decode(),
                "batch_rows": self.config.batch_rows,
            }
        )
        started = time.monotonic()
        try:
            with _private_open(staged) as sink:
                counting = _Counting(
                    sink, lambda n: progress and progress("receive", {"dataset": ref, "bytes": n})
                )
                trailer = channel.receive_stream(counting)
            # Done with the node before the (long) ingestion: an attested session
            # left idle is closed by the node after its idle timeout.
            _goodbye(channel)
            # Buffered reads, not a memory map: mapped pages of a large staged
            # file would count against the enclave's memory.
            with pa.OSFile(str(staged)) as source, self._engine_lock:
                reader = pa.ipc.open_stream(source)
                report = self.engine.ingest(provider, dataset, reader, actor=provider)
        except RemoteError as exc:
            # Whatever was staged is discarded below; the engine never saw it.
            # The node's message (counts, row numbers, the file's name) is for its
            # provider's status only: every party reads the audit log.
            self._not_ingested(ref, "rejected", str(exc))
            self._audit(
                "ingest_rejected",
                provider,
                {"dataset": ref, "stage": "node", "message": NODE_REJECTED_MESSAGE},
            )
            log.warning("%s rejected by its node: %s", ref, exc)
            return
        except (IngestError, CleanroomError, pa.ArrowException) as exc:
            self._not_ingested(ref, "rejected", f"cannot ingest: {exc}")
            return
        finally:
            with contextlib.suppress(OSError):
                staged.unlink()
        self._set(
            ref,
            state="ingested",
            rows=report.rows,
            reason="",
            public_reason=None,
            in_use=True,
            ingested_at=now_iso(),
            bytes=trailer.get("bytes", 0),
            seconds=round(time.monotonic() - started, 3),
            identifier_report=trailer.get("report", {}),
        )
        if progress:
            progress("ingested", {"dataset": ref, "rows": report.rows})

    def _audit(self, event: str, actor: str, data: dict[str, Any]) -> None:
        with self._engine_lock:
            self.engine.audit.append(event, actor, data)

    def _not_ingested(self, ref: str, state: str, reason: str, *, public: bool = False) -> None:
        """A pull that failed: ``rows`` are what queries use now (the previous
        ingestion's, kept because a dataset is replaced atomically, or none).
        ``public``: ``reason`` says nothing about the data (a session that could
        not be opened), so other parties see it too; otherwise they get a fixed
        sentence (a node's or the engine's refusal names counts, rows, files)."""
        reason = bounded(reason)  # a node's or a file's words: kept short, shown as text
        with self._engine_lock:
            held = self.engine.datasets().get(ref)
        note = (
            f"; queries keep using the {held} rows of its previous ingestion"
            if held
            else "; no data of it is held"
        )
        self._set(
            ref,
            state=state,
            rows=held or 0,
            in_use=held is not None,
            reason=reason + note,
            public_reason=reason if public else None,
        )

    def _set(self, ref: str, **fields: Any) -> None:
        with self._status_lock:
            self.datasets[ref].update(fields)

    def status(self) -> dict[str, dict[str, Any]]:
        """Every dataset's full state, exact counts included: for the operator
        (the coordinator's console, metrics) and, dataset by dataset, for its
        provider — never for other parties (:meth:`status_for`)."""
        with self._status_lock:
            return {k: dict(v) for k, v in self.datasets.items()}

    def status_for(self, party: str) -> list[dict[str, Any]]:
        """The datasets as ``party`` may see them: its own in full (rows, bytes,
        seconds, identifier report, the reason of a refusal), every other one
        by name, state and the time its data in use was ingested only.

        Exact sizes of another provider's data are not an aggregate released
        under the privacy controls: an analyst would read one person leaving
        across a refresh (red team attack-cas3, finding 2).  Size-derived
        figures go too (bytes, seconds, the counts inside a refusal's reason)."""
        views = []
        for ref, entry in self.status().items():
            provider = ref.split(".", 1)[0]
            if provider == party:
                entry.pop("public_reason", None)
                views.append({**entry, "provider": provider})
            else:
                views.append(public_dataset_view(entry, provider))
        return views

    # -- queries -----------------------------------------------------------------------

    def run_query(self, query: dict[str, Any], analyst: str):
        # Read the query before taking the engine lock: one party's long or
        # malformed filter must not hold up everyone else's requests.
        try:
            parsed = parse_query(query)
        except QueryError as exc:
            # the audit log has its own lock: recording a refusal needs no engine lock
            self.engine.record_refusal(analyst, exc)
            raise
        with self._engine_lock:
            return self.engine.run(parsed, analyst)

    def bundle(self, result) -> dict[str, Any]:
        """A result plus what a recipient needs to verify it offline."""
        return {"result": result.to_dict(), "signer_statement": self.signer_statement}

    def keep_result(self, bundle: dict[str, Any], analyst: str) -> None:
        """Store a released bundle so recipients can fetch it, across restarts too."""
        results = private_dir(self.workdir / "results")
        result_id = bundle["result"]["result_id"]
        with _private_open(results / f"{result_id}.json") as handle:
            handle.write(
                json.dumps({"analyst": analyst, "bundle": bundle}, sort_keys=True).encode()
            )

    def kept_result(self, result_id: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[0-9a-f-]{1,64}", result_id):
            return None
        path = self.workdir / "results" / f"{result_id}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def budget(self, analyst: str) -> dict[str, Any]:
        # the ledger is SQLite (its own transactions): no engine lock, so a budget read
        # never waits for another party's query or ingestion (red team cr8 F3's sibling)
        status = self.engine.budget(analyst)
        doc: dict[str, Any] = {
            "analyst": analyst,
            "total": status.total,
            "spent": status.spent,
            "remaining": status.remaining,
            # what the analyst can spend now: its own remainder within the collaboration's
            "available": status.available,
            "collaboration": None,
        }
        if status.delta_total:  # gaussian mechanism: δ is budgeted too
            doc["delta_total"] = status.delta_total
            doc["delta_spent"] = status.delta_spent
        if status.collaboration_total is not None:
            doc["collaboration"] = {
                "total": status.collaboration_total,
                "spent": status.collaboration_spent,
                "remaining": status.collaboration_remaining,
            }
            if status.collaboration_delta_total:
                doc["collaboration"]["delta_total"] = status.collaboration_delta_total
                doc["collaboration"]["delta_spent"] = status.collaboration_delta_spent
        return doc

    def collaboration_budget(self) -> dict[str, Any] | None:
        """The collaboration-wide DP budget (every analyst together), for every
        party's status: ε only, no figure of the data; None when the definition
        sets none (or DP is off)."""
        dp = self.engine.definition.privacy.dp
        if dp is None or not dp.enabled or dp.budget_per_collaboration is None:
            return None
        spent, _ = self.engine.ledger.collaboration_spent()  # SQLite: no engine lock
        total = dp.budget_per_collaboration
        return {"total": total, "spent": spent, "remaining": max(0.0, total - spent)}

    def audit_entries(self) -> list[dict[str, Any]]:
        """The whole log (in-process callers); the API answers :meth:`audit_page_json`.
        Reads of the log take no engine lock (see ``AuditLog.page_lines``)."""
        return [_entry_dict(e) for e in self.engine.audit.entries()]

    def audit_page(
        self, after: int = 0, limit: int = PAGE_ENTRIES
    ) -> tuple[list[dict[str, Any]], bool]:
        """Entries ``after + 1`` onwards, at most ``limit`` and about
        :data:`~sgxcloud.cleanroom.audit.PAGE_BYTES` of them, and whether more follow:
        an answer bounded whatever the log's length (see ``AuditLog.page``)."""
        entries, more = self.engine.audit.page(after, limit)
        return [_entry_dict(e) for e in entries], more

    def audit_page_json(self, after: int = 0, limit: int = PAGE_ENTRIES) -> tuple[bytes, int, bool]:
        """:meth:`audit_page` as the API's JSON body ``{"entries": [...]}``, made of the
        stored lines as they are (each a JSON object): no parsing, no re-serialising,
        and no engine lock — a read of the log never waits for, nor holds up, a query,
        a cache hit or an ingestion (red team cr8 F3).  Returns the body, the number of
        entries and whether more follow."""
        lines, more = self.engine.audit.page_lines(after, limit)
        return b'{"entries":[' + b",".join(lines) + b"]}", len(lines), more

    def close(self) -> None:
        with self._engine_lock:
            self.engine.close()
        self.requests.close()


NODE_REJECTED_MESSAGE = (
    "the provider's node refused to send the data; nothing of it was "
    "ingested (its provider sees why)"
)
PUBLIC_REASONS = {
    "rejected": "refused by its provider's node or by the engine; its provider sees why",
    "failed": "the pull from its provider's node failed; its provider sees why",
    "unavailable": "its provider's node could not be reached",
}
PUBLIC_DATASET_FIELDS = ("dataset", "provider", "state", "in_use", "ingested_at", "reason")


def public_dataset_view(entry: dict[str, Any], provider: str) -> dict[str, Any]:
    """A dataset's state for a party that is not its provider: no count of any
    kind and no size-derived figure; the reason a fixed sentence per state, or
    why its node's session failed (which says nothing about the data)."""
    in_use = bool(entry.get("in_use"))
    reason = entry.get("public_reason") or PUBLIC_REASONS.get(entry.get("state", ""), "")
    if reason:
        reason += (
            "; queries keep using its previous ingestion" if in_use else "; no data of it is held"
        )
    return {
        "dataset": entry["dataset"],
        "provider": provider,
        "state": entry.get("state"),
        "in_use": in_use,
        "ingested_at": entry.get("ingested_at"),
        "reason": reason,
    }


def _entry_dict(entry: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    return asdict(entry) if is_dataclass(entry) else dict(entry)


def _private_open(path: Path):
    """``path`` opened for writing (truncated), created 0600 whatever the umask."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


class _Counting:
    """Write-through file wrapper that reports bytes received (for progress bars)."""

    def __init__(self, sink, report: Callable[[int], Any]) -> None:
        self._sink = sink
        self._report = report
        self.total = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.total += len(data)
        self._report(self.total)
        return len(data)
