"""OpenStackClient plugin: ``openstack sgx usage show|list`` and ``openstack sgx host list``.

Commands are thin: they parse arguments, call :mod:`sgxcloud.nova.usage`
and return ``(columns, data)`` for cliff to format (``-f table/json/csv/value``).
"""
