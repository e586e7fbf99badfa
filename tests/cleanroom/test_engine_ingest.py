"""Bad input: clear reports, nothing partially ingested, the engine keeps serving."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sgxcloud.cleanroom.errors import IngestError, QueryError, QueryRefused
from sgxcloud.cleanroom.identifiers import prepare_batch

AUDIENCE = {"template": "audience_size", "analysis": "audience"}


@pytest.fixture
def engine(make_definition, make_engine):
    return make_engine(make_definition())


def _replace(batch: pa.RecordBatch, column: str, values: list) -> pa.RecordBatch:
    idx = batch.schema.get_field_index(column)
    array = pa.array(values, type=batch.schema.field(column).type)
    return batch.set_column(idx, batch.schema.field(column), array)


def test_schema_mismatch_is_reported_and_nothing_changes(engine, prepared):
    before = engine.datasets()
    batch = prepared["bank.customers"].drop_columns(["income_band"])
    with pytest.raises(IngestError) as err:
        engine.ingest("bank", "customers", batch)
    assert err.value.report["missing_columns"] == ["income_band"]
    assert engine.datasets() == before


def test_extra_columns_are_refused(engine, prepared):
    batch = prepared["telecom.subscribers"]
    extra = batch.append_column("date_of_birth", pa.array(["x"] * batch.num_rows))
    with pytest.raises(IngestError) as err:
        engine.ingest("telecom", "subscribers", extra)
    assert err.value.report["unexpected_columns"] == ["date_of_birth"]


def test_wrong_type_is_reported_without_values(engine, prepared):
    batch = prepared["retailer.purchases"]
    bad = batch.set_column(
        batch.schema.get_field_index("amount"),
        "amount",
        pa.array(["secret-amount"] * batch.num_rows),
    )
    with pytest.raises(IngestError) as err:
        engine.ingest("retailer", "purchases", bad)
    assert "amount" in str(err.value)
    assert "secret-amount" not in str(err.value) and "secret-amount" not in repr(err.value.report)


def test_bad_rows_anywhere_in_a_stream_leave_nothing(engine, prepared, plain):
    before = engine.run(AUDIENCE, "brand").value("people")
    exposures = prepared["retailer.exposures"]
    groups = exposures.column("group").to_pylist()
    groups[-3] = "treatment"  # not test/control, in the last batch
    bad_last = _replace(exposures, "group", groups)
    batches = [exposures.slice(0, 500), exposures.slice(500, 500), bad_last.slice(1000)]
    with pytest.raises(IngestError) as err:
        engine.ingest("retailer", "exposures", iter(batches))
    problem = err.value.report["problems"]["group: not test/control"]
    assert problem == {"count": 1, "rows": [exposures.num_rows - 3]}
    assert "nothing was ingested" in str(err.value)
    assert "treatment" not in str(err.value)
    assert engine.datasets()["retailer.exposures"] == exposures.num_rows
    assert engine.run(AUDIENCE, "brand").value("people") == before  # keeps serving
    rejected = [e for e in engine.audit.entries() if e.event == "ingest_rejected"]
    assert rejected and rejected[-1].data["dataset"] == "retailer.exposures"


def test_value_checks(engine, prepared):
    purchases = prepared["retailer.purchases"]
    amounts = purchases.column("amount").to_pylist()
    amounts[0] = -5.0
    amounts[1] = float("nan")
    with pytest.raises(IngestError) as err:
        engine.ingest("retailer", "purchases", _replace(purchases, "amount", amounts))
    assert err.value.report["problems"]["amount: negative or not a number"]["count"] == 2
    bank = prepared["bank.customers"]
    bands = bank.column("income_band").to_pylist()
    bands[4] = "billionaire"
    with pytest.raises(IngestError) as err:
        engine.ingest("bank", "customers", _replace(bank, "income_band", bands))
    assert err.value.report["problems"]["income_band: value not declared"]["rows"] == [4]
    no_ids = bank
    for column in ("customer_id", "email", "phone"):
        values = no_ids.column(column).to_pylist()
        values[7] = None
        no_ids = _replace(no_ids, column, values)
    with pytest.raises(IngestError) as err:
        engine.ingest("bank", "customers", no_ids)
    assert err.value.report["problems"]["row without any identifier"]["rows"] == [7]


def test_reingest_replaces(engine, prepared):
    batch = prepared["telecom.subscribers"]
    report = engine.ingest("telecom", "subscribers", batch.slice(0, 100))
    assert report.rows == 100 and report.replaced_rows == batch.num_rows
    assert engine.datasets()["telecom.subscribers"] == 100


def test_unknown_dataset(engine, prepared):
    with pytest.raises(IngestError):
        engine.ingest("bank", "transactions", prepared["bank.customers"])


def test_prepare_batch_rejects_uncastable_columns_without_values(make_definition, generated):
    import pyarrow.parquet as pq

    definition = make_definition()
    ds = definition.dataset("bank.customers")
    table = pq.read_table(generated.files["bank.customers"])
    table = table.set_column(
        table.schema.get_field_index("premium_card"),
        "premium_card",
        pc.cast(pa.array(["maybe-yes"] * table.num_rows), pa.string()),
    )
    with pytest.raises(IngestError) as err:
        prepare_batch(ds, table, bytes(32), definition.columns_needed(ds.ref))
    assert "premium_card" in str(err.value) and "maybe-yes" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_memory_limit_and_threads_are_applied(make_definition, make_engine):
    engine = make_engine(make_definition(), ingest=False, memory_limit="64MB", threads=1)
    con = engine._con
    assert con.execute("SELECT current_setting('threads')").fetchone()[0] == 1
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert limit.replace(" ", "").upper() in ("64.0MB", "61.0MIB", "64MB", "61.0MB")


def test_bad_memory_limit_is_an_input_error(make_definition, make_engine):
    with pytest.raises(QueryError):
        make_engine(make_definition(), ingest=False, memory_limit="lots")


def test_queries_are_authorised(engine):
    with pytest.raises(QueryRefused) as err:
        engine.run(AUDIENCE, "agency")  # a recipient, not an analyst of this analysis
    assert err.value.reason == "not_allowed"
    with pytest.raises(QueryRefused) as err:
        engine.run(
            {
                "analysis": "reach",
                "template": "overlap",
                "datasets": ["bank.customers", "retailer.purchases"],
            },
            "brand",
        )
    assert err.value.reason == "not_allowed"
    with pytest.raises(QueryRefused) as err:  # the template must match the analysis
        engine.run({"template": "audience_size", "analysis": "reach"}, "brand")
    assert err.value.reason == "not_allowed"
    with pytest.raises(
        QueryError,
        match=r"unknown attribute telecom.subscribers.phone_model; "
        "analysis audience allows bank.customers.premium_card",
    ):
        engine.run(
            {
                "template": "audience_size",
                "analysis": "audience",
                "filter": "telecom.subscribers.phone_model = 'x'",
            },
            "brand",
        )
    with pytest.raises(
        QueryError,
        match=r"unknown dataset bank.customer; analysis reach "
        "allows bank.customers, telecom.subscribers",
    ):
        engine.run(
            {
                "analysis": "reach",
                "template": "overlap",
                "datasets": ["bank.customer", "telecom.subscribers"],
            },
            "brand",
        )
    with pytest.raises(
        QueryError, match="no analysis named reech in the definition; yours: audience, reach, lift"
    ):
        engine.run(
            {
                "analysis": "reech",
                "template": "overlap",
                "datasets": ["bank.customers", "telecom.subscribers"],
            },
            "brand",
        )
    with pytest.raises(QueryRefused):
        engine.run(
            {
                "template": "campaign_lift",
                "analysis": "lift",
                "breakdown": "retailer.customers.loyalty_tier",
            },
            "brand",
        )
    with pytest.raises(QueryError):
        engine.run(
            {
                "template": "audience_size",
                "analysis": "audience",
                "filter": "bank.customers.premium_card = 'yes'",
            },
            "brand",
        )
    with pytest.raises(QueryError):
        engine.run(
            {
                "template": "audience_size",
                "analysis": "audience",
                "filter": "bank.customers.income_band = 'x'; DROP TABLE persons",
            },
            "brand",
        )


def test_data_from_another_definition_is_dropped(make_definition, make_engine, tmp_path):
    engine = make_engine(make_definition(), tmp_path / "w")
    assert engine.datasets()["bank.customers"] > 0
    engine.close()
    changed = make_engine(make_definition(min_group_size=21), tmp_path / "w", ingest=False)
    assert changed.datasets() == {}  # approved for the old definition only


def test_record_batch_reader_is_streamed(make_definition, make_engine, prepared):
    engine = make_engine(make_definition(), ingest=False)
    batch = prepared["telecom.subscribers"]
    reader = pa.RecordBatchReader.from_batches(
        batch.schema, [batch.slice(i, 400) for i in range(0, batch.num_rows, 400)]
    )
    report = engine.ingest("telecom", "subscribers", reader)
    assert report.rows == batch.num_rows and report.batches == -(-batch.num_rows // 400)


def _open_engine_elsewhere(definition_doc, workdir, queue):
    from sgxcloud.cleanroom.definition import definition_from_dict
    from sgxcloud.cleanroom.engine import Engine
    from sgxcloud.cleanroom.errors import CleanroomError

    try:
        Engine(definition_from_dict(definition_doc), workdir).close()
        queue.put("opened")
    except CleanroomError as exc:
        queue.put(str(exc))


def test_a_workdir_serves_one_engine_process(make_definition, make_engine, tmp_path):
    import multiprocessing

    definition = make_definition()
    make_engine(definition, tmp_path / "busy", ingest=False)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_open_engine_elsewhere, args=(definition.document, tmp_path / "busy", queue)
    )
    proc.start()
    proc.join(60)
    assert "in use by another engine" in queue.get(timeout=5)


def test_running_out_of_memory_is_a_typed_error(make_definition, make_engine, prepared):
    from sgxcloud.cleanroom.errors import EngineLimitError

    engine = make_engine(make_definition(), memory_limit="64MB")
    engine._con.execute("SET memory_limit = '1MB'")  # squeeze it after ingestion
    with pytest.raises(EngineLimitError, match="memory limit"):
        engine.run(
            {
                "template": "campaign_lift",
                "analysis": "lift",
                "breakdown": "telecom.subscribers.region",
            },
            "brand",
        )
    engine._con.execute("SET memory_limit = '256MB'")
    assert engine.run({"template": "audience_size", "analysis": "audience"}, "brand")


def test_a_database_of_an_older_format_is_refused_not_reused(
    make_definition, make_engine, tmp_path
):
    import duckdb

    from sgxcloud.cleanroom.errors import CleanroomError

    old = tmp_path / "old"
    old.mkdir()
    con = duckdb.connect(str(old / "engine.duckdb"))  # as format 1 left it: BLOB identifiers
    con.execute("CREATE TABLE released_cohort (cohort_id VARCHAR, pkey BLOB)")
    con.close()
    with pytest.raises(CleanroomError, match=r"format 1.*fresh workdir"):
        make_engine(make_definition(), old, ingest=False)
    # the refused database is left as it was
    con = duckdb.connect(str(old / "engine.duckdb"))
    assert [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()] == [
        "released_cohort"
    ]


def test_attribution_days_are_utc_days_whatever_the_host_zone(
    make_definition, make_engine, monkeypatch
):
    import time

    import duckdb

    sql = (
        "SELECT epoch(TIMESTAMPTZ '2026-03-20 12:00:00+00' + INTERVAL 28 DAY) "
        "- epoch(TIMESTAMPTZ '2026-03-20 12:00:00+00')"
    )
    monkeypatch.setenv("TZ", "Europe/London")  # a host there: the clocks change on 29 March
    time.tzset()
    try:
        assert duckdb.connect().execute(sql).fetchone()[0] == 28 * 86400 - 3600
        engine = make_engine(make_definition(), ingest=False)
        assert engine._con.execute(sql).fetchone()[0] == 28 * 86400
    finally:
        monkeypatch.undo()
        time.tzset()


def test_ingestion_holds_one_batch_at_a_time_not_the_whole_stream(
    make_definition, make_engine, prepared
):
    # DuckDB keeps a registered Arrow view's batch alive until the transaction
    # ends; ingesting that way held the whole dataset in memory (EPC is scarce).
    engine = make_engine(make_definition(), ingest=False)
    template = prepared["telecom.subscribers"]
    batches, batch_bytes = 40, template.nbytes
    start = pa.total_allocated_bytes()
    peak = 0

    def stream():
        nonlocal peak
        for _ in range(batches):
            peak = max(peak, pa.total_allocated_bytes() - start)
            # fresh buffers every time, as a node's stream delivers them
            yield pa.RecordBatch.from_arrays(
                [pa.concat_arrays([c]) for c in template.columns], schema=template.schema
            )

    report = engine.ingest("telecom", "subscribers", stream())
    assert report.rows == batches * template.num_rows
    assert peak < 6 * batch_bytes, (peak, batch_bytes)


def test_long_chains_of_identifiers_resolve_to_one_person(make_definition, make_engine, rekey_key):
    # C0–E0–C1–E1–…: each bank row shares one identifier with the next, so the
    # component is a path that needs several contraction levels.
    engine = make_engine(make_definition(), ingest=False)
    ds = engine.definition.dataset("bank.customers")
    links = 200
    rows = [
        {
            "customer_id": f"C{i}",
            "email": f"e{i}@example.org",
            "phone": None,
            "premium_card": True,
            "income_band": "low",
        }
        for i in range(links)
    ]
    rows += [
        {
            "customer_id": f"C{i + 1}",
            "email": f"e{i}@example.org",
            "phone": None,
            "premium_card": True,
            "income_band": "low",
        }
        for i in range(links)
    ]
    rows.append(
        {
            "customer_id": "LONER",
            "email": None,
            "phone": None,
            "premium_card": True,
            "income_band": "low",
        }
    )
    batch, _ = prepare_batch(
        ds, pa.Table.from_pylist(rows), rekey_key, engine.definition.columns_needed(ds.ref)
    )
    engine.ingest("bank", "customers", batch)
    engine._ensure_resolved()
    people = engine._con.execute(
        'SELECT count(DISTINCT person), count(*) FROM "p_bank__customers"'
    ).fetchone()
    assert people == (2, 2 * links + 1)
