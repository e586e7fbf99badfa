"""Identifier normalisation, re-keying and node-side batch preparation."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import IngestError
from sgxcloud.cleanroom.identifiers import (
    HASH_TYPE,
    keyed_hash,
    new_key,
    normalise,
    normalise_email,
    normalise_phone,
    prepare_batch,
    prepared_schema,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cleanroom" / "collaboration.yaml"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Anna.Smith@Example.ORG ", "anna.smith@example.org"),
        ("anna.smith+news@example.org", "anna.smith+news@example.org"),  # not Gmail: kept
        ("A.n.n.a+shop@GMAIL.com", "anna@gmail.com"),
        ("anna@googlemail.com", "anna@gmail.com"),
        ("\uff41nna@example.org", "anna@example.org"),  # full-width letter, NFKC
        ("not-an-email", None),
        ("a@b", None),
        ("a b@example.org", None),
        ("@@", None),
        ("+tag@gmail.com", None),
        ("x" * 250 + "@example.org", None),
    ],
)
def test_email(raw, expected):
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("07400 123456", "GB", "+447400123456"),
        ("+44 7400 123456", "GB", "+447400123456"),
        ("+44 (0)7400 123456", "US", "+447400123456"),
        ("0044 7400 123456", "GB", "+447400123456"),
        ("(201) 555-0123", "US", "+12015550123"),
        ("12345", "GB", None),
        ("+44 12", "GB", None),
        ("phone", "GB", None),
        ("07400 123456", None, None),  # national format needs a region
    ],
)
def test_phone(raw, region, expected):
    assert normalise_phone(raw, region) == expected


def test_customer_id_and_missing_values():
    assert normalise("customer_id", "  C0042 ", None) == "C0042"
    assert normalise("customer_id", "", None) is None
    assert normalise("customer_id", "a\x00b", None) is None
    assert normalise("email", None) is None
    with pytest.raises(ValueError):
        normalise("passport", "x")


def test_keyed_hash_separates_kinds_and_keys():
    key = new_key()
    assert len(key) == 32
    assert keyed_hash(key, "email", "x@y.org") != keyed_hash(key, "customer_id", "x@y.org")
    assert keyed_hash(key, "email", "x@y.org") != keyed_hash(new_key(), "email", "x@y.org")
    assert -(2**63) <= keyed_hash(key, "email", "x@y.org") < 2**63
    with pytest.raises(ValueError):
        keyed_hash(b"short", "email", "x@y.org")


def test_prepare_batch_rekeys_counts_and_drops():
    definition = load_definition(EXAMPLE)
    ds = definition.dataset("retailer.customers")
    key = new_key()
    table = pa.table(
        {
            "email": ["Anna@Example.org", "bad-email", None, "  ", "b.o.b+x@gmail.com"],
            "phone": [None, "07400 000001", "nope", None, "+447400000002"],
            "baby_buyer": [True, False, True, False, True],
            "loyalty_tier": ["gold", "none", "none", "silver", "gold"],
            "home_address": ["1 Road", "2 Road", "3 Road", "4 Road", "5 Road"],  # never sent
        }
    )
    batch, report = prepare_batch(ds, table, key, definition.columns_needed(ds.ref))
    assert batch.schema == prepared_schema(ds, definition.columns_needed(ds.ref))
    assert "home_address" not in batch.schema.names
    assert batch.schema.field("email").type == HASH_TYPE
    assert batch.num_rows == 3  # rows 3 and 4 have no valid identifier
    assert report.to_dict() == {
        "dataset": "retailer.customers",
        "rows_in": 5,
        "rows_out": 3,
        "rows_without_identifier": 2,
        "invalid_identifiers": {"email": 1, "phone": 1},
        "missing_identifiers": {"email": 2, "phone": 2},
    }
    assert batch.column("email")[0].as_py() == keyed_hash(key, "email", "anna@example.org")
    assert batch.column("email")[2].as_py() == keyed_hash(key, "email", "bob@gmail.com")
    assert batch.column("phone")[1].as_py() == keyed_hash(key, "phone", "+447400000001")
    assert "bad-email" not in repr(report.to_dict())


def test_prepare_batch_missing_column():
    definition = load_definition(EXAMPLE)
    ds = definition.dataset("telecom.subscribers")
    with pytest.raises(IngestError) as err:
        prepare_batch(ds, pa.table({"phone": ["07400 000001"]}), new_key())
    assert err.value.report["missing_columns"] == ["region", "device"]


def test_reports_add_up():
    definition = load_definition(EXAMPLE)
    ds = definition.dataset("telecom.subscribers")
    key = new_key()
    table = pa.table(
        {"phone": ["07400 000001", "x"], "region": ["north", "west"], "device": ["ios", "ios"]}
    )
    _, total = prepare_batch(ds, table, key)
    _, other = prepare_batch(ds, table, key)
    total.add(other)
    assert total.rows_in == 4 and total.rows_out == 2 and total.invalid == {"phone": 2}
