from __future__ import annotations

import pytest

from sgxcloud.nova.requirements import NO_SGX, SGXRequest, sgx_request_from_extra_specs


def test_plain_flavor_wants_nothing():
    assert sgx_request_from_extra_specs({"hw:cpu_policy": "dedicated"}) == NO_SGX
    assert sgx_request_from_extra_specs(None) == NO_SGX
    assert not NO_SGX.wants_sgx


def test_epc_and_flags():
    request = sgx_request_from_extra_specs({
        "resources:CUSTOM_SGX_EPC_MB": "64", "sgx:provision_key": "True",
        "sgx:require_flc": "yes", "sgx:require_sgx2": "0"})
    assert request == SGXRequest(epc_mb=64, provision_key=True, require_flc=True,
                                 require_sgx2=False)


def test_granular_groups_add_up():
    request = sgx_request_from_extra_specs({
        "resources1:CUSTOM_SGX_EPC_MB": "32", "resources_a:CUSTOM_SGX_EPC_MB": "16"})
    assert request.epc_mb == 48


@pytest.mark.parametrize("value", ["", "lots", "-4", "0"])
def test_unusable_epc_values_mean_no_sgx(value):
    assert not sgx_request_from_extra_specs({"resources:CUSTOM_SGX_EPC_MB": value}).wants_sgx


def test_sgx_keys_without_epc_mean_no_sgx():
    assert sgx_request_from_extra_specs({"sgx:provision_key": "true"}) == NO_SGX


def test_accepted_tcb_statuses():
    request = sgx_request_from_extra_specs({
        "resources:CUSTOM_SGX_EPC_MB": "8", "sgx:tcb_status": "UpToDate, SWHardeningNeeded"})
    assert request.accepted_tcb_statuses == {"UpToDate", "SWHardeningNeeded"}
    assert not sgx_request_from_extra_specs(
        {"resources:CUSTOM_SGX_EPC_MB": "8"}).accepted_tcb_statuses
