"""Person resolution: which keyed identifiers belong to the same person.

Records are linked when they share a keyed identifier (same kind, same
normalised value); a person is a connected component of identifiers linked
through rows that carry several of them (a bank row with an e-mail and a
phone links that e-mail and that phone).  Components are found in DuckDB by
min-label propagation with graph contraction over the identifiers that occur
on such rows (an identifier never seen next to another is a person of its
own and costs nothing): every identifier takes the smallest label of its
neighbourhood, the graph is contracted to those labels, and the same is done
on the much smaller graph until no edge is left; labels are then composed
back down.  Only the first level touches every linked identifier, and each
statement holds one large join, so it streams and spills under the memory
limit.  A person's key is the smallest keyed identifier of its component; it
never leaves the enclave.  It is *not* stable across refreshes: a re-ingested
dataset with one more identifier on a row can merge components and give a
person a smaller key.  The links of the last resolution (``person_link``:
identifier → key, for identifiers that are not their own key) are therefore
kept, and the next resolution leaves them as ``person_link_prev`` so that
released cohorts can be moved to the new keys
(``privacy.differencing.CohortStore.remap``).

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
    levels: int


def _anchor(ds: Dataset, alias: str = "t") -> str:
    """A row's first non-null identifier: every identifier of a row lies in the
    same component, so this one finds the row's person."""
    return "coalesce(" + ", ".join(f"{alias}.{quote(i.column)}" for i in ds.identifiers) + ")"


def resolve_people(con: duckdb.DuckDBPyConnection, datasets: Sequence[Dataset]) -> Resolution:
    """(Re)build one ``p_*`` table (person + columns) per dataset."""
    _start_over(con)
    con.execute(f"CREATE OR REPLACE TABLE r_graph_0 AS {_edges_sql(datasets)}")
    level = _contract(con)
    linked = con.execute("SELECT count(*) FROM r_label_1").fetchone()[0]
    _compose_links(con, level)
    for ds in datasets:
        _write_person_table(con, ds)
    # kept: the next resolution moves released cohorts from these keys to its own
    con.execute("ALTER TABLE r_link RENAME TO person_link")
    log.info("resolved %d linked identifiers in %d contraction levels", linked, level)
    return Resolution(linked, level)


def _start_over(con: duckdb.DuckDBPyConnection) -> None:
    """Drop what a previous resolution left but its links, which become the
    previous links."""
    # working tables an interrupted run (out of memory, a crash) may have left
    for (name,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'r\\_%' ESCAPE '\\'"
    ).fetchall():
        con.execute(f"DROP TABLE {quote(name)}")
    con.execute("DROP TABLE IF EXISTS persons")  # of the previous resolution
    # The previous links stay until released cohorts were moved to the new keys
    # (CohortStore.remap); if an earlier remap never ran, those links are the ones
    # the stored keys come from, so they are kept and the newer ones dropped.
    tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "person_link" in tables:
        if "person_link_prev" in tables:
            con.execute("DROP TABLE person_link")
        else:
            con.execute("ALTER TABLE person_link RENAME TO person_link_prev")


def _edges_sql(datasets: Sequence[Dataset]) -> str:
    """SQL of the graph's edges: a row's anchor to each of its other identifiers
    (rows with one identifier link nothing)."""
    edges = [
        f"SELECT {_anchor(ds)} AS a, t.{quote(i.column)} AS b FROM {data_table(ds)} t "
        f"WHERE t.{quote(i.column)} IS NOT NULL AND t.{quote(i.column)} <> {_anchor(ds)}"
        for ds in datasets
        if len(ds.identifiers) > 1
        for i in ds.identifiers[1:]
    ]
    return " UNION ALL ".join(edges) or "SELECT 0::BIGINT AS a, 0::BIGINT AS b WHERE false"


def _contract(con: duckdb.DuckDBPyConnection) -> int:
    """Label and contract ``r_graph_0`` until no edge is left; ``r_label_1`` …
    ``r_label_N`` hold each level's labels.  Returns N."""
    level = 0
    while True:
        if level >= MAX_ROUNDS:
            raise RuntimeError("person resolution did not converge")
        level += 1
        graph, labels = f"r_graph_{level - 1}", f"r_label_{level}"
        con.execute(
            f"CREATE OR REPLACE TABLE {labels} AS SELECT a AS v, least(a, min(b)) AS l "
            f"FROM (SELECT a, b FROM {graph} UNION ALL SELECT b, a FROM {graph}) "
            "GROUP BY a"
        )
        # contract: an edge between two different labels survives (one join a statement)
        con.execute(
            f"CREATE OR REPLACE TABLE r_half AS SELECT x.l AS a, e.b FROM {graph} e "
            f"JOIN {labels} x ON x.v = e.a"
        )
        con.execute(f"DROP TABLE {graph}")
        con.execute(
            f"CREATE OR REPLACE TABLE r_joined AS SELECT e.a, y.l AS b "
            f"FROM r_half e JOIN {labels} y ON y.v = e.b WHERE e.a <> y.l"
        )
        con.execute("DROP TABLE r_half")
        con.execute(
            f"CREATE OR REPLACE TABLE r_graph_{level} AS SELECT DISTINCT a, b FROM r_joined"
        )
        con.execute("DROP TABLE r_joined")
        if not con.execute(f"SELECT count(*) FROM r_graph_{level}").fetchone()[0]:
            break
    con.execute(f"DROP TABLE r_graph_{level}")
    return level


def _compose_links(con: duckdb.DuckDBPyConnection, level: int) -> None:
    """``r_link`` (identifier v → its person's key l) from the labels of every level."""
    # Compose the levels' labels back down (a label without a surviving edge is
    # final); the last step keeps only identifiers labelled by another one: a
    # component's smallest identifier is its own label and needs no row.
    top = f"r_label_{level}"
    for k in range(level - 1, 0, -1):
        keep = " WHERE coalesce(h.l, x.l) <> x.v" if k == 1 else ""
        target = "r_link" if k == 1 else "r_label_next"
        con.execute(
            f"CREATE OR REPLACE TABLE {target} AS SELECT x.v, coalesce(h.l, x.l) AS l "
            f"FROM r_label_{k} x LEFT JOIN {top} h ON h.v = x.l{keep}"
        )
        con.execute(f"DROP TABLE r_label_{k}")
        con.execute(f"DROP TABLE {top}")
        if k > 1:
            con.execute(f"ALTER TABLE r_label_next RENAME TO {top}")
    if level == 1:
        con.execute("CREATE OR REPLACE TABLE r_link AS SELECT v, l FROM r_label_1 WHERE v <> l")
        con.execute("DROP TABLE r_label_1")


def _write_person_table(con: duckdb.DuckDBPyConnection, ds: Dataset) -> None:
    """``ds``'s rows with their person's key and the columns analyses read."""
    # The columns the data table really has: a declared attribute no analysis
    # uses is never sent (Definition.columns_needed), so it is not there.
    present = {
        name
        for (name,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ?",
            [data_table(ds).strip('"')],
        ).fetchall()
    }
    rest = [
        quote(c) for c in (*(a.column for a in ds.attributes), *ds.event_columns) if c in present
    ]
    cols = ", ".join([f"coalesce(r.l, {_anchor(ds)}) AS person", *(f"t.{c}" for c in rest)])
    con.execute(
        f"CREATE OR REPLACE TABLE {person_table(ds)} AS "
        f"SELECT {cols} FROM {data_table(ds)} t "
        f"LEFT JOIN r_link r ON r.v = {_anchor(ds)}"
    )


def ensure_persons(con: duckdb.DuckDBPyConnection, datasets: Sequence[Dataset]) -> None:
    """``persons(person)``: everyone in any dataset, built when a query first needs it
    (a filter with NOT, or an overlap); resolution drops it."""
    people = (
        " UNION ".join(f"SELECT person FROM {person_table(ds)}" for ds in datasets)
        or "SELECT 0::BIGINT AS person WHERE false"
    )
    con.execute(f"CREATE TABLE IF NOT EXISTS persons AS {people}")
