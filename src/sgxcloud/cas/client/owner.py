"""The owner side: policy management over signed requests.

Owners run this from their own machines (``sgxcloud policy``, ``sgxcloud
audit show --url``); enclaves never need it.  Requests are signed by
:func:`sgxcloud.cas.service.auth.sign_request`, imported when the first
request is made, so importing the client package stays light.

Every signature names the CAS *deployment* it is for (an id the CAS serves
at ``GET /v1/health``, shared by its replicas): taken from there over the
pinned TLS on first use, or pinned by the owner (``deployment=``), so a
request or consent made for one deployment is worthless at another — even at
one reached at the same address.

Every answer is checked against the CAS's answer signing key when one is
pinned (``cas_key``: ``sgxcloud cas signing-key``'s output, as a file or a
key): an answer without its valid signature — altered by a proxy that ends
TLS, or from another CAS — raises :class:`AnswerNotVerified` before anything
in it is used.  Without a pin the client warns once that answers are not
verified (:mod:`sgxcloud.cas.answers`).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from sgxcloud.bounded_http import BoundedTransport
from sgxcloud.cas import answers
from sgxcloud.cas.answers import AnswerNotVerified as AnswerNotVerified
from sgxcloud.cas.client.enclave import pinned_tls
from sgxcloud.cas.client.errors import (
    ClientError,
    OutcomeUnknown,
    PolicyNotFound,
    ServiceUnavailable,
)
from sgxcloud.cas.errors import AccessDenied, ConflictError, PolicyError, PolicyProblem
from sgxcloud.cas.protocol import AUDIT_MORE_HEADER

OWNER_MAX_ANSWER_BYTES = 16 << 20
"""The largest answer the owners' client reads: the CAS's largest answers to owners, an
audit page (about 1 MiB of entries) and a policy (at most 1 MiB of text, JSON-escaped),
with margin."""

OWNER_DEADLINE = 60.0
"""Seconds within which each request of the owners' client ends, all of it: connecting, TLS,
the request, the answer's head (interim 1xx answers included) and body (bounded_http)."""

OWNER_TIMEOUT = 30.0
"""Seconds the owners' client waits for any one connect, read or write."""


class OwnerClient:
    """Policy management for owners: every request signed with the owner's key.

    ``certificate`` is given when the policy names the owner by client
    certificate fingerprint (``client_certificate_sha256``) instead of key.
    Requests are signed for ``base_url``'s origin unless ``audience`` names
    the CAS's public origin (e.g. when reaching one replica directly), and
    for the deployment id ``deployment`` if given (pinned: the CAS refuses
    the requests if it is another deployment), else the one the CAS serves
    at ``GET /v1/health`` (asked once, over the same pinned TLS).
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
        audience: str | None = None,
        deployment: str | None = None,
        cas_key: Any = None,
    ) -> None:
        if isinstance(cas_key, (str, Path)):
            cas_key = answers.load_public_key(Path(cas_key))
        if cas_key is None:
            _warn_unverified()
        self._cas_key = cas_key
        if deployment is not None:
            deployment = _checked_deployment(deployment, "the pinned deployment id")
        self._key = key
        self._audience = audience
        self._deployment = deployment
        self._certificate = certificate
        self._clock = clock or time.time
        if http_client is None:
            verify: Any = pinned_tls(ca_file) if ca_file is not None else True
            # Answers bounded in size and time (red team rt10 F3's sibling: see bounded_http).
            transport = BoundedTransport(
                verify=verify, max_answer_bytes=OWNER_MAX_ANSWER_BYTES, deadline=OWNER_DEADLINE
            )
            http_client = httpx.Client(
                base_url=base_url, timeout=OWNER_TIMEOUT, transport=transport
            )
        self._http = http_client
        self.base_url = base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OwnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def deployment_id(self) -> str:
        """The id of the CAS deployment this client signs for (pinned, or asked once)."""
        if self._deployment is None:
            try:
                response = self._http.get("/v1/health")
            except httpx.HTTPError as exc:
                raise ClientError(
                    f"cannot reach the CAS at {self.base_url}: {type(exc).__name__}"
                ) from exc
            if response.status_code != 200:
                raise ClientError(
                    f"CAS at {self.base_url} answered {response.status_code} to GET /v1/health"
                )
            try:
                named = response.json().get("deployment")
            except (ValueError, AttributeError):
                named = None
            if not named:
                raise ClientError(
                    f"the CAS at {self.base_url} names no deployment id (GET /v1/health): "
                    "it is older than this client; upgrade the CAS"
                )
            self._deployment = _checked_deployment(named, f"the CAS at {self.base_url}")
        return self._deployment

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        from sgxcloud.cas.service.auth import origin_of, sign_request

        content = b"" if body is None else _body_bytes(body)
        deployment = self.deployment_id()
        headers = sign_request(
            self._key,
            method,
            path,
            content,
            now=int(self._clock()),
            deployment=deployment,
            audience=origin_of(self._audience or self.base_url),
            certificate=self._certificate,
        )
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise ClientError(
                f"cannot reach the CAS at {self.base_url}: {type(exc).__name__}"
            ) from exc
        if self._cas_key is not None:
            from sgxcloud.cas.service.auth import REQUEST_ID_HEADER

            # Bound to exactly the request sent: an answer to an altered copy does not verify.
            sent = answers.request_digest(
                method, path, headers, hashlib.sha256(content).hexdigest()
            )
            payload = answers.answer_payload(
                deployment=deployment,
                request_id=headers[REQUEST_ID_HEADER],
                request_digest=sent,
                status=response.status_code,
                headers={n: response.headers.get(n, "") for n in answers.SIGNED_HEADERS},
                body=response.content,
            )
            answers.verify_answer(
                self._cas_key,
                response.headers.get(answers.ANSWER_HEADER),
                payload,
                f"{method} {path} at {self.base_url}",
            )
        return response

    def apply(self, text: str, consents: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
        """Create or update a policy; ``consents`` from each owner it adds (see :func:`consent`)."""
        body: dict[str, Any] = {"policy": text}
        if consents:
            body["consents"] = [dict(c) for c in consents]
        return _owner_answer(self._request("PUT", "/v1/policies", body))

    def show(self, name: str) -> dict[str, Any]:
        return _owner_answer(self._request("GET", f"/v1/policies/{name}"))

    def delete(self, name: str, predecessor: str) -> None:
        _owner_answer(self._request("DELETE", f"/v1/policies/{name}?predecessor={predecessor}"))

    def audit(self, after: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Entries about our policies, oldest first; ``after``: the previous page's last ref."""
        return self.audit_page(after, limit)[0]

    def audit_page(self, after: str = "", limit: int = 100) -> tuple[list[dict[str, Any]], str]:
        """:meth:`audit`, and the ``after`` of the next page if the CAS stopped this one at
        its byte bound ("" otherwise: then a page shorter than ``limit`` is the last)."""
        # no empty 'after': a CAS of an earlier release reads it as a number
        query = urllib.parse.urlencode(
            {"after": after, "limit": limit} if after else {"limit": limit}
        )
        response = self._request("GET", f"/v1/audit?{query}")
        answer: list[dict[str, Any]] = _owner_answer(response)
        return answer, response.headers.get(AUDIT_MORE_HEADER, "")

    def verify_audit(self) -> dict[str, Any]:
        """One ``GET /v1/audit/verify``: ``ok``, ``problems``, and the caller's round
        (``round``, ``round_complete``, ``round_left``; see :func:`verify_audit_round`)."""
        answer: dict[str, Any] = _owner_answer(self._request("GET", "/v1/audit/verify"))
        return answer

    def audit_entry(self, ref: str) -> dict[str, Any] | None:
        """Audit entry ``ref`` (e.g. a rejection's), or None if it is not about our policies."""
        query = urllib.parse.urlencode({"ref": ref})
        found = _owner_answer(self._request("GET", f"/v1/audit?{query}"))
        return found[0] if found else None


def verify_audit_round(
    client: OwnerClient,
    *,
    max_calls: int = 100_000,
    busy_wait: float = 1.0,
    max_busy: int = 60,
    progress: Callable[[dict[str, Any], int], None] | None = None,
) -> dict[str, Any]:
    """Verify calls until one completes the caller's round (or a call finds a break).

    Returns the last answer with ``calls`` (how many were made).  A round re-checks
    every entry about the caller's policies once, up to 1000 per call, so it takes
    about ``round_left / 1000`` calls after the first.  A call that finds the round
    already complete in the middle of an earlier one (another client of the same key
    finished it) ends the loop too.  ``progress(answer, calls)`` after each call.  A
    CAS busy verifying for another caller (503) is asked again after ``busy_wait``
    seconds, at most ``max_busy`` times in a row (then the 503 is raised: a CAS that
    answers nothing else, or a proxy pretending to be one, does not hold the loop
    forever).  A CAS of an earlier release (no ``round_complete``) answers once.
    """
    calls = busy = 0
    while True:
        try:
            answer = client.verify_audit()
        except ServiceUnavailable:
            busy += 1
            if calls >= max_calls or busy > max_busy:
                raise
            time.sleep(busy_wait)
            continue
        busy = 0
        calls += 1
        if progress is not None:
            progress(answer, calls)
        done = answer.get("round_complete", True) or not answer.get("ok", True)
        if done or calls >= max_calls:
            return {**answer, "calls": calls}


DEFAULT_CONSENT_SECONDS = 86400


def consent(
    key: Any,
    base_url: str,
    text: str,
    *,
    now: int,
    deployment: str,
    valid_for: int = DEFAULT_CONSENT_SECONDS,
    certificate: x509.Certificate | None = None,
) -> dict[str, Any]:
    """A co-owner's signed consent to own exactly the policy ``text`` on the CAS
    ``deployment`` (its id: pinned, or :meth:`OwnerClient.deployment_id`) at ``base_url``.

    The owner who applies the policy sends it along; the CAS accepts it once,
    before it expires, for this policy version only.  Needs no connection
    (the deployment id is given).
    """
    from sgxcloud.cas.policy import load_policy
    from sgxcloud.cas.service.auth import origin_of, sign_consent

    policy = load_policy(text)
    return sign_consent(
        key,
        deployment=_checked_deployment(deployment, "the deployment id"),
        audience=origin_of(base_url),
        policy=policy.name,
        policy_hash=policy.hash,
        expires_at=now + valid_for,
        certificate=certificate,
    )


_warned = False


def _warn_unverified() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "no CAS signing key pinned (--cas-key, SGXCLOUD_CAS_SIGNING_KEY; 'sgxcloud cas "
            "signing-key' shows it): the CAS's answers are not verified, and any TLS endpoint "
            "between you and the CAS (a proxy) could alter them",
            answers.UnverifiedAnswers,
            stacklevel=3,
        )


def _checked_deployment(value: str, source: str) -> str:
    from sgxcloud.cas.service.auth import is_deployment_id

    if not isinstance(value, str) or not is_deployment_id(value):
        raise ClientError(f"{source} is not a CAS deployment id (32 hex digits): {value!r:.80}")
    return value


def _body_bytes(body: dict[str, Any]) -> bytes:
    # Not canonical JSON: the signature covers the SHA-256 of exactly the bytes sent.
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
    if (
        response.status_code == 409
        and isinstance(body, dict)
        and body.get("error") == "already-received"
    ):
        raise OutcomeUnknown(
            f"outcome unknown: {message or 'the CAS had already received this request'}"
        )
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
    if response.status_code == 503:  # e.g. verifying the chain for another caller: retry
        raise ServiceUnavailable(f"CAS answered 503: {message}")
    raise ClientError(f"CAS answered {response.status_code}: {message}")
