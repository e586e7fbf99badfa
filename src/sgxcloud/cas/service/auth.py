"""Signed owner requests: who is calling, proven by a signature over the request.

An owner signs ``sgxcloud-cas-request-v4``, the service's *deployment id*,
its origin (the *audience*, see :func:`origin_of`), the principal id of the
credential it presents (``key:sha256:…`` or ``cert:sha256:…``, below), the method, the path
(with query), the time, a fresh request id and the SHA-256 of the body with
the private key of either

* a public key listed in the policy (header ``X-Sgxcloud-Key``: base64 DER
  SubjectPublicKeyInfo), or
* a client certificate whose SHA-256 the policy lists (header
  ``X-Sgxcloud-Certificate``: base64 DER).  Signing with the certificate's key
  proves possession just as a TLS client-certificate handshake would, and
  works behind TLS-terminating proxies and with servers (uvicorn) that do not
  pass the peer certificate to the application.  A certificate authenticates
  only while valid, chained to the owner CA when one is configured, and not
  revoked by a configured CRL (:class:`OwnerCertificates`) — by signature or
  by mutual TLS alike.

The resulting principal id is the one :mod:`sgxcloud.cas.policy.access`
derives from the policy, so matching is a string comparison.  The time must
be within the configured skew, the deployment id the service's own, the
audience one of its own origins, and the request id unused: the service
records (signing key, request id) in its database until the request's time
leaves the skew window, so a captured request is accepted once — never
replayed after a delete or a revert, never at another replica sharing the
database, never at another deployment, even one reached at the same origin,
and never under another credential (bare key or certificate) of the same key
than the one it was signed for: the signature covers the credential's
principal id (before v4 it did not, and a request signed as one's certificate
verified as one's bare key, or as another certificate of that key — another
principal; it is still spent per signing key).

The deployment id is random, made once with the deployment's database (so
replicas sharing it share the id, and a backup carries it), and served
unauthenticated by ``GET /v1/health``.  Origins alone cannot tell
deployments apart: two CASes without ``public_urls`` on one loopback port, or
two behind one name, have the same origin but separate records of used
request ids, so a request signed for one could be spent again at the other.
Older signatures are refused with a message naming the upgrade:
``sgxcloud-cas-request-v2`` and before name no deployment (the service cannot
know whether its origin is unique, so it cannot accept them safely anywhere);
``sgxcloud-cas-request-v3`` names no credential (nothing in it says which
principal of the key its signer meant, so none is accepted as equivalent).

Co-owners consent.  Listing someone as an owner hands them the policy's
secrets *and* lends the policy their identity (exporters pin importers by an
owner id, and the reverse), so a policy may list only owners who signed it:
each co-owner other than the caller signs a :func:`sign_consent` statement over
the service (its deployment id and origin), the principal id of the
credential it is presented with (``key:sha256:…`` of the bare key, or
``cert:sha256:…`` of the certificate), the policy name and the exact policy
hash (which includes the predecessor), with an expiry of at most
:data:`CONSENT_MAX_LIFETIME`.  The service spends each consent once.
Consents of the older forms are refused, each with a message naming the
command that makes a new one: ``sgxcloud-cas-owner-consent-v1`` (no
deployment) and ``sgxcloud-cas-owner-consent-v2`` (no credential: one key's
consent verified under its bare key and under every certificate of it, each
another principal — a co-owner who consented as its certificate could be
listed, and its consent spent again, as its bare key).  No v2 consent can be
told to be meant for the credential it arrives with (anyone holding one
certificate of the key can present it as the bare key, and the reverse), and
a consent lives at most 7 days, so none is accepted.

The request signature covers the credential the same way (v4, above).

The request-id form, the clock window, the body digest, signing and the
signature check are :mod:`sgxcloud.signed_requests`, which the clean-room
coordinator's party requests follow too; the headers and the signed bytes
are the CAS's own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from sgxcloud.bounded import printable
from sgxcloud.cas.errors import AuthenticationError as AuthenticationError
from sgxcloud.cas.policy.access import (
    OwnerKeyError,
    certificate_id,
    check_owner_key,
    public_key_id,
)
from sgxcloud.signed_requests import (
    REQUEST_ID,
    SigningKey,
    body_digest,
    is_fresh,
    new_request_id,
    sign,
    signature_verifies,
    stale_from,
)

DATE_HEADER = "x-sgxcloud-date"
KEY_HEADER = "x-sgxcloud-key"
CERT_HEADER = "x-sgxcloud-certificate"
SIGNATURE_HEADER = "x-sgxcloud-signature"
AUDIENCE_HEADER = "x-sgxcloud-audience"
REQUEST_ID_HEADER = "x-sgxcloud-request-id"
DEPLOYMENT_HEADER = "x-sgxcloud-deployment"
PEER_CERTIFICATE_STATE = "sgxcloud_tls_client_certificate"
"""Key in a request's ASGI ``state`` holding the verified TLS client certificate (DER)."""
_DOMAIN = b"sgxcloud-cas-request-v4"
_V3_DOMAIN = b"sgxcloud-cas-request-v3"
DEPLOYMENT_PATTERN = "^[0-9a-f]{32}$"
"""A deployment id: 16 random bytes, hex (migration 0003 makes it)."""
_DEPLOYMENT = re.compile(DEPLOYMENT_PATTERN)
_CONSENT_DOMAIN = b"sgxcloud-cas-owner-consent-v3"
_OLDER_CONSENT = (
    "the consent of {principal} is in an older form ({form}) whose signature does not name "
    "the credential it is for, so it could be presented under another certificate or the "
    "bare key of the same key: have it made again with an upgraded 'sgxcloud policy consent' "
    "(it signs sgxcloud-cas-owner-consent-v3)"
)
_OLDER_REQUEST = (
    "request is signed in an older form (sgxcloud-cas-request-v2 or before) that names no "
    f"CAS deployment ({DEPLOYMENT_HEADER}), so it could be replayed at another CAS with the "
    "same address: upgrade the owner client (sgxcloud policy, OwnerClient) to sign "
    "sgxcloud-cas-request-v4"
)
_OLDER_V3_REQUEST = (
    "request is signed in an older form (sgxcloud-cas-request-v3) that does not name the "
    f"credential it is presented with ({KEY_HEADER} or {CERT_HEADER}), so it could act as "
    "another principal of the same key: upgrade the owner client (sgxcloud policy, "
    "OwnerClient) to sign sgxcloud-cas-request-v4"
)
CONSENT_MAX_LIFETIME = 7 * 86400
"""Longest a consent may be valid for: owners sign offline, but not forever."""


class OwnerCertificates:
    """What an owner's certificate must satisfy before it authenticates anyone.

    Always (by request signature, mutual TLS and in consents alike): the
    validity period contains the request's time; a KeyUsage, if present,
    allows digitalSignature; an ExtendedKeyUsage, if present, allows
    clientAuth (or any).  With an owner CA (``owner_ca_file``): the
    certificate chains to one of its self-signed (root) certificates, by
    ``cryptography.x509.verification`` (a client verifier; a subjectAltName is
    not required of owner certificates); the file's other certificates are
    intermediates, not trust anchors, so their revocation is checked too.
    With CRLs (``owner_crl_files``) and an owner CA, fail closed: every
    certificate of the chain but the root must be covered by a current CRL
    that its issuer signed, and not be revoked by it.  CRL files are re-read
    when they change.  Without an owner CA a certificate is a pinned key with
    a validity period (and a CRL it signed itself, if one is configured): the
    policy names the exact certificate by its SHA-256.
    """

    def __init__(self, ca_file: Path | None = None, crl_files: Sequence[Path] = ()) -> None:
        self._roots: list[x509.Certificate] = []
        self._intermediates: list[x509.Certificate] = []
        if ca_file is not None:
            try:
                found = x509.load_pem_x509_certificates(ca_file.read_bytes())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the owner CA {ca_file}") from exc
            self._roots = [c for c in found if c.subject == c.issuer]
            self._intermediates = [c for c in found if c.subject != c.issuer]
            if not self._roots:
                raise ValueError(
                    f"the owner CA {ca_file} holds no self-signed (root) certificate: "
                    "put the root there; other certificates in it are intermediates"
                )
        self._crl_files = tuple(crl_files)
        self._crls: dict[Path, tuple[float, x509.CertificateRevocationList]] = {}
        self._current_crls()  # an unreadable CRL stops the service at start

    def check(self, certificate: x509.Certificate, now: int) -> None:
        """Raise AuthenticationError unless ``certificate`` may authenticate at ``now``."""
        at = dt.datetime.fromtimestamp(now, dt.UTC)
        if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
            raise AuthenticationError(
                "owner certificate is not valid now (valid "
                f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
            )
        _check_usage(certificate)
        if not self._roots:
            self._check_pinned_revocation(certificate, at)
            return
        ee = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
        )
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(self._roots))
            .time(at)
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(certificate, self._intermediates)
        except verification.VerificationError as exc:
            raise AuthenticationError(
                "owner certificate does not chain to the owner CA (owner_ca_file)"
            ) from exc
        if self._crl_files:
            chain = verified.chain  # leaf first, the trust anchor last
            for subject, issuer in itertools.pairwise(chain):
                self._check_covered(subject, issuer, at)

    def _check_covered(
        self, subject: x509.Certificate, issuer: x509.Certificate, at: dt.datetime
    ) -> None:
        """Fail closed: a current CRL signed by ``issuer`` must cover ``subject``.

        Every CRL of the issuer counts, in any order (red team rt9 F8: the first
        one listed used to decide, so a certificate revoked only by a newer CRL
        listed after an older one still authenticated): revoked by any of them
        is revoked, and any of them out of date stops the issuer's
        certificates, as one alone does.
        """
        covered = False
        for crl in self._current_crls():
            if crl.issuer != issuer.subject or not _crl_signed_by(crl, issuer):
                continue
            if crl.next_update_utc is not None and crl.next_update_utc < at:
                raise AuthenticationError(
                    f"the owner CRL of {issuer.subject.rfc4514_string()} is out of date "
                    f"(next update was {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)"
                )
            if crl.get_revoked_certificate_by_serial_number(subject.serial_number):
                raise AuthenticationError(
                    f"owner certificate is revoked ({subject.subject.rfc4514_string()})"
                )
            covered = True
        if covered:
            return
        raise AuthenticationError(
            f"no current owner CRL of {issuer.subject.rfc4514_string()} is configured "
            "(owner_crl_files): revocation cannot be checked, so the certificate is refused"
        )

    def _check_pinned_revocation(self, certificate: x509.Certificate, at: dt.datetime) -> None:
        """A pinned certificate (no owner CA): a CRL of its issuer, if configured, is obeyed."""
        for crl in self._current_crls():
            if crl.issuer != certificate.issuer:
                continue
            if certificate.subject != certificate.issuer or not _crl_signed_by(crl, certificate):
                raise AuthenticationError(
                    "the owner CRL for this certificate's issuer does not verify"
                )
            if crl.next_update_utc is not None and crl.next_update_utc < at:
                raise AuthenticationError(
                    f"the owner CRL for this certificate's issuer is out of date "
                    f"(next update was {crl.next_update_utc:%Y-%m-%d %H:%M} UTC)"
                )
            if crl.get_revoked_certificate_by_serial_number(certificate.serial_number):
                raise AuthenticationError("owner certificate is revoked")

    def _current_crls(self) -> list[x509.CertificateRevocationList]:
        crls = []
        for path in self._crl_files:
            try:
                mtime = path.stat().st_mtime
                cached = self._crls.get(path)
                if cached is None or cached[0] != mtime:
                    data = path.read_bytes()
                    crl = (
                        x509.load_pem_x509_crl(data)
                        if data.lstrip().startswith(b"-----BEGIN")
                        else x509.load_der_x509_crl(data)
                    )
                    self._crls[path] = cached = (mtime, crl)
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read the owner CRL {path}") from exc
            crls.append(cached[1])
        return crls


def _check_usage(certificate: x509.Certificate) -> None:
    """The same key-usage rules as mutual TLS, for every way a certificate authenticates."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass
    else:
        if not usage.digital_signature:
            raise AuthenticationError(
                "owner certificate's KeyUsage does not allow digitalSignature"
            )
    try:
        extended = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed = {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
    if not allowed.intersection(extended):
        raise AuthenticationError("owner certificate's ExtendedKeyUsage does not allow clientAuth")


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


_VALIDITY_ONLY = OwnerCertificates()


@dataclass(frozen=True)
class Caller:
    """An authenticated principal (``id`` as policies name it).

    ``spend_id`` and ``spend_until``: what the service must record as used
    before acting on a signed request (None for mutual TLS, where the TLS
    session itself cannot be replayed).
    """

    id: str
    spend_id: str | None = None
    spend_until: int = 0


def is_deployment_id(text: str) -> bool:
    """Whether ``text`` has the form of a deployment id (32 lower-case hex digits)."""
    return _DEPLOYMENT.fullmatch(text) is not None


def signing_payload(
    method: str,
    path: str,
    date: int,
    body: bytes,
    *,
    deployment: str,
    audience: str,
    request_id: str,
    principal: str,
    domain: bytes = _DOMAIN,
) -> bytes:
    """What a request's signature covers; ``principal`` is the id of the credential
    (bare key or certificate) presented with it (not in the older v3 ``domain``)."""
    named = [principal.encode()] if domain != _V3_DOMAIN else []
    return b"\n".join(
        [
            domain,
            deployment.encode(),
            audience.encode(),
            *named,
            method.upper().encode(),
            path.encode(),
            str(date).encode(),
            request_id.encode(),
            body_digest(body).encode(),
        ]
    )


def sign_request(
    key: SigningKey,
    method: str,
    path: str,
    body: bytes,
    *,
    now: int,
    deployment: str,
    audience: str,
    certificate: x509.Certificate | None = None,
    request_id: str | None = None,
) -> dict[str, str]:
    """Headers that authenticate one request to the CAS ``deployment`` at ``audience`` (an origin).

    ``deployment`` is the id the CAS serves at ``GET /v1/health``.
    """
    if not is_deployment_id(deployment):
        raise ValueError(f"not a CAS deployment id (32 hex digits): {deployment!r}")
    request_id = request_id or new_request_id()
    payload = signing_payload(
        method,
        path,
        now,
        body,
        deployment=deployment,
        audience=audience,
        request_id=request_id,
        principal=_principal_of(key, certificate),
    )
    signature = sign(key, payload)
    headers = {
        DATE_HEADER: str(now),
        DEPLOYMENT_HEADER: deployment,
        AUDIENCE_HEADER: audience,
        REQUEST_ID_HEADER: request_id,
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }
    if certificate is not None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        headers[CERT_HEADER] = base64.b64encode(der).decode()
    else:
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        headers[KEY_HEADER] = base64.b64encode(der).decode()
    return headers


def authenticate(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    *,
    now: int,
    max_skew: int,
    deployment: str,
    audiences: frozenset[str],
    tls_client_certificate: bytes | None = None,
    certificates: OwnerCertificates = _VALIDITY_ONLY,
) -> Caller:
    """The caller proven by the request's signature or, failing that, by mutual TLS.

    ``deployment`` is this service's deployment id: a signature must name it.

    The caller must then spend ``Caller.spend_id`` (the service does, in its
    database) before acting: this function cannot see earlier requests.

    ``tls_client_certificate`` is the DER certificate the TLS layer already
    verified against the configured owner CA; the TLS handshake proved
    possession of its key, so no signature is needed.
    """
    date_text = headers.get(DATE_HEADER)
    signature_text = headers.get(SIGNATURE_HEADER)
    if not date_text and not signature_text and tls_client_certificate:
        # The TLS layer checked the chain, not revocation: the same checks as a signature.
        certificates.check(x509.load_der_x509_certificate(tls_client_certificate), now)
        return Caller(certificate_id(tls_client_certificate))
    if not date_text or not signature_text:
        raise AuthenticationError("request is not signed (see 'sgxcloud policy --help')")
    try:
        date = int(date_text)
        signature = base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuthenticationError("request signature headers are malformed") from exc
    signed_for = _signed_deployment(headers)
    request_id = headers.get(REQUEST_ID_HEADER, "")
    audience = headers.get(AUDIENCE_HEADER, "")
    if not REQUEST_ID.fullmatch(request_id) or not audience:
        raise AuthenticationError(
            f"request names no {AUDIENCE_HEADER} or valid {REQUEST_ID_HEADER}"
        )
    if audience not in audiences:
        raise AuthenticationError("request was signed for another service (audience)")
    # Origins may be shared (loopback, one name for two deployments): the id is not.
    if signed_for != deployment:
        raise AuthenticationError(
            f"request was signed for another CAS deployment ({signed_for}); this CAS is "
            f"deployment {deployment} (GET /v1/health): sign for it"
        )
    if not is_fresh(date, now, max_skew):
        raise AuthenticationError(
            f"request time is {date - now:+d} s from the service's clock (allowed ±{max_skew} s)"
        )
    public_key, caller_id = _credential(headers, certificates, now)
    fields = {"deployment": deployment, "audience": audience, "request_id": request_id}
    payload = signing_payload(method, path, date, body, principal=caller_id, **fields)
    if not signature_verifies(public_key, signature, payload):
        # A second check only for a signature that failed: an older client's gets
        # the upgrade message rather than "does not verify".
        older = signing_payload(method, path, date, body, principal="", domain=_V3_DOMAIN, **fields)
        if signature_verifies(public_key, signature, older):
            raise AuthenticationError(_OLDER_V3_REQUEST)
        raise AuthenticationError("request signature does not verify")
    # Spent per signing key: since v4 the signature names the principal, so it
    # verifies under one credential only, but a record keyed by key stays right
    # whatever the form (for a bare key the two ids are the same, so its spend id
    # is what it was, and it is not worked out twice: ~17 µs of CPU).
    signer = _key_id(public_key) if headers.get(CERT_HEADER) else caller_id
    spend = hashlib.sha256(f"request\n{signer}\n{request_id}".encode()).hexdigest()
    # Kept until no clock could accept the request again.
    return Caller(caller_id, spend_id=spend, spend_until=stale_from(date, max_skew))


def _key_id(public_key: object) -> str:
    """The principal id a bare ``public_key`` stands for."""
    pem = public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public_key_id(pem)


def _signed_deployment(headers: Mapping[str, str]) -> str:
    """The deployment id a signed request names; the upgrade message if it names none."""
    named = headers.get(DEPLOYMENT_HEADER)
    if not named:
        raise AuthenticationError(_OLDER_REQUEST)
    if not is_deployment_id(named):
        raise AuthenticationError(f"{DEPLOYMENT_HEADER} is not a deployment id (32 hex digits)")
    return named


def _principal_of(key: SigningKey, certificate: x509.Certificate | None) -> str:
    """The principal id a signer presenting ``certificate`` (or its bare key) stands for."""
    if certificate is not None:
        return certificate_id(certificate.public_bytes(serialization.Encoding.DER))
    return _key_id(key.public_key())


def _credential_fields(key: SigningKey, certificate: x509.Certificate | None) -> dict[str, str]:
    if certificate is not None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        return {"certificate": base64.b64encode(der).decode()}
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {"key": base64.b64encode(der).decode()}


# -- origins: what a signature is bound to -------------------------------------


def origin_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, lower-case, the port always explicit.

    Owners' signatures name the origin they were made for (and the
    deployment id); a service accepts only its own origins (setting
    ``public_urls``).  Origins need not be unique — two deployments may share
    one — so the deployment id, not the origin, keeps a request or consent
    for one deployment from being spent at another.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"bad port in URL {url!r}") from exc
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


# -- co-owners' consent ----------------------------------------------------------


@dataclass(frozen=True)
class Consent:
    """A verified consent: ``principal`` agrees to own ``policy`` at ``policy_hash``."""

    principal: str
    deployment: str
    policy: str
    policy_hash: str
    expires_at: int
    spend_id: str
    """What the service records to spend it once: a digest of the signed
    statement and the signer, never of the signature (ECDSA signatures are
    malleable, so a signature digest could be dodged)."""


def consent_payload(
    deployment: str,
    audience: str,
    principal: str,
    policy: str,
    policy_hash: str,
    expires_at: int,
) -> bytes:
    """What a consent's signature covers; ``principal`` is the id of the credential
    (bare key or certificate) it is made for, so it is worth nothing under another."""
    fields = [deployment, audience, principal, policy, policy_hash, str(expires_at)]
    return b"\n".join([_CONSENT_DOMAIN, *(f.encode() for f in fields)])


def sign_consent(
    key: SigningKey,
    *,
    deployment: str,
    audience: str,
    policy: str,
    policy_hash: str,
    expires_at: int,
    certificate: x509.Certificate | None = None,
) -> dict[str, Any]:
    """A co-owner's consent to be an owner of exactly this policy version on this
    CAS ``deployment`` (its id, from ``GET /v1/health``) at ``audience``."""
    if not is_deployment_id(deployment):
        raise ValueError(f"not a CAS deployment id (32 hex digits): {deployment!r}")
    principal = _principal_of(key, certificate)
    payload = consent_payload(deployment, audience, principal, policy, policy_hash, expires_at)
    signature = sign(key, payload)
    return {
        "deployment": deployment,
        "audience": audience,
        "principal": principal,
        "policy": policy,
        "policy_hash": policy_hash,
        "expires_at": expires_at,
        **_credential_fields(key, certificate),
        "signature": base64.b64encode(signature).decode(),
    }


def verify_consent(
    document: Mapping[str, Any],
    *,
    deployment: str,
    audiences: frozenset[str],
    now: int,
    certificates: OwnerCertificates = _VALIDITY_ONLY,
) -> Consent:
    """The consent ``document`` proves for this CAS (``deployment``, ``audiences``);
    AuthenticationError says why it proves none."""
    try:
        signed_for = document.get("deployment")
        audience = str(document["audience"])
        policy = str(document["policy"])
        policy_hash = str(document["policy_hash"])
        expires_at = int(document["expires_at"])
        signature = base64.b64decode(str(document["signature"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise AuthenticationError("a consent is malformed") from exc
    public_key, principal = _load_credential(
        document.get("key"), document.get("certificate"), certificates, now
    )
    if not signed_for:
        raise AuthenticationError(
            f"the consent of {principal} is in an older form (sgxcloud-cas-owner-consent-v1) "
            "that names no CAS deployment: have it made again with 'sgxcloud policy consent'"
        )
    named = document.get("principal")
    if not named:
        raise AuthenticationError(
            _OLDER_CONSENT.format(principal=principal, form="sgxcloud-cas-owner-consent-v2")
        )
    if named != principal:
        # Signed for another credential of (perhaps) the same key: the signature
        # below is checked over this credential's id, so it could not verify.
        raise AuthenticationError(
            f"the consent presented with the credential of {principal} was made for "
            f"{printable(str(named)[:80])}: a consent counts only for the credential "
            "(certificate or bare key) it was made with"
        )
    if signed_for != deployment:
        raise AuthenticationError(
            f"the consent of {principal} was made for another CAS deployment; this CAS is "
            f"deployment {deployment}"
        )
    if audience not in audiences:
        raise AuthenticationError(f"the consent of {principal} was made for another service")
    if expires_at <= now:
        raise AuthenticationError(f"the consent of {principal} has expired")
    if expires_at > now + CONSENT_MAX_LIFETIME:
        raise AuthenticationError(
            f"the consent of {principal} is valid for longer than {CONSENT_MAX_LIFETIME} s"
        )
    payload = consent_payload(deployment, audience, principal, policy, policy_hash, expires_at)
    if not signature_verifies(public_key, signature, payload):
        raise AuthenticationError(f"the consent of {principal} does not verify")
    spend = hashlib.sha256(b"consent\n" + principal.encode() + b"\n" + payload).hexdigest()
    return Consent(principal, deployment, policy, policy_hash, expires_at, spend)


def check_headers(
    headers: Mapping[str, str],
    *,
    now: int,
    max_skew: int,
    tls_client_certificate: bytes | None = None,
) -> None:
    """The checks of :func:`authenticate` that need neither the body nor the
    database, made before the body is read (``sgxcloud.web.limits``).

    An unsigned, malformed, stale or older-form (no deployment) request is
    refused here, so a stranger cannot make the service read (and hold) a
    body at all; the signature, deployment and audience values, credential
    and request id are checked by :func:`authenticate`.
    """
    date_text = headers.get(DATE_HEADER)
    signature_text = headers.get(SIGNATURE_HEADER)
    if not date_text and not signature_text and tls_client_certificate:
        return  # mutual TLS: authenticate() checks the certificate
    if not date_text or not signature_text:
        raise AuthenticationError("request is not signed (see 'sgxcloud policy --help')")
    try:
        date = int(date_text)
        base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise AuthenticationError("request signature headers are malformed") from exc
    if not is_fresh(date, now, max_skew):
        raise AuthenticationError(
            f"request time is {date - now:+d} s from the service's clock (allowed ±{max_skew} s)"
        )
    _signed_deployment(headers)


def _credential(
    headers: Mapping[str, str], certificates: OwnerCertificates, now: int
) -> tuple[object, str]:
    """The public key that must have signed, and the principal id it stands for."""
    return _load_credential(headers.get(KEY_HEADER), headers.get(CERT_HEADER), certificates, now)


def _load_credential(
    key_text: str | None, cert_text: str | None, certificates: OwnerCertificates, now: int
) -> tuple[object, str]:
    try:
        if cert_text:
            der = base64.b64decode(cert_text, validate=True)
            certificate = x509.load_der_x509_certificate(der)
            certificates.check(certificate, now)
            key = certificate.public_key()
            check_owner_key(key)
            return key, certificate_id(der)
        if key_text:
            der = base64.b64decode(key_text, validate=True)
            key = serialization.load_der_public_key(der)
            check_owner_key(key)
            return key, _key_id(key)
    except OwnerKeyError as exc:
        raise AuthenticationError(f"request credential not accepted: {exc}") from exc
    except (ValueError, binascii.Error, TypeError, UnsupportedAlgorithm) as exc:
        raise AuthenticationError("request credential is not a valid key or certificate") from exc
    raise AuthenticationError(f"request names no key ({KEY_HEADER} or {CERT_HEADER})")
