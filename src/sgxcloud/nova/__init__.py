"""OpenStack Nova integration: SGX hosts, EPC in Placement, sgx-epc guests.

Laid out like Nova's libvirt area, one role per module:

- ``conf``: the ``[sgx]`` options (and ``list_opts`` for oslo-config-generator)
- ``resources``: Placement resource class, traits and host-stat keys
- ``config``: libvirt XML <-> objects (domain capabilities ``<sgx>``, the
  ``sgx-epc`` memory device); decides nothing
- ``host``: what the host's libvirt/QEMU say about SGX
- ``requirements``: what a flavor asks for (EPC size, ``sgx:`` keys)
- ``designer``: shapes a guest config for SGX (EPC device, NUMA, maxMemory, CPU)
- ``driver``: ``SGXLibvirtDriver``, the compute driver tying these together
- ``extra_specs``: ``sgx:`` flavor key validators (Nova entry point)
- ``scheduler``: ``SGXFilter`` and ``SGXWeigher``
- ``api``: WSGI middleware refusing live migration/suspend of SGX servers
- ``usage`` and ``osc``: EPC MB-hours and the ``openstack sgx`` commands
- ``checks``: read-only node, VM and guest checks (``sgxcloud host|guest``)
- ``testing``: an in-process SGX cloud on Nova's functional harness (tests, demo)
"""
