"""Gramine's attestation pseudo-files: how an enclave asks for a quote of itself.

Inside a Gramine enclave, ``/dev/attestation`` holds ``user_report_data``
(write the 64 bytes the quote is to carry), ``quote`` (read it back: a quote
over exactly those bytes) and ``attestation_type`` (``dcap`` or ``epid``, or
``none`` for an enclave built without remote attestation; older Gramine has
no such file).  The CAS enclave client and the clean-room transport both go
through :class:`GramineAttestation`; each turns an ``OSError`` into its own
refusal.  The quote is returned as bytes, never parsed here.

Standard library only: enclave images carry the CAS client with nothing but
cryptography (the ``client`` extra).
"""

from __future__ import annotations

from pathlib import Path

from sgxcloud.sgx.quote_layout import REPORT_DATA_SIZE

DEVICE = Path("/dev/attestation")
QUOTING_TYPES = frozenset({"dcap", "epid"})


class GramineAttestation:
    """The pseudo-files in ``directory`` (``/dev/attestation`` in an enclave; a
    test tree elsewhere)."""

    def __init__(self, directory: Path = DEVICE) -> None:
        # Paths are made once: an enclave asks for a quote at every attestation.
        self.directory = directory
        self._report_data = directory / "user_report_data"
        self._quote = directory / "quote"
        self._type = directory / "attestation_type"

    def available(self) -> bool:
        """Whether the pseudo-files are there (asked every time: a tree may come and go)."""
        return self._report_data.exists() and self._quote.exists()

    def why_not_attestable(self) -> str | None:
        """Why this enclave cannot be quoted, from ``attestation_type``; None if it can.

        Without the file (older Gramine) this says nothing; the quote read will.
        """
        try:
            kind = self._type.read_text().strip()
        except OSError:
            return None
        if kind in QUOTING_TYPES:
            return None
        return f'{self._type} says {kind!r}: set sgx.remote_attestation = "dcap" in the manifest'

    def quote(self, report_data: bytes) -> bytes:
        """A quote over ``report_data``; ``OSError`` when Gramine gives none.

        Gramine takes exactly 64 bytes; anything else is refused before the
        write, so no quote over a truncated or padded binding is ever asked for.
        """
        if len(report_data) != REPORT_DATA_SIZE:
            raise ValueError(
                f"report data is {len(report_data)} bytes; Gramine takes exactly {REPORT_DATA_SIZE}"
            )
        # The read returns a quote over the report data just written.
        self._report_data.write_bytes(report_data)
        return self._quote.read_bytes()
