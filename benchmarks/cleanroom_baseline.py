"""The fair baseline for the clean-room benchmark: the same questions, same answers, plain DuckDB.

What a competent analyst with all three providers' plaintext files in one
place would write: one process, one DuckDB database, SQL only.  It answers
exactly what the clean room answers, with the clean room's semantics:

* identifiers normalised in SQL: surrounding white space trimmed; e-mail
  lower-cased, ``local@domain.tld`` of at most 254 characters, Gmail dots and
  ``+tag`` removed (domain ``gmail.com``); phone as E.164 for the default
  region GB, valid by libphonenumber's own GB patterns (read from the
  ``phonenumbers`` metadata when the SQL is built: configuration, not per-row
  work); customer id 1–128 characters, no control characters.  Kinds are
  separate namespaces.
  Shapes the clean room hands to libphonenumber's full parser (``00``
  prefixes, other countries, extensions) count as invalid here; the generated
  data has none, and tests/cleanroom/test_benchmark_baseline.py shows both
  sides agree on it;
* a person is a connected component of identifiers linked by sharing a row
  of any dataset, found by min-label propagation with graph contraction
  (``_link``) over 64-bit ``hash(kind:value)`` values (a collision among the
  ~25 million identifiers of 10 million people has probability ~2e-5);
* audience: distinct people for whom every comparison holds on some row of
  its dataset;
* lift: people exposed in one arm only, purchases in
  ``[first exposure, first exposure + window)``, per arm people, converters,
  purchases and revenue, overall and per telecom region (a person's segment
  is the smallest region of their telecom rows, ``(none)`` without any).

It does none of the clean room's other work (attestation, encryption,
transport, k-suppression, differencing, signatures).

Run: .venv/bin/python benchmarks/cleanroom_baseline.py DATA_DIR [--memory-limit 512MB]
(prints one JSON object).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import phonenumbers

# The datasets as prepare_example / datagen write them: file, identifier
# columns and their kinds (first declared first, as in the definition).
DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "bank.customers": (
        "bank/customers.parquet",
        {"customer_id": "customer_id", "email": "email", "phone": "phone"},
    ),
    "telecom.subscribers": ("telecom/subscribers.parquet", {"phone": "phone"}),
    "retailer.customers": ("retailer/customers.parquet", {"email": "email", "phone": "phone"}),
    "retailer.exposures": ("retailer/exposures.parquet", {"email": "email", "phone": "phone"}),
    "retailer.purchases": ("retailer/purchases.parquet", {"email": "email", "phone": "phone"}),
}
EXPOSURES, PURCHASES = "retailer.exposures", "retailer.purchases"
EVENT_COLUMNS = {EXPOSURES: ("group", "exposed_at"), PURCHASES: ("amount", "purchased_at")}
BREAKDOWN = ("telecom.subscribers", "region")
# The audience of benchmarks/bench_cleanroom.py (its AUDIENCE_FILTER).
BENCH_AUDIENCE = (
    "bank.customers.premium_card = true AND retailer.customers.baby_buyer = true "
    "AND telecom.subscribers.region = 'north'"
)
ARMS = ("test", "control")
ALL, NONE_SEGMENT = "(all)", "(none)"
MAX_ROUNDS = 64

# What Python's str.strip() removes; trimmed only where present (trim() with a
# character set is three times slower than a regular-expression test).
_WHITESPACE = "".join(chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace())
_WHITESPACE_CLASS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _WHITESPACE) + "]"
_EMAIL_RE = r"[^@\s]+@[^@\s]+\.[^@\s.]+"
_PHONE_SHAPE_RE = r"\+?[0-9][0-9 ().-]*"
_NUMBER_TYPES = (
    "mobile",
    "fixed_line",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)


# -- the filter -------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``dataset.column op value``: holds for a person with any such row."""

    dataset: str
    column: str
    op: str
    value: bool | int | float | str


_COMPARISON = re.compile(
    r"\s*([a-z0-9_]+\.[a-z0-9_]+)\.([a-z0-9_]+)\s*(=|!=|<>|<=|>=|<|>)\s*"
    r"(true|false|'(?:[^']|'')*'|-?[0-9]+(?:\.[0-9]+)?)\s*",
    re.IGNORECASE,
)


def parse_conjunction(text: str) -> tuple[Comparison, ...]:
    """``a.b.c = 1 AND d.e.f = 'x' …`` (the shape bench_cleanroom.py uses) as comparisons."""
    out = []
    for part in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE):
        match = _COMPARISON.fullmatch(part)
        if not match or match.group(1) not in DATASETS:
            raise ValueError(f"not a comparison over a known dataset: {part!r}")
        ref, column, op, raw = match.groups()
        value: bool | int | float | str
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        elif raw.startswith("'"):
            value = raw[1:-1].replace("''", "'")
        else:
            value = float(raw) if "." in raw else int(raw)
        out.append(Comparison(ref, column, "<>" if op == "!=" else op, value))
    return tuple(out)


# -- identifier normalisation, in SQL ---------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _phone_valid_sql(national: str, region: str) -> str:
    """SQL: is ``national`` (digits) a valid number of ``region`` by libphonenumber's patterns."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)

    def matches(desc: Any) -> str | None:
        if desc is None or desc.national_number_pattern is None:
            return None
        lengths = sorted(n for n in desc.possible_length if n > 0)
        test = f"regexp_full_match({national}, {_literal(desc.national_number_pattern)})"
        if lengths:
            test = f"length({national}) IN ({', '.join(map(str, lengths))}) AND {test}"
        return f"({test})"

    general = matches(meta.general_desc)
    types = [t for t in (matches(getattr(meta, name, None)) for name in _NUMBER_TYPES) if t]
    return f"({general} AND ({' OR '.join(types)}))"


def _trimmed(column: str) -> str:
    edge = f"^{_WHITESPACE_CLASS}|{_WHITESPACE_CLASS}$"
    return (
        f'CASE WHEN regexp_matches("{column}", {_literal(edge)}) '
        f'THEN trim("{column}", {_literal(_WHITESPACE)}) ELSE "{column}" END'
    )


def _identifier_stages(kind: str, column: str, region: str) -> list[str]:
    """SQL expressions that turn ``column`` into the normalised identifier, one per
    layer of nested SELECTs; ``{c}`` is the previous layer's value."""
    if kind == "email":
        local = "split_part(split_part({c}, '@', 1), '+', 1)"
        return [
            f"lower({_trimmed(column)})",
            f"CASE WHEN length({{c}}) <= 254 AND regexp_full_match({{c}}, "
            f"{_literal(_EMAIL_RE)}) THEN {{c}} END",
            # Gmail ignores dots and +tags; other domains may not: keep them there
            "CASE WHEN split_part({c}, '@', 2) IN ('gmail.com', 'googlemail.com') "
            f"THEN nullif(replace({local}, '.', ''), '') || '@gmail.com' ELSE {{c}} END",
        ]
    if kind == "phone":
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        cc, prefix = str(meta.country_code), meta.national_prefix or ""
        national = f"CASE WHEN starts_with({{c}}, '+{cc}') THEN substr({{c}}, {len(cc) + 2})"
        if prefix:
            national += (
                f" WHEN starts_with({{c}}, {_literal(prefix)}) "
                f"THEN substr({{c}}, {len(prefix) + 1})"
            )
        return [
            _trimmed(column),
            f"CASE WHEN length({{c}}) BETWEEN 1 AND 40 AND regexp_full_match({{c}}, "
            f"{_literal(_PHONE_SHAPE_RE)}) THEN translate({{c}}, ' ().-', '') END",
            national + " END",  # the national significant number
            f"CASE WHEN {{c}} <> '' AND NOT starts_with({{c}}, '0') AND "
            f"{_phone_valid_sql('{c}', region)} THEN '+{cc}' || {{c}} END",
        ]
    if kind == "customer_id":
        return [
            _trimmed(column),
            "CASE WHEN length({c}) BETWEEN 1 AND 128 AND NOT "
            "regexp_matches({c}, '[\\x00-\\x1f\\x7f-\\x9f]') THEN {c} END",
        ]
    raise ValueError(f"unknown identifier kind {kind!r}")


def normalised_sql(
    source: str, idcols: dict[str, str], keep: Sequence[str] = (), region: str = "GB"
) -> str:
    """SELECT over ``source`` (a table expression) giving, per row, ``c0, c1, …``: the
    normalised identifiers of ``idcols`` (column -> kind), NULL when missing or
    invalid, then the ``keep`` columns."""
    stages = [_identifier_stages(kind, col, region) for col, kind in idcols.items()]
    depth = max(len(s) for s in stages)
    rest = "".join(f', "{c}"' for c in keep)
    sql = source
    for layer in range(depth):
        exprs = []
        for n, steps in enumerate(stages):
            expr = steps[layer] if layer < len(steps) else "{c}"
            exprs.append(expr.replace("{c}", f"c{n}") + f" AS c{n}")
        sql = f"(SELECT {', '.join(exprs)}{rest} FROM {sql})"
    return f"SELECT * FROM {sql}"


def _hashed_select(ref: str, source: str, keep: Sequence[str], region: str) -> str:
    """Rows of ``ref`` that keep a valid identifier: ``i0, i1, …`` (UBIGINT hashes of
    ``kind:normalised``, NULL when missing or invalid), then the ``keep`` columns."""
    idcols = DATASETS[ref][1]
    rest = "".join(f', "{c}"' for c in keep)
    hashed = [
        f"CASE WHEN c{n} IS NOT NULL THEN hash('{kind}:' || c{n}) END AS i{n}"
        for n, kind in enumerate(idcols.values())
    ]
    ids = ", ".join(f"i{n}" for n in range(len(idcols)))
    inner = normalised_sql(f"read_parquet({_literal(source)})", idcols, keep, region)
    return (
        f"SELECT * FROM (SELECT {', '.join(hashed)}{rest} FROM ({inner})) "
        f"WHERE coalesce({ids}) IS NOT NULL"
    )


# -- the run ----------------------------------------------------------------------------


def _table(ref: str) -> str:
    return "n_" + ref.replace(".", "__")


def _persons(ref: str) -> str:
    """Rows of ``ref`` with their person: the component label of the row's first
    identifier (every identifier of a row lies in the same component)."""
    n = len(DATASETS[ref][1])
    first = f"coalesce({', '.join(f't.i{i}' for i in range(n))})" if n > 1 else "t.i0"
    return (
        f"(SELECT coalesce(l.label, {first}) AS person, t.* FROM {_table(ref)} t "
        f"LEFT JOIN labels l ON l.nid = {first})"
    )


@contextmanager
def _timed(phases: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    phases[name] = round(time.perf_counter() - start, 3)


def run_baseline(
    data_dir: Path,
    memory_limit: str = "512MB",
    audience: str | Sequence[Comparison] = BENCH_AUDIENCE,
    *,
    window_days: int = 28,
    breakdown: bool = True,
    region: str = "GB",
    threads: int = 2,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Answer the benchmark's audience and lift questions on the plaintext files.

    Returns ``{"seconds", "audience", "lift": {arm: {people, converters,
    purchases, revenue}}, "lift_by_region": {segment: {arm: …}}, "phases",
    "link_levels", "memory_limit"}``; ``seconds`` runs from opening the
    database to the last answer.  The database and its spill files live in a
    temporary directory under ``workdir`` (default: the system's), removed
    afterwards.
    """
    comparisons = parse_conjunction(audience) if isinstance(audience, str) else tuple(audience)
    data_dir = Path(data_dir)
    missing = [path for path, _ in DATASETS.values() if not (data_dir / path).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: missing {', '.join(missing)}")
    scratch = Path(tempfile.mkdtemp(prefix="cleanroom-baseline-", dir=workdir))
    try:
        start = time.perf_counter()
        con = duckdb.connect(str(scratch / "baseline.duckdb"))
        try:
            result = _run(
                con,
                data_dir,
                scratch,
                memory_limit,
                comparisons,
                window_days,
                breakdown,
                region,
                threads,
            )
        finally:
            con.close()
        return {"seconds": round(time.perf_counter() - start, 3), **result}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(
    con: duckdb.DuckDBPyConnection,
    data_dir: Path,
    scratch: Path,
    memory_limit: str,
    comparisons: tuple[Comparison, ...],
    window_days: int,
    breakdown: bool,
    region: str,
    threads: int,
) -> dict[str, Any]:
    con.execute("SET memory_limit = ?", [memory_limit])
    con.execute("SET threads = ?", [int(threads)])
    con.execute("SET temp_directory = ?", [str(scratch / "spill")])
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET TimeZone = 'UTC'")  # a window of N days is N × 24 h
    phases: dict[str, float] = {}

    # Only the columns some question needs, as a competent analyst would.
    keep: dict[str, list[str]] = {ref: [] for ref in DATASETS}
    for comp in comparisons:
        keep[comp.dataset].append(comp.column)
    for ref, cols in EVENT_COLUMNS.items():
        keep[ref].extend(cols)
    if breakdown:
        keep[BREAKDOWN[0]].append(BREAKDOWN[1])
    with _timed(phases, "read_normalise"):
        for ref, (path, _) in DATASETS.items():
            cols = list(dict.fromkeys(keep[ref]))
            con.execute(
                f"CREATE TABLE {_table(ref)} AS "
                + _hashed_select(ref, str(data_dir / path), cols, region)
            )

    with _timed(phases, "link"):
        levels = _link(con)

    with _timed(phases, "audience"):
        audience = _audience(con, comparisons)

    with _timed(phases, "lift"):
        lift, by_segment = _lift(con, window_days, breakdown)

    return {
        "audience": audience,
        "lift": lift,
        "lift_by_region": by_segment,
        "phases": phases,
        "link_levels": levels,
        "memory_limit": memory_limit,
    }


def _audience(con: duckdb.DuckDBPyConnection, comparisons: tuple[Comparison, ...]) -> int:
    """People for whom every comparison holds on one of their rows of its dataset."""
    if not comparisons:
        everyone = " UNION ".join(f"SELECT person FROM {_persons(ref)}" for ref in DATASETS)
        return int(con.execute(f"SELECT count(*) FROM ({everyone})").fetchone()[0])
    for k, comp in enumerate(comparisons):
        con.execute(
            f"CREATE TABLE audience_{k} AS SELECT DISTINCT person "
            f'FROM {_persons(comp.dataset)} WHERE "{comp.column}" {comp.op} ?',
            [comp.value],
        )
    both = " INTERSECT ".join(f"SELECT person FROM audience_{k}" for k in range(len(comparisons)))
    return int(con.execute(f"SELECT count(*) FROM ({both})").fetchone()[0])


def _link(con: duckdb.DuckDBPyConnection) -> int:
    """``labels(nid, label)``: each linked identifier's component label (the smallest
    hash in its component); identifiers never sharing a row with another are
    their own label.  Returns the number of contraction levels.

    Min-label propagation with graph contraction: every node takes the smallest
    label of its closed neighbourhood, then the graph is contracted to those
    labels (an edge between two different labels survives) and the same is done
    on the much smaller graph, until no edge is left; the labels are composed
    back down.  Only the first level touches every identifier.
    """
    edges = []
    for ref, (_, idcols) in DATASETS.items():
        n = len(idcols)
        if n < 2:
            continue
        first = f"coalesce({', '.join(f'i{i}' for i in range(n))})"
        edges += [
            f"SELECT {first} AS a, i{i} AS b FROM {_table(ref)} WHERE i{i} IS NOT NULL "
            f"AND i{i} <> {first}"
            for i in range(1, n)
        ]
    con.execute(f"CREATE TABLE g0 AS {' UNION ALL '.join(edges)}")
    level = 0
    while True:
        if level >= MAX_ROUNDS:
            raise RuntimeError("person linking did not converge")
        level += 1
        con.execute(
            f"CREATE TABLE l{level} AS SELECT a AS nid, least(a, min(b)) AS label "
            f"FROM (SELECT a, b FROM g{level - 1} UNION ALL "
            f"SELECT b, a FROM g{level - 1}) GROUP BY a"
        )
        # one hash join per statement: two at once ran out of memory at 10M people
        con.execute(
            f"CREATE TABLE half AS SELECT x.label AS a, e.b "
            f"FROM g{level - 1} e JOIN l{level} x ON x.nid = e.a"
        )
        con.execute(f"DROP TABLE g{level - 1}")
        con.execute(
            f"CREATE TABLE g{level} AS SELECT DISTINCT e.a, y.label AS b "
            f"FROM half e JOIN l{level} y ON y.nid = e.b WHERE e.a <> y.label"
        )
        con.execute("DROP TABLE half")
        if con.execute(f"SELECT count(*) FROM g{level}").fetchone()[0] == 0:
            break
    con.execute(f"DROP TABLE g{level}")
    con.execute(f"ALTER TABLE l{level} RENAME TO labels")
    for k in range(level - 1, 0, -1):  # a label with no surviving edge is final
        con.execute(
            f"CREATE TABLE labels_next AS SELECT l.nid, coalesce(h.label, l.label) "
            f"AS label FROM l{k} l LEFT JOIN labels h ON h.nid = l.label"
        )
        con.execute(f"DROP TABLE l{k}")
        con.execute("DROP TABLE labels")
        con.execute("ALTER TABLE labels_next RENAME TO labels")
    # A component's smallest identifier is its own label: no row needed, which
    # makes every later lookup's hash table a third smaller.
    con.execute("CREATE TABLE labels_next AS SELECT nid, label FROM labels WHERE nid <> label")
    con.execute("DROP TABLE labels")
    con.execute("ALTER TABLE labels_next RENAME TO labels")
    return level


def _lift(
    con: duckdb.DuckDBPyConnection,
    window_days: int,
    breakdown: bool,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict[str, Any]]]]:
    """Per arm (and per segment) figures.

    One large join per statement, and no min()/max() over strings next to a
    join (their aggregate states do not spill: out of memory at 10M people):
    arms and segments are aggregated as small integer codes.
    """
    code = (
        'CASE "group" '
        + " ".join(f"WHEN {_literal(arm)} THEN {n}" for n, arm in enumerate(ARMS))
        + " END"
    )
    con.execute(
        f"CREATE TABLE exposure_rows AS SELECT person, exposed_at, {code} AS arm "
        f"FROM {_persons(EXPOSURES)}"
    )
    con.execute("""
        CREATE TABLE exposed AS
        SELECT person, min(exposed_at) AS first_exposure, min(arm) AS arm
        FROM exposure_rows GROUP BY person HAVING min(arm) = max(arm)""")
    con.execute(
        f"CREATE TABLE purchase_rows AS SELECT person, amount, purchased_at "
        f"FROM {_persons(PURCHASES)}"
    )
    con.execute(f"""
        CREATE TABLE attributed AS
        SELECT e.person, count(*) AS purchases, sum(p.amount) AS revenue
        FROM purchase_rows p JOIN exposed e ON p.person = e.person
         AND p.purchased_at >= e.first_exposure
         AND p.purchased_at < e.first_exposure + INTERVAL {int(window_days)} DAY
        GROUP BY e.person""")
    arms = "[" + ", ".join(_literal(arm) for arm in ARMS) + "]"
    con.execute(f"""
        CREATE TABLE per_person AS
        SELECT e.person, {arms}[e.arm + 1] AS arm,
               coalesce(a.purchases, 0) AS purchases,
               coalesce(a.revenue, 0.0) AS revenue
        FROM exposed e LEFT JOIN attributed a ON a.person = e.person""")
    segment, segment_join = f"'{ALL}'", ""
    if breakdown:
        ref, column = BREAKDOWN
        # codes in the values' own order, so min(code) is the code of min(value)
        con.execute(
            f"CREATE TABLE segment_codes AS SELECT value, CAST(value AS VARCHAR) "
            f"AS seg, row_number() OVER (ORDER BY value) AS code FROM (SELECT DISTINCT "
            f'"{column}" AS value FROM {_table(ref)} WHERE "{column}" IS NOT NULL)'
        )
        con.execute(
            f"CREATE TABLE segment_rows AS SELECT t.person, c.code "
            f'FROM {_persons(ref)} t JOIN segment_codes c ON c.value = t."{column}"'
        )
        con.execute(
            "CREATE TABLE segments AS SELECT person, min(code) AS code "
            "FROM segment_rows WHERE person IN (SELECT person FROM exposed) "
            "GROUP BY person"
        )
        segment = f"coalesce(c.seg, '{NONE_SEGMENT}')"
        segment_join = (
            "LEFT JOIN segments s ON s.person = e.person "
            "LEFT JOIN segment_codes c ON c.code = s.code"
        )
    rows = con.execute(f"""
        SELECT coalesce(segment, '{ALL}'), arm, count(*), count(*) FILTER (WHERE purchases > 0),
               sum(purchases), sum(revenue)
        FROM (SELECT e.arm, {segment} AS segment, e.purchases, e.revenue
              FROM per_person e {segment_join})
        GROUP BY GROUPING SETS ((segment, arm), (arm))""").fetchall()
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for seg, arm, people, converters, purchases, revenue in rows:
        cells.setdefault(seg, {})[arm] = {
            "people": int(people),
            "converters": int(converters),
            "purchases": int(purchases),
            "revenue": float(revenue),
        }
    overall = cells.pop(ALL, {})
    return overall, (cells if breakdown else {})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="directory with bank/, telecom/, retailer/")
    parser.add_argument("--memory-limit", default="512MB", help="DuckDB memory limit")
    parser.add_argument(
        "--audience",
        default=BENCH_AUDIENCE,
        help="conjunction of dataset.column op value comparisons",
    )
    parser.add_argument("--window-days", type=int, default=28)
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip the lift breakdown by telecom region"
    )
    parser.add_argument("--workdir", type=Path, help="where the database and spill files go")
    args = parser.parse_args(argv)
    try:
        result = run_baseline(
            args.data_dir,
            args.memory_limit,
            args.audience,
            window_days=args.window_days,
            breakdown=not args.no_breakdown,
            workdir=args.workdir,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:  # e.g. out of memory under --memory-limit
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
