"""No identifier — raw, normalised or keyed-hashed — in any output, log or error."""

from __future__ import annotations

import base64
import logging

import pyarrow as pa
import pytest

from sgxcloud.cleanroom.errors import CleanroomError
from sgxcloud.cleanroom.identifiers import keyed_hash, normalise, prepare_batch

ID_COLUMNS = {"customer_id": "customer_id", "email": "email", "phone": "phone"}


def _needles(plain, key: bytes) -> tuple[set[str], set[bytes]]:
    texts: set[str] = set()
    raw: set[bytes] = set()
    for frame in plain.raw.values():
        for column, kind in ID_COLUMNS.items():
            if column not in frame:
                continue
            for value in frame[column].dropna().unique():
                value = str(value)
                if len(value.strip()) < 6:
                    continue  # the deliberately invalid "@@"/"12345" are not identifiers
                texts.add(value.strip())
                norm = normalise(kind, value, "GB")
                if norm is None:
                    continue
                texts.add(norm)
                keyed = keyed_hash(key, kind, norm)
                for order in ("big", "little"):
                    packed = keyed.to_bytes(8, order, signed=True)
                    raw.add(packed)
                    texts.add(packed.hex())
                    texts.add(base64.b64encode(packed).decode())
                texts.add(str(keyed))
    return texts, raw


def test_identifiers_never_leave(
    make_definition, make_engine, prepared, plain, caplog, generated, rekey_key
):
    caplog.set_level(logging.DEBUG)
    engine = make_engine(make_definition(min_group_size=20))
    outputs: list[str] = []
    queries = [
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true",
        },
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true AND NOT (telecom.subscribers.region"
            " = 'north' AND telecom.subscribers.device = 'other')",
        },
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "bank.customers.income_band = 'high' AND retailer.customers.loyalty_tier"
            " = 'gold' AND telecom.subscribers.device = 'other'",
        },
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": ["bank.customers", "retailer.customers", "telecom.subscribers"],
        },
        {
            "template": "campaign_lift",
            "analysis": "lift",
            "breakdown": "telecom.subscribers.region",
        },
        {"template": "audience_size", "analysis": "audience", "filter": "nonsense ((("},
    ]
    for query in queries:
        try:
            outputs.append(engine.run(query, "brand").to_json())
        except CleanroomError as exc:
            outputs.append(str(exc))
            outputs.append(repr(getattr(exc, "report", "")))
    # a bad ingestion, and a node-side preparation report
    bad = prepared["retailer.exposures"]
    groups = bad.column("group").to_pylist()
    groups[0] = "x"
    bad = bad.set_column(bad.schema.get_field_index("group"), "group", pa.array(groups))
    with pytest.raises(CleanroomError) as err:
        engine.ingest("retailer", "exposures", bad)
    outputs += [str(err.value), repr(err.value.report)]
    import pyarrow.parquet as pq

    definition = engine.definition
    ds = definition.dataset("bank.customers")
    _, report = prepare_batch(
        ds,
        pq.read_table(generated.files["bank.customers"]),
        rekey_key,
        definition.columns_needed(ds.ref),
    )
    outputs.append(repr(report.to_dict()))
    assert report.to_dict()["invalid_identifiers"]  # the data has invalid ones: they're counted

    audit_bytes = engine.audit.path.read_bytes()
    haystack = "\n".join([*outputs, caplog.text, audit_bytes.decode()])
    texts, raw = _needles(plain, rekey_key)
    assert len(texts) > 5000
    leaked = sorted(n for n in texts if n in haystack)
    assert not leaked, leaked[:5]
    assert not [d for d in raw if d in audit_bytes]
    assert len(engine.audit.entries()) >= len(queries)


def test_refusals_do_not_echo_identifier_like_names(make_definition, make_engine):
    engine = make_engine(make_definition(), ingest=False)
    probes = [
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": {"attribute": "anna.smith@example.org", "op": "=", "value": True},
        },
        {"template": "audience_size", "analysis": "+447400000001"},
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": ["bank.customers", "07400 000001"],
        },
        {"template": "audience_size", "analysis": "audience", "anna@example.org": 1},
    ]
    for probe in probes:
        with pytest.raises(CleanroomError) as err:
            engine.run(probe, "brand")
        for secret in (
            "anna.smith@example.org",
            "+447400000001",
            "07400 000001",
            "anna@example.org",
        ):
            assert secret not in str(err.value)
    log = engine.audit.path.read_text()
    assert "@example.org" not in log and "7400" not in log
