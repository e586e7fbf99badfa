"""Canonical JSON: the one byte form that sgxcloud hashes, chains and signs.

Sorted keys, no whitespace, and no NaN or infinity (they are not JSON, and
a reader in another language could not reproduce the bytes).  UTF-8 unless
``ascii_only``: then every non-ASCII character is written as a ``\\uXXXX``
escape.  That is the CAS audit log's form; its stored entries were hashed
over those bytes, so it must stay as it is.  Policy hashes, definition hashes,
approvals, results and the clean-room audit use UTF-8.

Standard library only: the enclave-side CAS client may import it.
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(value: Any, *, ascii_only: bool = False) -> bytes:
    """``value`` as canonical JSON bytes; ``ValueError`` for NaN or an infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False
    ).encode("utf-8")
