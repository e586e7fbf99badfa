"""The enclave's connection to the CAS: one keep-alive HTTPS connection, TLS pinned.

An attestation is two JSON POSTs to one service, so the enclave side uses the
standard library's ``http.client`` rather than a general HTTP client: it is
already inside every Python an enclave runs, and it costs the enclave (and,
on a shared host, the CAS next to it) about a third of the CPU per request
that httpx does (0.3 ms against 0.8 ms on the benchmark machine).  What a
general client would add is kept where the enclave needs it:

- TLS pinned to the CAS's own CA (:func:`pinned_tls`), host name checked,
  never the system store; a context that does not verify is refused.
- Keep-alive: one connection serves many attestations; a connection the
  CAS closed while idle is noticed before it is reused, and a broken one is
  reopened on the next request.
- ``timeout`` applies to connecting and to every read and write.
- ``HTTPS_PROXY`` / ``ALL_PROXY`` (an ``http://`` proxy, reached with
  ``CONNECT``, so TLS and the pin stay end to end) and ``NO_PROXY``, read from
  the environment as urllib reads them.

Any failure to talk to the CAS is :class:`ServiceUnavailable` (what
``fetch_configuration`` retries); the URL's credentials, if any, are refused
rather than sent, so no error ever carries one.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

from sgxcloud.cas.client.errors import ClientError, ServiceUnavailable

USER_AGENT = "sgxcloud-cas-client"


def pinned_tls(ca_file: Path) -> ssl.SSLContext:
    """A TLS context that trusts only the CAS's own CA."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ClientError(f"cannot load the pinned CA {ca_file}") from exc


class CasConnection:
    """A keep-alive HTTPS connection to the CAS at ``base_url`` (``https://host[:port][/prefix]``).

    Pass ``ca_file`` (the CAS's CA certificate, PEM) or a ready ``tls``
    context from :func:`pinned_tls`.  Reuse one connection for many
    ``fetch_configuration(..., connection=...)`` calls: the TLS handshake is
    paid once.  Requests on one connection are serialised; give each thread
    its own for parallelism.
    """

    def __init__(
        self,
        base_url: str,
        ca_file: Path | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ClientError(
                "the CAS URL must be https://HOST[:PORT] "
                f"(got {parts.scheme or 'no scheme'}://…): the connection is TLS, pinned"
            )
        if parts.username is not None or parts.password is not None:
            raise ClientError("the CAS URL must not carry credentials (user:password@)")
        try:
            port = parts.port or 443
        except ValueError as exc:
            raise ClientError("the CAS URL has an invalid port") from exc
        if tls is None:
            if ca_file is None:
                raise ClientError("ca_file (the CAS's CA certificate) is required")
            tls = pinned_tls(ca_file)
        if tls.verify_mode != ssl.CERT_REQUIRED or not tls.check_hostname:
            raise ClientError("the TLS context must verify the CAS's certificate and host name")
        self.base_url = base_url
        self._prefix = parts.path.rstrip("/")
        self._lock = threading.Lock()
        proxy = _environment_proxy(parts.hostname)
        if proxy is None:
            self._http = http.client.HTTPSConnection(
                parts.hostname, port, timeout=timeout, context=tls
            )
        else:
            proxy_host, proxy_port, proxy_headers = proxy
            self._http = http.client.HTTPSConnection(
                proxy_host, proxy_port, timeout=timeout, context=tls
            )
            # CONNECT: the TLS session (and the pin, and the host name check)
            # runs end to end through the tunnel, the proxy sees only bytes.
            self._http.set_tunnel(parts.hostname, port, headers=proxy_headers)

    def post_json(self, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """POST ``body`` as JSON (no body when None); the answer's status and raw body."""
        headers = {"User-Agent": USER_AGENT}
        payload = b""
        if body is not None:
            payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        with self._lock:
            self._drop_if_closed_by_peer()
            try:
                self._http.request("POST", self._prefix + path, body=payload, headers=headers)
                response = self._http.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException) as exc:
                # Half a request or half an answer: this connection is done;
                # the next request opens a new one.
                self._http.close()
                raise ServiceUnavailable(
                    f"cannot reach the CAS at {self.base_url}: {type(exc).__name__}"
                ) from exc

    def _drop_if_closed_by_peer(self) -> None:
        """Close an idle connection the server has closed (or written to) since its last answer.

        Between requests nothing is due from the server, so a readable socket
        means its close (keep-alive timeout, restart); sending on it would
        fail or, worse, be cut off halfway.
        """
        sock = self._http.sock
        if sock is None:
            return
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if poller.poll(0):
            self._http.close()

    def close(self) -> None:
        with self._lock:
            self._http.close()

    def __enter__(self) -> CasConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _environment_proxy(host: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, CONNECT headers) of the proxy the environment names for ``host``, if any."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("https") or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ClientError(
            f"the proxy for the CAS must be an http:// proxy (CONNECT), not {parts.scheme}://"
        )
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ClientError("the proxy URL for the CAS has an invalid port") from exc
    headers = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    return parts.hostname, port, headers
