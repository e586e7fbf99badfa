"""SGX vocabulary shared by every layer: EPC sizes, quote layout, identities.

Nothing here touches a host, a network or a database; it only names things.
"""
