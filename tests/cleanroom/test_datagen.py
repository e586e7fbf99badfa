"""The synthetic three-provider data: deterministic, streamed, with a real lift."""

from __future__ import annotations

from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sgxcloud.cleanroom.datagen import SCHEMAS, generate
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.identifiers import normalise

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cleanroom" / "collaboration.yaml"


def test_deterministic_by_seed(tmp_path):
    a = generate(tmp_path / "a", people=800, seed=5, chunk_people=300)
    b = generate(tmp_path / "b", people=800, seed=5, chunk_people=300)
    c = generate(tmp_path / "c", people=800, seed=6, chunk_people=300)
    for ref in a.files:
        assert pq.read_table(a.files[ref]).equals(pq.read_table(b.files[ref])), ref
    assert not pq.read_table(a.files["bank.customers"]).equals(
        pq.read_table(c.files["bank.customers"])
    )


def test_streams_in_chunks_with_the_declared_schemas(tmp_path):
    seen = []
    data = generate(
        tmp_path,
        people=1000,
        seed=1,
        chunk_people=250,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(250, 1000), (500, 1000), (750, 1000), (1000, 1000)]
    for name, schema in SCHEMAS.items():
        ref = name.replace("/", ".")
        parquet = pq.ParquetFile(data.files[ref])
        assert parquet.schema_arrow == schema
        assert parquet.metadata.num_row_groups == 4  # one per chunk: never all in memory
        assert parquet.metadata.num_rows == data.rows[ref]
    assert 500 < data.rows["bank.customers"] < 700  # bank_share 0.6


def test_csv_output(tmp_path):
    data = generate(tmp_path, people=300, seed=2, fmt="csv")
    table = pacsv.read_csv(data.files["telecom.subscribers"])
    assert table.column_names == ["phone", "region", "device"]
    assert table.num_rows == data.rows["telecom.subscribers"]
    with pytest.raises(ValueError):
        generate(tmp_path, people=10, fmt="xlsx")


def test_columns_match_the_example_definition(tmp_path):
    definition = load_definition(EXAMPLE)
    data = generate(tmp_path, people=200, seed=3)
    for ref in data.files:
        assert set(definition.columns_needed(ref)) <= set(SCHEMAS[ref.replace(".", "/")].names)


def test_identifiers_are_mostly_valid_and_a_few_invalid(tmp_path):
    data = generate(tmp_path, people=4000, seed=4, invalid_rate=0.01)
    bank = pq.read_table(data.files["bank.customers"]).to_pandas()
    emails = bank.email.dropna()
    valid = emails.map(lambda e: normalise("email", e) is not None)
    assert 0.97 < valid.mean() < 1.0
    phones = bank.phone.dropna()
    assert 0.97 < phones.map(lambda p: normalise("phone", p, "GB") is not None).mean() < 1.0


def test_the_same_person_is_written_differently_but_normalises_alike(tmp_path):
    data = generate(tmp_path, people=500, seed=9)
    bank = pq.read_table(data.files["bank.customers"]).to_pandas()
    shop = pq.read_table(data.files["retailer.customers"]).to_pandas()
    bank_norm = {normalise("email", e) for e in bank.email.dropna()}
    shop_raw = [e for e in shop.email.dropna() if "+shop@gmail.com" in e]
    assert shop_raw  # written with a +tag and spaces
    matched = [e for e in shop_raw if normalise("email", e) in bank_norm]
    assert matched and all(e not in set(bank.email) for e in matched)


def test_true_lift_effect(tmp_path):
    data = generate(tmp_path, people=20000, seed=8, lift=0.5)
    exposures = pq.read_table(data.files["retailer.exposures"]).to_pandas()
    purchases = pq.read_table(data.files["retailer.purchases"]).to_pandas()
    exposures["who"] = exposures.email.fillna(exposures.phone)
    first = exposures.groupby("who").agg(at=("exposed_at", "min"), arm=("group", "first"))
    purchases["who"] = purchases.email.fillna(purchases.phone)
    joined = purchases.merge(first, left_on="who", right_index=True)
    joined = joined[(joined.purchased_at >= joined["at"])]
    converters = joined.groupby("arm").who.nunique()
    people = first.groupby("arm").size()
    rate = converters / people
    assert rate["test"] > rate["control"] * 1.2
