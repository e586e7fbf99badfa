"""Gramine's /dev/attestation is read one way (sgxcloud.sgx.gramine), by the CAS
enclave client and by the clean-room transport alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgxcloud.cas.client import (
    ClientError,
    GramineEvidence,
    NoEvidenceSource,
    choose_evidence_source,
)
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.transport import GramineAttester, PeerRefused
from sgxcloud.cleanroom.transport.trust import local_attester
from sgxcloud.sgx.identity import EnclaveIdentity
from tests.cas.fake_gramine import FakeAttestationDevice

IDENTITY = EnclaveIdentity("ab" * 32, "cd" * 32, 1, 2, False)


def _tree(root: Path, attestation_type: str | None = "dcap") -> Path:
    directory = root / "dev/attestation"
    directory.mkdir(parents=True)
    (directory / "user_report_data").write_bytes(b"untouched")
    (directory / "quote").write_bytes(b"a quote")
    if attestation_type is not None:
        (directory / "attestation_type").write_text(attestation_type + "\n")
    return directory


def test_both_sides_get_a_quote_over_what_they_wrote_from_one_device(tmp_path: Path) -> None:
    """Gramine's interface as the fake FIFO device serves it: one quote per write."""
    with FakeAttestationDevice(tmp_path, IDENTITY) as device:
        cas_binding, room_binding = bytes([1]) * 64, bytes([2]) * 64
        assert GramineEvidence(tmp_path).evidence(cas_binding) == (
            make_simulated_evidence(IDENTITY, cas_binding).raw
        )
        evidence = GramineAttester(device.directory).evidence(room_binding)
        assert evidence.format == "dcap"
        assert evidence.raw == make_simulated_evidence(IDENTITY, room_binding).raw
        assert device.quotes_served == 2


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_report_data_of_the_wrong_size_is_never_written(tmp_path: Path, size: int) -> None:
    directory = _tree(tmp_path)
    with pytest.raises(ValueError, match="exactly 64"):
        GramineEvidence(tmp_path).evidence(bytes(size))
    with pytest.raises(ValueError, match="exactly 64"):
        GramineAttester(directory).evidence(bytes(size))
    assert (directory / "user_report_data").read_bytes() == b"untouched"


def test_an_enclave_built_without_remote_attestation_is_refused_by_both(tmp_path: Path) -> None:
    directory = _tree(tmp_path, "none")
    with pytest.raises(NoEvidenceSource, match="remote_attestation"):
        choose_evidence_source(tmp_path)
    definition = definition_from_dict(example_definition())
    with pytest.raises(PeerRefused, match="remote_attestation"):
        local_attester(definition, "node", simulate=False, attestation_root=directory)
    # dcap, epid, or no such file (older Gramine): both take the device.
    for kind in ("dcap", "epid", None):
        (directory / "attestation_type").unlink(missing_ok=True)
        if kind is not None:
            (directory / "attestation_type").write_text(kind)
        assert isinstance(choose_evidence_source(tmp_path), GramineEvidence)
        assert isinstance(
            local_attester(definition, "node", simulate=False, attestation_root=directory),
            GramineAttester,
        )


def test_a_device_that_gives_no_quote_is_each_sides_own_refusal(tmp_path: Path) -> None:
    directory = _tree(tmp_path)
    (directory / "quote").unlink()
    (directory / "quote").mkdir()  # reading it fails as Gramine's does without a quote
    with pytest.raises(ClientError, match="cannot get a quote"):
        GramineEvidence(tmp_path).evidence(bytes(64))
    with pytest.raises(PeerRefused, match="cannot obtain a quote"):
        GramineAttester(directory).evidence(bytes(64))
