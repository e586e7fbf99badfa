"""Differencing check over released cohorts.

Two released counts whose cohorts differ by a few people reveal those
people (``count(A) − count(A minus Bob)``).  Every released cohort is kept
inside the enclave as a set of keyed-hash person keys; a new query whose
cohort's symmetric difference with any earlier one is non-zero but smaller
than k is refused.  An identical cohort (difference 0) reveals nothing new.

Members are stored as person keys (64-bit keyed identifiers), numbered
cohorts in ordinary DuckDB tables that spill to disk.  Only released cohorts
whose size is within k of a new one can be within k of it (the symmetric
difference is at least the difference in size), so members are compared only
for those candidates — usually none — and the check costs a look at the
cohort sizes otherwise.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

from sgxcloud.cleanroom.errors import QueryRefused

STAGED = "staged_cohort"  # (cid INTEGER, person BIGINT): one release's cohorts, by label index

_SCHEMA = """
CREATE TABLE IF NOT EXISTS released_cohort_meta (
    cohort_no INTEGER PRIMARY KEY, cohort_id VARCHAR NOT NULL,
    query_key VARCHAR NOT NULL, size BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS released_cohort (cohort_no INTEGER NOT NULL, person BIGINT NOT NULL);
"""


class CohortStore:
    """Released cohorts in the engine's DuckDB database.

    One release at a time: :meth:`stage` its cohorts, :meth:`check_staged`
    them against every released one, then :meth:`record_staged` them.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.con.execute(_SCHEMA)
        self._staged: dict[int, int] = {}  # cid -> members of the staged release

    def stage(self, relation: str, params: Sequence[Any]) -> None:
        """Stage one release's cohorts: ``relation`` (engine-made SQL, values bound)
        yields ``(cid, person)`` with ``cid`` the index of the cohort's label."""
        source = relation or "SELECT NULL::INTEGER AS cid, NULL::BIGINT AS person WHERE false"
        self.con.execute(f"CREATE OR REPLACE TABLE {STAGED} AS "
                         f"SELECT cid::INTEGER AS cid, person FROM ({source})", list(params))
        # counted once here: both the check and the record need the sizes
        self._staged = dict(self.con.execute(
            f"SELECT cid, count(*) FROM {STAGED} GROUP BY cid").fetchall())

    def _staged_sizes(self, count: int) -> list[int]:
        return [self._staged.get(cid, 0) for cid in range(count)]

    def check_staged(self, labels: Sequence[str], k: int) -> None:
        """Refuse if any staged cohort (empty ones included) is within k of a released one."""
        sizes = self._staged_sizes(len(labels))
        candidates = self.con.execute(
            """SELECT s.cid, m.cohort_no, s.size + m.size
               FROM (SELECT unnest(?::BIGINT[]) AS size, generate_subscripts(?::BIGINT[], 1) - 1
                     AS cid) s
               JOIN released_cohort_meta m ON abs(m.size - s.size) < ?
               WHERE s.size + m.size > 0""",
            [sizes, sizes, k]).fetchall()
        if not candidates:
            return
        cohort_nos = sorted({no for _, no, _ in candidates})
        overlap = {(cid, no): n for cid, no, n in self.con.execute(
            f"""SELECT s.cid, c.cohort_no, count(*)
                FROM {STAGED} s JOIN released_cohort c ON c.person = s.person
                WHERE c.cohort_no IN (SELECT unnest(?::INTEGER[]))
                GROUP BY ALL""", [cohort_nos]).fetchall()}
        for cid, no, total in candidates:
            if 1 <= total - 2 * overlap.get((cid, no), 0) < k:
                raise QueryRefused(
                    "differencing",
                    f"the cohort differs from an earlier released one by fewer than k={k} people",
                )

    def record_staged(self, labels: Sequence[str], query_key: str, prefix: str = "") -> None:
        """Keep the staged cohorts as released, as ``prefix + label``; all or nothing."""
        sizes = self._staged_sizes(len(labels))
        self.con.execute("BEGIN TRANSACTION")
        try:
            first = self.con.execute(
                "SELECT coalesce(max(cohort_no), 0) + 1 FROM released_cohort_meta").fetchone()[0]
            self.con.executemany(
                "INSERT INTO released_cohort_meta VALUES (?, ?, ?, ?)",
                [[first + i, prefix + label, query_key, sizes[i]]
                 for i, label in enumerate(labels)])
            self.con.execute(f"INSERT INTO released_cohort SELECT ? + cid, person FROM {STAGED}",
                             [first])
            self.con.execute(f"DROP TABLE {STAGED}")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
