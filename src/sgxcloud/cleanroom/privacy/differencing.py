"""Differencing check over released cohorts: what two releases reveal together.

A release exposes more than its cells: anything computable from its
figures — a cell, a difference of cells, a union ``T + R − T∩R`` — is a
statement about the people it covers.  Each release is therefore kept as
*regions* (disjoint sets of people: the Venn regions of an overlap, the
(segment, arm, converted) parts of a lift, the audience itself) and
*vectors* (each released count as the set of regions it adds up).  Every
figure derivable from the release is a linear combination of its vectors.

A new release is checked against every earlier one, pairwise.  Their
regions intersect into *joint atoms* (people inside one region of each, or
of one only); a count derivable from the two releases together is a vector
in the span of both releases' vectors over these atoms.  The new release is
refused with reason ``differencing`` when some such vector that neither
release gives alone is supported on 1 … k−1 people — e.g.
``audience(F) − (T + R − T∩R)``, the people of F in neither dataset, or
``count(A) − count(A without Bob)``.  Vectors within one release alone are
the suppression rules' business (complementary suppression, Venn
derivability), checked when that release was made.

Minimal supports are what matter: any vector supported on few people is a
sum of *circuits* (vectors of minimal support) on those people, so the
check looks for a circuit of the joint span that lies in neither release's
span and covers 1 … k−1 people.  Only atoms of fewer than k people can be
in such a support; the space of vectors supported there is usually {0}
(checked with one small SVD), and otherwise its circuits are enumerated,
with a bound beyond which the release is refused (conservative).

Regions are kept as ``(release_no, region, person)`` rows in ordinary
DuckDB tables that spill to disk; a new release is joined with them once
to count the people each earlier region shares with each new one.  When
person resolution changes (a provider refreshed a dataset, which can merge
components and change a person's key), :meth:`CohortStore.remap` moves the
stored people to their new keys, so the comparison is between the same
people before and after the refresh.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from engine-made table names and
# literals; every value is a bound parameter.

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from sgxcloud.cleanroom.errors import QueryRefused

STAGED = "staged_region"  # (region INTEGER, person BIGINT): the release being checked
_TOL = 1e-9
# circuits examined per pair of releases before refusing as too complex to check
MAX_CIRCUIT_CANDIDATES = 20_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS released_meta (
    release_no INTEGER PRIMARY KEY, query_key VARCHAR NOT NULL,
    labels VARCHAR NOT NULL, vectors VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS released_region (
    release_no INTEGER NOT NULL, region INTEGER NOT NULL, person BIGINT NOT NULL);
"""


@dataclass(frozen=True)
class Release:
    """One release's shape: ``vectors[i]`` is the set of region indexes whose
    people released figure ``labels[i]`` counts."""

    labels: tuple[str, ...]
    vectors: tuple[frozenset[int], ...]

    @property
    def regions(self) -> set[int]:
        return set().union(*self.vectors) if self.vectors else set()


class CohortStore:
    """Released cohorts in the engine's DuckDB database.

    One release at a time: :meth:`stage` its regions, :meth:`check_staged`
    it against every released one, then :meth:`record_staged` it.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.con.execute(_SCHEMA)
        self._sizes: dict[int, int] = {}

    # -- one release ----------------------------------------------------------------------

    def stage(self, relation: str, params: Sequence[Any]) -> None:
        """Stage one release's people: ``relation`` (engine-made SQL, values bound)
        yields ``(region, person)``, each person in at most one region."""
        source = relation or "SELECT NULL::INTEGER AS region, NULL::BIGINT AS person WHERE false"
        self.con.execute(
            f"CREATE OR REPLACE TABLE {STAGED} AS "
            f"SELECT region::INTEGER AS region, person FROM ({source})",
            list(params),
        )
        self._sizes = dict(
            self.con.execute(f"SELECT region, count(*) FROM {STAGED} GROUP BY region").fetchall()
        )

    def check_staged(self, release: Release, k: int) -> None:
        """Refuse if the staged release and any recorded one together reveal a
        count about 1 … k−1 people that neither reveals alone."""
        if not release.vectors:
            return
        earlier = {
            no: _release_from_row(labels, vectors)
            for no, labels, vectors in self.con.execute(
                "SELECT release_no, labels, vectors FROM released_meta"
            ).fetchall()
        }
        if not earlier:
            return
        shared: dict[int, dict[tuple[int, int], int]] = {}
        for no, old_region, new_region, n in self.con.execute(
            f"""SELECT r.release_no, r.region, s.region, count(*)
                    FROM {STAGED} s JOIN released_region r ON r.person = s.person
                    GROUP BY ALL"""
        ).fetchall():
            shared.setdefault(no, {})[(old_region, new_region)] = n
        old_sizes: dict[int, dict[int, int]] = {}
        for no, region, n in self.con.execute(
            "SELECT release_no, region, count(*) FROM released_region GROUP BY ALL"
        ).fetchall():
            old_sizes.setdefault(no, {})[region] = n
        for no, old in earlier.items():
            if _pair_reveals_small(
                old, old_sizes.get(no, {}), release, self._sizes, shared.get(no, {}), k
            ):
                raise QueryRefused(
                    "differencing",
                    "together with an earlier release, this one would reveal a count "
                    f"covering fewer than k={k} people (the cohort differs from an earlier "
                    "released one by fewer than k people)",
                )

    def record_staged(self, release: Release, query_key: str) -> None:
        """Keep the staged release; all or nothing.  Only people some released
        figure counts are kept (the others are in no vector)."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            no = self.con.execute(
                "SELECT coalesce(max(release_no), 0) + 1 FROM released_meta"
            ).fetchone()[0]
            self.con.execute(
                "INSERT INTO released_meta VALUES (?, ?, ?, ?)",
                [
                    no,
                    query_key,
                    json.dumps(list(release.labels)),
                    json.dumps([sorted(v) for v in release.vectors]),
                ],
            )
            self.con.execute(
                f"INSERT INTO released_region SELECT ?, region, person FROM {STAGED} "
                "WHERE region IN (SELECT unnest(?::INTEGER[]))",
                [no, sorted(release.regions)],
            )
            self.con.execute(f"DROP TABLE {STAGED}")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    # -- person resolution changed --------------------------------------------------------

    def remap(self, previous_links: str, links: str, persons: str) -> int:
        """Move stored people to their keys under a new person resolution.

        ``previous_links`` / ``links`` are ``(v, l)`` tables (identifier → its
        component's key, for identifiers that are not their own key) of the
        resolution the stored keys come from and of the new one; ``persons``
        lists every current person key.  A stored person becomes the current
        person holding any identifier of its old component (the smallest such
        key when a component split); one whose identifiers all left the data is
        kept as it was (a person no longer present).  Two stored people merged
        into one are one person from now on.  Returns how many keys moved.
        """
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute(f"""
                CREATE OR REPLACE TABLE remap_person AS
                WITH stored AS (SELECT DISTINCT person AS p FROM released_region),
                ids AS (SELECT p, p AS v FROM stored
                        UNION ALL SELECT o.l AS p, o.v FROM {previous_links} o
                        JOIN stored ON stored.p = o.l),
                now AS (SELECT ids.p, coalesce(n.l, ids.v) AS np
                        FROM ids LEFT JOIN {links} n ON n.v = ids.v)
                SELECT now.p, min(now.np) AS np FROM now
                WHERE now.np IN (SELECT person FROM {persons})
                GROUP BY now.p HAVING min(now.np) <> now.p""")
            moved = self.con.execute("SELECT count(*) FROM remap_person").fetchone()[0]
            if moved:
                # a merged person keeps one region per release (regions are disjoint)
                self.con.execute("""
                    CREATE OR REPLACE TABLE released_region_next AS
                    SELECT r.release_no, min(r.region) AS region,
                           coalesce(m.np, r.person) AS person
                    FROM released_region r LEFT JOIN remap_person m ON m.p = r.person
                    GROUP BY ALL""")
                self.con.execute("DROP TABLE released_region")
                self.con.execute("ALTER TABLE released_region_next RENAME TO released_region")
            self.con.execute("DROP TABLE remap_person")
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        return int(moved)


def _release_from_row(labels: str, vectors: str) -> Release:
    return Release(tuple(json.loads(labels)), tuple(frozenset(v) for v in json.loads(vectors)))


# -- the linear algebra of one pair of releases --------------------------------------------


def _pair_reveals_small(
    old: Release,
    old_sizes: dict[int, int],
    new: Release,
    new_sizes: dict[int, int],
    shared: dict[tuple[int, int], int],
    k: int,
) -> bool:
    """Whether the two releases together determine a count over 1 … k−1 people
    that neither determines alone (see the module docstring)."""
    atoms, sizes = _atoms(old_sizes, new, new_sizes, shared)
    if not atoms or min(sizes) >= k:
        return False  # every derivable count covers whole atoms of ≥ k people
    old_rows = np.array([[float(i in v) for i, _ in atoms] for v in old.vectors])
    new_rows = np.array([[float(j in v) for _, j in atoms] for v in new.vectors])
    matrix = np.vstack([old_rows, new_rows])
    size = np.array(sizes)
    small = size < k
    # combinations y of the released vectors that vanish on every large atom
    large = matrix[:, ~small]
    combos = _null_space(large.T) if large.size else np.eye(matrix.shape[0])
    if combos.shape[1] == 0:
        return False
    basis = _column_basis(matrix[:, small].T @ combos)  # vectors on the small atoms
    if basis.shape[1] == 0:
        return False
    small_sizes = size[small]
    live = np.flatnonzero(np.abs(basis).max(axis=1) > _TOL)
    dim = basis.shape[1]
    if math.comb(len(live), dim - 1) > MAX_CIRCUIT_CANDIDATES:
        return True  # too many to examine: refuse rather than guess
    full_small = np.flatnonzero(small)
    for zeros in itertools.combinations(live, dim - 1):
        sub = basis[list(zeros)] if zeros else np.zeros((0, dim))
        coeffs = _null_space(sub)
        if coeffs.shape[1] != 1:
            continue
        vector = basis @ coeffs[:, 0]
        support = np.abs(vector) > _TOL * max(1.0, float(np.abs(vector).max()))
        covered = int(small_sizes[support].sum())
        if not 0 < covered < k:
            continue
        whole = np.zeros(len(atoms))
        whole[full_small] = vector
        if not _in_row_space(old_rows, whole) and not _in_row_space(new_rows, whole):
            return True
    return False


def _atoms(
    old_sizes: dict[int, int],
    new: Release,
    new_sizes: dict[int, int],
    shared: dict[tuple[int, int], int],
) -> tuple[list[tuple[int | None, int | None]], list[int]]:
    """The pieces both releases cut the people into, with their sizes: each
    (old region, new region) overlap, then what each old region, and each new
    one, holds outside every overlap (``None`` on the other side)."""
    atoms: list[tuple[int | None, int | None]] = []
    sizes: list[int] = []
    for (i, j), n in shared.items():
        atoms.append((i, j))
        sizes.append(n)
    for i, total in old_sizes.items():
        rest = total - sum(n for (a, _), n in shared.items() if a == i)
        if rest > 0:
            atoms.append((i, None))
            sizes.append(rest)
    for j, total in new_sizes.items():
        if j not in new.regions:
            continue
        rest = total - sum(n for (_, b), n in shared.items() if b == j)
        if rest > 0:
            atoms.append((None, j))
            sizes.append(rest)
    return atoms, sizes


def _null_space(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of {x : matrix @ x = 0}."""
    cols = matrix.shape[1]
    if matrix.shape[0] == 0:
        return np.eye(cols)
    _, sv, vt = np.linalg.svd(matrix)
    rank = int((sv > _TOL * max(1.0, float(sv.max(initial=0.0)))).sum())
    return vt[rank:].T


def _column_basis(matrix: np.ndarray) -> np.ndarray:
    """Orthonormal basis (columns) of the column space."""
    if matrix.size == 0:
        return np.zeros((matrix.shape[0], 0))
    u, sv, _ = np.linalg.svd(matrix, full_matrices=False)
    rank = int((sv > _TOL * max(1.0, float(sv.max(initial=0.0)))).sum())
    return u[:, :rank]


def _in_row_space(rows: np.ndarray, vector: np.ndarray) -> bool:
    if rows.size == 0:
        return not np.abs(vector).max() > _TOL
    coeffs, *_ = np.linalg.lstsq(rows.T, vector, rcond=None)
    return bool(np.abs(rows.T @ coeffs - vector).max() < 1e-7)
