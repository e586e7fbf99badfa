"""``node check``: a provider's dry run over its own files, before anything leaves.

It reads every declared column the way the node will (same readers, same
conversions, same identifier rules) and reports, per dataset: schema problems,
values that cannot be read as their declared type, time zones, invalid
identifiers, rows without any identifier, duplicates and empty columns —
with file lines (CSV) or rows, and *examples of the offending values*.

Examples are the provider's own data shown to the provider on its own
machine: this module is never used by the node's serving path, and nothing
it produces is sent or logged anywhere (the node's errors carry rows and
counts only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgxcloud.cleanroom import columns as coltypes
from sgxcloud.cleanroom.definition import Dataset, Definition
from sgxcloud.cleanroom.errors import IngestError
from sgxcloud.cleanroom.identifiers import (
    Rekeyer,
    _column_types,
    _value_checks,
    new_key,
    normalise_array,
)
from sgxcloud.cleanroom.node import Source, csv_columns, csv_lines, read_batches

MAX_EXAMPLES = 5
MAX_EXAMPLE_CHARS = 200
HEADER = -1  # a finding's "row" for the file's header line (the columns it names)
WITHOUT_IDENTIFIER = "rows without any usable identifier (dropped, never sent)"
KIND_NAMES = {"email": "e-mail addresses", "phone": "phone numbers", "customer_id": "customer ids"}
PHONE_HINT = (
    "numbers without a country code are read in default_phone_region {region}; "
    "write others as +<country code> …"
)


@dataclass
class Finding:
    severity: str  # "error" (the node would refuse the dataset), "warning", "info"
    column: str
    message: str
    count: int = 0
    rows: list[int] = field(default_factory=list)  # 0-based data rows until located
    examples: list[str] = field(default_factory=list)
    where: str = ""  # "line" (CSV) or "row", with ``rows`` as file numbers once located

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "column": self.column,
            "message": self.message,
            "count": self.count,
            self.where + "s" if self.where else "rows": self.rows,
            "examples": self.examples,
        }


@dataclass
class DatasetCheck:
    dataset: str
    source: str
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "source": self.source,
            "rows": self.rows,
            "errors": self.errors,
            "warnings": self.warnings,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class CheckReport:
    provider: str
    datasets: list[DatasetCheck]

    @property
    def ok(self) -> bool:
        return not any(d.errors for d in self.datasets)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "ok": self.ok,
            "datasets": [d.to_dict() for d in self.datasets],
        }


def check_provider(
    definition: Definition,
    provider: str,
    sources: dict[str, Source],
    max_invalid_fraction: float = 0.01,
    batch_rows: int = 65_536,
) -> CheckReport:
    """Check every dataset of ``provider`` that ``sources`` names (and say which
    declared ones have no file)."""
    checks = []
    for ds in definition.datasets_of(provider):
        source = sources.get(ds.name)
        if source is None:
            check = DatasetCheck(ds.ref, "")
            check.findings.append(
                Finding("warning", "", f"no file given for this dataset (--dataset {ds.name}=FILE)")
            )
            checks.append(check)
            continue
        checks.append(check_dataset(definition, ds, source, max_invalid_fraction, batch_rows))
    return CheckReport(provider, checks)


class _Tracker:
    """Findings of one kind over all batches: count, first rows, first examples."""

    def __init__(self) -> None:
        self.count = 0
        self.rows: list[int] = []
        self.examples: list[str] = []

    def add(self, mask: pa.Array, values: pa.Array | None, offset: int) -> None:
        hits = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
        self.count += len(hits)
        room = MAX_EXAMPLES - len(self.rows)
        for i in hits[: max(0, room)]:
            self.rows.append(offset + i)
            if values is not None:
                text = str(values[i].as_py())  # cut: a cell may hold a whole file
                cut = len(text) > MAX_EXAMPLE_CHARS
                self.examples.append(text[:MAX_EXAMPLE_CHARS] + "…" * cut)


def check_dataset(
    definition: Definition,
    ds: Dataset,
    source: Source,
    max_invalid_fraction: float = 0.01,
    batch_rows: int = 65_536,
) -> DatasetCheck:
    check = DatasetCheck(ds.ref, source.describe())
    needed = list(definition.columns_needed(ds.ref))
    declared = list(dict.fromkeys([*needed, *(a.column for a in ds.attributes), *ds.event_columns]))
    available = _columns_of(source, check)
    if available is None:
        return check
    check.findings += _schema_findings(needed, declared, available)
    if any(c not in available for c in needed):
        _locate(check, source)
        return check  # nothing to read the values by
    scan = _Scan(ds, [c for c in declared if c in available])
    try:
        for raw in read_batches(source, scan.present, batch_rows):
            scan.add(pa.Table.from_batches([raw]) if isinstance(raw, pa.RecordBatch) else raw)
    except IngestError as exc:
        _locate(check, source)
        check.findings.append(_reader_finding(exc, source))
        return check
    if not scan.rows:
        message = "no data rows (a header alone): the node would refuse it"
        check.findings.append(Finding("error", "", message, rows=[HEADER]))
    check.rows = scan.rows
    check.findings += scan.tracked()
    _duplicates(ds, scan.keyed, scan.keyed_rows, check)
    _identifier_share(check, scan.trackers, scan.kinds, max_invalid_fraction)
    check.findings += _empty_columns(scan.nulls, scan.rows)
    check.findings += _zone_findings(ds, scan.zones, scan.zone_rows)
    _locate(check, source)
    check.findings.sort(key=lambda f: SEVERITY_ORDER[f.severity])  # stable: found order within
    return check


SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def _reader_finding(exc: IngestError, source: Source) -> Finding:
    """The node's own refusal of a file (a short CSV line, bytes that are not
    UTF-8), without the file's name again: lines and columns from its report."""
    message = str(exc).replace(f"{source.describe()}: ", "", 1)
    report = exc.report
    column = str(report.get("column", "")) or ", ".join(report.get("columns", []))
    lines = [int(n) for n in report.get("lines", [])]
    return Finding("error", column, message, int(report.get("count", 0)), lines, where="line")


def _schema_findings(needed: list[str], declared: list[str], available: list[str]) -> list[Finding]:
    """Columns an analysis needs but the file lacks (the node would refuse),
    declared ones no analysis needs (never sent anyway), undeclared ones (never leave)."""
    findings = []
    missing = [c for c in needed if c not in available]
    if missing:
        message = "column(s) missing: an allowed analysis needs them"
        findings.append(Finding("error", ", ".join(missing), message, rows=[HEADER]))
    unused_missing = [c for c in declared if c not in needed and c not in available]
    if unused_missing:
        message = (
            "declared in the definition but not in the "
            "file; no analysis uses them, so nothing is lost (they would never be sent)"
        )
        findings.append(Finding("warning", ", ".join(unused_missing), message, rows=[HEADER]))
    extra = [c for c in available if c not in declared]
    if extra:
        message = "not declared: these columns never leave this machine"
        findings.append(Finding("info", ", ".join(extra), message, rows=[HEADER]))
    return findings


class _Scan:
    """What one pass over a dataset's batches gathers: findings by kind, blanks
    per column, the re-keyed identifiers (for duplicates) and the time zones seen."""

    def __init__(self, ds: Dataset, present: list[str]) -> None:
        self.ds = ds
        self.present = present
        self.types = _column_types(ds)
        self.kinds = {i.column: i.kind for i in ds.identifiers}
        self.trackers: dict[tuple[str, str, str], _Tracker] = {}
        self.nulls = dict.fromkeys(present, 0)
        self.keyed: dict[str, list[np.ndarray]] = {c: [] for c in self.kinds if c in present}
        self.keyed_rows: dict[str, list[np.ndarray]] = {c: [] for c in self.keyed}
        self.rekeyer = Rekeyer(new_key())  # a throw-away key: only equality matters here
        self.zones = [0, 0, 0, 0]  # timestamps with offset, naive, ambiguous, nonexistent
        self.zone_rows = _Tracker()  # ambiguous or nonexistent local times
        self.rows = 0  # read so far: the next batch's first data row

    def track(self, column: str, severity: str, message: str) -> _Tracker:
        return self.trackers.setdefault((column, severity, message), _Tracker())

    def add(self, table: pa.Table) -> None:
        """One batch: identifiers, then every other column's type, then the
        declared values of the rows that have an identifier."""
        has_id = None
        for col in self.present:
            values = table[col].combine_chunks()
            self.nulls[col] += _blank(values)
            if col in self.kinds:
                valid = _identifier(
                    values,
                    self.kinds[col],
                    self.ds,
                    col,
                    self.rows,
                    self.track,
                    self.keyed,
                    self.keyed_rows,
                    self.rekeyer,
                )
                has_id = valid if has_id is None else pc.or_(has_id, valid)
            else:
                self._typed(col, values)
        if has_id is not None:
            self.track(", ".join(self.kinds), "warning", WITHOUT_IDENTIFIER).add(
                pc.invert(has_id), None, self.rows
            )
            _values(self.ds, table, self.types, has_id, self.rows, self.track)
        self.rows += table.num_rows

    def _typed(self, col: str, values: pa.Array) -> None:
        """Values of ``col`` that cannot be read as its declared type (and, for
        the event time, how its zones read)."""
        ds = self.ds
        zone = ds.timestamp_timezone if col == ds.timestamp_column else "UTC"
        if col == ds.timestamp_column and pa.types.is_string(values.type):
            _count_zones(values, zone, self.zones, self.zone_rows, self.rows)
        try:
            coltypes.convert(values, self.types[col], zone)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            bad = coltypes.bad_rows(values, self.types[col], zone)
            mask = np.zeros(len(values), dtype=bool)
            mask[bad] = True
            self.track(
                col,
                "error",
                f"value(s) cannot be read as "
                f"{coltypes.type_name(self.types[col])}; "
                f"accepted: {coltypes.accepted_text(self.types[col], zone)}",
            ).add(pa.array(mask), values, self.rows)

    def tracked(self) -> list[Finding]:
        """A finding for each kind of problem seen at least once, in order seen."""
        return [
            Finding(severity, column, message, tracker.count, tracker.rows, tracker.examples)
            for (column, severity, message), tracker in self.trackers.items()
            if tracker.count
        ]


def _count_zones(
    values: pa.Array, zone: str, zones: list[int], gaps: _Tracker, offset: int
) -> None:
    """Add to ``zones`` the timestamp texts of ``values`` that carry an offset,
    those that do not, and local times that are ambiguous or fall in a gap in ``zone``."""
    aware = (
        pc.sum(pc.fill_null(pc.match_substring_regex(values, coltypes._OFFSET), False)).as_py() or 0
    )
    zones[0] += aware
    zones[1] += len(values) - values.null_count - aware
    ambiguous, gap = coltypes.local_time_gaps(values, zone)
    zones[2] += pc.sum(ambiguous).as_py() or 0
    zones[3] += pc.sum(gap).as_py() or 0
    gaps.add(pc.or_(ambiguous, gap), values, offset)


def _empty_columns(nulls: dict[str, int], rows: int) -> list[Finding]:
    return [
        Finding("warning", col, "empty in every row", n, [HEADER])
        for col, n in nulls.items()
        if rows and n == rows
    ]


def _zone_findings(ds: Dataset, zones: list[int], gaps: _Tracker) -> list[Finding]:
    """How zone-less timestamps were read, and local times that are not one instant."""
    with_zone, naive, ambiguous, gap = zones
    findings = []
    if ds.timestamp_column and (with_zone or naive):
        findings.append(
            Finding(
                "info",
                ds.timestamp_column,
                f"{naive:,} timestamp(s) without a zone, read in {ds.timestamp_timezone} "
                "(the definition's timestamp_timezone); "
                f"{with_zone:,} with a zone or offset, kept as written",
            )
        )
    if ambiguous or gap:
        findings.append(
            Finding(
                "warning",
                ds.timestamp_column or "",
                f"{ambiguous:,} local time(s) occur twice in {ds.timestamp_timezone} (clocks "
                f"going back; read as the first) and {gap:,} do not exist (clocks going "
                "forward; moved past the gap): write an offset to be exact",
                ambiguous + gap,
                gaps.rows,
                gaps.examples,
            )
        )
    return findings


def _columns_of(source: Source, check: DatasetCheck) -> list[str] | None:
    """The file's column names, or None (with the error recorded)."""
    try:
        if source.format == "csv":
            return csv_columns(source)
        if source.format == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(source.path).schema_arrow.names)
        next(read_batches(source, [], 1), None)  # DuckDB: checks the table exists
        import duckdb

        with duckdb.connect(str(source.path), read_only=True) as con:
            return [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                    [source.table],
                ).fetchall()
            ]
    except IngestError as exc:
        check.findings.append(_reader_finding(exc, source))
    except FileNotFoundError:
        check.findings.append(Finding("error", "", "file not found"))
    except Exception as exc:  # Arrow's and DuckDB's parse errors quote data: name the kind
        check.findings.append(Finding("error", "", f"cannot read the file ({type(exc).__name__})"))
    return None


def _blank(values: pa.Array) -> int:
    if pa.types.is_string(values.type):
        return int(
            pc.sum(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(values), ""), True)).as_py() or 0
        )
    return values.null_count


def _identifier(values, kind, ds, col, offset, track, keyed, keyed_rows, rekeyer) -> pa.Array:
    text = values if pa.types.is_string(values.type) else values.cast(pa.string())
    normalised, _ = normalise_array(kind, text, ds.default_phone_region)
    blank = pc.or_(pc.is_null(text), pc.equal(pc.utf8_trim_whitespace(text), ""))
    invalid = pc.and_(pc.invert(pc.fill_null(blank, True)), pc.is_null(normalised))
    hint = f"invalid {KIND_NAMES[kind]}"
    if kind == "phone":
        hint += "; " + PHONE_HINT.format(region=ds.default_phone_region)
    track(col, "warning", hint).add(invalid, text, offset)
    present = pc.is_valid(normalised)
    rows = np.flatnonzero(np.asarray(present, dtype=bool)) + offset
    keyed[col].append(rekeyer.hash_many(kind, normalised.drop_null()))
    keyed_rows[col].append(rows)
    return present


def _values(ds, table, types, has_id, offset, track) -> None:
    """Declared values, bounds, arms, amounts: what the node would refuse."""
    identifiers = {i.column for i in ds.identifiers}
    converted = {}
    for col in table.column_names:
        if col in identifiers or col not in types:
            continue
        zone = ds.timestamp_timezone if col == ds.timestamp_column else "UTC"
        try:
            converted[col] = coltypes.convert(table[col], types[col], zone)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            continue  # reported as a type problem already
    if not converted:
        return
    for column, problem, accepted, mask in _value_checks(ds, pa.table(converted)):
        track(column, "error", f"value(s) {problem}; accepted: {accepted}").add(
            pc.and_(mask, has_id), table[column].combine_chunks(), offset
        )


def _duplicates(ds: Dataset, keyed, keyed_rows, check: DatasetCheck) -> None:
    if ds.kind != "attributes":
        return  # several exposures or purchases per person are normal
    for col, parts in keyed.items():
        if not parts:
            continue
        hashes = np.concatenate(parts)
        rows = np.concatenate(keyed_rows[col])
        _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
        repeated = counts[inverse] > 1
        if repeated.any():
            values = int((counts > 1).sum())
            check.findings.append(
                Finding(
                    "warning",
                    col,
                    f"{values:,} identifier(s) appear on more than one row; a "
                    "person's attributes are then read from several rows (a filter matches if "
                    "any row does)",
                    int(repeated.sum()),
                    [int(r) for r in rows[repeated][:5]],
                )
            )


def _identifier_share(check: DatasetCheck, trackers, kinds, limit: float) -> None:
    if not check.rows:
        return
    invalid = [
        t for (col, _, msg), t in trackers.items() if col in kinds and msg.startswith("invalid")
    ]
    without = [t for (_, _, msg), t in trackers.items() if msg == WITHOUT_IDENTIFIER]
    worst = max(sum(t.count for t in invalid), sum(t.count for t in without))
    if worst / check.rows > limit:
        check.findings.append(
            Finding(
                "error",
                ", ".join(kinds),
                f"{worst:,} of {check.rows:,} rows have unusable "
                f"identifiers: above the node's limit of {limit:.1%}, so the node would refuse "
                "this dataset (fix the rows below, or raise --max-invalid-fraction)",
                worst,
                sorted({r for t in invalid + without for r in t.rows})[:MAX_EXAMPLES],
            )
        )


def _locate(check: DatasetCheck, source: Source) -> None:
    """Data rows → file lines (CSV, in one pass) or 1-based rows."""
    rows = sorted({r for f in check.findings for r in f.rows})
    lines = csv_lines(source.path, rows) if rows and source.format == "csv" else {}
    for finding in check.findings:
        if source.format == "csv":
            finding.where = "line"
            finding.rows = [lines.get(r, r + 2) for r in finding.rows]
        else:
            finding.where = "row"
            finding.rows = [r + 1 for r in finding.rows if r != HEADER]
