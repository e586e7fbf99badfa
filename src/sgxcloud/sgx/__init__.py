"""SGX vocabulary shared by every layer: EPC sizes, quote layout, identities.

Nothing here touches a network or a database, and only :mod:`.gramine`
touches files: the enclave's own attestation pseudo-files, the one way the
CAS client and the clean room ask Gramine for a quote.
"""
