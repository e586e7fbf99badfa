from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgxcloud.nova.requirements import NO_SGX, SGXRequest, sgx_request_from_extra_specs


def test_plain_flavor_wants_nothing():
    assert sgx_request_from_extra_specs({"hw:cpu_policy": "dedicated"}) == NO_SGX
    assert sgx_request_from_extra_specs(None) == NO_SGX
    assert not NO_SGX.wants_sgx


def test_epc_and_flags():
    request = sgx_request_from_extra_specs(
        {
            "resources:CUSTOM_SGX_EPC_MB": "64",
            "sgx:provision_key": "True",
            "sgx:require_flc": "yes",
            "sgx:require_sgx2": "0",
        }
    )
    assert request == SGXRequest(
        epc_mb=64, provision_key=True, require_flc=True, require_sgx2=False
    )


def test_granular_groups_add_up():
    request = sgx_request_from_extra_specs(
        {"resources1:CUSTOM_SGX_EPC_MB": "32", "resources_a:CUSTOM_SGX_EPC_MB": "16"}
    )
    assert request.epc_mb == 48


@pytest.mark.parametrize("value", ["", "lots", "-4", "0"])
def test_unusable_epc_values_mean_no_sgx(value):
    assert not sgx_request_from_extra_specs({"resources:CUSTOM_SGX_EPC_MB": value}).wants_sgx


def test_sgx_keys_without_epc_mean_no_sgx():
    assert sgx_request_from_extra_specs({"sgx:provision_key": "true"}) == NO_SGX


def test_accepted_tcb_statuses():
    request = sgx_request_from_extra_specs(
        {"resources:CUSTOM_SGX_EPC_MB": "8", "sgx:tcb_status": "UpToDate, SWHardeningNeeded"}
    )
    assert request.accepted_tcb_statuses == {"UpToDate", "SWHardeningNeeded"}
    assert not sgx_request_from_extra_specs(
        {"resources:CUSTOM_SGX_EPC_MB": "8"}
    ).accepted_tcb_statuses


# -- flavor keys read exactly as Nova reads them (issue 9, finding 7) -----------------

EPC_KEY = "CUSTOM_SGX_EPC_MB"


@pytest.mark.parametrize(
    "key",
    [
        f"resources_{'a' * 64}:{EPC_KEY}",  # a 65-character group suffix
        f"resources{'1' * 65}:{EPC_KEY}",
        f"resourcesé:{EPC_KEY}",  # outside [a-zA-Z0-9_-]
        f"resources.1:{EPC_KEY}",
        f"resources1:{EPC_KEY}:extra",
        f"Resources:{EPC_KEY}",
    ],
)
def test_keys_nova_ignores_give_no_epc(key):
    """Placement allocates nothing for these: the guest must get no EPC either."""
    assert sgx_request_from_extra_specs({key: "64"}) == NO_SGX
    assert _nova_epc({key: "64"}) == 0


@pytest.mark.parametrize(
    "key",
    [f"resources_{'a' * 63}:{EPC_KEY}", f"resources{'Z' * 64}:{EPC_KEY}", f"resources-x:{EPC_KEY}"],
)
def test_group_suffixes_up_to_64_characters_count(key):
    assert sgx_request_from_extra_specs({key: "64"}).epc_mb == 64 == _nova_epc({key: "64"})


def _nova_epc(extra_specs: dict[str, str]) -> int:
    """EPC MiB as Nova's scheduler asks Placement for it (its own ResourceRequest)."""
    from nova import objects
    from nova.scheduler.utils import ResourceRequest

    objects.register_all()

    class Flavor:
        def __init__(self, specs: dict[str, str]) -> None:
            self.extra_specs = specs

        def __contains__(self, name: str) -> bool:
            return name == "extra_specs"

    request = ResourceRequest()
    request._process_extra_specs(Flavor(extra_specs))
    return request.merged_resources().get(EPC_KEY, 0)


_suffix = st.text(alphabet="abcXYZ019_-.é:", min_size=0, max_size=70)
_value = st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["", "x", "1.5", " 7"]))
_key = st.one_of(
    st.builds(lambda s: f"resources{s}:{EPC_KEY}", _suffix),
    st.builds(lambda s: f"trait{s}:HW_CPU_X86_SGX", _suffix),
    st.builds(lambda s: f"resources{s}:VCPU", _suffix),
    st.sampled_from([f"resources:{EPC_KEY}", "sgx:require_flc", "hw:mem_page_size"]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_key, _value, max_size=6))
def test_epc_is_what_nova_asks_placement_for(extra_specs):
    assert sgx_request_from_extra_specs(extra_specs).epc_mb == _nova_epc(extra_specs)
