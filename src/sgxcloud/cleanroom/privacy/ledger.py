"""The privacy ledger: DP budget spent per analyst, and every released answer.

Kept in SQLite through SQLAlchemy so it survives a coordinator restart.
Spending is check-and-insert inside one ``BEGIN IMMEDIATE`` transaction, so
concurrent queries (threads or processes) can never overspend together.

The budget belongs to the analyst across the whole ledger (one per
workdir, i.e. per set of ingested data), not to a collaboration name or
definition hash: re-approving an edited or *renamed* definition on the same
workdir must not reset what an analyst has already spent on that data
(red-team attack 14).  An analyst is recognised by party name *or* public
key, so renaming the party does not reset it either.  A fresh workdir is a
new collaboration.

A collaboration-wide budget caps every analyst's spending together (analysts
who collude or pool their answers add their budgets up): the same transaction
sums the whole ledger too, so concurrent queries of different analysts cannot
overspend it either.  δ (Gaussian mechanism) is summed and checked the same
way: k queries of (ε, δ) are (kε, kδ)-DP (basic composition).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from sgxcloud.cleanroom.errors import QueryRefused

_metadata = MetaData()

spend_table = Table(
    "dp_spend",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("collaboration", String(64), nullable=False, index=True),
    Column("analyst", String(64), nullable=False, index=True),
    # the analyst's signing key: renaming the party keeps its spending
    Column("analyst_key", String(128), nullable=True, index=True),
    Column("query_key", String(64), nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False, default=0.0),
    Column("at", String(40), nullable=False),
)

released_table = Table(
    "released",
    _metadata,
    Column("query_key", String(64), primary_key=True),
    Column("collaboration", String(64), nullable=False),
    Column("result_json", Text, nullable=False),
    Column("at", String(40), nullable=False),
)

# Tolerance for float sums: 10 queries of ε=0.1 must fit a budget of 1.0.
_EPS_SLACK = 1e-9


def _sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite otherwise defers it).
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class PrivacyLedger:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._engine = _sqlite_engine(self.path)
        _metadata.create_all(self._engine)
        with self._engine.begin() as conn:  # ledgers written before analyst_key existed
            columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(dp_spend)")}
            if "analyst_key" not in columns:
                conn.exec_driver_sql("ALTER TABLE dp_spend ADD COLUMN analyst_key VARCHAR(128)")

    def close(self) -> None:
        self._engine.dispose()

    def spent(self, analyst: str, analyst_key: str | None = None) -> float:
        """ε the analyst spent in this workdir, under any collaboration name or
        definition, as this party name or under this key."""
        return self.spent_both(analyst, analyst_key)[0]

    def spent_both(self, analyst: str, analyst_key: str | None = None) -> tuple[float, float]:
        """(ε, δ) the analyst spent in this workdir."""
        with self._engine.begin() as conn:
            return self._spent(conn, analyst, analyst_key)

    def collaboration_spent(self) -> tuple[float, float]:
        """(ε, δ) every analyst together spent in this workdir."""
        with self._engine.begin() as conn:
            return self._spent(conn, None, None)

    @staticmethod
    def _spent(
        conn: Connection, analyst: str | None, analyst_key: str | None
    ) -> tuple[float, float]:
        """Σε and Σδ of one analyst (by name or key), or of everyone (``None``)."""
        query = select(
            func.coalesce(func.sum(spend_table.c.epsilon), 0.0),
            func.coalesce(func.sum(spend_table.c.delta), 0.0),
        )
        if analyst is not None:
            who = spend_table.c.analyst == analyst
            if analyst_key:
                who = or_(who, spend_table.c.analyst_key == analyst_key)
            query = query.where(who)
        epsilon, delta = conn.execute(query).one()
        return float(epsilon), float(delta)

    def spend(
        self,
        collaboration: str,
        analyst: str,
        query_key: str,
        epsilon: float,
        budget: float,
        delta: float = 0.0,
        analyst_key: str | None = None,
        *,
        collaboration_budget: float | None = None,
        delta_budget: float | None = None,
        collaboration_delta_budget: float | None = None,
    ) -> float:
        """Record ``epsilon`` (and ``delta``) against the analyst's budget and,
        if given, the collaboration's (every analyst together), and return what
        remains of the analyst's; or raise QueryRefused("budget") or
        QueryRefused("collaboration_budget") and record nothing.  Both checks
        and the insert are one ``BEGIN IMMEDIATE`` transaction.
        ``collaboration`` is recorded for the record only; the budgets are the
        analyst's, and everyone's, across the workdir."""
        with self._engine.begin() as conn:
            spent = self._check(
                conn,
                analyst,
                epsilon,
                budget,
                delta,
                analyst_key,
                collaboration_budget=collaboration_budget,
                delta_budget=delta_budget,
                collaboration_delta_budget=collaboration_delta_budget,
            )
            conn.execute(
                spend_table.insert().values(
                    collaboration=collaboration,
                    analyst=analyst,
                    analyst_key=analyst_key,
                    query_key=query_key,
                    epsilon=epsilon,
                    delta=delta,
                    at=datetime.now(UTC).isoformat(),
                )
            )
            return budget - spent - epsilon

    def check(
        self,
        analyst: str,
        epsilon: float,
        budget: float,
        delta: float = 0.0,
        analyst_key: str | None = None,
        *,
        collaboration_budget: float | None = None,
        delta_budget: float | None = None,
        collaboration_delta_budget: float | None = None,
    ) -> None:
        """Raise what :meth:`spend` would raise now, and record nothing.  The
        engine asks before a query reaches the data, so a query the budget
        cannot pay is never computed (red team cr8, F1); :meth:`spend` still
        decides, atomically, when the query is charged."""
        with self._engine.begin() as conn:
            self._check(
                conn,
                analyst,
                epsilon,
                budget,
                delta,
                analyst_key,
                collaboration_budget=collaboration_budget,
                delta_budget=delta_budget,
                collaboration_delta_budget=collaboration_delta_budget,
            )

    def _check(
        self,
        conn: Connection,
        analyst: str,
        epsilon: float,
        budget: float,
        delta: float,
        analyst_key: str | None,
        *,
        collaboration_budget: float | None,
        delta_budget: float | None,
        collaboration_delta_budget: float | None,
    ) -> float:
        """Refuse (QueryRefused) if the analyst's or the collaboration's budget
        cannot pay ε (and δ); else return what the analyst spent so far."""
        spent, spent_delta = self._spent(conn, analyst, analyst_key)
        if spent + epsilon > budget + _EPS_SLACK:
            raise QueryRefused(
                "budget",
                f"{analyst} has {max(0.0, budget - spent):.4g} of ε={budget:g} left; "
                f"this query needs {epsilon:g}",
            )
        if (
            delta
            and delta_budget is not None
            and spent_delta + delta > delta_budget * (1 + _EPS_SLACK)
        ):
            raise QueryRefused(
                "budget",
                f"{analyst} has {max(0.0, delta_budget - spent_delta):.3g} of "
                f"δ={delta_budget:.3g} left; this query needs {delta:.3g}",
            )
        if collaboration_budget is not None:
            everyone, everyone_delta = self._spent(conn, None, None)
            over_delta = (
                delta
                and collaboration_delta_budget is not None
                and everyone_delta + delta > collaboration_delta_budget * (1 + _EPS_SLACK)
            )
            if everyone + epsilon > collaboration_budget + _EPS_SLACK or over_delta:
                raise QueryRefused(
                    "collaboration_budget",
                    "the collaboration's budget is spent: every analyst together has "
                    f"{max(0.0, collaboration_budget - everyone):.4g} of "
                    f"ε={collaboration_budget:g} left"
                    + (
                        f" and {max(0.0, collaboration_delta_budget - everyone_delta):.3g}"
                        f" of δ={collaboration_delta_budget:.3g}"
                        if delta and collaboration_delta_budget is not None
                        else ""
                    )
                    + f"; this query needs ε={epsilon:g}"
                    + (f", δ={delta:.3g}" if delta else ""),
                )
        return spent

    def released(self, query_key: str) -> str | None:
        """The result JSON released earlier for this exact query, if any."""
        with self._engine.begin() as conn:
            return conn.execute(
                select(released_table.c.result_json).where(released_table.c.query_key == query_key)
            ).scalar_one_or_none()

    def replace_release(self, query_key: str, result_json: str) -> None:
        """Replace the stored answer to ``query_key`` (same figures, new form)."""
        with self._engine.begin() as conn:
            conn.execute(
                released_table.update()
                .where(released_table.c.query_key == query_key)
                .values(result_json=result_json)
            )

    def store_release(self, collaboration: str, query_key: str, result_json: str) -> str:
        """Store a released result; if another released it first, return that one."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    released_table.insert().values(
                        query_key=query_key,
                        collaboration=collaboration,
                        result_json=result_json,
                        at=datetime.now(UTC).isoformat(),
                    )
                )
        except IntegrityError:
            earlier = self.released(query_key)
            if earlier is not None:
                return earlier
            raise
        return result_json
