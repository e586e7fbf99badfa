"""nova-api additions: refuse operations SGX servers cannot survive."""
