"""A real node process refuses every coordinator it must not trust.

The node runs as its own process (``sgxcloud cleanroom node``) on loopback;
the test plays the coordinator over real attested TLS, sometimes honestly,
sometimes as the wrong enclave, with a changed definition or missing
approvals.  Identifiers are searched for in everything the node wrote.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sgxcloud.cleanroom.approvals import Approval
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.identifiers import HASH_TYPE, new_key
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example
from sgxcloud.cleanroom.transport import (
    RemoteError,
    TlsIdentity,
    connect,
    open_client,
)
from sgxcloud.cleanroom.transport.trust import local_attester, peer_policy


@pytest.fixture(scope="module")
def collab(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trust")
    example = prepare_example(workdir, people=400, min_group_size=5)
    # The node knows no approvals of its own: only what the coordinator presents.
    nodes = LocalCollaboration(
        workdir=workdir,
        definition=example.definition,
        approvals=[],
        nodes={"bank": example.nodes["bank"]},
    )
    nodes.start_nodes()
    yield example, nodes
    nodes.stop()


SPOILED = {"not-an-email", "12345", "+44 12"}  # datagen's deliberately invalid values


def identifier_strings(example, providers=None):
    """Every raw identifier the providers hold, in forms a leak could take."""
    definition = definition_of(example)
    found = set()
    for ds in definition.datasets:
        if providers and ds.provider not in providers:
            continue
        path = example.nodes[ds.provider][ds.name]
        table = pq.read_table(path, columns=[i.column for i in ds.identifiers])
        for ident in ds.identifiers:
            for value in table.column(ident.column).to_pylist():
                if value is None or value.strip() in SPOILED:
                    continue
                text = value.strip().lower()
                if ident.kind == "phone":
                    text = "".join(ch for ch in text if ch.isdigit())[-10:]
                found.add(text)
    return found


def assert_absent(identifiers, text):
    text = text.lower()
    leaked = [i for i in identifiers if i in text]
    assert not leaked, f"{len(leaked)} identifier(s) leaked"


def definition_of(example):
    return definition_from_dict(yaml.safe_load(example.definition.read_text()))


def approvals_of(example, without=()):
    docs = [json.loads(p.read_text()) for p in example.approvals]
    return [d for d in docs if d["party"] not in without]


def open_session(nodes, definition, approvals, *, mrenclave=None, policy_definition=None):
    attester = local_attester(definition, "coordinator", simulate=True, mrenclave=mrenclave)
    tls = connect(nodes.addresses["bank"], TlsIdentity.generate("coordinator"))
    return open_client(
        tls,
        "coordinator",
        peer_policy(policy_definition or definition, "node", allow_simulated=True),
        attester,
        extra={"approvals": approvals},
    )


def fetch(channel, dataset="customers", key=None):
    channel.request(
        {"op": "send", "dataset": dataset, "key": base64.b64encode(key or new_key()).decode()}
    )
    buffer = io.BytesIO()
    trailer = channel.receive_stream(buffer)
    return pa.ipc.open_stream(buffer.getvalue()).read_all(), trailer, buffer.getvalue()


def test_honest_coordinator_gets_only_needed_columns_rekeyed(collab):
    example, nodes = collab
    definition = definition_of(example)
    channel = open_session(nodes, definition, approvals_of(example))
    table, trailer, raw = fetch(channel)
    channel.request({"op": "bye"})
    channel.close()
    assert table.column_names == list(definition.columns_needed("bank.customers"))
    assert table.schema.field("email").type == HASH_TYPE
    source = pq.read_table(example.nodes["bank"]["customers"])
    assert table.num_rows == trailer["rows"]
    assert 0.95 * source.num_rows <= table.num_rows <= source.num_rows
    # No raw identifier crossed the wire, not even inside the Arrow stream.
    assert_absent(identifier_strings(example, {"bank"}), raw.decode("latin-1"))


def test_wrong_mrenclave_refused(collab):
    example, nodes = collab
    with pytest.raises(RemoteError, match="not pinned"):
        open_session(nodes, definition_of(example), approvals_of(example), mrenclave="ee" * 32)


def test_changed_definition_refused(collab):
    example, nodes = collab
    doc = copy.deepcopy(yaml.safe_load(example.definition.read_text()))
    doc["privacy"]["min_group_size"] = 2  # a quiet change that would weaken privacy
    changed = definition_from_dict(doc)
    with pytest.raises(RemoteError, match="definition"):
        open_session(nodes, changed, approvals_of(example))


def test_missing_approval_refused(collab):
    example, nodes = collab
    with pytest.raises(RemoteError, match="approval"):
        open_session(nodes, definition_of(example), approvals_of(example, without={"bank"}))
    with pytest.raises(RemoteError, match="incomplete"):
        open_session(nodes, definition_of(example), approvals_of(example, without={"telecom"}))


def test_forged_approval_refused(collab):
    example, nodes = collab
    approvals = approvals_of(example)
    bank = next(a for a in approvals if a["party"] == "bank")
    forged = Approval.from_dict({**bank, "node_mrenclave": "ee" * 32}).to_dict()
    approvals = [a for a in approvals if a["party"] != "bank"] + [forged]
    with pytest.raises(RemoteError, match="approval"):
        open_session(nodes, definition_of(example), approvals)


def test_node_keeps_serving_after_refusals(collab):
    example, nodes = collab
    channel = open_session(nodes, definition_of(example), approvals_of(example))
    table, _, _ = fetch(channel)
    channel.close()
    assert table.num_rows > 0


def test_hardware_definition_refuses_simulated_coordinator(tmp_path):
    example = prepare_example(tmp_path, people=50, allow_simulated=False)
    node = LocalCollaboration(
        workdir=tmp_path,
        definition=example.definition,
        approvals=[],
        nodes={"bank": example.nodes["bank"]},
    )
    node.start_nodes()
    try:
        definition = definition_of(example)
        with pytest.raises(RemoteError, match="SIMULATED"):
            open_session(node, definition, approvals_of(example))
    finally:
        node.stop()
    log = (tmp_path / "logs" / "node-bank.log").read_text()
    assert "SIMULATED" in log


def test_node_log_has_refusals_but_no_identifiers(collab):
    example, nodes = collab
    # Refusals of its own, so the test holds when run alone too.
    with pytest.raises(RemoteError, match="not pinned"):
        open_session(nodes, definition_of(example), approvals_of(example), mrenclave="ee" * 32)
    with pytest.raises(RemoteError, match="approval"):
        open_session(nodes, definition_of(example), approvals_of(example, without={"bank"}))
    # The node logs a refusal just after it answers: give the line a moment.
    deadline = time.monotonic() + 5
    while True:
        log = (example.workdir / "logs" / "node-bank.log").read_text()
        if ("not pinned" in log and "approval" in log) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "not pinned" in log and "approval" in log
    assert_absent(identifier_strings(example, {"bank"}), log)
