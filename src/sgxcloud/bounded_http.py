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
- a ``deadline`` in seconds for each request as a whole, checked before it is
  sent and at each part of the body as it arrives (so it is overshot by at
  most one read's timeout).

Each refusal is an ``httpx.HTTPError`` (:class:`AnswerTooLarge`,
:class:`AnswerDeadline`), which the clients already turn into their one-line
transport errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx


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
        for part in self._stream:
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

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        until = time.monotonic() + self.deadline
        request.headers["Accept-Encoding"] = "identity"
        response = super().handle_request(request)
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
