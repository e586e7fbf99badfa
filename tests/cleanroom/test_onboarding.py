"""Providers' own files (issue 12): naive CSV timestamps read in the declared
zone, declared attributes no analysis uses, odd identifiers — through the
node's reading path into the engine, with figures equal to the independent
plaintext computation; and ingestion errors that name dataset, file, line,
column and what would be accepted."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.engine import Engine
from sgxcloud.cleanroom.errors import DefinitionError, IngestError
from sgxcloud.cleanroom.identifiers import normalise, prepare_batch
from sgxcloud.cleanroom.node import Source, locate, read_batches

try:
    from test_engine_correctness import _check_segment
except ImportError:  # tests/cleanroom as a package
    from tests.cleanroom.test_engine_correctness import _check_segment

ZONE = "Europe/Berlin"


def _doc_with(base_doc, *, zone: str | None = ZONE, drop_device: bool = True):
    doc = copy.deepcopy(base_doc)
    doc["privacy"]["min_group_size"] = 5
    doc["privacy"]["differencing_check"] = False  # many queries on one population
    dp = doc["privacy"].setdefault(
        "differential_privacy", {"epsilon_per_query": 0.5, "budget_per_analyst": 10.0}
    )
    dp["enabled"] = False  # exact figures, compared with the plaintext
    for ds in doc["datasets"]:
        if ds["kind"] in ("exposures", "purchases") and zone:
            ds["timestamp_timezone"] = zone
    if drop_device:  # declared by telecom, used by no analysis: never sent
        for analysis in doc["analyses"]:
            analysis["attributes"] = [
                a for a in analysis.get("attributes", []) if a != "telecom.subscribers.device"
            ]
    return doc


def _odd(value, kind):
    """How real exports write identifiers: padding, capitals, international prefix."""
    if not isinstance(value, str):
        return None
    if kind == "email":
        return f"  {value.upper()} "
    if kind == "phone" and value.startswith("+44"):
        return "0044 " + value[3:]
    return value


def _naive_local(series):
    return series.dt.tz_convert(ZONE).dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def _write_provider_csv(ref, path, out):
    frame = pq.read_table(path).to_pandas()
    for col in frame.columns:
        if col in ("email", "phone"):
            odd = frame[col].map(lambda v, c=col: _odd(v, c))
            same = [
                normalise(col, a, "GB") == normalise(col, b, "GB")
                for a, b in zip(frame[col], odd, strict=True)
                if isinstance(a, str)
            ]
            assert all(same), f"{ref}.{col}: the odd spelling must mean the same identifier"
            frame[col] = odd
        elif col in ("exposed_at", "purchased_at"):
            frame[col] = _naive_local(frame[col])
    frame.to_csv(out, index=False)
    return Source.parse(str(out))


def test_provider_csv_files_give_the_plaintext_figures(tmp_path, base_doc, generated, plain):
    definition = definition_from_dict(_doc_with(base_doc))
    assert "device" not in definition.columns_needed("telecom.subscribers")
    engine = Engine(definition, tmp_path / "engine")
    try:
        for ref, path in generated.files.items():
            ds = definition.dataset(ref)
            source = _write_provider_csv(ref, path, tmp_path / f"{ref}.csv")
            if ds.timestamp_column:  # written as most exports do: no zone, no offset
                stamp = source.path.read_text().splitlines()[1].rsplit(",", 1)[1]
                assert len(stamp) == 26 and "+" not in stamp and "Z" not in stamp
            columns = list(definition.columns_needed(ref))
            batches = [
                prepare_batch(ds, raw, bytes(range(32)), columns)[0]
                for raw in read_batches(source, columns, 1000)
            ]
            engine.ingest(*ref.split("."), batches)
        audience = engine.run(
            {
                "template": "audience_size",
                "analysis": "audience",
                "filter": "bank.customers.premium_card = true",
            },
            "brand",
        )
        assert audience.value("people") == len(
            plain.people("bank.customers", lambda f: f.premium_card)
        )
        lift = engine.run(
            {
                "template": "campaign_lift",
                "analysis": "lift",
                "breakdown": "telecom.subscribers.region",
            },
            "brand",
        )
        _check_segment(lift, plain.lift_table(window_days=28), "(all)")
    finally:
        engine.close()


def test_declared_attribute_no_analysis_uses_does_not_break_queries(tmp_path, base_doc, prepared):
    """Used to fail every query: BinderException, Table "t" has no column "device"."""
    definition = definition_from_dict(_doc_with(base_doc, zone=None))
    with Engine(definition, tmp_path / "e") as engine:
        for ref, batch in prepared.items():
            columns = list(definition.columns_needed(ref))
            engine.ingest(*ref.split("."), batch.select(columns))
        for query in (
            {"template": "audience_size", "analysis": "audience"},
            {
                "template": "overlap",
                "analysis": "reach",
                "datasets": ["bank.customers", "telecom.subscribers"],
            },
            {"template": "campaign_lift", "analysis": "lift"},
        ):
            assert engine.run(query, "brand").cells


def _exposures(definition):
    return definition.dataset("retailer.exposures")


def test_naive_timestamps_are_read_in_the_declared_zone(base_doc):
    definition = definition_from_dict(_doc_with(base_doc))
    ds = _exposures(definition)
    raw = pa.table(
        {
            "email": ["a@example.org"] * 5,
            "phone": [None] * 5,
            "group": ["test"] * 5,
            "exposed_at": [
                "2026-03-04 00:04:34",
                "2026-03-04T00:04:34Z",
                "2026-03-04 02:04:34+02:00",
                " 2026-07-01 12:00 ",
                "2026-03-29 02:30:00",
            ],
        }
    )
    batch, _ = prepare_batch(ds, raw, bytes(32), ["email", "phone", "group", "exposed_at"])
    got = batch.column("exposed_at").to_pylist()
    assert got == [
        datetime(2026, 3, 3, 23, 4, 34, tzinfo=UTC),  # CET = UTC+1
        datetime(2026, 3, 4, 0, 4, 34, tzinfo=UTC),  # an offset is kept
        datetime(2026, 3, 4, 0, 4, 34, tzinfo=UTC),
        datetime(2026, 7, 1, 10, 0, tzinfo=UTC),  # CEST = UTC+2
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
    ]  # in the spring gap: 03:00
    utc = definition_from_dict(_doc_with(base_doc, zone=None))  # the default is UTC
    batch, _ = prepare_batch(
        _exposures(utc), raw.slice(0, 1), bytes(32), ["email", "phone", "group", "exposed_at"]
    )
    assert batch.column("exposed_at")[0].as_py() == datetime(2026, 3, 4, 0, 4, 34, tzinfo=UTC)


def test_timestamp_timezone_is_checked(base_doc):
    doc = _doc_with(base_doc, zone="Europe/Atlantis")
    with pytest.raises(DefinitionError, match=r"timestamp_timezone: not an IANA time zone"):
        definition_from_dict(doc)
    doc = _doc_with(base_doc)
    doc["datasets"][0]["timestamp_timezone"] = "UTC"  # bank.customers: attributes
    with pytest.raises(DefinitionError, match="not allowed for kind attributes"):
        definition_from_dict(doc)


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        (
            "exposed_at",
            ["2026-03-04 00:04:34", "04/03/2026 00:04"],
            r"^retailer\.exposures: .*exp\.csv, line 3: column exposed_at: 1 value\(s\) cannot be "
            r"read as timestamp; accepted: ISO 8601 date-times such as 2026-03-04 00:04:34 \(read "
            r"in Europe/Berlin\)",
        ),
        (
            "group",
            ["test", "treatment"],
            r"^retailer\.exposures: .*exp\.csv, line 3: column group: "
            r"1 value\(s\) neither test nor control; accepted: test, control$",
        ),
    ],
)
def test_row_errors_name_file_line_column_and_what_is_accepted(
    tmp_path, base_doc, column, values, message
):
    definition = definition_from_dict(_doc_with(base_doc))
    ds = _exposures(definition)
    rows = {
        "email": ["a@example.org", "b@example.org"],
        "phone": ["", ""],
        "group": ["test", "control"],
        "exposed_at": ["2026-03-04 00:04:34"] * 2,
    }
    rows[column] = values
    path = tmp_path / "exp.csv"
    pa.csv.write_csv(pa.table(rows), path)
    source = Source.parse(str(path))
    columns = list(definition.columns_needed(ds.ref))
    with pytest.raises(IngestError) as info:
        for raw in read_batches(source, columns, 1000):
            try:
                prepare_batch(ds, raw, bytes(32), columns)
            except IngestError as exc:
                raise locate(exc, ds, source, 0) from None
    assert info.match(message)
    assert "treatment" not in str(info.value) and "04/03" not in str(info.value)


def test_an_unexpected_engine_error_is_a_json_500_without_details(tmp_path, monkeypatch):
    """The issue saw 'coordinator answered HTTP 500 without JSON'; whatever the bug,
    the API answers with its error body and the detail stays in the operator's log."""
    import json

    import duckdb
    from fastapi.testclient import TestClient

    from sgxcloud.cleanroom.approvals import private_key_from_pem
    from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig, create_app
    from sgxcloud.cleanroom.definition import load_definition
    from sgxcloud.cleanroom.local import prepare_example
    from sgxcloud.cleanroom.transport.request_auth import sign_request

    collab = prepare_example(tmp_path / "ex", people=50)
    coordinator = Coordinator(
        CoordinatorConfig(
            definition=load_definition(collab.definition),
            workdir=tmp_path / "c",
            nodes={},
            simulate=True,
        )
    )
    try:

        def broken(*_args):
            raise duckdb.BinderException('Table "t" does not have a column named "device"')

        monkeypatch.setattr(coordinator, "run_query", broken)
        key = private_key_from_pem((collab.workdir / "keys" / "brand.pem").read_bytes())
        body = json.dumps({"template": "audience_size", "analysis": "audience"}).encode()
        headers = sign_request(
            key,
            "brand",
            "POST",
            "/v1/queries",
            body,
            definition_hash=coordinator.definition_hash,
            coordinator=coordinator.signer,
        )
        response = TestClient(create_app(coordinator)).post(
            "/v1/queries", content=body, headers=headers
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "internal_error" and "coordinator's log" in error["message"]
        assert "device" not in response.text and "Binder" not in response.text
    finally:
        coordinator.close()


def test_a_refresh_with_new_data_is_answered_afresh_the_same_data_from_the_cache(
    tmp_path, base_doc, prepared
):
    """Repeating a query used to return the answer cached before a refresh, however
    the data had changed."""
    import pyarrow.compute as pc

    definition = definition_from_dict(_doc_with(base_doc, zone=None))
    query = {
        "template": "audience_size",
        "analysis": "audience",
        "filter": "telecom.subscribers.region = 'north'",
    }
    with Engine(definition, tmp_path / "e") as engine:
        for ref, batch in prepared.items():
            engine.ingest(*ref.split("."), batch.select(list(definition.columns_needed(ref))))
        first = engine.run(query, "brand")
        telecom = prepared["telecom.subscribers"].select(
            list(definition.columns_needed("telecom.subscribers"))
        )
        engine.ingest("telecom", "subscribers", telecom)  # the same data again
        again = engine.run(query, "brand")
        assert again.result_id == first.result_id  # from the cache, as before
        region = telecom.schema.get_field_index("region")
        everyone_north = telecom.set_column(
            region, "region", pc.if_else(pc.is_valid(telecom["region"]), "north", telecom["region"])
        )
        engine.ingest("telecom", "subscribers", everyone_north)
        fresh = engine.run(query, "brand")
        assert fresh.result_id != first.result_id
        assert fresh.value("people") > first.value("people")
        events = [e.event for e in engine.audit.entries()]
        assert events.count("cache_hit") == 1
