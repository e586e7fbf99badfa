"""What a piece of collateral proves before it is cached: Intel signed it.

A PCCS answer (TCB info, QE identity, PCK CRL, root CA CRL) is cached in
memory and on disk until the ``nextUpdate`` it states.  Cached unchecked, one
bad answer — from a faulty or compromised PCCS, or anyone on the path of an
``http://`` PCCS URL — stayed until the date it claimed, across restarts, and
every quote of that platform type was refused meanwhile (red team
attack-cas3, finding 5: a TCB info re-dated to 2099).  So before a piece is
kept, and again when it is read back from disk:

- its issuer chain's signing certificate is issued by Intel's SGX Root CA
  pinned in :mod:`sgxcloud.cas.pck` (never the chain's own copy of the root);
- TCB info and QE identity: the ECDSA P-256 signature (hex ``r || s``) over
  the exact text of the signed JSON member verifies with that certificate's
  key; CRLs: the CRL's own signature verifies with its issuer's key (the root
  CA CRL with the pinned root's).

Validity in time, revocation and TCB matching stay with dcap-qvl, which
checks all of this again, with times, when it verifies a quote.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sgxcloud.cas.errors import CollateralError
from sgxcloud.cas.pck import INTEL_SGX_ROOT_CA_PEM

_ROOT = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)


def _issued_by_intel(issuer_chain_pem: str, what: str) -> x509.Certificate:
    """The chain's first non-root certificate, checked to be issued by the pinned root."""
    try:
        certificates = x509.load_pem_x509_certificates(issuer_chain_pem.encode())
    except ValueError as exc:
        raise CollateralError(f"{what}: its issuer chain is not readable PEM") from exc
    signer = next((c for c in certificates if c != _ROOT), None)
    if signer is None:
        raise CollateralError(f"{what}: its issuer chain names no signing certificate")
    try:
        signer.verify_directly_issued_by(_ROOT)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CollateralError(
            f"{what}: its signing certificate is not issued by Intel's SGX Root CA"
        ) from exc
    return signer


def check_signed_json(body: str, signature_hex: str, issuer_chain_pem: str, what: str) -> None:
    """CollateralError unless ``body`` (TCB info / QE identity text) is signed by Intel."""
    signer = _issued_by_intel(issuer_chain_pem, what)
    key = signer.public_key()
    try:
        raw = bytes.fromhex(signature_hex)
    except ValueError as exc:
        raise CollateralError(f"{what}: its signature is not hex") from exc
    if len(raw) != 64 or not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralError(f"{what}: not an ECDSA P-256 signature by an EC key")
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    try:
        key.verify(signature, body.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CollateralError(f"{what}: Intel's signature does not verify (altered?)") from exc


def check_crl(der: bytes, issuer_chain_pem: str | None, what: str) -> None:
    """CollateralError unless the CRL is signed by Intel's root or a CA the root issued.

    ``issuer_chain_pem`` None: the CRL must be the root's own (the root CA CRL).
    """
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CollateralError(f"{what}: not a DER CRL") from exc
    issuer = _ROOT if issuer_chain_pem is None else _issued_by_intel(issuer_chain_pem, what)
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise CollateralError(f"{what}: its signature does not verify with its Intel issuer")


def check_collateral_fields(fields: dict[str, str], what: str) -> None:
    """Check every signed piece present in ``fields`` (dcap-qvl's collateral field names)."""
    for member in ("tcb_info", "qe_identity"):
        if member in fields:
            check_signed_json(
                fields[member],
                fields.get(f"{member}_signature", ""),
                fields.get(f"{member}_issuer_chain", ""),
                f"{what} ({member})",
            )
    try:
        if "pck_crl" in fields:
            check_crl(
                bytes.fromhex(fields["pck_crl"]),
                fields.get("pck_crl_issuer_chain", ""),
                f"{what} (pck_crl)",
            )
        if "root_ca_crl" in fields:
            check_crl(bytes.fromhex(fields["root_ca_crl"]), None, f"{what} (root_ca_crl)")
    except ValueError as exc:  # not hex
        raise CollateralError(f"{what}: a CRL is not hex DER") from exc
