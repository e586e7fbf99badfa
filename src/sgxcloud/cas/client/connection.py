"""The enclave's connection to the CAS: one keep-alive HTTPS connection, TLS pinned.

An attestation is two JSON POSTs to one service, so the enclave side uses the
standard library rather than a general HTTP client: ``http.client`` connects
(TCP, a proxy's CONNECT, TLS), and :func:`read_response` reads the answers
without the email-package header parsing that is most of http.client's cost.
It is already inside every Python an enclave runs, and it costs the enclave
(and, on a shared host, the CAS next to it) a fraction of httpx's CPU per
request (0.8 ms with httpx, 0.3 ms with http.client, ~0.15 ms this way, on the
benchmark machine).  What a general client would add is kept where the
enclave needs it:

- TLS pinned to the CAS's own CA (:func:`pinned_tls`), host name checked,
  never the system store; a context that does not verify is refused.
- Keep-alive: one connection serves many attestations; a connection the
  CAS closed while idle is noticed before it is reused, and a broken one is
  reopened on the next request.
- ``timeout`` applies to connecting and to every read and write, and
  ``deadline`` (default twice ``timeout``) to the whole request, connecting
  included: an answer trickled a byte at a time cannot hold the enclave
  longer (red team rt10 F3: a 1-byte-per-2-s answer held a 3 s-timeout client
  until the server chose to stop).
- An answer is at most ``max_answer_bytes`` (:data:`MAX_ANSWER_BYTES`, 8 MiB:
  the CAS's largest answer, an accepted attestation with a 1 MiB configuration,
  is about 2.8 MB), counted as it arrives whatever its framing, and a declared
  length above it is refused before any of it is read: whoever ends the TLS
  cannot make the enclave buffer more (rt10 F3: 300 MiB streamed to close grew
  the client by 608 MiB of EPC; a declared 100 GB length was a bare MemoryError).
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
import io
import json
import re
import select
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from sgxcloud.cas.client.errors import ClientError, ServiceUnavailable

USER_AGENT = "sgxcloud-cas-client"
MAX_ANSWER_BYTES = 8 << 20
"""The largest answer body the enclave client reads (see the module's docstring)."""
_PRINTABLE = re.compile(r"[!-~]*")
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)  # made once, not per request


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
        deadline: float | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
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
        # What goes into the request line and Host header verbatim: printable
        # ASCII only (no space, no CR/LF smuggled in through the URL).
        if not _PRINTABLE.fullmatch(parts.netloc + parts.path):
            raise ClientError("the CAS URL must be printable ASCII without spaces")
        self.base_url = base_url
        self.timeout = timeout
        # Seconds one request may take in all, connecting included.
        self.deadline = 2 * timeout if deadline is None else deadline
        self.max_answer_bytes = max_answer_bytes
        self._host = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._lock = threading.Lock()
        self._answers: BinaryIO | None = None
        self._raw: _DeadlineReader | None = None
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
        payload = b""
        content_type = ""
        if body is not None:
            payload = _JSON.encode(body).encode()
            content_type = "Content-Type: application/json\r\n"
        # One write for head and body: one TLS record, one system call.
        request = (
            f"POST {self._prefix}{path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"User-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n{content_type}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode("ascii") + payload
        with self._lock:
            self._drop_if_closed_by_peer()
            until = time.monotonic() + self.deadline
            try:
                if self._answers is None:
                    # http.client connects: TCP, the proxy's CONNECT, TLS with
                    # the pinned context and the CAS's host name, the timeout.
                    self._http.timeout = min(self.timeout, self.deadline)
                    self._http.connect()
                    self._raw = _DeadlineReader(self._http.sock, self.timeout)
                    self._answers = io.BufferedReader(self._raw)
                assert self._raw is not None
                self._raw.until = until
                self._http.sock.settimeout(self._raw.left())
                self._http.sock.sendall(request)
                status, content, keep_alive = read_response(
                    self._answers, limit=self.max_answer_bytes
                )
            except (OSError, http.client.HTTPException) as exc:
                # Half a request or half an answer: this connection is done;
                # the next request opens a new one.
                self._disconnect()
                if isinstance(exc, (AnswerTooLarge, DeadlinePassed)):
                    raise ServiceUnavailable(f"the CAS at {self.base_url}: {exc}") from exc
                raise ServiceUnavailable(
                    f"cannot reach the CAS at {self.base_url}: {type(exc).__name__}"
                ) from exc
            except BaseException:
                # Interrupted (KeyboardInterrupt...) between request and answer:
                # an unread answer must never be taken for the next request's.
                self._disconnect()
                raise
            if not keep_alive:
                self._disconnect()
            return status, content

    def _drop_if_closed_by_peer(self) -> None:
        """Close an idle connection the server has closed (or written to) since its last answer.

        Between requests nothing is due from the server, so a readable socket
        means its close (keep-alive timeout, restart); sending on it would
        fail or, worse, be cut off halfway.
        """
        sock = self._http.sock
        if sock is None:
            return
        if _readable_now(sock):
            self._disconnect()

    def _disconnect(self) -> None:
        if self._answers is not None:
            self._answers.close()  # before the socket: the file holds a reference to it
            self._answers = None
            self._raw = None
        self._http.close()

    def close(self) -> None:
        with self._lock:
            self._disconnect()

    def __enter__(self) -> CasConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AnswerTooLarge(http.client.HTTPException):
    """An answer longer than the client reads (``max_answer_bytes``)."""


class DeadlinePassed(TimeoutError):
    """The request's overall deadline passed before its answer was complete."""


class _DeadlineReader(socket.SocketIO):
    """The socket's reading side, each receive waiting at most ``timeout`` and never past
    ``until`` (the request's deadline): a trickle of bytes cannot stretch a request."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__(sock, "rb")
        self.timeout = timeout
        self.until = float("inf")

    def left(self) -> float:
        """Seconds the next wait may take; DeadlinePassed if none are left."""
        left = self.until - time.monotonic()
        if left <= 0:
            raise DeadlinePassed("no complete answer within the request's deadline")
        return min(self.timeout, left)

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self.left())  # type: ignore[attr-defined]
        try:
            return super().readinto(buffer)
        except TimeoutError:
            if self.until - time.monotonic() <= 0:
                raise DeadlinePassed("no complete answer within the request's deadline") from None
            raise


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


# -- reading an HTTP/1.1 answer ---------------------------------------------------
#
# http.client parses every answer's head with the email package, two thirds of
# its CPU per request here.  The CAS's answers are small and framed by
# Content-Length; chunked and read-to-close framing and interim 1xx answers
# are read too (a load balancer's error page may use them).  Anything else
# is an http.client exception, hence ServiceUnavailable, on a closed connection.
# A head that one read brought in whole (the usual case) is split at once; any
# other (partly arrived, bare CR or LF) is read line by line: the same lines
# either way.

MAX_LINE = 65536
MAX_HEADERS = 100
_FRAMING = (b"content-length", b"transfer-encoding", b"connection")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # a header name (RFC 9110)


def read_response(answers: BinaryIO, *, limit: int = MAX_ANSWER_BYTES) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection stays open) of one HTTP/1.x answer to a POST.

    A body longer than ``limit`` bytes is :class:`AnswerTooLarge`: a declared length
    before any of it is read, other framings as the bytes arrive."""
    while True:
        head = _buffered_head(answers)
        line = head[0] if head else _line(answers)
        if not line:
            raise http.client.RemoteDisconnected("the CAS closed the connection without answering")
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not (code.isdigit() and len(code) == 3):
            raise http.client.BadStatusLine(line[:80].decode("latin-1"))
        status = int(code)
        headers = _headers(head[1:] if head else _header_lines(answers))
        if status == 101:
            raise http.client.BadStatusLine("101: the CAS switched protocols unasked")
        if status >= 200:  # 1xx answers are interim: the real one follows
            break
    connection = {token.strip().lower() for token in headers.get(b"connection", b"").split(b",")}
    keep_alive = version == b"HTTP/1.1" and b"close" not in connection
    if status in (204, 304):
        return status, b"", keep_alive
    coding = headers.get(b"transfer-encoding")
    if coding is not None:
        if coding.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return status, _chunked(answers, limit), keep_alive
        return status, _to_close(answers, limit), False  # no length: ends with the connection
    length = headers.get(b"content-length")
    if length is None:
        return status, _to_close(answers, limit), False
    if not length.isdigit():
        raise http.client.HTTPException("invalid Content-Length")
    if int(length) > limit:
        raise AnswerTooLarge(_too_large(limit, f"declared {int(length)} bytes"))
    body = answers.read(int(length))
    if len(body) != int(length):
        raise http.client.IncompleteRead(body, int(length) - len(body))
    return status, body, keep_alive


def _line(answers: BinaryIO) -> bytes:
    line = answers.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise http.client.LineTooLong("header line")
    return line


def _buffered_head(answers: BinaryIO) -> list[bytes] | None:
    """The lines of the next head, consumed, when ``answers`` holds all of it in its buffer.

    None (nothing consumed) when it does not, or when the head has a CR or LF
    outside its CRLF line ends: then it is read line by line.
    """
    peek = getattr(answers, "peek", None)
    if peek is None:
        return None
    buffered = peek(1)  # what is buffered; one read only if nothing is
    end = buffered.find(b"\r\n\r\n")
    if end <= 0 or end > MAX_LINE:
        return None
    head = buffered[:end]
    lines = head.split(b"\r\n")
    if head.count(b"\r") != len(lines) - 1 or head.count(b"\n") != len(lines) - 1:
        return None
    answers.read(end + 4)
    return lines


def _header_lines(answers: BinaryIO) -> Iterator[bytes]:
    """The header lines of a head, read one by one, up to its blank line."""
    while True:
        line = _line(answers)
        if line in (b"\r\n", b"\n"):
            return
        if not line.endswith(b"\n"):
            raise http.client.IncompleteRead(line)
        yield line


def _headers(lines: Iterable[bytes]) -> dict[bytes, bytes]:
    """The framing headers of a head's header lines (the others are checked and dropped)."""
    found: dict[bytes, bytes] = {}
    for count, line in enumerate(lines):
        if count == MAX_HEADERS:
            raise http.client.HTTPException(f"more than {MAX_HEADERS} headers")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise http.client.HTTPException("malformed header line")  # obs-fold included
        name = name.lower()
        if name in _FRAMING:
            value = value.strip()
            if name in found and (name != b"content-length" or found[name] != value):
                if name == b"content-length":
                    raise http.client.HTTPException("conflicting Content-Length")
                value = found[name] + b", " + value
            found[name] = value
    return found


def _too_large(limit: int, what: str) -> str:
    return f"answer larger than the client reads ({what}; at most {limit} bytes)"


def _to_close(answers: BinaryIO, limit: int) -> bytes:
    """A body framed by the connection's close, read as it arrives, at most ``limit``."""
    parts = []
    size = 0
    while True:
        part = answers.read1(65536)  # type: ignore[attr-defined]
        if not part:
            return b"".join(parts)
        size += len(part)
        if size > limit:
            raise AnswerTooLarge(_too_large(limit, "read until close"))
        parts.append(part)


def _chunked(answers: BinaryIO, limit: int = MAX_ANSWER_BYTES) -> bytes:
    parts = []
    total = 0
    while True:
        size = _line(answers).split(b";", 1)[0].strip()
        if not size or size.strip(b"0123456789abcdefABCDEF"):
            raise http.client.HTTPException("invalid chunk size")
        left = int(size, 16)
        if left == 0:
            break
        total += left
        if total > limit:
            raise AnswerTooLarge(_too_large(limit, "chunked"))
        chunk = answers.read(left)
        if len(chunk) != left or _line(answers) not in (b"\r\n", b"\n"):
            raise http.client.IncompleteRead(chunk, left - len(chunk))
        parts.append(chunk)
    _headers(_header_lines(answers))  # the trailer section, checked and ignored
    return b"".join(parts)


def _readable_now(sock: socket.socket) -> bool:
    """Whether ``sock`` has something to read (or was closed), without waiting.

    poll() where there is one (no descriptor-number limit); select() where
    eventlet's green ``select`` replaced the module (the demo runs the client
    beside Nova's harness), which has no poll().
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
