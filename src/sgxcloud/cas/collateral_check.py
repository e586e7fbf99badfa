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

It must also be the piece that was asked for, in the form dcap-qvl reads
(red team attack-cas4, finding 1: Intel-signed pieces served for the wrong
request — the TDX QE identity for SGX's, another FMSPC's TCB info, the
Platform CA's CRL for the Processor CA's — or with a space in the signature
hex or the root first in the chain passed a signature-only check and blocked
attestation just the same):

- TCB info: ``id`` of the TEE (``SGX``/``TDX``) and the requested FMSPC;
  QE identity: ``id`` ``QE`` (SGX) or ``TD_QE`` (TDX); a CRL: issued by the
  requested CA (PCK Processor/Platform CA, or the root for the root CA CRL);
- signatures exactly 128 hex digits; issuer chains exactly [signer, Intel's
  root], as Intel's PCS serves them.

Validity in time, revocation and TCB matching stay with dcap-qvl, which
checks all of this again, with times, when it verifies a quote.
"""

from __future__ import annotations

import json
import re

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sgxcloud.cas.errors import CollateralError
from sgxcloud.cas.pck import INTEL_SGX_ROOT_CA_PEM

_ROOT = x509.load_pem_x509_certificate(INTEL_SGX_ROOT_CA_PEM)
_SIGNATURE_HEX = re.compile(r"[0-9a-fA-F]{128}")
_TCB_INFO_IDS = {"sgx": "SGX", "tdx": "TDX"}
_QE_IDENTITY_IDS = {"sgx": "QE", "tdx": "TD_QE"}
_PCK_CA_NAMES = {"processor": "Intel SGX PCK Processor CA", "platform": "Intel SGX PCK Platform CA"}


def _issued_by_intel(issuer_chain_pem: str, what: str) -> x509.Certificate:
    """The chain's signer, checked: the chain is [signer, pinned root], the signer issued by it."""
    try:
        certificates = x509.load_pem_x509_certificates(issuer_chain_pem.encode())
    except ValueError as exc:
        raise CollateralError(f"{what}: its issuer chain is not readable PEM") from exc
    # dcap-qvl takes the first certificate as the signer (the root first is
    # "CaUsedAsEndEntity"), so only Intel's own order is accepted.
    if len(certificates) != 2 or certificates[1] != _ROOT or certificates[0] == _ROOT:
        raise CollateralError(
            f"{what}: its issuer chain is not [signing certificate, Intel SGX Root CA]"
        )
    signer = certificates[0]
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
    # Exactly 128 digits: bytes.fromhex skips whitespace, dcap-qvl does not.
    if not _SIGNATURE_HEX.fullmatch(signature_hex):
        raise CollateralError(f"{what}: its signature is not 128 hex digits")
    raw = bytes.fromhex(signature_hex)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CollateralError(f"{what}: not an ECDSA P-256 signature by an EC key")
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    try:
        key.verify(signature, body.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CollateralError(f"{what}: Intel's signature does not verify (altered?)") from exc


def check_crl(der: bytes, issuer_chain_pem: str | None, what: str, *, ca: str = "") -> None:
    """CollateralError unless the CRL is signed by Intel's root or a CA the root issued.

    ``issuer_chain_pem`` None: the CRL must be the root's own (the root CA CRL);
    otherwise it must be the CRL of PCK CA ``ca`` (``processor``/``platform``).
    """
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CollateralError(f"{what}: not a DER CRL") from exc
    if issuer_chain_pem is None:
        issuer = _ROOT
    else:
        issuer = _issued_by_intel(issuer_chain_pem, what)
        if _common_name(issuer.subject) != _PCK_CA_NAMES.get(ca):
            raise CollateralError(f"{what}: not the CRL of the PCK {ca} CA")
    if crl.issuer != issuer.subject:
        raise CollateralError(f"{what}: issued by another CA than its chain names")
    key = issuer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
        raise CollateralError(f"{what}: its signature does not verify with its Intel issuer")


def _common_name(name: x509.Name) -> str:
    names = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _json_fields(body: str, what: str) -> dict:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise CollateralError(f"{what}: not JSON") from exc
    if not isinstance(document, dict):
        raise CollateralError(f"{what}: not a JSON object")
    return document


def check_piece(name: str, fields: dict[str, str], what: str) -> None:
    """Check a cached piece by its name (``tcb-TEE-FMSPC``, ``qe-TEE``, ``pckcrl-CA``,
    ``rootcacrl``): Intel signed it, it is what that name asks for, dcap-qvl can read it."""
    kind, _, rest = name.partition("-")
    try:
        if kind == "tcb":
            tee, _, fmspc = rest.partition("-")
            body = fields["tcb_info"]
            check_signed_json(
                body, fields["tcb_info_signature"], fields["tcb_info_issuer_chain"], what
            )
            document = _json_fields(body, what)
            if document.get("id") != _TCB_INFO_IDS.get(tee):
                raise CollateralError(f"{what}: not {tee.upper()} TCB info")
            if str(document.get("fmspc", "")).upper() != fmspc.upper():
                raise CollateralError(f"{what}: TCB info for another FMSPC")
        elif kind == "qe":
            body = fields["qe_identity"]
            check_signed_json(
                body, fields["qe_identity_signature"], fields["qe_identity_issuer_chain"], what
            )
            if _json_fields(body, what).get("id") != _QE_IDENTITY_IDS.get(rest):
                raise CollateralError(f"{what}: not the {rest.upper()} QE identity")
        elif kind == "pckcrl":
            check_crl(
                bytes.fromhex(fields["pck_crl"]), fields["pck_crl_issuer_chain"], what, ca=rest
            )
        elif name == "rootcacrl":
            check_crl(bytes.fromhex(fields["root_ca_crl"]), None, what)
        else:
            raise CollateralError(f"{what}: not a collateral piece this CAS asks for")
    except KeyError as exc:
        raise CollateralError(f"{what}: lacks {exc.args[0]}") from exc
    except ValueError as exc:  # a CRL that is not hex
        raise CollateralError(f"{what}: a CRL is not hex DER") from exc
