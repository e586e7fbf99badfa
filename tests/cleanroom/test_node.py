"""Bad provider input: a clear, value-free report; nothing sent; the node keeps serving."""

from __future__ import annotations

import base64
import io

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgxcloud.cleanroom.approvals import approve, encode_public_key, generate_private_key
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.identifiers import HASH_TYPE, new_key
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.node import NodeConfig, ProviderNode, Source
from sgxcloud.cleanroom.transport import (
    RemoteError,
    TlsIdentity,
    connect,
    open_client,
)
from sgxcloud.cleanroom.transport.trust import local_attester, peer_policy
from sgxcloud.errors import InputError

SECRET_EMAILS = ["zelda.secret@example.org", "Oscar.Hidden@Example.org", "mallory@corp.example"]


@pytest.fixture(scope="module")
def setup():
    keys = {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand")}
    definition = definition_from_dict(
        example_definition({p: encode_public_key(k) for p, k in keys.items()})
    )
    approvals = [approve(definition, p, keys[p]) for p in ("bank", "telecom", "retailer")]
    return definition, approvals


def good_rows(n=30):
    emails = SECRET_EMAILS + [f"p{i}@example.org" for i in range(n)]
    return {
        "customer_id": [f"C{i:05d}" for i in range(len(emails))],
        "email": emails,
        "phone": [None] * len(emails),
        "premium_card": [str(i % 2 == 0).lower() for i in range(len(emails))],
        "income_band": ["middle"] * len(emails),
    }


def write_csv(path, text):
    path.write_text(text)
    return Source.parse(str(path))


def start(definition, approvals, sources, **kw):
    node = ProviderNode(
        NodeConfig(
            provider="bank",
            definition=definition,
            sources=sources,
            approvals=approvals,
            simulate=True,
            allow_simulated=True,
            **kw,
        )
    )
    node.start()
    return node


def request(node, definition, dataset="customers"):
    tls = connect(node.address, TlsIdentity.generate("coordinator"))
    channel = open_client(
        tls,
        "coordinator",
        peer_policy(definition, "node", allow_simulated=True),
        local_attester(definition, "coordinator", simulate=True),
    )
    try:
        channel.request(
            {"op": "send", "dataset": dataset, "key": base64.b64encode(new_key()).decode()}
        )
        sink = io.BytesIO()
        trailer = channel.receive_stream(sink)
        return pa.ipc.open_stream(sink.getvalue()).read_all(), trailer
    finally:
        channel.close()


def assert_no_identifiers(text):
    for email in SECRET_EMAILS:
        assert email.lower() not in text.lower()
        assert email.split("@")[0].lower() not in text.lower()


CSV_HEADER = "customer_id,email,phone,premium_card,income_band\n"
# Every message names the dataset, the file, the line and the column, and says
# what would be accepted (issue 12).
CASES = {
    "wrong field count": (
        CSV_HEADER
        + "C0,p0@example.org,,true,low\n"
        + "C1,zelda.secret@example.org,,true\n"
        + "C2,mallory@corp.example,,true,low,extra\n",
        r"^bank\.customers: .*bad\.csv: 2 line\(s\) do not have the header's 5 "
        r"fields: line 3 has 4, line 4 has 6; a value containing a comma",
    ),
    "missing column": (
        "customer_id,email,income_band\nC1,zelda.secret@example.org,low\n",
        r"^bank\.customers: .*bad\.csv: missing column\(s\) phone, premium_card",
    ),
    "not boolean": (
        CSV_HEADER
        + "C0,p0@example.org,,true,low\n"
        + "C1,zelda.secret@example.org,,maybe-yes,low\n",
        r"^bank\.customers: .*bad\.csv, line 3: column premium_card: 1 value\(s\) "
        r"cannot be read as boolean; accepted: true/false, yes/no",
    ),
    "undeclared category": (
        CSV_HEADER
        + "C0,p0@example.org,,true,low\n"
        + '"C1","zelda.secret@example.org",,true,\n'
        + '"C2\nstill C2",mallory@corp.example,,yes,very-high\n',
        r"^bank\.customers: .*bad\.csv, line 4: column income_band: 1 "
        r"value\(s\) not among the declared values; accepted: low, middle, "
        r"high$",
    ),
    "bad identifiers": (
        CSV_HEADER
        + "".join(f",{e.replace('@', ' at ')},,true,low\n" for e in SECRET_EMAILS)
        + ",p1@example.org,,true,low\n",
        r"^bank\.customers: .*bad\.csv: 3 invalid identifier\(s\) \(email=3\) .*"
        r"run 'sgxcloud cleanroom node check'",
    ),
    "empty file": ("", r"^bank\.customers: .*bad\.csv: empty CSV file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_csv_is_reported_and_node_keeps_serving(setup, tmp_path, case, caplog):
    definition, approvals = setup
    text, expected = CASES[case]
    node = start(definition, approvals, {"customers": write_csv(tmp_path / "bad.csv", text)})
    try:
        with pytest.raises(RemoteError, match=expected) as info:
            request(node, definition)
        assert_no_identifiers(str(info.value))
        # Fix the file: the same node process serves it at once.
        pa.csv.write_csv(pa.table(good_rows()), tmp_path / "bad.csv")
        table, trailer = request(node, definition)
        assert table.num_rows == trailer["rows"] == len(good_rows()["email"])
        assert table.schema.field("email").type == HASH_TYPE
    finally:
        node.stop()
    events = " ".join(str(e) for e in node.events)
    assert "rejected" in events
    assert_no_identifiers(events)
    assert_no_identifiers(caplog.text)


def test_garbage_parquet_reported(setup, tmp_path):
    definition, approvals = setup
    path = tmp_path / "bank.parquet"
    path.write_bytes(b"zelda.secret@example.org" * 10)
    node = start(definition, approvals, {"customers": Source.parse(str(path))})
    try:
        with pytest.raises(RemoteError, match="not a Parquet file") as info:
            request(node, definition)
        assert_no_identifiers(str(info.value))
    finally:
        node.stop()


def test_parquet_and_duckdb_sources_stream_in_batches(setup, tmp_path):
    definition, approvals = setup
    rows = good_rows(500)
    table = pa.table(
        {
            **rows,
            "phone": pa.array(rows["phone"], pa.string()),
            "premium_card": [v == "true" for v in rows["premium_card"]],
        }
    )
    pq.write_table(table, tmp_path / "bank.parquet", row_group_size=100)
    with duckdb.connect(str(tmp_path / "bank.duckdb")) as con:
        con.register("t", table)
        con.execute("CREATE TABLE customers AS SELECT * FROM t")
    for spec in (str(tmp_path / "bank.parquet"), f"{tmp_path / 'bank.duckdb'}:customers"):
        node = start(definition, approvals, {"customers": Source.parse(spec)}, batch_rows=64)
        try:
            got, trailer = request(node, definition)
        finally:
            node.stop()
        assert got.num_rows == table.num_rows
        assert trailer["batches"] == -(-table.num_rows // 64)


def test_duckdb_missing_table_reported(setup, tmp_path):
    definition, approvals = setup
    duckdb.connect(str(tmp_path / "x.duckdb")).close()
    node = start(
        definition, approvals, {"customers": Source.parse(f"{tmp_path / 'x.duckdb'}:customers")}
    )
    try:
        with pytest.raises(RemoteError, match="no such table"):
            request(node, definition)
    finally:
        node.stop()


def test_unknown_dataset_and_bad_source_specs(setup, tmp_path):
    definition, _approvals = setup
    with pytest.raises(InputError, match="not declared"):
        NodeConfig(
            provider="bank",
            definition=definition,
            sources={"nope": Source.parse(str(tmp_path / "a.csv"))},
        ).validate()
    with pytest.raises(InputError, match="unsupported"):
        Source.parse(str(tmp_path / "a.xlsx"))
    with pytest.raises(InputError, match="DuckDB table"):
        Source.parse(str(tmp_path / "a.duckdb"))


def test_a_stranger_learns_nothing_of_the_node_before_its_evidence_is_checked(setup):
    """Red team rt7 finding 8: a HELLO naming another definition was refused with 64
    bits of the node's definition hash (which collaboration a host serves; its
    nodes linked), and the node's own HELLO named its provider to anyone who
    knew the hash.  A refusal before attestation names only what the peer sent."""
    import json
    import os
    import time

    from sgxcloud.cleanroom.transport.channel import PROTOCOL, FramedConnection, Kind

    definition, approvals = setup
    node = start(definition, approvals, {})
    ours = definition.definition_hash()

    def hello(definition_hash):
        frames = FramedConnection(connect(node.address, TlsIdentity.generate("stranger")))
        frames.send_json(
            Kind.HELLO,
            {
                "protocol": PROTOCOL,
                "role": "coordinator",
                "definition_hash": definition_hash,
                "nonce": os.urandom(32).hex(),
                "extra": {},
            },
        )
        return frames

    try:
        theirs = "sha256:" + "0123456789abcdef" * 4
        frames = hello(theirs)
        with pytest.raises(RemoteError) as refused:
            frames.recv_json(Kind.HELLO)
        frames.close()
        told = str(refused.value)
        # What helps an honest coordinator: its own hash, and that the node runs another.
        assert theirs[:16] in told and "this side runs another" in told
        digest = ours.split(":")[-1]
        assert not [digest[i : i + 6] for i in range(len(digest) - 5) if digest[i : i + 6] in told]
        # Knowing the hash (an approval file shows it) still names no provider.
        frames = hello(ours)
        _, answer = frames.recv_json(Kind.HELLO)
        frames.close()
        assert answer["extra"] == {} and "bank" not in json.dumps(answer)
        # The node's operator still sees why it refused.
        deadline = time.monotonic() + 5
        while not [e for e in node.events if theirs[:16] in e.get("reason", "")]:
            assert time.monotonic() < deadline, list(node.events)
            time.sleep(0.02)
    finally:
        node.stop()
