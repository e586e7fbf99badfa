"""A data provider's node: serves its own data, and only to an attested coordinator.

It runs next to the provider's files (CSV, Parquet) or DuckDB database, in an
enclave in production.  For every session it checks, before sending a byte of
data: the coordinator's attestation (MRENCLAVE pinned by the definition, the
TLS key, the definition hash, this session's nonce; SIMULATED evidence only if
the definition allows it) and that every provider, this one included, has
approved this exact definition and these enclaves.

It then sends only the columns approved analyses need, with identifiers
normalised and re-keyed (64-bit AES-CMAC keyed identifiers under the
collaboration key the coordinator enclave hands over on the attested channel;
one ``Rekeyer`` per stream), as Arrow record batches streamed in bounded
chunks.  A bad file produces a report of counts and column names
(never values); the coordinator discards anything it staged; the node keeps
serving.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sgxcloud.cleanroom.approvals import Approval, decode_public_key, verify_approvals
from sgxcloud.cleanroom.definition import Dataset, Definition
from sgxcloud.cleanroom.errors import CleanroomError, IngestError
from sgxcloud.cleanroom.identifiers import KEY_BYTES, PrepareReport, Rekeyer, prepare_batch
from sgxcloud.cleanroom.transport import (
    AttestedChannel,
    AttestedServer,
    Kind,
    PeerRefused,
    TlsIdentity,
)
from sgxcloud.cleanroom.transport.channel import Opening
from sgxcloud.cleanroom.transport.signer import check_session_proof
from sgxcloud.cleanroom.transport.trust import SIMULATION_WARNING, local_attester, peer_policy
from sgxcloud.errors import InputError

log = logging.getLogger("sgxcloud.cleanroom.node")

DEFAULT_BATCH_ROWS = 65_536
IDLE_TIMEOUT_S = 30.0
"""How long an attested session may wait for its next request before the node
closes it.  The coordinator sends each request as soon as its session is open
and says ``bye`` as soon as it has the answer (before ingesting it), so it is
never quiet for more than milliseconds; a silent session only holds a place
(red team attack-rt5, finding 2: an hour was allowed).  Under pressure an
idle session gives its place to a newcomer after 2 s already (transport.server)."""
WRITE_STALL_S = 60.0
"""How long one write of an answer may stall: the coordinator takes each 1 MiB
frame into a staging file as it arrives."""
MAX_LINES_SHOWN = 5
SOURCE_SUFFIXES = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".duckdb": "duckdb",
    ".db": "duckdb",
}


@dataclass(frozen=True)
class Source:
    """Where one dataset lives on the provider's side."""

    path: Path
    format: str
    table: str | None = None  # DuckDB only

    @classmethod
    def parse(cls, spec: str) -> Source:
        """``file.csv``, ``file.parquet`` or ``file.duckdb:table``."""
        path_text, _, table = _split_duckdb(spec)
        path = Path(path_text)
        fmt = SOURCE_SUFFIXES.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"{path}: unsupported data file type (use .csv, .parquet or .duckdb)")
        if fmt == "duckdb" and not table:
            raise InputError(f"{path}: name the DuckDB table as {path}:TABLE")
        return cls(path, fmt, table or None)

    def describe(self) -> str:
        return f"{self.path}:{self.table}" if self.table else str(self.path)


def _split_duckdb(spec: str) -> tuple[str, str, str]:
    match = re.fullmatch(r"(.+\.(?:duckdb|db)):([A-Za-z_][A-Za-z0-9_]*)", spec)
    return (match.group(1), ":", match.group(2)) if match else (spec, "", "")


# -- reading provider data in bounded batches -----------------------------------------


def read_batches(source: Source, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Yield ``columns`` of ``source`` in batches of at most ``batch_rows`` rows.

    Raises :class:`IngestError` with a value-free message for unreadable files
    and missing columns.  CSV cells are read as text; typing is
    ``prepare_batch``'s job, so phone numbers never turn into integers.
    """
    if not source.path.exists():
        raise IngestError(f"{source.describe()}: file not found", {"problem": "file_not_found"})
    reader = {"csv": _csv_batches, "parquet": _parquet_batches, "duckdb": _duckdb_batches}
    try:
        yield from reader[source.format](source, columns, batch_rows)
    except IngestError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        if source.format == "csv":
            raise _csv_error(exc, source, columns) from None
        raise IngestError(
            f"{source.describe()}: {_safe_reason(exc)}", {"problem": "malformed_file"}
        ) from None
    except Exception as exc:  # DuckDB's own error classes
        if type(exc).__module__.startswith("duckdb"):
            raise IngestError(
                f"{source.describe()}: cannot read table ({type(exc).__name__})",
                {"problem": "malformed_file"},
            ) from None
        raise


_NOT_UTF8 = re.compile(r"invalid UTF-8|Invalid UTF8", re.I)
_FIELD_COUNT = re.compile(r"Expected (\d+) columns, got (\d+)")


def _csv_error(exc: Exception, source: Source, columns: list[str] | None) -> IngestError:
    """Arrow's refusal of a CSV file, located by reading it again with Python:
    the lines (and columns) at fault, never their text (Arrow's message quotes it)."""
    if isinstance(exc, UnicodeDecodeError) or _NOT_UTF8.search(str(exc)):
        return _encoding_error(source, columns)
    fields = _FIELD_COUNT.search(str(exc))
    if fields:
        return _field_count_error(source, int(fields.group(1)))
    if "straddl" in str(exc):  # a record longer than a block
        return _long_record_error(source)
    return IngestError(f"{source.describe()}: {_safe_reason(exc)}", {"problem": "malformed_file"})


_SAFE_PATTERNS = (
    (re.compile(r"Expected (\d+) columns, got (\d+)"), "a row has {1} fields, the header {0}"),
    (re.compile(r"CSV parse error: Row #(\d+)"), "CSV parse error in row {0}"),
    (re.compile(r"Parquet magic bytes not found"), "not a Parquet file"),
    (re.compile(r"Could not open Parquet"), "not a Parquet file"),
    (re.compile(r"Empty CSV file"), "empty CSV file"),
    (re.compile(r"invalid UTF-8|Invalid UTF8", re.I), "text is not valid UTF-8"),
)


def _safe_reason(exc: Exception) -> str:
    """A description of a parse failure that quotes no cell (Arrow's messages do)."""
    text = str(exc)
    for pattern, template in _SAFE_PATTERNS:
        match = pattern.search(text)
        if match:
            return template.format(*match.groups())
    return f"malformed file ({type(exc).__name__})"


def _require(available: list[str], columns: list[str], source: Source) -> None:
    missing = [c for c in columns if c not in available]
    if missing:
        raise IngestError(
            f"{source.describe()}: missing column(s) {', '.join(missing)}",
            {"problem": "schema_mismatch", "missing_columns": missing},
        )


def _csv_batches(source: Source, columns: list[str], batch_rows: int):
    # No invalid_row_handler: Arrow cannot hand one a row that is not UTF-8 (it
    # prints a traceback and raises anyway); a short or long row raises, and
    # _csv_error finds its line.
    parse = _csv_parse_options(source)
    _require(_csv_header(source, parse), columns, source)
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types={c: pa.string() for c in columns},
        strings_can_be_null=True,
    )
    with pacsv.open_csv(
        source.path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=parse,
        convert_options=convert,
    ) as reader:
        for batch in reader:
            yield from _split(batch, batch_rows)


CSV_DELIMITERS = (",", ";", "\t")


def csv_delimiter(path: Path) -> str:
    """A CSV file's field separator: of a comma, a semicolon and a tab, the one its
    header line has most of (spreadsheets in many locales export semicolons);
    a comma on a tie."""
    try:
        with path.open("rb") as handle:
            header = handle.readline(1 << 20)
    except OSError:
        return ","
    counts = [header.count(d.encode()) for d in CSV_DELIMITERS]
    return CSV_DELIMITERS[counts.index(max(counts))]


def _csv_parse_options(source: Source) -> pacsv.ParseOptions:
    # Quoted line breaks (multi-line cells, as spreadsheets write them) anywhere:
    # without newlines_in_values one that falls on a block boundary stops Arrow
    # ("parser got out of sync with chunker"); it costs no measurable time.
    return pacsv.ParseOptions(delimiter=csv_delimiter(source.path), newlines_in_values=True)


def csv_columns(source: Source) -> list[str]:
    """A CSV file's column names, read as the node reads them; raises
    :class:`IngestError` as :func:`read_batches` does."""
    try:
        return _csv_header(source, _csv_parse_options(source))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _csv_error(exc, source, None) from None


CSV_BLOCK_BYTES = 4 << 20
"""Arrow reads a CSV file in blocks of this size: a record (a line, or several
with quoted line breaks) must fit in one."""


def _csv_header(source: Source, parse: pacsv.ParseOptions) -> list[str]:
    with pacsv.open_csv(
        source.path,
        read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
        parse_options=parse,
        convert_options=pacsv.ConvertOptions(column_types={}),
    ) as probe:
        return list(probe.schema.names)


def csv_records(path: Path, errors: str = "replace") -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) of every non-empty CSV record, header
    included, read as Python's csv module reads it (quoted newlines count).  For
    error reports only: it is ~50x slower than Arrow."""
    import csv

    # Arrow reads fields of any length; Python's csv refuses those over 128 KiB
    # by default (one process-wide setting, raised once)
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    delimiter = csv_delimiter(path)
    with path.open(newline="", encoding="utf-8-sig", errors=errors) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        start = 1
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1


def csv_lines(path: Path, rows: list[int]) -> dict[int, int]:
    """The file line of each data row (0-based, header excluded)."""
    wanted, out = set(rows), {}
    for index, (line, _) in enumerate(csv_records(path)):
        if index - 1 in wanted:
            out[index - 1] = line
            if len(out) == len(wanted):
                break
    return out


def _encoding_error(source: Source, columns: list[str] | None) -> IngestError:
    """Where a CSV file is not UTF-8 (a Windows-1252 export, typically): the lines
    and columns (of ``columns``; None: any) it is not in, never the bytes."""

    def undecodable(text: str) -> bool:
        return any("\udc80" <= ch <= "\udcff" for ch in text)

    bad: list[tuple[int, str]] = []
    header: list[str] | None = None
    for line, fields in csv_records(source.path, errors="surrogateescape"):
        if header is None:
            header = [f"field {i + 1}" if undecodable(h) else h for i, h in enumerate(fields)]
            if any(map(undecodable, fields)):
                bad.append((line, "the header"))
            continue
        for index, text in enumerate(fields):
            name = header[index] if index < len(header) else f"field {index + 1}"
            if (columns is None or name in columns) and undecodable(text):
                bad.append((line, name))
                break
    shown = ", ".join(f"line {line} ({column})" for line, column in bad[:MAX_LINES_SHOWN])
    more = f" and {len(bad) - MAX_LINES_SHOWN} more line(s)" if len(bad) > MAX_LINES_SHOWN else ""
    return IngestError(
        f"{source.describe()}: {len(bad) or 'some'} line(s) are not UTF-8 text: "
        f"{shown or 'lines not found'}{more}; save the file as UTF-8 (Excel: 'CSV UTF-8')",
        {
            "problem": "encoding",
            "lines": [line for line, _ in bad[:MAX_LINES_SHOWN]],
            "columns": list(dict.fromkeys(column for _, column in bad[:MAX_LINES_SHOWN])),
            "count": len(bad),
        },
    )


def _long_record_error(source: Source) -> IngestError:
    """The lines where records longer than a block start (often a quote that is
    never closed, which takes the rest of the file into one value)."""
    sizes = [
        (len(",".join(fields).encode("utf-8", "replace")), line)
        for line, fields in csv_records(source.path)
    ]
    bad = [line for size, line in sizes if size > CSV_BLOCK_BYTES]
    bad = bad or [max(sizes)[1]] if sizes else []  # the longest, at least
    shown = ", ".join(f"line {line}" for line in bad[:MAX_LINES_SHOWN])
    return IngestError(
        f"{source.describe()}: a record longer than {CSV_BLOCK_BYTES >> 20} MiB starts at "
        f"{shown or 'a line not found'}; is a double quote not closed, or a line break missing?",
        {"problem": "long_record", "lines": bad[:MAX_LINES_SHOWN], "count": len(bad)},
    )


def _field_count_error(source: Source, expected: int) -> IngestError:
    bad = [
        (line, len(fields)) for line, fields in csv_records(source.path) if len(fields) != expected
    ]
    shown = ", ".join(f"line {line} has {n}" for line, n in bad[:MAX_LINES_SHOWN])
    more = f" and {len(bad) - MAX_LINES_SHOWN} more line(s)" if len(bad) > MAX_LINES_SHOWN else ""
    return IngestError(
        f"{source.describe()}: {len(bad) or 'some'} line(s) do not have the header's "
        f"{expected} fields: {shown or 'lines not found'}{more}; a value containing a comma, "
        "quote or line break must be in double quotes",
        {
            "problem": "field_count",
            "expected_fields": expected,
            "lines": [line for line, _ in bad[:MAX_LINES_SHOWN]],
            "count": len(bad),
        },
    )


def _parquet_batches(source: Source, columns: list[str], batch_rows: int):
    parquet = pq.ParquetFile(source.path)
    _require(parquet.schema_arrow.names, columns, source)
    yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


def _duckdb_batches(source: Source, columns: list[str], batch_rows: int):
    import duckdb

    with duckdb.connect(str(source.path), read_only=True) as con:
        names = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                [source.table],
            ).fetchall()
        ]
        if not names:
            raise IngestError(f"{source.describe()}: no such table", {"problem": "schema_mismatch"})
        _require(names, columns, source)
        # Column names come from the validated definition and the table name matched
        # an identifier pattern in Source.parse, so quoting them is enough.
        select = ", ".join(f'"{c}"' for c in columns)
        query = f'SELECT {select} FROM "{source.table}"'  # noqa: S608
        # A relation streams (DuckDB >= 2); the older cursor API is the fallback.
        relation = con.sql(query)
        reader = (
            relation.to_arrow_reader(batch_rows)
            if hasattr(relation, "to_arrow_reader")
            else relation.fetch_arrow_reader(batch_rows)
        )
        for batch in reader:
            yield from _split(batch, batch_rows)


def _split(batch: pa.RecordBatch, rows: int):
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


# -- the node -----------------------------------------------------------------------------


@dataclass
class NodeConfig:
    provider: str
    definition: Definition
    sources: dict[str, Source]
    approvals: list[Approval] = field(default_factory=list)
    simulate: bool = False
    simulate_mrenclave: str | None = None
    allow_simulated: bool = False
    """Accept a SIMULATED coordinator (only if the definition allows it too)."""
    batch_rows: int = DEFAULT_BATCH_ROWS
    collateral_source: Any = None
    """Where DCAP collateral comes from (``FileCollateral``/``PccsCollateral``)."""
    max_invalid_fraction: float = 0.01
    """Share of invalid identifiers (or of rows left without any) above which the
    whole dataset is refused; below it they are dropped and counted."""
    coordinator: str | None = None
    """The one coordinator served: its result-signing key (``ed25519:…``, what
    ``cleanroom status`` shows as attested).  None: any attested coordinator
    of this definition, as approvals allow."""

    def validate(self) -> None:
        if self.provider not in self.definition.providers:
            raise InputError(f"{self.provider} is not a data provider in this definition")
        if self.coordinator is not None:
            try:
                decode_public_key(self.coordinator)
            except CleanroomError as exc:
                raise InputError(f"--coordinator: {exc}") from None
        declared = {d.name for d in self.definition.datasets_of(self.provider)}
        unknown = sorted(set(self.sources) - declared)
        if unknown:
            raise InputError(
                f"dataset(s) {', '.join(unknown)} are not declared for "
                f"{self.provider} in the definition"
            )


class _FrameSink:
    """File-like object Arrow's IPC writer writes into; ships 1 MiB DATA frames."""

    def __init__(self, channel: AttestedChannel, chunk: int = 1 << 20) -> None:
        self._channel = channel
        self._buffer = bytearray()
        self._chunk = chunk
        self.closed = False
        self.bytes_sent = 0

    def write(self, data) -> int:
        self._buffer += bytes(data)
        while len(self._buffer) >= self._chunk:
            self._ship(bytes(self._buffer[: self._chunk]))
            del self._buffer[: self._chunk]
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            self._ship(bytes(self._buffer))
            self._buffer.clear()

    def _ship(self, data: bytes) -> None:
        self._channel.frames.send(Kind.DATA, data)
        self.bytes_sent += len(data)

    def close(self) -> None:
        self.flush()
        self.closed = True


class ProviderNode:
    """Serves one provider's datasets over attested sessions."""

    def __init__(self, config: NodeConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        config.validate()
        self.config = config
        self.definition = config.definition
        # What the operator sees (never a value); bounded for a long-running node.
        self.events: deque[dict[str, Any]] = deque(maxlen=1000)
        if config.allow_simulated and self.definition.enclaves.allow_simulated:
            log.warning(SIMULATION_WARNING)
        self.server = AttestedServer(
            host,
            port,
            TlsIdentity.generate(f"node-{config.provider}"),
            "node",
            peer_policy(
                self.definition,
                "coordinator",
                config.collateral_source,
                allow_simulated=config.allow_simulated,
            ),
            local_attester(
                self.definition,
                "node",
                simulate=config.simulate,
                mrenclave=config.simulate_mrenclave,
            ),
            self._serve_session,
            on_refusal=lambda reason: self._event("refused", reason=reason),
            # No HELLO extra: it goes to the peer before its evidence is checked,
            # and the provider's name told a stranger whose node this is (red
            # team rt7 finding 8); the attested coordinator asks 'describe'.
            admit=self._admit,
            vouch=self._vouch if config.coordinator is not None else None,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address

    def start(self) -> None:
        self.server.start()

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def stop(self) -> None:
        self.server.stop()

    def _event(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "provider": self.config.provider, **fields}
        self.events.append(event)
        log.info("%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))

    # -- one session ------------------------------------------------------------------

    def _serve_session(self, channel: AttestedChannel) -> None:
        self._event(
            "session",
            coordinator=channel.peer.identity.mrenclave[:16],
            simulated=channel.peer.simulated,
        )
        while True:
            # Idle while waiting here (the listener may give the place away or
            # close it after IDLE_TIMEOUT_S); the request, once read, is never cut.
            request = channel.next_request(IDLE_TIMEOUT_S, WRITE_STALL_S)
            if request is None:
                return
            op = request.get("op")
            if op == "describe":
                channel.respond(self._describe())
            elif op == "send":
                self._send_dataset(channel, request)
            elif op == "bye":
                return
            else:
                channel.refuse("bad_request", f"unknown operation {str(op)[:40]!r}")
                return

    def _vouch(self, opening: Opening) -> None:
        """No session for another coordinator than the one configured: checked
        before its evidence (one Ed25519 signature, where the evidence may be a
        full DCAP quote check), so a stranger's opening costs no quote check
        (red team attack-rt6, lead)."""
        assert self.config.coordinator is not None
        check_session_proof(
            opening.evidence,
            self.config.coordinator,
            self.definition.definition_hash(),
            opening.nonce,
            opening.peer_key,
        )

    def _admit(self, _peer: Any, opening: Opening) -> None:
        """No data without every provider's approval of this definition and these
        enclaves, this provider's above all (checked inside the session opening,
        after the coordinator's signer, :meth:`_vouch`)."""
        offered = (opening.hello.get("extra") or {}).get("approvals") or []
        approvals = list(self.config.approvals)
        try:
            approvals += [Approval.from_dict(a) for a in offered]
        except CleanroomError as exc:
            raise PeerRefused(f"malformed approvals from the coordinator ({exc})") from exc
        status = verify_approvals(self.definition, approvals)
        if self.config.provider not in status.valid:
            raise PeerRefused(
                f"no valid approval from {self.config.provider} of definition "
                f"{self.definition.definition_hash()[:16]}… and its enclaves"
            )
        if not status.complete:
            raise PeerRefused(
                "approvals incomplete: missing or invalid from "
                + ", ".join((*status.missing, *status.invalid))
            )

    def _describe(self) -> dict[str, Any]:
        datasets = []
        for ds in self.definition.datasets_of(self.config.provider):
            source = self.config.sources.get(ds.name)
            datasets.append(
                {
                    "dataset": ds.name,
                    "available": source is not None,
                    "columns": list(self.definition.columns_needed(ds.ref)),
                }
            )
        return {"provider": self.config.provider, "datasets": datasets}

    def _send_dataset(self, channel: AttestedChannel, request: dict[str, Any]) -> None:
        name = str(request.get("dataset", ""))
        ds = self.definition.dataset(f"{self.config.provider}.{name}")
        source = self.config.sources.get(name)
        if ds is None or source is None:
            channel.refuse("bad_request", f"{self.config.provider} serves no dataset {name[:40]!r}")
            return
        try:
            key = base64.b64decode(str(request.get("key", "")), validate=True)
        except ValueError:
            key = b""
        if len(key) != KEY_BYTES:
            channel.refuse("bad_request", "the re-keying key must be 32 bytes")
            return
        batch_rows = min(
            int(request.get("batch_rows") or self.config.batch_rows), self.config.batch_rows
        )
        try:
            trailer = self._stream(channel, ds, source, key, batch_rows)
        except IngestError as exc:
            # every ingestion error names the dataset, whatever layer raised it
            reason = str(exc) if str(exc).startswith(ds.ref + ":") else f"{ds.ref}: {exc}"
            self._event("rejected", dataset=name, reason=reason, report=exc.report)
            channel.refuse("bad_input", reason)
            return
        self._event("sent", dataset=name, rows=trailer["rows"], bytes=trailer["bytes"])

    def _stream(
        self, channel: AttestedChannel, ds: Dataset, source: Source, key: bytes, batch_rows: int
    ) -> dict[str, Any]:
        columns = list(self.definition.columns_needed(ds.ref))
        report = PrepareReport(ds.ref)
        sink = _FrameSink(channel)
        writer = None
        batches = 0
        for prepared in prepared_batches(
            ds, source, columns, Rekeyer(key), batch_rows, report, self.config.max_invalid_fraction
        ):
            if writer is None:
                writer = pa.ipc.new_stream(sink, prepared.schema)
            writer.write_batch(prepared)
            batches += 1
        assert writer is not None  # prepared_batches refuses a dataset without rows
        writer.close()
        sink.flush()
        trailer = {
            "rows": report.rows_out,
            "batches": batches,
            "bytes": sink.bytes_sent,
            "report": report.to_dict(),
        }
        channel.frames.send_json(Kind.END, trailer)
        return trailer


def prepared_batches(
    ds: Dataset,
    source: Source,
    columns: list[str],
    rekeyer: Rekeyer,
    batch_rows: int,
    report: PrepareReport,
    max_invalid_fraction: float,
) -> Iterator[pa.RecordBatch]:
    """What a node sends of ``ds``: ``columns`` read in batches, identifiers
    re-keyed, values cast and checked.  Raises a value-free :class:`IngestError`
    naming the file, its lines and the column for anything the node refuses —
    the identifier share after the last batch, before the stream ends: a
    receiver keeps nothing of a refused stream."""
    offset = 0
    batches = 0
    for raw in read_batches(source, columns, batch_rows):
        try:
            prepared, part = prepare_batch(ds, raw, rekeyer, columns)
        except IngestError as exc:
            raise locate(exc, ds, source, offset) from None
        offset += raw.num_rows
        report.add(part)
        batches += 1
        yield prepared
    if not batches:
        raise IngestError(
            f"{source.describe()}: no data rows (a header alone, or an empty table)",
            {"problem": "empty"},
        )
    check_identifier_share(ds, source, report, max_invalid_fraction)


def check_identifier_share(
    ds: Dataset, source: Source, report: PrepareReport, limit: float
) -> None:
    """Refuse a dataset when too many rows have unusable identifiers.  Counts only:
    the rows and values are shown by ``node check``, on the provider's machine."""
    invalid = sum(report.invalid.values())
    worst = max(invalid, report.rows_without_identifier)
    if report.rows_in and worst / report.rows_in > limit:
        per_column = ", ".join(f"{k}={v}" for k, v in report.invalid.items())
        raise IngestError(
            f"{ds.ref}: {source.describe()}: {invalid} invalid identifier(s)"
            + (f" ({per_column})" if per_column else "")
            + f" and {report.rows_without_identifier} row(s) without a usable identifier in "
            f"{report.rows_in} rows (limit {limit:.1%}); to see the rows, run "
            "'sgxcloud cleanroom node check' on the provider's machine",
            {"problem": "bad_identifiers", **report.to_dict()},
        )


def locate(exc: IngestError, ds: Dataset, source: Source, offset: int) -> IngestError:
    """The same error, naming the dataset, the file and the file's lines (CSV) or
    rows (Parquet, DuckDB) instead of positions in one batch."""
    report = dict(exc.report)
    rows = [offset + r for r in report.get("bad_rows", [])]
    if not rows:
        return exc
    if source.format == "csv":
        lines = csv_lines(source.path, rows)
        where = "line" if len(rows) == 1 else "lines"
        numbers = [lines.get(r, r + 2) for r in rows]
    else:
        where = "row" if len(rows) == 1 else "rows"
        numbers = [r + 1 for r in rows]
    count = int(report.get("bad_count", len(rows)))
    more = f" and {count - len(rows)} more" if count > len(rows) else ""
    report.update(
        bad_rows=[r + 1 for r in rows],
        file=source.describe(),
        **({"lines": numbers} if source.format == "csv" else {}),
    )
    detail = str(exc).split(": ", 1)[1] if str(exc).startswith(ds.ref + ": ") else str(exc)
    return IngestError(
        f"{ds.ref}: {source.describe()}, {where} {', '.join(map(str, numbers))}{more}: {detail}",
        report,
    )
