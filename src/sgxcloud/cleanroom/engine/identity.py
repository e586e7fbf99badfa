"""Person resolution: which keyed identifiers belong to the same person.

Records are linked when they share a keyed identifier (same kind, same
normalised value); a person is a connected component of identifiers linked
through rows that carry several of them (a bank row with an e-mail and a
phone links that e-mail and that phone).  Components are found in DuckDB by
min-label propagation with pointer jumping over the identifiers that occur
on such rows (an identifier never seen next to another is a person of its
own and costs nothing), so it streams and spills like any other query.  A
person's key is the smallest keyed identifier of its component: stable
across re-resolution, and never leaves the enclave.

The working tables are ordinary tables, rebuilt after every ingestion and
on restart: DuckDB keeps temporary tables in memory and runs out of it on
tens of millions of identifiers, while ordinary ones spill to disk.
"""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from sgxcloud.cleanroom.definition import Dataset

log = logging.getLogger(__name__)

MAX_ROUNDS = 64


def quote(name: str) -> str:
    """Quote a name that the definition schema already restricted to [a-z0-9_]."""
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise ValueError("unexpected identifier name")
    return f'"{name}"'


def data_table(ds: Dataset) -> str:
    return quote(f"d_{ds.provider}__{ds.name}")


def person_table(ds: Dataset) -> str:
    return quote(f"p_{ds.provider}__{ds.name}")


@dataclass(frozen=True)
class Resolution:
    linked_identifiers: int
    people: int
    rounds: int


def _anchor(ds: Dataset, alias: str = "t") -> str:
    """A row's first non-null identifier: every identifier of a row lies in the
    same component, so this one finds the row's person."""
    return "coalesce(" + ", ".join(f"{alias}.{quote(i.column)}" for i in ds.identifiers) + ")"


def resolve_people(con: duckdb.DuckDBPyConnection, datasets: Sequence[Dataset]) -> Resolution:
    """(Re)build ``persons(person)`` and one ``p_*`` table (person + columns) per dataset."""
    edges = [f"SELECT {_anchor(ds)} AS a, t.{quote(i.column)} AS b FROM {data_table(ds)} t "
             f"WHERE t.{quote(i.column)} IS NOT NULL"
             for ds in datasets if len(ds.identifiers) > 1 for i in ds.identifiers[1:]]
    edges_sql = " UNION ALL ".join(edges) or "SELECT 0::BIGINT AS a, 0::BIGINT AS b WHERE false"
    con.execute(f"CREATE OR REPLACE TABLE r_edge AS SELECT DISTINCT a, b FROM ({edges_sql}) "
                "WHERE a <> b")
    con.execute("CREATE OR REPLACE TABLE r_sym AS "
                "SELECT a, b FROM r_edge UNION ALL SELECT b, a FROM r_edge")
    con.execute("DROP TABLE r_edge")
    con.execute("CREATE OR REPLACE TABLE r_label AS "
                "SELECT a AS v, least(a, min(b)) AS l FROM r_sym GROUP BY a")
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):  # noqa: B007 (rounds reported below)
        # my neighbours' smallest label, then pointer jumping: the label of my label
        con.execute("""
            CREATE OR REPLACE TABLE r_next AS
            SELECT x.v, least(x.l, o.l, y.l) AS l
            FROM (SELECT e.a AS v, min(n.l) AS l FROM r_sym e JOIN r_label n ON n.v = e.b
                  GROUP BY e.a) x
            JOIN r_label o ON o.v = x.v JOIN r_label y ON y.v = x.l""")
        changed = con.execute("SELECT count(*) FROM r_next JOIN r_label USING (v) "
                              "WHERE r_next.l <> r_label.l").fetchone()[0]
        con.execute("DROP TABLE r_label")
        con.execute("ALTER TABLE r_next RENAME TO r_label")
        if changed == 0:
            break
    else:
        raise RuntimeError("person resolution did not converge")
    con.execute("DROP TABLE r_sym")
    for ds in datasets:
        rest = [quote(a.column) for a in ds.attributes] + [quote(c) for c in ds.event_columns]
        cols = ", ".join([f"coalesce(r.l, {_anchor(ds)}) AS person", *(f"t.{c}" for c in rest)])
        con.execute(f"CREATE OR REPLACE TABLE {person_table(ds)} AS "
                    f"SELECT {cols} FROM {data_table(ds)} t "
                    f"LEFT JOIN r_label r ON r.v = {_anchor(ds)}")
    people = " UNION ".join(f"SELECT person FROM {person_table(ds)}" for ds in datasets) \
        or "SELECT 0::BIGINT AS person WHERE false"
    con.execute(f"CREATE OR REPLACE TABLE persons AS {people}")
    linked = con.execute("SELECT count(*) FROM r_label").fetchone()[0]
    con.execute("DROP TABLE r_label")
    n_people = con.execute("SELECT count(*) FROM persons").fetchone()[0]
    log.info("resolved %d people (%d linked identifiers) in %d rounds", n_people, linked, rounds)
    return Resolution(linked, n_people, rounds)
