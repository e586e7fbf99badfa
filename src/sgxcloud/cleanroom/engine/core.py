"""The engine facade: ingestion, query authorisation, privacy, signing, audit.

One :class:`Engine` per coordinator enclave.  Data lives in a DuckDB
database in ``workdir`` (``SET memory_limit`` / ``threads``, spilling to
``workdir/spill``; in production ``workdir`` is an encrypted enclave mount);
the privacy ledger (DP budget, released answers) is SQLite in the same
directory and the audit log a JSON-lines file beside it, so a restarted
engine on the same ``workdir`` keeps every privacy promise it made.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.bounded import bounded
from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.audit import AuditLog
from sgxcloud.cleanroom.definition import EXPOSURE_GROUPS, Dataset, Definition
from sgxcloud.cleanroom.engine import analyses
from sgxcloud.cleanroom.engine.identity import (
    data_table,
    ensure_persons,
    quote,
    resolve_people,
)
from sgxcloud.cleanroom.engine.query import (
    AudienceSizeQuery,
    CampaignLiftQuery,
    OverlapQuery,
    Query,
    canonical_query,
    check_query,
    parse_query,
    query_key,
)
from sgxcloud.cleanroom.engine.release import ReleasePlan, decide_suppression
from sgxcloud.cleanroom.errors import (
    CleanroomError,
    EngineLimitError,
    IngestError,
    QueryError,
    QueryRefused,
)
from sgxcloud.cleanroom.identifiers import prepared_schema
from sgxcloud.cleanroom.privacy import CohortStore, NoiseSource, PrivacyLedger, Release
from sgxcloud.cleanroom.results import (
    RESULT_FORMAT,
    RESULT_FORMAT_V1,
    Result,
    new_digest_key,
    new_result_id,
    now_iso,
    result_digest,
    sign_result,
)
from sgxcloud.ratelimit import RecordBudget

log = logging.getLogger(__name__)

MAX_REPORTED_ROWS = 10
INGEST_REJECTED_MESSAGE = (
    "the data did not pass the engine's checks; nothing of it was ingested (its provider sees why)"
)
# Version of what the engine keeps in its database; 2: 64-bit keyed identifiers
# and numbered cohorts; 3: releases kept as regions and vectors, person links kept
# for remapping.  An older database is refused, never silently reused.
ENGINE_FORMAT = 3


@dataclass(frozen=True)
class IngestReport:
    dataset: str
    rows: int
    batches: int
    replaced_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows": self.rows,
            "batches": self.batches,
            "replaced_rows": self.replaced_rows,
        }


@dataclass(frozen=True)
class BudgetStatus:
    """An analyst's DP budget (ε; δ under the Gaussian mechanism), and the
    collaboration's (every analyst together) when the definition sets one."""

    analyst: str
    total: float
    spent: float
    delta_total: float = 0.0
    delta_spent: float = 0.0
    collaboration_total: float | None = None
    collaboration_spent: float = 0.0
    collaboration_delta_total: float = 0.0
    collaboration_delta_spent: float = 0.0

    @property
    def remaining(self) -> float:
        return max(0.0, self.total - self.spent)

    @property
    def collaboration_remaining(self) -> float | None:
        if self.collaboration_total is None:
            return None
        return max(0.0, self.collaboration_total - self.collaboration_spent)

    @property
    def available(self) -> float:
        """ε this analyst can still spend: its own remainder, within the collaboration's."""
        pooled = self.collaboration_remaining
        return self.remaining if pooled is None else min(self.remaining, pooled)


@dataclass
class _Problems:
    """Row-level problems of one ingestion: counts and first row numbers only."""

    found: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, what: str, mask: pa.Array, offset: int) -> None:
        hits = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
        if not hits:
            return
        entry = self.found.setdefault(what, {"count": 0, "rows": []})
        entry["count"] += len(hits)
        room = MAX_REPORTED_ROWS - len(entry["rows"])
        entry["rows"].extend(offset + i for i in hits[:room])


REFUSALS_BURST = 50
REFUSALS_PER_SECOND = 0.1
"""Per party and engine process: how many refused queries the audit log records one by
one — up to ``REFUSALS_BURST`` at once, then one every 10 s (a token bucket, the CAS's
convention for rejected attestations).  Past it a refusal is answered as usual but only
counted, in the party's next recorded entry (``unrecorded``).  Only refusals decided
before the data is touched take from it (shape, rights, an analysis or budget the query
cannot have: cheap and data-independent); a query that reached the data — refused
``suppressed`` or ``differencing``, or charged ε — and every release and cache hit are
always recorded (red team rt11 F2).  At most about 8,700 budgeted refusals a party a
day; counts still pending at :meth:`Engine.close` are written then."""


class Engine:
    """Runs approved analyses over ingested, keyed data; releases signed aggregates."""

    def __init__(
        self,
        definition: Definition,
        workdir: str | Path,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        memory_limit: str = "512MB",
        threads: int = 2,
        refusals_burst: int = REFUSALS_BURST,
        refusals_per_second: float = REFUSALS_PER_SECOND,
    ) -> None:
        self.definition = definition
        self._refusals = RecordBudget(
            refusals_burst, refusals_per_second, on_first_unrecorded=self._warn_unrecorded
        )
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._signing_key = signing_key or generate_private_key()
        self.memory_limit = memory_limit
        self._lock = threading.RLock()
        try:
            self._con = duckdb.connect(str(self.workdir / "engine.duckdb"))
        except duckdb.IOException as exc:  # another process holds the database lock
            raise CleanroomError(f"{self.workdir} is in use by another engine") from exc
        try:
            self._con.execute("SET memory_limit = ?", [memory_limit])
            self._con.execute("SET threads = ?", [int(threads)])
        except duckdb.Error as exc:
            self._con.close()
            raise QueryError(
                "memory_limit", "not a valid DuckDB memory limit or thread count"
            ) from exc
        self._con.execute("SET temp_directory = ?", [str(self.workdir / "spill")])
        self._con.execute("SET preserve_insertion_order = false")
        # attribution windows count days in UTC, whatever the host's zone says
        # (28 days across a daylight-saving change would otherwise be an hour short)
        self._con.execute("SET TimeZone = 'UTC'")
        self._check_format()
        self.ledger = PrivacyLedger(self.workdir / "privacy.sqlite")
        self.audit = AuditLog(self.workdir / "audit.jsonl")
        self.cohorts = CohortStore(self._con)
        self._noise = NoiseSource(definition.privacy.dp) if definition.privacy.dp_enabled else None
        self._resolved = False
        for warning in definition.privacy.warnings():
            log.warning("%s", warning)
        self._bind_definition()

    # -- lifecycle -----------------------------------------------------------------

    @property
    def public_key(self) -> str:
        """``ed25519:...`` of the result-signing key (bind it into attestation)."""
        return encode_public_key(self._signing_key)

    def close(self) -> None:
        with self._lock:
            # what the budget left out is counted in memory: write it before it is lost
            for party, count in sorted(self._refusals.pending().items()):
                if self._refusals.drain(party):
                    self.audit.append(
                        "refusal",
                        party,
                        {
                            "reason": "unrecorded",
                            "message": "refusals left out of the log before the engine stopped",
                            "unrecorded": count,
                        },
                    )
            self._con.close()
            self.ledger.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _check_format(self) -> None:
        tables = {
            name
            for (name,) in self._con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        if "engine_format" in tables:
            version = self._con.execute("SELECT max(version) FROM engine_format").fetchone()[0]
        elif tables:
            version = 1
        else:
            self._con.execute("CREATE TABLE engine_format (version INTEGER)")
            self._con.execute("INSERT INTO engine_format VALUES (?)", [ENGINE_FORMAT])
            version = ENGINE_FORMAT
        if version != ENGINE_FORMAT:
            self._con.close()
            raise CleanroomError(
                f"{self.workdir} holds an engine database of format {version}, this version "
                f"uses format {ENGINE_FORMAT}; start from a fresh workdir (released answers "
                "and cohorts of the old one cannot be carried over)"
            )

    def _bind_definition(self) -> None:
        """Data ingested under another definition was approved for that one only."""
        self._con.execute("CREATE TABLE IF NOT EXISTS engine_meta (definition_hash VARCHAR)")
        row = self._con.execute("SELECT definition_hash FROM engine_meta").fetchone()
        current = self.definition.definition_hash()
        if row and row[0] != current:
            for (name,) in self._con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'd\\_%' "
                "ESCAPE '\\' OR table_name LIKE 'p\\_%' ESCAPE '\\'"
            ).fetchall():
                self._con.execute(f"DROP TABLE {quote(name)}")
            self._con.execute("DROP TABLE IF EXISTS data_versions")
            log.warning("definition changed: dropped data ingested under the previous one")
        self._con.execute("DELETE FROM engine_meta")
        self._con.execute("INSERT INTO engine_meta VALUES (?)", [current])
        # what each dataset holds, by content: answers are cached per data version
        self._con.execute(
            "CREATE TABLE IF NOT EXISTS data_versions "
            "(dataset VARCHAR PRIMARY KEY, fingerprint VARCHAR)"
        )

    def datasets(self) -> dict[str, int]:
        """Rows held per ingested dataset."""
        with self._lock:
            return {
                ds.ref: self._rows(ds) for ds in self.definition.datasets if self._has_table(ds)
            }

    def budget(self, analyst: str) -> BudgetStatus:
        dp = self.definition.privacy.dp
        spent, delta_spent = self.ledger.spent_both(analyst, self._analyst_key(analyst))
        if not (dp and dp.enabled):
            return BudgetStatus(analyst, 0.0, spent, delta_spent=delta_spent)
        pooled = dp.budget_per_collaboration
        everyone, everyone_delta = self.ledger.collaboration_spent()
        return BudgetStatus(
            analyst,
            dp.budget_per_analyst,
            spent,
            delta_total=dp.delta_budget(dp.budget_per_analyst),
            delta_spent=delta_spent,
            collaboration_total=pooled,
            collaboration_spent=everyone,
            collaboration_delta_total=dp.delta_budget(pooled) if pooled is not None else 0.0,
            collaboration_delta_spent=everyone_delta,
        )

    def _analyst_key(self, analyst: str) -> str | None:
        party = self.definition.party(analyst)
        return party.public_key if party else None

    # -- ingestion -----------------------------------------------------------------

    def ingest(
        self,
        provider: str,
        dataset: str,
        data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
        *,
        actor: str | None = None,
    ) -> IngestReport:
        """Replace ``provider.dataset`` with ``data`` (prepared by the node), atomically.

        Raises IngestError with a report of counts and row numbers — never
        values — and keeps nothing of the attempt.
        """
        ref = f"{provider}.{dataset}"
        ds = self.definition.dataset(ref)
        if ds is None:
            raise IngestError(f"{ref} is not a dataset of this collaboration", {"dataset": ref})
        schema = prepared_schema(ds, self.definition.columns_needed(ref))
        with self._lock:
            try:
                with self._memory_guard():
                    report = self._ingest_atomically(ds, schema, _batches(data))
            except IngestError:
                # Every party reads the log: the error's counts, row numbers and
                # file name are the provider's (it gets them with the error).
                self.audit.append(
                    "ingest_rejected",
                    actor or provider,
                    {"dataset": ref, "stage": "engine", "message": INGEST_REJECTED_MESSAGE},
                )
                raise
            self._resolved = False
            # No row counts: every party reads the log, and exact sizes are the
            # provider's and the operator's only (red team attack-cas3, finding 2).
            self.audit.append("ingest", actor or provider, {"dataset": ref})
            log.info("ingested %s: %d rows", ref, report.rows)
            return report

    def _ingest_atomically(
        self, ds: Dataset, schema: pa.Schema, batches: Iterator[pa.RecordBatch]
    ) -> IngestReport:
        table, staging = data_table(ds), quote(f"staging_{ds.provider}__{ds.name}")
        columns = ", ".join(f"{quote(f.name)} {_duck_type(f.type)}" for f in schema)
        problems = _Problems()
        rows = count = 0
        self._con.execute("BEGIN TRANSACTION")
        try:
            self._con.execute(f"CREATE OR REPLACE TABLE {staging} ({columns})")
            for batch in batches:
                batch = _conform(ds, schema, batch)
                _validate_rows(ds, batch, problems, rows)
                if not problems.found:
                    # A relation scan, not register()/unregister(): a registered
                    # view keeps its batch alive until the transaction ends, so
                    # memory would grow with the whole dataset (duckdb-python#469).
                    self._con.from_arrow(batch).insert_into(staging)
                rows += batch.num_rows
                count += 1
            if problems.found:
                raise IngestError(
                    f"{ds.ref}: {sum(p['count'] for p in problems.found.values())} bad row(s); "
                    "nothing was ingested",
                    {"dataset": ds.ref, "rows_seen": rows, "problems": problems.found},
                )
            replaced = self._rows(ds) if self._has_table(ds) else 0
            self._con.execute(f"DROP TABLE IF EXISTS {table}")
            self._con.execute(f"ALTER TABLE {staging} RENAME TO {table}")
            # Order-independent content hash: the same file pulled again (after a
            # restart: same re-keying key) keeps cached answers; changed data does not.
            fingerprint = self._con.execute(
                f"SELECT coalesce(sum(hash(t)::HUGEINT), 0)::VARCHAR || ':' || count(*) "
                f"FROM {table} t"
            ).fetchone()[0]
            self._con.execute(
                "INSERT OR REPLACE INTO data_versions VALUES (?, ?)", [ds.ref, fingerprint]
            )
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return IngestReport(ds.ref, rows, count, replaced)

    def _data_version(self) -> str:
        """One hash of what every dataset holds now.  A refresh that changes data
        changes it, so a repeated query is answered from the new data (and, under
        DP, is a new release that costs budget) instead of from the cache."""
        rows = self._con.execute(
            "SELECT dataset, fingerprint FROM data_versions ORDER BY dataset"
        ).fetchall()
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    def _has_table(self, ds: Dataset) -> bool:
        name = data_table(ds).strip('"')
        return bool(
            self._con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]
            ).fetchone()[0]
        )

    def _rows(self, ds: Dataset) -> int:
        return self._con.execute(f"SELECT count(*) FROM {data_table(ds)}").fetchone()[0]

    def _ensure_resolved(self) -> None:
        if self._resolved:
            return
        for ds in self.definition.datasets:
            if not self._has_table(ds):
                schema = prepared_schema(ds, self.definition.columns_needed(ds.ref))
                cols = ", ".join(f"{quote(f.name)} {_duck_type(f.type)}" for f in schema)
                self._con.execute(f"CREATE TABLE {data_table(ds)} ({cols})")
        resolve_people(self._con, self.definition.datasets)
        self._remap_released()
        self._resolved = True

    def _remap_released(self) -> None:
        """Released cohorts follow people to their keys under the new resolution
        (a refresh can merge components and change keys); without this, a query
        differing from an earlier one by one real person would look k apart."""
        tables = {
            name
            for (name,) in self._con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        if "person_link_prev" not in tables:
            return
        if self._con.execute("SELECT count(*) FROM released_region").fetchone()[0]:
            ensure_persons(self._con, self.definition.datasets)
            moved = self.cohorts.remap("person_link_prev", "person_link", "persons")
            if moved:
                log.info("person resolution changed: %d released people moved to new keys", moved)
        self._con.execute("DROP TABLE person_link_prev")

    # -- queries -----------------------------------------------------------------------

    def _warn_unrecorded(self, party: str) -> None:
        log.warning(
            "refused queries of %r past their audit budget (%d, then %g/s): answered,"
            " and counted in its next recorded refusal",
            party,
            self._refusals.burst,
            self._refusals.per_second,
        )

    def record_refusal(self, analyst: str, exc: QueryError | QueryRefused) -> None:
        """Audit a query refused before it reached :meth:`run` (or inside it), within
        the party's budget of recorded refusals (see :meth:`_audit_refusal`)."""
        reason = getattr(exc, "reason", "invalid_query")
        self._audit_refusal(analyst, {"reason": reason, "message": bounded(str(exc))})

    def _audit_refusal(
        self, analyst: str, refusal: dict[str, Any], query: dict[str, Any] | None = None
    ) -> bool:
        """Append a refusal (after its ``query`` entry, if any) unless ``analyst`` has
        spent its budget of recorded refusals (``REFUSALS_BURST``, then
        ``REFUSALS_PER_SECOND``); past it the refusal is only counted, and the count
        goes into the party's next recorded refusal as ``unrecorded``.  The query is
        refused all the same.  Without a bound, any party — a provider refused
        ``not_allowed`` included — could grow the log every party reads by hundreds of
        entries a second (red team cr8 F3).  Returns whether it was recorded."""
        unrecorded = self._refusals.take(analyst)
        if unrecorded is None:
            return False
        self._append_refusal(analyst, refusal, query, unrecorded)
        return True

    def _audit_data_refusal(
        self, analyst: str, refusal: dict[str, Any], query: dict[str, Any]
    ) -> None:
        """Append a query and its refusal whatever the party's refusal budget says: it
        reached the data (and under DP was charged ε), so the log must show it (red
        team rt11 F2: past the budget, 150 exact "fewer than k?" probes and 2.1 ε of
        spending left no entry).  The count the budget left out rides along."""
        self._append_refusal(analyst, refusal, query, self._refusals.drain(analyst))

    def _append_refusal(
        self,
        analyst: str,
        refusal: dict[str, Any],
        query: dict[str, Any] | None,
        unrecorded: int,
    ) -> None:
        if query is not None:
            self.audit.append("query", analyst, query)
        self.audit.append(
            "refusal", analyst, {**refusal, **({"unrecorded": unrecorded} if unrecorded else {})}
        )

    def run(self, query: Query | dict[str, Any], analyst: str) -> Result:
        """Answer ``query`` for ``analyst`` or raise QueryRefused / QueryError.

        Its ``query`` entry is written with its outcome (release, cache hit, refusal or
        a failure).  A refusal decided before the data is touched is recorded within
        the party's refusal budget (past it, neither entry); once the query reaches
        the data — ``suppressed``, ``differencing``, or ε charged — both always are."""
        try:
            parsed = query if not isinstance(query, dict) else parse_query(query)
            analysis = check_query(self.definition, parsed, analyst)
        except (QueryError, QueryRefused) as exc:
            self.record_refusal(analyst, exc)
            raise
        with self._lock:
            with self._memory_guard():
                version = self._data_version()
            key = query_key(parsed, self.definition.definition_hash(), version)
            asked = {"query": canonical_query(parsed), "query_hash": key}
            earlier = self.ledger.released(key)
            if earlier is not None:
                result = self._resign(self._keyed(key, Result.from_json(earlier)))
                self.audit.append("query", analyst, asked)
                self.audit.append(
                    "cache_hit",
                    analyst,
                    {
                        "query_hash": key,
                        "result_id": result.result_id,
                        "result_digest": result_digest(result),
                    },
                )
                return result
            terms = self._budget_terms(analyst)
            try:
                if terms is not None:
                    # Before the data is touched: a query the analyst's or the
                    # collaboration's budget cannot pay is refused here, from the
                    # ledger alone, so it never reaches the data and costs what any
                    # other early refusal costs (red team cr8, F1) — its record too
                    # is within the party's refusal budget.  ``spend`` still decides,
                    # atomically, when it is charged.
                    self.ledger.check(**terms)
            except QueryRefused as exc:
                self._audit_refusal(
                    analyst,
                    {"reason": exc.reason, "query_hash": key, "message": bounded(str(exc))},
                    asked,
                )
                raise
            charged: dict[str, float] = {}  # the ε (and δ) the ledger charged, if any
            try:
                with self._memory_guard():
                    result = self._compute_and_release(
                        parsed, analysis, analyst, key, terms, charged
                    )
            except QueryRefused as exc:
                # Decided on the data (suppressed, differencing) or charged ε: always
                # recorded, never taken from the refusal budget (red team rt11 F2).
                self._audit_data_refusal(
                    analyst,
                    {
                        "reason": exc.reason,
                        "query_hash": key,
                        "message": bounded(str(exc)),
                        **charged,
                    },
                    asked,
                )
                raise
            except BaseException:
                # a failure (not a refusal); if the ledger charged it, the ε is here
                self.audit.append("query", analyst, {**asked, **charged})
                raise
            self.audit.append("query", analyst, asked)
            # Every party reads the audit log: it records who released what to whom
            # and the result's digest, never the figures — those reach only the
            # result's recipients (red-team attack 05).
            self.audit.append(
                "release",
                analyst,
                {
                    "query_hash": key,
                    "result_id": result.result_id,
                    "analysis": result.analysis,
                    "recipients": list(result.recipients),
                    "result_digest": result_digest(result),
                    **charged,
                },
            )
            return result

    def _budget_terms(self, analyst: str) -> dict[str, Any] | None:
        """What one new query of ``analyst`` costs and may cost, for the ledger;
        None when nothing is budgeted (DP off).  Known from the definition alone."""
        dp = self.definition.privacy.dp
        if self._noise is None or dp is None:
            return None
        pooled = dp.budget_per_collaboration
        return {
            "analyst": analyst,
            "epsilon": dp.epsilon_per_query,
            "budget": dp.budget_per_analyst,
            "delta": dp.delta_per_query,
            "analyst_key": self._analyst_key(analyst),
            "collaboration_budget": pooled,
            "delta_budget": dp.delta_budget(dp.budget_per_analyst),
            "collaboration_delta_budget": dp.delta_budget(pooled) if pooled is not None else None,
        }

    def _compute_and_release(
        self,
        query: Query,
        analysis: Any,
        analyst: str,
        key: str,
        terms: dict[str, Any] | None,
        charged: dict[str, float],
    ) -> Result:
        """Compute and release ``query``; :meth:`run` has checked ``terms`` (the
        ledger) already.  Everything here reaches the data: a refusal raised here is
        always recorded.  What the ledger charges goes into ``charged`` (``epsilon``,
        and ``delta`` when not 0), for the query's audit entry."""
        self._ensure_resolved()
        if isinstance(query, AudienceSizeQuery):
            draft = analyses.audience_size(self._con, self.definition, query)
        elif isinstance(query, OverlapQuery):
            draft = analyses.overlap(self._con, self.definition, query)
        elif isinstance(query, CampaignLiftQuery):
            draft = analyses.campaign_lift(self._con, self.definition, analysis, query)
        else:  # pragma: no cover - parse_query makes only these
            raise QueryError("template", "unknown query type")
        privacy = self.definition.privacy
        k = privacy.min_group_size
        plan = ReleasePlan(query, draft, k)
        dp_info: dict[str, Any] | None = None
        remaining = None
        if terms is not None and self._noise is not None and privacy.dp is not None:
            # Every query that reaches the data costs ε, whatever comes of it, and
            # noise comes before suppression: a suppressed answer is then decided on
            # noisy counts (post-processing), and asking again is never free.
            remaining = self.ledger.spend(self.definition.name, query_key=key, **terms)
            charged["epsilon"] = terms["epsilon"]
            if terms["delta"]:
                charged["delta"] = terms["delta"]
            dp_info = plan.add_noise(self._noise, privacy.dp)
        decide_suppression(plan)  # on exact counts, or on the noisy ones under DP
        if not plan.any_released:
            raise QueryRefused(
                "suppressed",
                f"every figure would cover fewer than k={k} people"
                + (" (decided on the noisy counts; the budget was spent)" if dp_info else ""),
            )
        # staged (and recorded) even when the check is off, so turning it on later sees them
        release = self._stage_release(plan, draft)
        if privacy.differencing_check and dp_info is None:
            # Without DP only: the check is decided on exact data, so under DP its
            # verdict ("refused: differencing") would be a noise-free answer to "does
            # this cell hold 1 … k−1 people?" that no ε accounts for.  Under DP every
            # figure derivable from releases is a difference of noisy figures, and
            # composition over the analyst's budget is the guarantee.
            self.cohorts.check_staged(release, k)
        cells = plan.cells()
        self.cohorts.record_staged(release, key)
        result = sign_result(
            Result(
                result_id=new_result_id(),
                collaboration=self.definition.name,
                definition_hash=self.definition.definition_hash(),
                analysis=analysis.name,
                template=query.template,
                query=canonical_query(query),
                query_hash=key,
                cells=tuple(cells),
                privacy={
                    "min_group_size": k,
                    "differencing_check": privacy.differencing_check and dp_info is None,
                    "differential_privacy": dp_info,
                    "budget_remaining_at_release": remaining,
                },
                recipients=tuple(dict.fromkeys((analyst, *analysis.recipients))),
                released_at=now_iso(),
                digest_key=new_digest_key(),
            ),
            self._signing_key,
        )
        stored = self.ledger.store_release(self.definition.name, key, result.to_json())
        return result if stored == result.to_json() else self._resign(Result.from_json(stored))

    def _stage_release(self, plan: ReleasePlan, draft: analyses.Draft) -> Release:
        """Stage the people of this release by region (Venn region, lift part, the
        audience) for the differencing check, in one pass over the draft's table."""
        region, params, release = plan.release_shape()
        self.cohorts.stage(f"SELECT {region} AS region, person FROM {draft.cohort_table}", params)
        return release

    @contextlib.contextmanager
    def _memory_guard(self) -> Iterator[None]:
        """DuckDB's out-of-memory error becomes a typed, actionable one."""
        try:
            yield
        except duckdb.OutOfMemoryException as exc:
            self._resolved = False  # a resolution may have stopped half-way
            raise EngineLimitError(
                f"the engine needs more than its memory limit ({self.memory_limit}); "
                "raise memory_limit or give it fewer threads"
            ) from exc

    def _keyed(self, key: str, result: Result) -> Result:
        """A stored answer of format v1 (released before keyed digests) becomes v2
        with a digest key of its own, stored back so later hits repeat it: its
        cache-hit entries must not carry an unkeyed digest of its figures."""
        if result.format != RESULT_FORMAT_V1:
            return result
        upgraded = sign_result(
            replace(result, format=RESULT_FORMAT, digest_key=new_digest_key(), signature=""),
            self._signing_key,
        )
        self.ledger.replace_release(key, upgraded.to_json())
        return upgraded

    def _resign(self, result: Result) -> Result:
        """Cached answers are re-signed if the enclave key changed; content is kept."""
        if result.signer == self.public_key:
            return result
        return sign_result(replace(result, signature=""), self._signing_key)


# -- ingestion helpers ---------------------------------------------------------------


def _batches(
    data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches(max_chunksize=65536)
    elif isinstance(data, pa.RecordBatch):
        yield data
    else:
        for batch in data:
            if isinstance(batch, pa.Table):
                yield from batch.to_batches(max_chunksize=65536)
            else:
                yield batch


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_fixed_size_binary(arrow_type) or pa.types.is_binary(arrow_type):
        return "BLOB"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_float64(arrow_type):
        return "DOUBLE"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ"
    return "VARCHAR"


def _conform(ds: Dataset, schema: pa.Schema, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Exactly the expected columns, in order, with the expected types."""
    got = set(batch.schema.names)
    want = set(schema.names)
    if got != want:
        report = {
            "dataset": ds.ref,
            "missing_columns": sorted(want - got),
            "unexpected_columns": sorted(got - want),
        }
        raise IngestError(
            f"{ds.ref}: columns do not match the approved analysis "
            "(only the columns it needs may be sent)",
            report,
        )
    arrays = []
    for fld in schema:
        column = batch.column(batch.schema.get_field_index(fld.name))
        if column.type != fld.type:
            try:
                column = column.cast(fld.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                raise IngestError(
                    f"{ds.ref}: column {fld.name} has type {batch.schema.field(fld.name).type}, "
                    f"expected {fld.type}",
                    {"dataset": ds.ref, "column": fld.name, "expected_type": str(fld.type)},
                ) from None
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _validate_rows(ds: Dataset, batch: pa.RecordBatch, problems: _Problems, offset: int) -> None:
    ids = [
        batch.column(batch.schema.get_field_index(i.column))
        for i in ds.identifiers
        if i.column in batch.schema.names
    ]
    if ids:
        no_id = pc.invert(pc.is_valid(ids[0]))
        for column in ids[1:]:
            no_id = pc.and_(no_id, pc.invert(pc.is_valid(column)))
        problems.add("row without any identifier", no_id, offset)
    names = batch.schema.names
    for attr in ds.attributes:
        if attr.column not in names:
            continue
        column = batch.column(names.index(attr.column))
        if attr.values:
            # an empty cell is an unknown value (null), not an undeclared one
            problems.add(
                f"{attr.column}: value not declared",
                pc.and_(pc.is_valid(column), pc.invert(pc.is_in(column, pa.array(attr.values)))),
                offset,
            )
        if attr.min is not None:
            problems.add(f"{attr.column}: below min", pc.less(column, attr.min), offset)
        if attr.max is not None:
            problems.add(f"{attr.column}: above max", pc.greater(column, attr.max), offset)
    for col in ds.event_columns:
        if col in names:
            problems.add(
                f"{col}: missing value", pc.is_null(batch.column(names.index(col))), offset
            )
    if ds.group_column and ds.group_column in names:
        column = batch.column(names.index(ds.group_column))
        problems.add(
            f"{ds.group_column}: not test/control",
            pc.invert(pc.is_in(column, pa.array(EXPOSURE_GROUPS))),
            offset,
        )
    if ds.amount_column and ds.amount_column in names:
        column = batch.column(names.index(ds.amount_column))
        bad = pc.or_(pc.less(column, 0.0), pc.is_nan(column))
        problems.add(f"{ds.amount_column}: negative or not a number", bad, offset)
