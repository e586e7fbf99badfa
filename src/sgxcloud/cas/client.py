"""The enclave side of attest-and-fetch.

Inside an SGX enclave under Gramine::

    config = fetch_configuration("https://cas.example:8443", policy="shop",
                                 service="web", ca_file="/etc/cas-ca.pem")

makes a fresh P-256 key pair, asks for a nonce, writes
``SHA-256(public key ‖ nonce)`` to ``/dev/attestation/user_report_data``,
reads the quote from ``/dev/attestation/quote``, sends both, and opens the
sealed configuration with the private key, which never leaves the enclave.

Without ``/dev/attestation`` there is no evidence, and the client says so: it
produces SIMULATED evidence only when the caller passes ``simulate=`` with
the identity to claim, and the service rejects that unless the policy allows
simulation.  The service's TLS certificate is checked against a pinned CA
file, never the system store: the CAS is its own trust root.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import runpy
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sgxcloud.cas import protocol
from sgxcloud.cas.errors import (
    AccessDenied,
    CasError,
    ConflictError,
    EvidenceError,
    PolicyError,
    PolicyProblem,
)
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.service.auth import sign_request
from sgxcloud.sgx.identity import EnclaveIdentity

log = logging.getLogger(__name__)

ATTESTATION_DIR = Path("dev/attestation")


class ClientError(CasError):
    """The configuration could not be fetched (service unreachable or refused)."""

    exit_code = 1


class AttestationRefused(EvidenceError):
    """The CAS judged this enclave and said no.

    The enclave is not told why (that would tell anyone what a policy
    accepts); the policy's owners read the reasons in audit entry
    ``audit_seq`` (``OwnerClient.audit_entry``, ``sgxcloud audit show --seq``).
    """

    def __init__(self, message: str, *, code: str, audit_seq: int | None) -> None:
        super().__init__(message, code=code)
        self.audit_seq = audit_seq


class PolicyNotFound(ClientError):
    """The service has no policy of that name."""


class NoEvidenceSource(ClientError):
    """Not inside an SGX enclave (no /dev/attestation) and simulation not requested."""


@dataclass(frozen=True)
class FetchedConfiguration:
    """What the enclave received: its configuration, its certificate, and how it got them."""

    configuration: protocol.Configuration
    private_key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    ca_certificate: x509.Certificate
    policy_hash: str
    simulated: bool
    tcb_status: str

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class GramineEvidence:
    """Quotes from Gramine's attestation pseudo-files under ``root`` (``/`` in an enclave)."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.directory = root / ATTESTATION_DIR

    def available(self) -> bool:
        return (self.directory / "user_report_data").exists() and (
            self.directory / "quote"
        ).exists()

    def evidence(self, report_data: bytes) -> bytes:
        # Writing user_report_data and then reading quote is Gramine's interface:
        # the read returns a quote over the report data just written.
        try:
            (self.directory / "user_report_data").write_bytes(report_data)
            return (self.directory / "quote").read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot get a quote from {self.directory}: {exc.strerror}") from exc


class SimulatedEvidence:
    """SIMULATED evidence claiming ``identity``: no SGX, no security; for tests and demos."""

    def __init__(self, identity: EnclaveIdentity) -> None:
        self.identity = identity

    def available(self) -> bool:
        return True

    def evidence(self, report_data: bytes) -> bytes:
        log.warning("using SIMULATED attestation evidence: no SGX hardware, no security")
        return make_simulated_evidence(self.identity, report_data).raw


def choose_evidence_source(
    root: Path = Path("/"), simulate: EnclaveIdentity | None = None
) -> GramineEvidence | SimulatedEvidence:
    """Gramine's quote when present; simulation only when explicitly asked for."""
    gramine = GramineEvidence(root)
    if gramine.available():
        return gramine
    if simulate is not None:
        return SimulatedEvidence(simulate)
    raise NoEvidenceSource(
        f"no SGX attestation interface at {gramine.directory} (not in a Gramine enclave?) "
        "and simulation was not requested"
    )


def pinned_tls(ca_file: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the CAS's own CA."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot load the pinned CA {ca_file}") from exc


def fetch_configuration(
    base_url: str,
    *,
    policy: str,
    service: str,
    ca_file: Path | None = None,
    root: Path = Path("/"),
    simulate: EnclaveIdentity | None = None,
    http_client: httpx.Client | None = None,
    timeout: float = 30.0,
) -> FetchedConfiguration:
    """Attest to the CAS and return this enclave's configuration."""
    source = choose_evidence_source(root, simulate)
    owns_client = http_client is None
    if http_client is None:
        if ca_file is None:
            raise ClientError("ca_file (the CAS's CA certificate) is required")
        http_client = httpx.Client(base_url=base_url, verify=pinned_tls(ca_file), timeout=timeout)
    try:
        return _attest(http_client, source, policy, service)
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach the CAS at {base_url}: {type(exc).__name__}") from exc
    finally:
        if owns_client:
            http_client.close()


def _attest(
    client: httpx.Client,
    source: GramineEvidence | SimulatedEvidence,
    policy: str,
    service: str,
) -> FetchedConfiguration:
    key = protocol.new_enclave_key()
    grant = _json(client.post("/v1/nonces"))
    nonce = protocol.parse_nonce(grant["nonce"])
    evidence = source.evidence(protocol.report_data_for(key.public_key(), nonce))
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    answer = _json(
        client.post(
            "/v1/attest",
            json={
                "policy": policy,
                "service": service,
                "nonce": nonce.hex(),
                "public_key": public_pem.decode(),
                "evidence": base64.b64encode(evidence).decode(),
            },
        )
    )
    configuration = protocol.open_configuration(
        base64.b64decode(answer["sealed_configuration"]), key, nonce
    )
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca_certificate = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
    if certificate.public_key() != key.public_key():
        raise ClientError("the certificate returned is not for this enclave's key")
    certificate.verify_directly_issued_by(ca_certificate)
    return FetchedConfiguration(
        configuration,
        key,
        certificate,
        ca_certificate,
        answer["policy_hash"],
        bool(answer["simulated"]),
        answer["tcb_status"],
    )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise ClientError(f"CAS answered {response.status_code} without JSON") from exc
    if response.status_code == 403 and body.get("error") == "attestation-rejected":
        raise AttestationRefused(
            body.get("message", "attestation rejected"),
            code=body.get("code", "rejected"),
            audit_seq=body.get("audit_seq"),
        )
    if response.status_code == 403:
        raise AccessDenied(body.get("message", "forbidden"))
    if response.status_code >= 400:
        raise ClientError(f"CAS answered {response.status_code}: {body.get('message', '')}")
    return body


# -- the owner side: policy management over signed requests -------------------


class OwnerClient:
    """Policy management for owners: every request signed with the owner's key.

    ``certificate`` is given when the policy names the owner by client
    certificate fingerprint (``client_certificate_sha256``) instead of key.
    """

    def __init__(
        self,
        base_url: str,
        key: Any,
        *,
        ca_file: Path | None = None,
        certificate: x509.Certificate | None = None,
        http_client: httpx.Client | None = None,
        clock: Any = None,
    ) -> None:
        self._key = key
        self._certificate = certificate
        self._clock = clock or time.time
        if http_client is None:
            verify: Any = pinned_tls(ca_file) if ca_file is not None else True
            http_client = httpx.Client(base_url=base_url, verify=verify, timeout=30.0)
        self._http = http_client
        self.base_url = base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OwnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        content = b"" if body is None else _canonical(body)
        headers = sign_request(
            self._key, method, path, content, now=int(self._clock()), certificate=self._certificate
        )
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            return self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ClientError(
                f"cannot reach the CAS at {self.base_url}: {type(exc).__name__}"
            ) from exc

    def apply(self, text: str) -> dict[str, Any]:
        return _owner_answer(self._request("PUT", "/v1/policies", {"policy": text}))

    def show(self, name: str) -> dict[str, Any]:
        return _owner_answer(self._request("GET", f"/v1/policies/{name}"))

    def delete(self, name: str, predecessor: str) -> None:
        _owner_answer(self._request("DELETE", f"/v1/policies/{name}?predecessor={predecessor}"))

    def audit(self, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = _owner_answer(
            self._request("GET", f"/v1/audit?after={after}&limit={limit}")
        )
        return answer

    def audit_entry(self, seq: int) -> dict[str, Any] | None:
        """Audit entry ``seq`` (e.g. a rejection's), or None if it is not about our policies."""
        found = self.audit(after=seq - 1, limit=1)
        return found[0] if found and found[0]["seq"] == seq else None


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def _owner_answer(response: httpx.Response) -> Any:
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError as exc:
        raise ClientError(f"CAS answered {response.status_code} without JSON") from exc
    if response.status_code < 400:
        return body
    message = body.get("message", "") if isinstance(body, dict) else ""
    if response.status_code == 400 and body.get("field") is not None:
        problems = body.get("problems") or []
        raise PolicyError.from_problems(
            [PolicyProblem(p["field"], p["message"]) for p in problems]
            or [PolicyProblem(body["field"], message)]
        )
    if response.status_code in {401, 403}:
        raise AccessDenied(message or "forbidden")
    if response.status_code == 404:
        raise PolicyNotFound(message)
    if response.status_code == 409:
        raise ConflictError(message)
    raise ClientError(f"CAS answered {response.status_code}: {message}")


# -- the launcher that a Gramine manifest starts -------------------------------

LAUNCH_ENV = ("SGXCLOUD_CAS_URL", "SGXCLOUD_CAS_POLICY", "SGXCLOUD_CAS_SERVICE", "SGXCLOUD_CAS_CA")


def install(fetched: FetchedConfiguration, root: Path = Path("/")) -> None:
    """Write the received files (mode 0600) under ``root`` and export the environment.

    A file under ``/dev/attestation/keys/`` sets a Gramine encrypted-mount key;
    other files should live on a tmpfs mount so they stay in enclave memory.
    """
    for path, content in fetched.configuration.files.items():
        target = root / path.lstrip("/")
        if not str(path).startswith("/dev/attestation/"):
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        except OSError as exc:
            raise ClientError(f"cannot write configured file {path}: {exc.strerror}") from exc
    os.environ.update(fetched.configuration.env)


def run_argv(argv: list[str]) -> int:
    """Run the configured command in this process (Python) or replace it (anything else).

    Python workloads run in the same interpreter (``runpy``), so the secrets
    never cross an ``execve`` (which Gramine implements by starting a new
    enclave process).
    """
    if not argv:
        raise ClientError("the policy gives this service no command")
    program = Path(argv[0]).name
    if program.startswith("python"):
        args = argv[1:]
        if len(args) >= 2 and args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args:
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
        else:
            raise ClientError("a python command needs a script or -m MODULE")
        return 0
    os.execv(argv[0], argv)  # noqa: S606 - the argv comes from the attested policy
    return 0  # pragma: no cover


def launch(environ: dict[str, str] | None = None, root: Path = Path("/")) -> int:
    """Fetch this enclave's configuration, install it, and run its command.

    Configured by ``SGXCLOUD_CAS_URL``, ``SGXCLOUD_CAS_POLICY``,
    ``SGXCLOUD_CAS_SERVICE`` and ``SGXCLOUD_CAS_CA`` (fixed in the manifest, so
    they are part of the measurement and the host cannot redirect them).
    """
    environ = dict(os.environ if environ is None else environ)
    missing = [name for name in LAUNCH_ENV if not environ.get(name)]
    if missing:
        raise ClientError("missing launcher settings: " + ", ".join(missing))
    fetched = fetch_configuration(
        environ["SGXCLOUD_CAS_URL"],
        policy=environ["SGXCLOUD_CAS_POLICY"],
        service=environ["SGXCLOUD_CAS_SERVICE"],
        ca_file=Path(environ["SGXCLOUD_CAS_CA"]),
        root=root,
    )
    install(fetched, root)
    return run_argv(fetched.configuration.argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m sgxcloud.cas.client launch``: the entry point of the Gramine manifest."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["launch"]:
        print("usage: python -m sgxcloud.cas.client launch", file=sys.stderr)
        return 2
    try:
        return launch()
    except CasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
