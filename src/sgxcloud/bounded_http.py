"""httpx transports that bound what a server's answer can make a client hold.

The owners' CAS client and the clean-room SDK read answers with httpx, which
buffers a body of any size and applies its timeout to each read only: whoever
ends the TLS (a TLS-terminating proxy, a compromised server) could make the
client hold an endless answer in memory, or trickle one byte per timeout for
as long as it liked (red team rt10 F3, found in the enclave's client; the same
holds here).  :class:`BoundedTransport` is httpx's own transport with:

- answers of at most ``max_answer_bytes``: a larger declared length is refused
  before any of the body is read, other framings as the bytes arrive;
  compression is not asked for, and an answer compressed anyway is refused
  (its decoded size would not be bounded by what is counted);
- a ``deadline`` in seconds for each request as a whole: connecting, the TLS
  handshake, writing the request, every interim (1xx) answer, the status line,
  the headers and the body.  The transport's network backend gives each socket
  operation the time left until the deadline as its timeout (or the client's
  own timeout, if shorter), so no part of the exchange can wait past it: a head
  trickled a byte at a time, or an endless run of ``102 Processing`` answers,
  ends at the deadline like a trickled body (red team rt11 F4; until then the
  head was read with the per-read timeout only, and a deadline of 2 s held for
  90 s, with the real settings for days).  Name resolution is not bounded.

Each refusal is an ``httpx.HTTPError`` (:class:`AnswerTooLarge`,
:class:`AnswerDeadline`), which the clients already turn into their one-line
transport errors.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx

_T = TypeVar("_T")

# The monotonic time by which the request this thread is exchanging must be done; set by
# BoundedTransport around each step of an exchange, read by the network streams it opens.
_UNTIL: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "sgxcloud_bounded_http_until", default=None
)


def _left(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` shortened to the time left until the current request's deadline."""
    until = _UNTIL.get()
    if until is None:
        return timeout
    left = until - time.monotonic()
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


def _within(until: float, step: Callable[[], _T]) -> _T:
    token = _UNTIL.set(until)
    try:
        return step()
    finally:
        _UNTIL.reset(token)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._stream.start_tls(
                ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)
            )
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its connections bounded by the request's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_tcp(
                host,
                port,
                _left(timeout, httpcore.ConnectTimeout),
                local_address=local_address,
                socket_options=socket_options,
            )
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(
            self._backend.connect_unix_socket(
                path, _left(timeout, httpcore.ConnectTimeout), socket_options=socket_options
            )
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class AnswerTooLarge(httpx.ReadError):
    """The answer is longer than the client reads."""


class AnswerDeadline(httpx.ReadTimeout):
    """The answer was not complete within the request's deadline."""


class _BoundedStream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, limit: int, until: float, request: Any):
        self._stream = stream
        self._limit = limit
        self._until = until
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        parts = iter(self._stream)
        while True:
            try:
                part = _within(self._until, lambda: next(parts, None))
            except httpx.TimeoutException as exc:
                if time.monotonic() < self._until:
                    raise
                raise AnswerDeadline(
                    "no complete answer within the request's deadline", request=self._request
                ) from exc
            if part is None:
                return
            size += len(part)
            if size > self._limit:
                raise AnswerTooLarge(
                    f"answer larger than the client reads (at most {self._limit} bytes)",
                    request=self._request,
                )
            if time.monotonic() > self._until:
                raise AnswerDeadline(
                    "no complete answer within the request's deadline", request=self._request
                )
            yield part

    def close(self) -> None:
        self._stream.close()


class BoundedTransport(httpx.HTTPTransport):
    """httpx's transport, bounding each answer's size and each request's duration."""

    def __init__(self, *, max_answer_bytes: int, deadline: float, **options: Any) -> None:
        super().__init__(**options)
        self.max_answer_bytes = max_answer_bytes
        self.deadline = deadline
        # Every connection of the pool (direct or through a proxy) is opened by this backend.
        pool: Any = self._pool
        if not isinstance(getattr(pool, "_network_backend", None), httpcore.NetworkBackend):
            raise RuntimeError("httpcore's connection pool has no network backend to bound")
        pool._network_backend = _DeadlineBackend(pool._network_backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        until = time.monotonic() + self.deadline
        request.headers["Accept-Encoding"] = "identity"
        try:
            response = _within(until, lambda: super(BoundedTransport, self).handle_request(request))
        except httpx.TimeoutException as exc:
            if time.monotonic() < until:
                raise
            raise AnswerDeadline(
                "no complete answer within the request's deadline", request=request
            ) from exc
        try:
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_answer_bytes:
                raise AnswerTooLarge(
                    f"answer larger than the client reads (declared {int(length)} bytes; "
                    f"at most {self.max_answer_bytes})",
                    request=request,
                )
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise AnswerTooLarge("a compressed answer, not asked for", request=request)
            if time.monotonic() > until:
                raise AnswerDeadline(
                    "no complete answer within the request's deadline", request=request
                )
        except httpx.HTTPError:
            response.close()
            raise
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, self.max_answer_bytes, until, request),
            extensions=response.extensions,
        )
