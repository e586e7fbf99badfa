#!/bin/bash
#
# plugin.sh - DevStack plugin for sgxcloud: Intel SGX guests in Nova
#
# Enable in local.conf with:
#   enable_plugin sgxcloud <git url of this repository> [branch]
#
# What runs where depends on the Nova services enabled on the node:
#   every node          install sgxcloud into DevStack's Python   (stack install)
#   n-cpu               compute_driver, cpu_mode, [sgx] options    (stack post-config)
#   n-sch               SGXFilter, SGXWeigher, [sgx] weighing      (stack post-config)
#   n-api               sgx_guard in api-paste.ini                 (stack post-config)
#                       example SGX flavors, EPC quota, aggregate  (stack extra)
#                       SGX hosts into the isolated aggregate      (stack test-config)
# plus: unstack (nothing to stop) and clean (undo the install).
#
# Variables not assigned here (NOVA_CONF, NOVA_DIR, PYTHON, REGION_NAME, ...)
# come from DevStack's stackrc and lib/nova.
# shellcheck disable=SC2154

# Save trace setting
_XTRACE_SGXCLOUD=$(set +o | grep xtrace)
set -o xtrace

SGX_FILTER=sgxcloud.nova.scheduler.SGXFilter
SGX_WEIGHER=sgxcloud.nova.scheduler.SGXWeigher
SGX_PASTE_FACTORY=sgxcloud.nova.api.middleware:SGXActionGuard.factory
# Nova's defaults, used when nova.conf does not set these options.
NOVA_DEFAULT_FILTERS=ComputeFilter,ComputeCapabilitiesFilter,ImagePropertiesFilter,ServerGroupAntiAffinityFilter,ServerGroupAffinityFilter
NOVA_DEFAULT_WEIGHERS=nova.scheduler.weights.all_weighers


# Installation
# ------------

# install_sgxcloud - pip install this repository next to Nova
function install_sgxcloud {
    # Not editable: the package ships nova/virt/sgxcloud, the one-line shim
    # that makes compute_driver = sgxcloud.SGXLibvirtDriver loadable.
    setup_install "$SGXCLOUD_DIR"
    if is_service_enabled n-cpu; then
        _sgxcloud_place_driver_shim
    fi
}

# Nova imports compute drivers only as nova.virt.<name>.  pip put our shim in
# <purelib>/nova/virt/sgxcloud/, which is inside Nova's package only when Nova
# itself was installed there from a wheel.  DevStack installs Nova editable
# from $NOVA_DIR: Python then imports nova from that tree, and a <purelib>/nova/
# holding nothing but our shim is at best ignored and at worst (setuptools'
# editable finder runs after the normal path search) imported instead of
# Nova as an empty namespace package.  So move the shim into Nova's tree.
function _sgxcloud_place_driver_shim {
    local purelib sudo=""
    purelib=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [[ ! -f $purelib/nova/__init__.py && -d $purelib/nova/virt/sgxcloud ]]; then
        [[ -w $purelib ]] || sudo=sudo
        $sudo rm -rf "$purelib/nova/virt/sgxcloud"
        $sudo rmdir "$purelib/nova/virt" "$purelib/nova" 2>/dev/null || true
        ln -sfn "$SGXCLOUD_DIR/src/nova/virt/sgxcloud" "$NOVA_DIR/nova/virt/sgxcloud"
    fi
    "$PYTHON" -c 'from nova.virt.sgxcloud import SGXLibvirtDriver' || \
        die $LINENO "compute_driver sgxcloud.SGXLibvirtDriver cannot be imported by $PYTHON"
}


# Configuration
# -------------

# configure_sgxcloud - nova.conf and api-paste.ini for the services on this node
function configure_sgxcloud {
    # Every SGX-aware service reads [sgx]; nova-cpu.conf is copied from
    # $NOVA_CONF when nova-compute starts, after this phase.
    iniset "$NOVA_CONF" sgx reserved_epc_mb "$SGXCLOUD_RESERVED_EPC_MB"
    iniset "$NOVA_CONF" sgx epc_step_mb "$SGXCLOUD_EPC_STEP_MB"
    iniset "$NOVA_CONF" sgx max_epc_per_instance_mb "$SGXCLOUD_MAX_EPC_PER_INSTANCE_MB"
    iniset "$NOVA_CONF" sgx provision_key_device "$SGXCLOUD_PROVISION_KEY_DEVICE"
    iniset "$NOVA_CONF" sgx placement_strategy "$SGXCLOUD_PLACEMENT_STRATEGY"
    iniset "$NOVA_CONF" sgx weight_multiplier "$SGXCLOUD_WEIGHT_MULTIPLIER"

    if is_service_enabled n-cpu; then
        _sgxcloud_configure_compute
    fi
    if is_service_enabled n-sch; then
        _sgxcloud_configure_scheduler
    fi
    if is_service_enabled n-api; then
        _sgxcloud_configure_api
    fi
}

function _sgxcloud_configure_compute {
    iniset "$NOVA_CONF" DEFAULT compute_driver sgxcloud.SGXLibvirtDriver
    if [[ -n $SGXCLOUD_CPU_MODE ]]; then
        iniset "$NOVA_CONF" libvirt cpu_mode "$SGXCLOUD_CPU_MODE"
        if [[ $SGXCLOUD_CPU_MODE != custom ]]; then
            # nova-compute refuses to start with cpu_models outside custom mode.
            inidelete "$NOVA_CONF" libvirt cpu_models
        fi
    fi
    local virt_type
    virt_type=$(iniget "$NOVA_CONF" libvirt virt_type)
    if [[ $virt_type != kvm ]]; then
        # lib/nova falls back to qemu when /dev/kvm is missing.
        warn $LINENO "[libvirt] virt_type is '$virt_type': SGXLibvirtDriver offers SGX only with kvm"
    fi
    if [[ ! -e /dev/sgx_vepc ]]; then
        warn $LINENO "/dev/sgx_vepc is missing: this host will report no SGX (see docs/nova/operator-guide.md)"
    fi
}

function _sgxcloud_configure_scheduler {
    local filters weighers
    iniset_multiline "$NOVA_CONF" filter_scheduler available_filters \
        nova.scheduler.filters.all_filters "$SGX_FILTER"
    filters=$(iniget "$NOVA_CONF" filter_scheduler enabled_filters)
    filters=${filters:-$NOVA_DEFAULT_FILTERS}
    if [[ ",$filters," != *,SGXFilter,* ]]; then
        iniset "$NOVA_CONF" filter_scheduler enabled_filters "$filters,SGXFilter"
    fi
    weighers=$(iniget "$NOVA_CONF" filter_scheduler weight_classes)
    weighers=${weighers:-$NOVA_DEFAULT_WEIGHERS}
    if [[ ",$weighers," != *,$SGX_WEIGHER,* ]]; then
        iniset "$NOVA_CONF" filter_scheduler weight_classes "$weighers,$SGX_WEIGHER"
    fi
    if [[ $SGXCLOUD_ISOLATE_SGX_HOSTS == True ]]; then
        iniset "$NOVA_CONF" scheduler enable_isolated_aggregate_filtering true
    fi
}

function _sgxcloud_configure_api {
    # The same edit as etc/nova/api-paste.ini.sgx-snippet: sgx_guard right
    # before the app, after keystonecontext; a second run changes nothing.
    sed -i '/sgx_guard/!s/ osapi_compute_app_v21$/ sgx_guard osapi_compute_app_v21/' "$NOVA_API_PASTE_INI"
    iniset "$NOVA_API_PASTE_INI" filter:sgx_guard paste.filter_factory "$SGX_PASTE_FACTORY"
}


# Initialisation (nova-api is up)
# --------------

# init_sgxcloud - example flavors, EPC quota and the isolated aggregate
function init_sgxcloud {
    local spec
    for spec in $SGXCLOUD_FLAVORS; do
        _sgxcloud_create_flavor "$spec"
    done
    if [[ -n $SGXCLOUD_DCAP_FLAVOR ]]; then
        _sgxcloud_create_flavor "$SGXCLOUD_DCAP_FLAVOR" \
            --property sgx:provision_key=true --property sgx:require_flc=true
    fi
    if [[ $NOVA_USE_UNIFIED_LIMITS == True ]]; then
        _sgxcloud_register_epc_limit
    fi
    if [[ $SGXCLOUD_ISOLATE_SGX_HOSTS == True ]]; then
        openstack aggregate show "$SGXCLOUD_AGGREGATE" >/dev/null 2>&1 || \
            openstack aggregate create "$SGXCLOUD_AGGREGATE"
        openstack aggregate set --property trait:HW_CPU_X86_SGX=required "$SGXCLOUD_AGGREGATE"
    fi
}

# _sgxcloud_create_flavor name:ram_mb:vcpus:disk_gb:epc_mb [extra openstack flavor create args]
function _sgxcloud_create_flavor {
    local name ram vcpus disk epc
    IFS=: read -r name ram vcpus disk epc <<< "$1"
    shift
    if openstack --os-region-name="$REGION_NAME" flavor show "$name" >/dev/null 2>&1; then
        return
    fi
    # Microversion 2.86+ makes nova-api validate the sgx: keys on creation.
    openstack --os-region-name="$REGION_NAME" --os-compute-api-version 2.86 flavor create \
        --ram "$ram" --vcpus "$vcpus" --disk "$disk" \
        --property "resources:CUSTOM_SGX_EPC_MB=$epc" \
        --property trait:HW_CPU_X86_SGX=required \
        "$@" "$name"
}

function _sgxcloud_register_epc_limit {
    local existing
    existing=$(openstack --os-cloud devstack-system-admin registered limit list \
        --service nova --resource-name class:CUSTOM_SGX_EPC_MB -f value -c ID)
    if [[ -z $existing ]]; then
        openstack --os-cloud devstack-system-admin registered limit create \
            --service nova --default-limit "$SGXCLOUD_EPC_QUOTA_MB" \
            --region "$REGION_NAME" class:CUSTOM_SGX_EPC_MB
    fi
}

# add_sgx_hosts_to_aggregate - runs last: stack.sh maps compute hosts to
# cells (tools/discover_hosts.sh) after the extra phase, and Nova refuses to
# add an unmapped host to an aggregate.
function add_sgx_hosts_to_aggregate {
    local host
    if [[ -z $SGXCLOUD_SGX_HOSTS ]]; then
        warn $LINENO "SGXCLOUD_ISOLATE_SGX_HOSTS=True but SGXCLOUD_SGX_HOSTS is empty: aggregate $SGXCLOUD_AGGREGATE has no hosts"
        return
    fi
    local members
    # -f value prints the list as ['host1', 'host2'].
    members=" $(openstack aggregate show -f value -c hosts "$SGXCLOUD_AGGREGATE" | tr -d "[]',") "
    for host in $SGXCLOUD_SGX_HOSTS; do
        if [[ $members != *" $host "* ]]; then
            openstack aggregate add host "$SGXCLOUD_AGGREGATE" "$host"
        fi
    done
}


# Clean up
# --------

# cleanup_sgxcloud - undo install_sgxcloud (DevStack removes /etc/nova itself)
function cleanup_sgxcloud {
    local shim=$NOVA_DIR/nova/virt/sgxcloud
    if [[ -L $shim && $(readlink "$shim") == "$SGXCLOUD_DIR"/* ]]; then
        rm -f "$shim"
    fi
    pip_uninstall sgxcloud
}


# Dispatch
# --------

if is_service_enabled sgxcloud; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing sgxcloud"
        install_sgxcloud

    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        if is_service_enabled nova; then
            echo_summary "Configuring Nova for SGX guests"
            configure_sgxcloud
        fi

    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        if is_service_enabled n-api; then
            echo_summary "Creating SGX flavors"
            init_sgxcloud
        fi

    elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
        if is_service_enabled n-api && [[ $SGXCLOUD_ISOLATE_SGX_HOSTS == True ]]; then
            echo_summary "Adding SGX hosts to aggregate $SGXCLOUD_AGGREGATE"
            add_sgx_hosts_to_aggregate
        fi
    fi

    if [[ "$1" == "unstack" ]]; then
        # sgxcloud runs inside Nova's own services: nothing of ours to stop.
        :
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_sgxcloud
    fi
fi

# Restore xtrace
$_XTRACE_SGXCLOUD
