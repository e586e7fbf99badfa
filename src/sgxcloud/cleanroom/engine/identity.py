"""Person resolution: which keyed identifiers belong to the same person.

Records are linked when they share a keyed identifier (same kind, same
normalised value); a person is a connected component of identifiers linked
through rows that carry several of them (a bank row with an e-mail and a
phone links that e-mail and that phone).  Components are found in DuckDB by
min-label propagation with pointer jumping, so it streams and spills like
any other query.  A person's key (``pkey``) is the smallest keyed hash in its
component: stable across re-resolution, and never leaves the enclave.
The working tables are temporary (rebuilt after every ingestion and on
restart), so they spill to ``temp_directory`` instead of being checkpointed
into the database file.
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
    identifiers: int
    people: int
    rounds: int


def resolve_people(con: duckdb.DuckDBPyConnection, datasets: Sequence[Dataset]) -> Resolution:
    """(Re)build ``persons(person, pkey)`` and one ``p_*`` table per dataset."""
    selects = [
        f"SELECT {quote(i.column)} AS id FROM {data_table(ds)} WHERE {quote(i.column)} IS NOT NULL"
        for ds in datasets for i in ds.identifiers
    ]
    if not selects:
        selects = ["SELECT NULL::BLOB AS id WHERE false"]
    con.execute(
        "CREATE OR REPLACE TEMP TABLE id_nodes AS SELECT id, row_number() OVER () AS nid "
        f"FROM (SELECT DISTINCT id FROM ({' UNION ALL '.join(selects)}))"
    )
    edge_selects = []
    for ds in datasets:
        first, *others = [quote(i.column) for i in ds.identifiers]
        edge_selects += [
            f"SELECT a.nid AS a, b.nid AS b FROM {data_table(ds)} t "
            f"JOIN id_nodes a ON a.id = t.{first} JOIN id_nodes b ON b.id = t.{other}"
            for other in others
        ]
    edges = " UNION ALL ".join(edge_selects) or "SELECT 0::BIGINT AS a, 0::BIGINT AS b WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP TABLE id_edges_one AS SELECT DISTINCT a, b "
                f"FROM ({edges}) WHERE a <> b")
    con.execute("CREATE OR REPLACE TEMP TABLE id_edges AS SELECT DISTINCT a, b FROM "
                "(SELECT a, b FROM id_edges_one UNION ALL SELECT b, a FROM id_edges_one)")
    con.execute("DROP TABLE id_edges_one")
    con.execute("CREATE OR REPLACE TEMP TABLE id_labels AS SELECT nid, nid AS label FROM id_nodes")
    rounds = 0
    for rounds in range(1, MAX_ROUNDS + 1):  # noqa: B007 (rounds reported below)
        con.execute("""
            CREATE OR REPLACE TEMP TABLE id_labels_next AS
            SELECT l.nid, least(l.label, coalesce(min(n.label), l.label)) AS label
            FROM id_labels l LEFT JOIN id_edges e ON e.a = l.nid
                 LEFT JOIN id_labels n ON n.nid = e.b
            GROUP BY l.nid, l.label""")
        # pointer jumping: adopt the label of my label
        con.execute("""
            CREATE OR REPLACE TEMP TABLE id_labels_next AS
            SELECT x.nid, least(x.label, y.label) AS label
            FROM id_labels_next x JOIN id_labels_next y ON y.nid = x.label""")
        changed = con.execute(
            "SELECT count(*) FROM id_labels a JOIN id_labels_next b USING (nid) "
            "WHERE a.label <> b.label").fetchone()[0]
        con.execute("DROP TABLE id_labels")
        con.execute("ALTER TABLE id_labels_next RENAME TO id_labels")
        if changed == 0:
            break
    else:
        raise RuntimeError("person resolution did not converge")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE id_person AS
        SELECT n.id, l.label AS person FROM id_nodes n JOIN id_labels l USING (nid)""")
    con.execute("DROP TABLE id_edges")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE persons AS
        SELECT person, min(id) AS pkey FROM id_person GROUP BY person""")
    for ds in datasets:
        # Every identifier of a row lies in the same component: one join on
        # the first non-null one finds the row's person.
        first_id = "coalesce(" + ", ".join(f"t.{quote(i.column)}" for i in ds.identifiers) + ")"
        rest = [quote(a.column) for a in ds.attributes] + [quote(c) for c in ds.event_columns]
        cols = ", ".join(["ip.person", *(f"t.{c}" for c in rest)])
        con.execute(f"CREATE OR REPLACE TEMP TABLE {person_table(ds)} AS "
                    f"SELECT {cols} FROM {data_table(ds)} t "
                    f"JOIN id_person ip ON ip.id = {first_id}")
    identifiers = con.execute("SELECT count(*) FROM id_nodes").fetchone()[0]
    people = con.execute("SELECT count(*) FROM persons").fetchone()[0]
    log.info("resolved %d identifiers into %d people in %d rounds", identifiers, people, rounds)
    return Resolution(identifiers, people, rounds)
