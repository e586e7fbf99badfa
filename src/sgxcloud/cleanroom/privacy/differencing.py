"""Differencing check over released cohorts.

Two released counts whose cohorts differ by a few people reveal those
people (``count(A) − count(A minus Bob)``).  Every released cohort is kept
inside the enclave as a set of keyed-hash person keys; a new query whose
cohort's symmetric difference with any earlier one is non-zero but smaller
than k is refused.  An identical cohort (difference 0) reveals nothing new.

Members are stored as the first 8 bytes of each person key (itself an
HMAC output, so uniformly random): a quarter of the space, and among ten
million people the chance of any two sharing a prefix is about 3 in a
million.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from sgxcloud.cleanroom.errors import QueryRefused

PREFIX = 8  # bytes of each person key kept per released cohort member
STAGED = "staged_cohorts"  # temp table (cid, pkey) of one release's cohorts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS released_cohort_meta (
    cohort_id VARCHAR PRIMARY KEY, query_key VARCHAR NOT NULL, size BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS released_cohort (cohort_id VARCHAR NOT NULL, pkey BLOB NOT NULL);
"""


class CohortStore:
    """Released cohorts in the engine's DuckDB database (same transaction rules)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.con.execute(_SCHEMA)

    def check(self, table: str, k: int) -> None:
        """Refuse if cohort ``table`` (one column ``pkey``) is within k of a released one.

        ``table`` is an engine-made temporary table name, never user text.
        """
        size = self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        row = self.con.execute(
            f"""
            WITH inter AS (
                SELECT c.cohort_id, count(*) AS n
                FROM released_cohort c JOIN {table} t ON c.pkey = t.pkey[1:{PREFIX}]
                GROUP BY c.cohort_id)
            SELECT min(m.size + ? - 2 * coalesce(i.n, 0))
            FROM released_cohort_meta m LEFT JOIN inter i USING (cohort_id)
            WHERE m.size + ? - 2 * coalesce(i.n, 0) BETWEEN 1 AND ?
            """,
            [size, size, k - 1],
        ).fetchone()
        if row and row[0] is not None:
            raise QueryRefused(
                "differencing",
                f"the cohort differs from an earlier released one by fewer than k={k} people",
            )

    def record(self, cohort_id: str, query_key: str, table: str) -> None:
        self.con.execute(
            f"INSERT INTO released_cohort SELECT ?, pkey[1:{PREFIX}] FROM {table}", [cohort_id]
        )
        self.con.execute(
            f"INSERT INTO released_cohort_meta SELECT ?, ?, count(*) FROM {table}",
            [cohort_id, query_key],
        )

    # -- many cohorts of one release at once (one pass over the store) ------------------

    def stage(self, relation: str, params: Sequence[Any]) -> None:
        """Stage one release's cohorts: ``relation`` (engine-made SQL, values bound)
        yields ``(cid, pkey)``, one row per member of each labelled cohort."""
        source = relation or "SELECT NULL::VARCHAR AS cid, NULL::BLOB AS pkey WHERE false"
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {STAGED} AS "
                         f"SELECT cid, pkey[1:{PREFIX}] AS pkey FROM ({source})", list(params))

    def check_staged(self, labels: Sequence[str], k: int) -> None:
        """Refuse if any staged cohort (empty ones included) is within k of a released one."""
        row = self.con.execute(
            f"""
            WITH labels AS (SELECT unnest(?::VARCHAR[]) AS cid),
            sizes AS (SELECT l.cid, count(s.pkey) AS size
                      FROM labels l LEFT JOIN {STAGED} s USING (cid) GROUP BY l.cid),
            inter AS (SELECT s.cid, c.cohort_id, count(*) AS n
                      FROM {STAGED} s JOIN released_cohort c ON c.pkey = s.pkey
                      GROUP BY s.cid, c.cohort_id)
            SELECT count(*)
            FROM sizes z CROSS JOIN released_cohort_meta m
                 LEFT JOIN inter i ON i.cid = z.cid AND i.cohort_id = m.cohort_id
            WHERE m.size + z.size - 2 * coalesce(i.n, 0) BETWEEN 1 AND ?
            """,
            [list(labels), k - 1],
        ).fetchone()
        if row and row[0]:
            raise QueryRefused(
                "differencing",
                f"the cohort differs from an earlier released one by fewer than k={k} people",
            )

    def record_staged(self, labels: Sequence[str], query_key: str, prefix: str = "") -> None:
        """Keep the staged cohorts as released, as ``prefix + label``."""
        self.con.execute(f"INSERT INTO released_cohort SELECT ? || cid, pkey FROM {STAGED}",
                         [prefix])
        self.con.execute(
            f"""
            INSERT INTO released_cohort_meta
            SELECT ? || l.cid, ?, count(s.pkey)
            FROM (SELECT unnest(?::VARCHAR[]) AS cid) l LEFT JOIN {STAGED} s USING (cid)
            GROUP BY l.cid
            """,
            [prefix, query_key, list(labels)],
        )
