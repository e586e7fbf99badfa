"""The DevStack plugin: valid bash, and each stack.sh phase does what it should.

DevStack itself cannot run here, so its few functions the plugin calls
(``iniset``, ``is_service_enabled``, ``setup_install``, ``openstack`` ...)
are small bash stand-ins that keep nova.conf in memory and log every call;
``sed`` edits a real copy of Nova's api-paste.ini and the driver shim is
moved in a real temporary tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nova import exception
from nova.api.validation.extra_specs import validators

from sgxcloud.nova import resources

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "devstack" / "plugin.sh"
SETTINGS = REPO / "devstack" / "settings"
SNIPPET = REPO / "etc" / "nova" / "api-paste.ini.sgx-snippet"
README = REPO / "devstack" / "README.md"

STANDINS = r"""
set -o errexit -o nounset -o pipefail
declare -A INI
ENABLED=${ENABLED:-}
log() { echo "$*" >> "$STUBLOG"; }
enable_service() { ENABLED="$ENABLED $*"; }
is_service_enabled() {
    local s
    for s in "$@"; do
        [[ " $ENABLED " == *" $s "* ]] && return 0
        [[ $s == nova && " $ENABLED " == *" n-"* ]] && return 0
    done
    return 1
}
trueorfalse() { local v=${!2:-$1}; case $v in True|true|1|yes) echo True;; *) echo False;; esac; }
echo_summary() { :; }
warn() { log "warn $2"; }
die() { log "die $2"; exit 1; }
setup_install() { log "setup_install $*"; }
pip_uninstall() { log "pip_uninstall $*"; }
iniset() { INI["$1|$2|$3"]=$4; }
iniget() { echo "${INI["$1|$2|$3"]:-}"; }
inidelete() { unset "INI[$1|$2|$3]"; }
iniset_multiline() { local f=$1 s=$2 o=$3; shift 3; INI["$f|$s|$o"]="$*"; }
CREATED=" "   # flavors, aggregates and limits made so far
HOSTS=""      # hosts added to the aggregate
openstack() {
    log "openstack $*"
    local name=${*: -1}
    case "$*" in
        *"aggregate show -f value -c hosts"*) echo "[$HOSTS]";;
        *" show "*) [[ $CREATED == *" $name "* ]];;
        *"registered limit list"*"--resource-name "*)
            local all="$*"
            local resource=${all##*--resource-name }
            [[ $CREATED == *" ${resource%% *} "* ]] && echo limit-id; true;;
        *"registered limit create"*|*" create "*) CREATED="$CREATED$name ";;
        *"aggregate add host"*) HOSTS="$HOSTS${HOSTS:+, }'$name'";;
    esac
}
dump() { local k; for k in "${!INI[@]}"; do echo "INI $k=${INI[$k]}"; done; }
"""


def _run_phases(
    tmp_path: Path,
    phases: list[str],
    *,
    enabled: str,
    env: dict[str, str] | None = None,
    nova_from_wheel: bool = False,
    preset: dict[str, str] | None = None,
) -> tuple[dict[str, str], list[str], Path]:
    """Source settings + plugin.sh for each phase, as stack.sh does; return
    the nova.conf/api-paste.ini values set, the call log and the tree root."""
    dest = tmp_path / "opt-stack"
    (dest / "nova" / "nova" / "virt").mkdir(parents=True, exist_ok=True)
    sgxcloud_dir = dest / "sgxcloud"
    if not sgxcloud_dir.exists():
        sgxcloud_dir.symlink_to(REPO)
    purelib = tmp_path / "purelib"
    (purelib / "nova" / "virt" / "sgxcloud").mkdir(parents=True, exist_ok=True)
    (purelib / "nova" / "virt" / "sgxcloud" / "__init__.py").write_text("# shim\n")
    if nova_from_wheel:
        (purelib / "nova" / "__init__.py").write_text("")
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/bash\ncase "$*" in *sysconfig*) echo {purelib};; *) exit 0;; esac\n')
    python.chmod(0o755)
    paste = tmp_path / "api-paste.ini"
    if not paste.exists():
        shutil.copy(Path(sys.prefix) / "etc" / "nova" / "api-paste.ini", paste)
    log = tmp_path / "calls.log"
    preset_lines = "".join(f'INI["{k}"]="{v}"\n' for k, v in (preset or {}).items())
    script = (
        STANDINS
        + preset_lines
        + "".join(f"source {SETTINGS}\nsource {PLUGIN} {phase}\n" for phase in phases)
        + "dump\n"
    )
    variables = {
        "DEST": str(dest),
        "NOVA_DIR": str(dest / "nova"),
        "NOVA_CONF": "nova.conf",
        "NOVA_API_PASTE_INI": str(paste),
        "PYTHON": str(python),
        "REGION_NAME": "RegionOne",
        "NOVA_USE_UNIFIED_LIMITS": "False",
        "STUBLOG": str(log),
        "ENABLED": enabled,
        "PATH": "/usr/bin:/bin",
        **(env or {}),
    }
    result = subprocess.run(
        ["bash", "-c", script],
        env=variables,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    values = dict(
        line[4:].split("=", 1) for line in result.stdout.splitlines() if line.startswith("INI ")
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return values, calls, tmp_path


# -- syntax -------------------------------------------------------------------


@pytest.mark.parametrize("path", [PLUGIN, SETTINGS], ids=lambda p: p.name)
def test_bash_syntax(path):
    result = subprocess.run(
        ["bash", "-n", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr


def test_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (Debian: apt-get install shellcheck)")
    result = subprocess.run(
        ["shellcheck", "-s", "bash", str(PLUGIN), str(SETTINGS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# -- stack install -------------------------------------------------------------


def test_install_moves_shim_into_an_editable_nova_tree(tmp_path):
    _, calls, root = _run_phases(tmp_path, ["stack install"], enabled="n-cpu")
    assert f"setup_install {root / 'opt-stack' / 'sgxcloud'}" in calls
    link = root / "opt-stack" / "nova" / "nova" / "virt" / "sgxcloud"
    assert link.is_symlink()
    assert link.resolve() == (REPO / "src" / "nova" / "virt" / "sgxcloud").resolve()
    # No stray nova/ left in site-packages to shadow Nova's own package.
    assert not (root / "purelib" / "nova").exists()
    assert not any(call.startswith("die") for call in calls)


def test_install_leaves_shim_beside_a_wheel_installed_nova(tmp_path):
    _, _, root = _run_phases(tmp_path, ["stack install"], enabled="n-cpu", nova_from_wheel=True)
    assert (root / "purelib" / "nova" / "virt" / "sgxcloud" / "__init__.py").is_file()
    assert not (root / "opt-stack" / "nova" / "nova" / "virt" / "sgxcloud").exists()


def test_clean_removes_the_shim_link_and_the_package(tmp_path):
    _run_phases(tmp_path, ["stack install"], enabled="n-cpu")
    _, calls, root = _run_phases(tmp_path, ["clean"], enabled="n-cpu")
    assert not (root / "opt-stack" / "nova" / "nova" / "virt" / "sgxcloud").exists()
    assert "pip_uninstall sgxcloud" in calls


# -- stack post-config ---------------------------------------------------------

DEVSTACK_NOVA_CONF = {
    "nova.conf|filter_scheduler|enabled_filters": (
        "ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,"
        "ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter,SameHostFilter,"
        "DifferentHostFilter"
    ),
    "nova.conf|libvirt|virt_type": "kvm",
    "nova.conf|libvirt|cpu_mode": "custom",
    "nova.conf|libvirt|cpu_models": "Nehalem",
    "nova.conf|DEFAULT|compute_driver": "libvirt.LibvirtDriver",
}


def test_post_config_all_in_one_twice(tmp_path):
    values, calls, root = _run_phases(
        tmp_path,
        ["stack post-config", "stack post-config"],
        enabled="n-api n-cpu n-sch placement-api",
        preset=DEVSTACK_NOVA_CONF,
    )
    assert values["nova.conf|DEFAULT|compute_driver"] == "sgxcloud.SGXLibvirtDriver"
    assert values["nova.conf|libvirt|cpu_mode"] == "host-model"
    assert "nova.conf|libvirt|cpu_models" not in values
    filters = values["nova.conf|filter_scheduler|enabled_filters"].split(",")
    assert filters[-1] == "SGXFilter" and filters.count("SGXFilter") == 1
    assert "DifferentHostFilter" in filters  # DevStack's own list kept
    assert values["nova.conf|filter_scheduler|available_filters"].split() == [
        "nova.scheduler.filters.all_filters",
        "sgxcloud.nova.scheduler.SGXFilter",
    ]
    assert values["nova.conf|filter_scheduler|weight_classes"] == (
        "nova.scheduler.weights.all_weighers,sgxcloud.nova.scheduler.SGXWeigher"
    )
    assert values["nova.conf|sgx|reserved_epc_mb"] == "0"
    assert values["nova.conf|sgx|placement_strategy"] == "pack"
    assert "nova.conf|scheduler|enable_isolated_aggregate_filtering" not in values

    paste = (root / "api-paste.ini").read_text()
    pipelines = [line for line in paste.splitlines() if line.startswith("keystone =")]
    assert pipelines and all(
        line.endswith(" keystonecontext sgx_guard osapi_compute_app_v21")
        or line.endswith(" legacy_v2_compatible sgx_guard osapi_compute_app_v21")
        for line in pipelines
    )
    assert values[f"{root / 'api-paste.ini'}|filter:sgx_guard|paste.filter_factory"] == (
        "sgxcloud.nova.api.middleware:SGXActionGuard.factory"
    )
    # /dev/sgx_vepc is absent on this machine: the plugin says so, once per run.
    assert sum("/dev/sgx_vepc is missing" in call for call in calls) == 2


def test_plugin_and_snippet_make_the_same_paste_edit():
    snippet_sed = [
        line.strip("# ").split(" /etc/nova")[0]
        for line in SNIPPET.read_text().splitlines()
        if "sed -i" in line
    ]
    assert len(snippet_sed) == 1
    assert snippet_sed[0] + ' "$NOVA_API_PASTE_INI"' in PLUGIN.read_text()


def test_post_config_compute_only_node_touches_no_scheduler_or_api(tmp_path):
    values, calls, root = _run_phases(
        tmp_path,
        ["stack post-config"],
        enabled="n-cpu",
        preset={"nova.conf|libvirt|virt_type": "qemu"},
    )
    assert values["nova.conf|DEFAULT|compute_driver"] == "sgxcloud.SGXLibvirtDriver"
    assert "nova.conf|filter_scheduler|enabled_filters" not in values
    assert "sgx_guard" not in (root / "api-paste.ini").read_text()
    assert any("virt_type is 'qemu'" in call for call in calls)


def test_post_config_isolation_and_kept_cpu_mode(tmp_path):
    values, _, _ = _run_phases(
        tmp_path,
        ["stack post-config"],
        enabled="n-sch n-cpu",
        env={"SGXCLOUD_ISOLATE_SGX_HOSTS": "True", "SGXCLOUD_CPU_MODE": ""},
        preset=DEVSTACK_NOVA_CONF,
    )
    assert values["nova.conf|scheduler|enable_isolated_aggregate_filtering"] == "true"
    assert values["nova.conf|libvirt|cpu_mode"] == "custom"
    assert values["nova.conf|libvirt|cpu_models"] == "Nehalem"


# -- stack extra / test-config ---------------------------------------------------


def _flavor_creates(calls: list[str]) -> dict[str, dict[str, str]]:
    flavors = {}
    for call in calls:
        if " flavor create " not in call:
            continue
        words = call.split()
        assert "--os-compute-api-version" in words
        assert words[words.index("--os-compute-api-version") + 1] == "2.86"
        properties = dict(
            words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--property"
        )
        flavors[words[-1]] = properties
    return flavors


def test_extra_creates_flavors_nova_accepts(tmp_path):
    _, calls, _ = _run_phases(tmp_path, ["stack extra"] * 2, enabled="n-api")
    flavors = _flavor_creates(calls)
    assert sum(" flavor create " in call for call in calls) == 4  # not again on re-run
    assert set(flavors) == {"sgx.tiny", "sgx.small", "sgx.medium", "sgx.dcap"}
    assert flavors["sgx.small"][f"resources:{resources.EPC_RESOURCE_CLASS}"] == "64"
    assert flavors["sgx.dcap"]["sgx:provision_key"] == "true"
    for properties in flavors.values():
        assert properties[f"trait:{resources.TRAIT_SGX}"] == "required"
        for name, value in properties.items():
            validators.validate(name, value)  # Nova's own validators, ours included
    assert not any("registered limit" in call for call in calls)
    assert not any("aggregate" in call for call in calls)


def test_validators_would_reject_a_typo_in_a_flavor_spec():
    with pytest.raises(exception.ValidationError):
        validators.validate("sgx:provisionkey", "true")


def test_extra_registers_epc_limit_and_isolated_aggregate(tmp_path):
    _, calls, _ = _run_phases(
        tmp_path,
        ["stack extra", "stack test-config"] * 2,
        enabled="n-api",
        env={
            "NOVA_USE_UNIFIED_LIMITS": "True",
            "SGXCLOUD_ISOLATE_SGX_HOSTS": "True",
            "SGXCLOUD_SGX_HOSTS": "sgx-1 sgx-2",
            "SGXCLOUD_FLAVORS": "",
            "SGXCLOUD_DCAP_FLAVOR": "",
        },
    )
    assert not _flavor_creates(calls)
    assert (
        "openstack --os-cloud devstack-system-admin registered limit create "
        "--service nova --default-limit 512 --region RegionOne "
        f"class:{resources.EPC_RESOURCE_CLASS}"
    ) in calls
    assert "openstack aggregate create sgx-hosts" in calls
    assert (
        f"openstack aggregate set --property trait:{resources.TRAIT_SGX}=required sgx-hosts"
    ) in calls
    # Run twice, as a re-stack does: each thing is made once.
    for once in (
        "registered limit create",
        "aggregate create sgx-hosts",
        "aggregate add host sgx-hosts sgx-1",
        "aggregate add host sgx-hosts sgx-2",
    ):
        assert sum(once in call for call in calls) == 1, once


def test_compute_only_node_creates_nothing_in_the_api(tmp_path):
    _, calls, _ = _run_phases(tmp_path, ["stack extra", "unstack"], enabled="n-cpu")
    assert not any(call.startswith("openstack") for call in calls)


def test_readme_documents_every_setting_and_its_links_resolve():
    text = README.read_text()
    settings = re.findall(r"^(SGXCLOUD_\w+)=", SETTINGS.read_text(), flags=re.MULTILINE)
    assert settings
    for name in settings:
        assert f"`{name}`" in text, name
    links = re.findall(r"\]\((?!https?://|#)([^)#]+)(?:#[^)]*)?\)", text)
    assert links
    assert not [link for link in links if not (README.parent / link).exists()]
