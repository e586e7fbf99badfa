"""SIMULATED trust needs the process's own command line, never the definition alone.

The shipped example definition allows simulated evidence (for demos). Under
it, before, any process could pose as the coordinator: a real node handed it
its data re-keyed under a key the impostor chose, and keyed phone numbers
were inverted by brute force (issue 9, finding 9).  Now a node and the
coordinator accept a SIMULATED peer only when the definition allows it *and*
they were started with ``--allow-simulated`` (which prints a loud warning).
Real processes on loopback.
"""

from __future__ import annotations

import json

import pytest
import yaml

from sgxcloud.cleanroom.coordinator import Coordinator, CoordinatorConfig
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.local import LocalCollaboration, prepare_example
from sgxcloud.cleanroom.transport import RemoteError, TlsIdentity, connect, open_client
from sgxcloud.cleanroom.transport.trust import local_attester, peer_policy


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("optin")
    collab = prepare_example(workdir, people=200)
    assert yaml.safe_load(collab.definition.read_text())["enclaves"]["allow_simulated"] is True
    return collab


def _node(example, name: str, *extra: str) -> LocalCollaboration:
    """The bank's node as its own process, started as an operator would type it."""
    node = LocalCollaboration(
        workdir=example.workdir,
        definition=example.definition,
        approvals=example.approvals,
        nodes={},
    )
    args = [
        "node",
        "--definition",
        str(example.definition),
        "--provider",
        "bank",
        "--listen",
        "127.0.0.1:0",
        "--simulate",
        "--verbose",
        "--dataset",
        f"customers={example.nodes['bank']['customers']}",
        *extra,
    ]
    info = node._spawn(name, args)
    node.addresses["bank"] = (info["host"], info["port"])
    return node


def _impostor_session(example, address):
    """A process posing as the coordinator with SIMULATED evidence and the approvals."""
    definition = definition_from_dict(yaml.safe_load(example.definition.read_text()))
    approvals = [json.loads(p.read_text()) for p in example.approvals]
    tls = connect(address, TlsIdentity.generate("coordinator"))
    return open_client(
        tls,
        "coordinator",
        peer_policy(definition, "node", allow_simulated=True),
        local_attester(definition, "coordinator", simulate=True),
        extra={"approvals": approvals},
    )


def test_a_node_without_the_flag_refuses_a_simulated_coordinator(example):
    node = _node(example, "node-bank-plain")
    try:
        with pytest.raises(RemoteError, match="--allow-simulated"):
            _impostor_session(example, node.addresses["bank"])
    finally:
        node.stop()
    log = (example.workdir / "logs" / "node-bank-plain.log").read_text()
    assert "SIMULATED" in log and "--allow-simulated" in log
    assert "pose as a node" not in log  # no banner: this node trusts nothing simulated


def test_with_the_flag_it_accepts_and_says_so_loudly(example):
    node = _node(example, "node-bank-demo", "--allow-simulated")
    try:
        channel = _impostor_session(example, node.addresses["bank"])
        channel.request({"op": "bye"})
        channel.close()
    finally:
        node.stop()
    log = (example.workdir / "logs" / "node-bank-demo.log").read_text()
    assert "WARNING" in log and "pose as a node or the coordinator" in log


def test_a_coordinator_without_the_flag_gives_no_key_to_a_simulated_node(example, tmp_path):
    """The coordinator hands nodes the re-keying key: a SIMULATED node gets none of it."""
    from sgxcloud.cleanroom.approvals import Approval

    node = _node(example, "node-bank-for-coordinator", "--allow-simulated")
    definition = definition_from_dict(yaml.safe_load(example.definition.read_text()))
    approvals = [Approval.from_dict(json.loads(p.read_text())) for p in example.approvals]
    coordinator = Coordinator(
        CoordinatorConfig(
            definition=definition,
            workdir=tmp_path / "coordinator",
            approvals=approvals,
            nodes={"bank": node.addresses["bank"]},
            simulate=True,
        )
    )
    try:
        coordinator.ingest_all()
        state = coordinator.status()["bank.customers"]
        assert state["state"] == "unavailable"
        assert "--allow-simulated" in state["reason"]
    finally:
        coordinator.close()
        node.stop()
    log = (example.workdir / "logs" / "node-bank-for-coordinator.log").read_text()
    assert "sent dataset" not in log and " sent " not in log
