"""Approvals: each provider signs the definition hash and the enclaves that run it."""

from __future__ import annotations

import copy

import pytest

from sgxcloud.cleanroom.approvals import (
    Approval,
    approve,
    decode_public_key,
    encode_public_key,
    generate_private_key,
    private_key_from_pem,
    private_key_to_pem,
    require_approvals,
    verify_approvals,
)
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import ApprovalError, CleanroomError


@pytest.fixture
def definition(base_doc):
    return definition_from_dict(base_doc)


def _all(definition, party_keys):
    return [approve(definition, p, party_keys[p]) for p in definition.providers]


def test_all_providers_approve(definition, party_keys):
    status = verify_approvals(definition, _all(definition, party_keys))
    assert status.complete
    assert status.valid == ("bank", "retailer", "telecom")
    require_approvals(definition, _all(definition, party_keys))


def test_missing_approval(definition, party_keys):
    approvals = _all(definition, party_keys)[:2]
    status = verify_approvals(definition, approvals)
    assert status.missing == ("retailer",) and not status.complete
    with pytest.raises(ApprovalError) as err:
        require_approvals(definition, approvals)
    assert err.value.missing == ("retailer",)
    assert "missing from retailer" in str(err.value)


def test_any_change_invalidates_every_approval(base_doc, definition, party_keys):
    approvals = _all(definition, party_keys)
    changed = copy.deepcopy(base_doc)
    changed["privacy"]["min_group_size"] = 49
    status = verify_approvals(definition_from_dict(changed), approvals)
    assert status.invalid == ("bank", "retailer", "telecom")
    assert status.missing == ("bank", "telecom", "retailer")


def test_new_mrenclave_needs_fresh_approvals(base_doc, definition, party_keys):
    approvals = _all(definition, party_keys)
    changed = copy.deepcopy(base_doc)
    changed["enclaves"]["coordinator"]["mrenclave"] = "cd" * 32
    assert not verify_approvals(definition_from_dict(changed), approvals).complete


def test_tampered_or_forged_approvals_are_invalid(definition, party_keys):
    approvals = _all(definition, party_keys)
    forged = Approval(**{**approvals[0].to_dict(), "approved_at": "2030-01-01T00:00:00+00:00"})
    status = verify_approvals(definition, [forged, *approvals[1:]])
    assert status.invalid == ("bank",) and status.missing == ("bank",)
    # the retailer cannot approve on the bank's behalf
    impostor = Approval(
        **{**approve(definition, "retailer", party_keys["retailer"]).to_dict(), "party": "bank"}
    )
    assert "bank" in verify_approvals(definition, [impostor]).invalid
    garbage = Approval(**{**approvals[1].to_dict(), "signature": "!!notbase64"})
    assert "telecom" in verify_approvals(definition, [garbage]).invalid


def test_a_later_valid_approval_wins_over_an_invalid_one(definition, party_keys):
    good = _all(definition, party_keys)
    bad = Approval(**{**good[0].to_dict(), "signature": good[1].signature})
    assert verify_approvals(definition, [bad, *good]).complete


def test_approve_needs_the_partys_own_key(definition, party_keys):
    with pytest.raises(ApprovalError, match="does not match"):
        approve(definition, "bank", party_keys["telecom"])
    with pytest.raises(ApprovalError, match="not a party"):
        approve(definition, "mallory", party_keys["bank"])


def test_round_trip_and_key_helpers(definition, party_keys):
    approval = approve(definition, "bank", party_keys["bank"])
    assert Approval.from_dict(approval.to_dict()) == approval
    with pytest.raises(ApprovalError):
        Approval.from_dict({"party": "bank"})
    key = generate_private_key()
    assert encode_public_key(private_key_from_pem(private_key_to_pem(key))) == encode_public_key(
        key
    )
    assert encode_public_key(decode_public_key(encode_public_key(key))) == encode_public_key(key)
    with pytest.raises(CleanroomError):
        decode_public_key("rsa:abc")
    with pytest.raises(CleanroomError):
        private_key_from_pem(b"not a key")
