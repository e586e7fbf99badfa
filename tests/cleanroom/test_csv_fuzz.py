"""Ordinary CSV exports, randomly spoiled: ``node check`` and the node's
ingestion always answer with findings (file, line, column), never an internal
error, and a refused ingestion leaves the data in use as it was.

Seeded: every dataset kind of the example definition (plus an integer and a
number attribute), every column type, four time zones; cells replaced by
what exports write (dates in other formats, DST gaps, thousands separators,
Windows-1252 bytes, long lines ...) and whole-file dialects (BOM, CRLF,
semicolons, tabs, quotes, blank lines at the end, trailing columns).
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from pathlib import Path

import pytest

from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.engine import Engine
from sgxcloud.cleanroom.errors import IngestError
from sgxcloud.cleanroom.identifiers import PrepareReport, Rekeyer, new_key
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.node import Source, prepared_batches
from sgxcloud.cli.main import main

ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe")
# CSV_FUZZ_SEED / CSV_FUZZ_TRIALS search further; the suite runs these
SEED = int(os.environ.get("CSV_FUZZ_SEED", "20261204"))
TRIALS = int(os.environ.get("CSV_FUZZ_TRIALS", "60"))
ROWS = 12
FINDINGS_EXIT = 1  # node check: the node would refuse a dataset
# findings about whole lines, not one column's values
WHOLE_LINES = ("do not have the header's", "no data rows", "a record longer than")

# What exports put in a cell of each column type instead of a clean value.
SPOILED = {
    "timestamp": [
        "yesterday",
        "04/03/2026 10:00",
        "2026-03-04",
        "2026-03-29 02:30:00",  # Europe's spring-forward gap
        "2026-10-25 02:30:00",  # Europe's autumn overlap
        "2026-03-08 02:30:00",  # America's gap
        "2026-04-05 01:45:00",  # Lord Howe's half-hour overlap
        "2026-03-04T10:00:00+0100",
        "2026-03-04 10:00:00 +01:00",
        "2026-03-04T10:00:00.123456789Z",
        "2026-02-30 10:00:00",
        "2026-03-04 25:00:00",
        "20260304",
        "9999-12-31 23:59:59",
        "0001-01-01 00:00:00",
        "1e400",
    ],
    "boolean": ["maybe", "WAHR", "Ja", "2", "-1", "TRUE ", "nan"],
    "integer": ["1.234", "1,234", "12.5", "1e3", "99999999999999999999999", "-", "NaN", "½"],
    "number": ["1.234,50", "1,234.50", "12,5", "€12", "inf", "-inf", "NaN", "1e400", "--3"],
    "category": ["rich", "Low", " low ", "LOW", "n/a"],
    "email": ["a at b.com", "@", "x@y", "ä@ö.de", "a@b.c\u0301"],
    "phone": ["12345", "+44 12", "(0)7911", "tel:07911123456", "0" * 60],
    "customer_id": ["\u0007", "x" * 200, "é" * 3],
    "group": ["treatment", "Test", "", "exposed"],
    "amount": ["-5", "1.234,50", "1,234.50", "NaN", "€3", "inf"],
}
ANY_CELL = [
    "",
    " ",
    "NULL",
    "#N/A",
    "\u00a0",
    '"',
    "a,b",
    "a;b",
    "line\nbreak",
    "M\u00fcller",  # written as Windows-1252 in some files
    "\u20ac5",
    "x" * 70_000,  # a very long line
    "y" * 200_000,  # longer than Python's csv reads by default (it locates lines)
    "nul\x00byte",
    "\ufeffbom",
    "tab\there",
]


def definition_doc(zone: str) -> dict:
    parties = ("bank", "telecom", "retailer", "brand", "agency")
    doc = example_definition({p: encode_public_key(generate_private_key()) for p in parties})
    for ds in doc["datasets"]:
        if ds["kind"] != "attributes":
            ds["timestamp_timezone"] = zone
        if ds["provider"] == "bank":
            ds["attributes"] += [
                {"column": "age", "type": "integer", "min": 18, "max": 120},
                {"column": "balance", "type": "number"},
            ]
    doc["analyses"][0]["attributes"] += ["bank.customers.age", "bank.customers.balance"]
    return doc


def column_kinds(ds) -> dict[str, str]:
    kinds = {i.column: i.kind for i in ds.identifiers}
    kinds.update({a.column: a.type for a in ds.attributes})
    if ds.group_column:
        kinds[ds.group_column] = "group"
    if ds.timestamp_column:
        kinds[ds.timestamp_column] = "timestamp"
    if ds.amount_column:
        kinds[ds.amount_column] = "amount"
    return kinds


def good_value(rng: random.Random, kind: str, attr, row: int) -> str:
    if kind == "customer_id":
        return f"C{row:05d}"
    if kind == "email":
        return f"p{row}@example.org"
    if kind == "phone":
        return f"+44 79{row:08d}"
    if kind == "boolean":
        return rng.choice(["true", "false", "yes", "no", "1", "0"])
    if kind == "category":
        return rng.choice(attr.values)
    if kind == "integer":
        return str(rng.randint(18, 120))
    if kind == "number":
        return f"{rng.uniform(-1000, 1000):.2f}"
    if kind == "group":
        return rng.choice(["test", "control"])
    if kind == "amount":
        return f"{rng.uniform(0, 100):.2f}"
    return rng.choice(["2026-03-04 10:00:00", "2026-03-05T08:30:00Z", "2026-03-06 09:15:00+01:00"])


def build_csv(rng: random.Random, ds) -> tuple[bytes, list[str]]:
    """A spoiled CSV export of ``ds`` and what was done to it."""
    kinds = column_kinds(ds)
    attrs = {a.column: a for a in ds.attributes}
    header = list(kinds)
    rng.shuffle(header)
    done = []
    if rng.random() < 0.2:
        header.append(
            rng.choice(["notes", "Stra\u00dfe", "", "[/]", "[b]x"])
        )  # an undeclared column
        done.append(f"extra column {header[-1]!r}")
    rows = []
    for r in range(ROWS):
        row = [
            good_value(rng, kinds[c], attrs.get(c), r) if c in kinds else "free text"
            for c in header
        ]
        rows.append(row)
    for _ in range(rng.randint(0, 4)):
        r, c = rng.randrange(ROWS), rng.randrange(len(header))
        pool = SPOILED.get(kinds.get(header[c], ""), []) + ANY_CELL
        rows[r][c] = rng.choice(pool)
        done.append(f"{header[c]}[{r}]={rows[r][c][:30]!r}")
    delimiter = rng.choice([",", ",", ",", ";", "\t"])
    out = io.StringIO()
    writer = csv.writer(
        out,
        delimiter=delimiter,
        lineterminator=rng.choice(["\n", "\r\n"]),
        quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    )
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue()
    if rng.random() < 0.2:
        text += rng.choice(["\n", "\n\n", "\r\n\r\n", ",,,\n"])
        done.append("blank lines at the end")
    lines = text.splitlines(keepends=True)
    if rng.random() < 0.1:
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i].rstrip("\r\n") + delimiter + "\n"  # a trailing delimiter
        done.append("trailing delimiter")
    if rng.random() < 0.05:
        lines = [line.rstrip("\r\n") + delimiter + "\n" for line in lines]
        done.append("trailing delimiter on every line")
    if rng.random() < 0.05:
        lines.insert(rng.randrange(1, len(lines) + 1), rng.choice(["\n", "\r\n", " \n"]))
        done.append("blank line inside")
    if rng.random() < 0.05:
        i = rng.randrange(1, len(lines))
        lines[i] = lines[i].rstrip("\r\n") + '"unterminated\n'
        done.append("broken quote")
    if rng.random() < 0.03:
        lines = [line.rstrip("\r\n") + "\r" for line in lines]
        done.append("CR line ends")
    text = "".join(lines)
    data = text.encode("cp1252", "replace") if rng.random() < 0.15 else text.encode()
    if rng.random() < 0.2:
        data = b"\xef\xbb\xbf" + data
        done.append("BOM")
    if rng.random() < 0.03:
        data = data.split(b"\n", 1)[0] + b"\n"  # a header alone
        done.append("header only")
    return data, [*done, f"delimiter {delimiter!r}"]


def run_check(capsys, definition_path: Path, provider: str, paths: dict, as_json: bool):
    args = ["cleanroom", "node", "check", "--definition", str(definition_path)]
    args += ["--provider", provider]
    for name, path in paths.items():
        args += ["--dataset", f"{name}={path}"]
    code = main(args + (["--json"] if as_json else []))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """Per time zone: the definition (file and object) and an engine holding a
    good version of every dataset (what a refused ingestion must leave alone)."""
    import yaml

    out = {}
    for zone in ZONES:
        root = tmp_path_factory.mktemp(zone.replace("/", "_"))
        doc = definition_doc(zone)
        path = root / "definition.yaml"
        path.write_text(yaml.safe_dump(doc))
        definition = definition_from_dict(doc)
        engine = Engine(definition, root / "engine", memory_limit="256MB", threads=1)
        rng = random.Random(zone)
        for ds in definition.datasets:
            kinds = column_kinds(ds)
            attrs = {a.column: a for a in ds.attributes}
            good = root / f"{ds.provider}_{ds.name}.csv"
            with good.open("w", newline="") as handle:
                w = csv.writer(handle)
                w.writerow(list(kinds))
                for r in range(ROWS):
                    w.writerow([good_value(rng, k, attrs.get(c), r) for c, k in kinds.items()])
            ingest(engine, definition, ds, Source.parse(str(good)))
        out[zone] = (path, definition, engine)
    yield out
    for _, _, engine in out.values():
        engine.close()


def ingest(engine, definition, ds, source, batch_rows=5):
    """The node's preparation (the code its sessions run) straight into the
    coordinator's engine: a refusal at any point must leave nothing."""
    report = PrepareReport(ds.ref)
    batches = prepared_batches(
        ds,
        source,
        list(definition.columns_needed(ds.ref)),
        Rekeyer(new_key()),
        batch_rows,  # 5: several batches, a refusal may come after some were taken
        report,
        0.01,
    )
    return engine.ingest(ds.provider, ds.name, batches)


def snapshot(engine, ref):
    con = engine._con
    table = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_name NOT LIKE 'staging%'"
    ).fetchall()
    fingerprint = con.execute("SELECT * FROM data_versions WHERE dataset = ?", [ref]).fetchall()
    return sorted(table), fingerprint, engine.datasets().get(ref)


def ingest_or_nothing(engine, definition, ds, path) -> tuple[bool, list[str]]:
    """Whether the node (its preparation, into an engine) refused ``path``, and
    what went wrong: a refusal must name the file and leave the data as it was."""
    before = snapshot(engine, ds.ref)
    try:
        ingest(engine, definition, ds, Source.parse(str(path)))
    except IngestError as exc:
        wrong = []
        if str(path) not in str(exc):
            wrong.append(f"refusal names no file: {str(exc)[:200]}")
        if snapshot(engine, ds.ref) != before:
            wrong.append("a refused ingestion changed the data")
        return True, wrong
    except Exception as exc:  # what a node would call an internal error
        return True, [f"ingestion raised {type(exc).__name__}: {str(exc)[:160]}"]
    return False, []


# a traceback printed from inside Arrow ("Exception ignored in ...") fails too
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_spoiled_exports_get_findings_never_an_internal_error(capsys, tmp_path, worlds):
    """Each trial: one provider's exports (every dataset it has), checked with
    ``node check`` (--json, every third trial as read by a person), then each
    taken by the node's preparation into an engine that already holds data."""
    rng = random.Random(SEED)
    failures = []
    for trial in range(TRIALS):
        zone = ZONES[trial % len(ZONES)]
        definition_path, definition, engine = worlds[zone]
        provider = rng.choice(list(definition.providers))
        paths, done = {}, {}
        for ds in definition.datasets_of(provider):
            data, done[ds.ref] = build_csv(rng, ds)
            paths[ds.name] = tmp_path / f"t{trial}" / f"{ds.name}.csv"
            paths[ds.name].parent.mkdir(exist_ok=True)
            paths[ds.name].write_bytes(data)
        what = f"trial {trial} {provider} in {zone}: {done}"

        as_json = trial % 3 != 2
        code, out, err = run_check(capsys, definition_path, provider, paths, as_json)
        if code not in (0, FINDINGS_EXIT) or "internal error" in err or "Traceback" in err:
            failures.append(f"{what}: node check exit {code}: {err.strip()[:200]}")
            continue
        errors = {}
        if as_json:
            for checked in json.loads(out)["datasets"]:
                ref = checked["dataset"]
                errors[ref] = checked["errors"]
                assert checked["source"] == str(paths[ref.split(".")[1]])
                for f in checked["findings"]:
                    whole = any(w in f["message"] for w in WHOLE_LINES)
                    if f["severity"] != "info" and (
                        not (f["column"] or whole) or not f.get("lines")
                    ):
                        failures.append(f"{what}: {ref}: finding without column or lines: {f}")
        for ds in definition.datasets_of(provider):
            refused, wrong = ingest_or_nothing(engine, definition, ds, paths[ds.name])
            failures += [f"{what}: {ds.ref}: {w}" for w in wrong]
            if ds.ref in errors and bool(errors[ds.ref]) != refused:
                failures.append(
                    f"{what}: {ds.ref}: node check found {errors[ds.ref]} error(s), "
                    f"the node {'refused' if refused else 'took'} it"
                )
    assert not failures, f"{len(failures)} failures in {TRIALS} trials:\n" + "\n".join(failures)


def check_one(capsys, worlds, zone, dataset, data: bytes, tmp_path):
    definition_path, definition, _ = worlds[zone]
    ds = definition.dataset(dataset)
    path = tmp_path / f"{ds.name}.csv"
    path.write_bytes(data)
    code, out, err = run_check(capsys, definition_path, ds.provider, {ds.name: path}, True)
    assert "internal error" not in err and "Traceback" not in err
    (checked,) = [d for d in json.loads(out)["datasets"] if d["dataset"] == dataset]
    return code, checked, path


def test_an_unreadable_timestamp_in_a_local_zone_is_a_finding(capsys, worlds, tmp_path):
    """The reported case: Europe/Berlin and 'yesterday' gave 'internal error
    (ArrowInvalid)'; a local time in the spring gap is still a warning, with its
    line; a date alone is midnight (it was refused, its day read as an offset)."""
    data = (
        b"email,phone,group,exposed_at\n"
        b"a@example.org,,test,2026-03-04 10:00:00\n"
        b"b@example.org,,control,yesterday\n"
        b"c@example.org,,test,2026-03-29 02:30:00\n"
        b"d@example.org,,test,2026-03-04\n"  # a date alone: midnight, as documented
    )
    code, checked, _ = check_one(
        capsys, worlds, "Europe/Berlin", "retailer.exposures", data, tmp_path
    )
    assert code == FINDINGS_EXIT
    found = {f["message"].split(";")[0]: f for f in checked["findings"]}
    unreadable = found["value(s) cannot be read as timestamp"]
    assert unreadable["column"] == "exposed_at" and unreadable["lines"] == [3]
    assert unreadable["examples"] == ["yesterday"]
    gap = next(f for m, f in found.items() if "occur twice" in m)
    assert gap["lines"] == [4] and gap["examples"] == ["2026-03-29 02:30:00"]
    zones = next(f for m, f in found.items() if "without a zone" in m)
    assert zones["message"].startswith("4 timestamp(s) without a zone, read in Europe/Berlin")
    assert zones["message"].endswith("0 with a zone or offset, kept as written")


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_exports_read_as_comma_ones(capsys, worlds, tmp_path, delimiter):
    rows = [["phone", "region", "device"], ["+44 7900000001", "north", "ios"]]
    rows += [["+44 7900000002", "nowhere", "android"]]
    data = "\r\n".join(delimiter.join(r) for r in rows).encode("utf-8-sig") + b"\r\n"
    code, checked, path = check_one(capsys, worlds, "UTC", "telecom.subscribers", data, tmp_path)
    assert code == FINDINGS_EXIT and checked["rows"] == 2
    (error,) = [f for f in checked["findings"] if f["severity"] == "error"]
    assert error["column"] == "region" and error["lines"] == [3]
    _, definition, engine = worlds["UTC"]
    with pytest.raises(IngestError, match=r"line 3: column region: 1 value\(s\) not among"):
        ingest(
            engine, definition, definition.dataset("telecom.subscribers"), Source.parse(str(path))
        )


def test_windows_1252_bytes_are_located_not_misread(capsys, worlds, tmp_path):
    data = "phone,region,device\n+44 7900000001,north,ios\n+44 7900000002,s\u00fcd,ios\n"
    code, checked, path = check_one(
        capsys, worlds, "UTC", "telecom.subscribers", data.encode("cp1252"), tmp_path
    )
    (error,) = checked["findings"]
    assert code == FINDINGS_EXIT and error["column"] == "region" and error["lines"] == [3]
    assert "not UTF-8" in error["message"] and "s\u00fcd" not in error["message"]
    _, definition, engine = worlds["UTC"]
    with pytest.raises(IngestError, match=r"1 line\(s\) are not UTF-8 text: line 3 \(region\)"):
        ingest(
            engine, definition, definition.dataset("telecom.subscribers"), Source.parse(str(path))
        )


def test_a_header_alone_is_an_error_in_check_as_in_the_node(capsys, worlds, tmp_path):
    code, checked, _ = check_one(
        capsys, worlds, "UTC", "telecom.subscribers", b"phone,region,device\r\n", tmp_path
    )
    (error,) = [f for f in checked["findings"] if f["severity"] == "error"]
    assert code == FINDINGS_EXIT and "no data rows" in error["message"] and error["lines"] == [1]


def test_a_record_longer_than_a_block_is_located(capsys, worlds, tmp_path):
    """A quote never closed takes the rest of the file into one value: past
    Arrow's block it was 'malformed file (ArrowInvalid)', no line."""
    data = 'phone,region,device\n+44 7900000001,north,ios\n+44 7900000002,"north,ios\n'
    data += "+44 7900000003,north,ios\n" * 400_000  # ~10 MB inside the open quote
    code, checked, path = check_one(
        capsys, worlds, "UTC", "telecom.subscribers", data.encode(), tmp_path
    )
    (error,) = checked["findings"]
    assert code == FINDINGS_EXIT and error["lines"] == [3]
    assert "a record longer than 4 MiB starts at line 3" in error["message"]
    _, definition, engine = worlds["UTC"]
    with pytest.raises(
        IngestError, match=r"record longer than 4 MiB starts at line 3; is a double"
    ):
        ingest(
            engine, definition, definition.dataset("telecom.subscribers"), Source.parse(str(path))
        )


def test_quoted_line_breaks_across_blocks_are_read(capsys, worlds, tmp_path):
    """Multi-line cells, as spreadsheets quote them, over more than one 4 MiB
    block: Arrow split the file inside one and the node refused a good file
    ('Expected 4 columns, got 1')."""
    rng = random.Random(1)
    rows = [
        f'+44 79{i:08d},north,ios,"' + "a\n" * rng.randint(0, 3) + 'b"\n' for i in range(150_000)
    ]
    data = "phone,region,device,notes\n" + "".join(rows) + "+44 7900000001,nowhere,ios,x\n"
    last = data.count("\n")  # the line of the last record
    code, checked, path = check_one(
        capsys, worlds, "UTC", "telecom.subscribers", data.encode(), tmp_path
    )
    (error,) = [f for f in checked["findings"] if f["severity"] == "error"]
    assert code == FINDINGS_EXIT and checked["rows"] == 150_001
    assert error["column"] == "region" and error["lines"] == [last]
    _, definition, engine = worlds["UTC"]
    ds = definition.dataset("telecom.subscribers")
    with pytest.raises(IngestError, match=rf"line {last}: column region: 1 value"):
        ingest(engine, definition, ds, Source.parse(str(path)), batch_rows=65_536)
