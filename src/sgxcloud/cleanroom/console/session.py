"""One party's side of the console: its key, its definition, its SDK session.

This object is the only holder of the party's private key in the console
process.  Pages get what it returns (statuses, verified results, approvals),
never the key.  Every call to the coordinator goes through
:class:`~sgxcloud.cleanroom.sdk.CleanroomClient`, which attests the
coordinator first; when the coordinator restarts (new TLS key) or cannot be
reached, the session is dropped and the next page attests afresh.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.approvals import Approval, approve, encode_public_key
from sgxcloud.cleanroom.audit import AuditEntry, verify_chain
from sgxcloud.cleanroom.definition import Definition
from sgxcloud.cleanroom.errors import AuditChainError, CleanroomError
from sgxcloud.cleanroom.errors import CoordinatorUnavailable as CoordinatorUnavailable
from sgxcloud.cleanroom.sdk import CleanroomClient, VerifiedResult, verify_bundle
from sgxcloud.cleanroom.transport import TransportError
from sgxcloud.cleanroom.transport.errors import RequestRejected
from sgxcloud.errors import SgxcloudError

MAX_KEPT_RESULTS = 200
"""Results this console fetched or ran, kept in memory for paging and export."""

Connector = Callable[[], CleanroomClient]


@dataclass(frozen=True)
class AuditView:
    """The audit log as read from the coordinator, with our own chain check."""

    entries: tuple[dict[str, Any], ...]
    head: str | None
    broken: str | None  # why the chain does not verify, or None


@dataclass
class PartySession:
    url: str
    definition: Definition
    party: str
    key: Ed25519PrivateKey = field(repr=False)
    collateral_source: Any = None
    approval_out: Path | None = None
    connector: Connector | None = None
    locate: Callable[[], str | None] | None = None
    """Where the coordinator is now (``--workdir``: a local coordinator gets a new
    port at each restart); read again before each attestation."""
    _client: CleanroomClient | None = field(default=None, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _results: OrderedDict[str, VerifiedResult] = field(default_factory=OrderedDict, repr=False)
    approval: Approval | None = None

    def __post_init__(self) -> None:
        member = self.definition.party(self.party)
        if member is None:
            raise CleanroomError(f"{self.party} is not a party of this collaboration")
        if encode_public_key(self.key) != member.public_key:
            raise CleanroomError(
                f"the key does not match {self.party}'s public key in the definition"
            )

    # -- who we are ------------------------------------------------------------------

    @property
    def roles(self) -> tuple[str, ...]:
        member = self.definition.party(self.party)
        return member.roles if member else ()

    @property
    def is_provider(self) -> bool:
        return "data_provider" in self.roles

    @property
    def definition_hash(self) -> str:
        return self.definition.definition_hash()

    # -- the coordinator, through the SDK ----------------------------------------------

    def _connect(self) -> CleanroomClient:
        if self.connector:
            return self.connector()
        if self.locate:
            self.url = self.locate() or self.url
        return CleanroomClient.connect(
            self.url,
            self.definition,
            self.party,
            self.key,
            collateral_source=self.collateral_source,
        )

    def client(self) -> CleanroomClient:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._connect()
                except SgxcloudError as exc:
                    raise CoordinatorUnavailable(str(exc)) from exc
            return self._client

    def drop(self) -> None:
        """Forget the session: the next call attests the coordinator again."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def call(self, action: Callable[[CleanroomClient], Any]) -> Any:
        """Run ``action`` on an attested session; one fresh attempt if the old
        session broke (the coordinator restarted with a new TLS key)."""
        for attempt in (1, 2):
            client = self.client()
            try:
                return action(client)
            except RequestRejected:
                raise  # the coordinator answered (401): a refusal, not a broken session
            except TransportError as exc:
                self.drop()
                if attempt == 2:
                    raise CoordinatorUnavailable(str(exc)) from exc
        raise AssertionError("unreachable")

    @property
    def simulated(self) -> bool | None:
        with self._lock:
            return self._client.simulated if self._client else None

    def status(self) -> dict[str, Any]:
        return self.call(lambda c: c.status())

    def budget(self) -> dict[str, Any]:
        return self.call(lambda c: c.budget())

    def reingest(self) -> dict[str, Any]:
        return self.call(lambda c: c.reingest())

    def audit(self) -> AuditView:
        entries = self.call(lambda c: c.audit())
        try:
            head = verify_chain(AuditEntry(**e) for e in entries)
            broken = None
        except AuditChainError as exc:
            head, broken = None, str(exc)
        except TypeError:
            head, broken = None, "the coordinator sent entries that are not audit entries"
        return AuditView(tuple(entries), head, broken)

    def query(self, doc: dict[str, Any]) -> VerifiedResult:
        verified = self.call(lambda c: c.query(doc))
        self._keep(verified)
        return verified

    def result(self, result_id: str) -> VerifiedResult:
        with self._lock:
            if result_id in self._results:
                return self._results[result_id]
        verified = self.call(lambda c: c.result(result_id))
        self._keep(verified)
        return verified

    def kept_results(self) -> list[VerifiedResult]:
        with self._lock:
            return list(reversed(self._results.values()))

    def _keep(self, verified: VerifiedResult) -> None:
        with self._lock:
            self._results[verified.result.result_id] = verified
            self._results.move_to_end(verified.result.result_id)
            while len(self._results) > MAX_KEPT_RESULTS:
                self._results.popitem(last=False)

    def reverify(self, result_id: str) -> VerifiedResult:
        """Check a kept bundle again, offline, against our own definition."""
        verified = self.result(result_id)
        return verify_bundle(verified.bundle, self.definition, self.collateral_source)

    def verify_document(self, text: str) -> VerifiedResult:
        return verify_bundle(text, self.definition, self.collateral_source)

    # -- approving the definition (local: the key signs here, nothing is sent) ----------

    def approve(self) -> Approval:
        approval = approve(self.definition, self.party, self.key)
        if self.approval_out:
            _write_atomically(self.approval_out, json.dumps(approval.to_dict(), indent=2) + "\n")
        self.approval = approval
        return approval


def _write_atomically(path: Path, text: str) -> None:
    """Write the approval whole or not at all (a node or coordinator may read it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CleanroomError(f"cannot write the approval to {path}: {exc.strerror}") from exc
