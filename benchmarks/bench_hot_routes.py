"""CPU per request of the CAS's attestation requests in the HTTP layer alone, in-process.

The service behind the application is a stub answering fixed values at once,
so what is measured is what the HTTP layer costs per request: FastAPI or the
direct path, the body's validation, the answer's rendering, the hand-off of
an attestation to its thread and back.  Two depths:

- ``asgi``: one request put through the application as raw ASGI, both ways
  it can be served: the direct path (``app(...)``, what serves these
  requests) and FastAPI's generic stack (``app.middleware_stack``, what every
  other route takes), interleaved;
- ``protocol``: the request's bytes fed to the uvicorn protocol the CAS runs
  (httptools, the request limits, proxy headers) on uvloop, the answer's
  bytes collected from a transport in memory: everything but TLS and the
  socket.

CPU time (``time.process_time``: every thread of this process) per request,
best of ``--repeat`` rounds.  End to end (TLS, real clients, the real
service) is benchmarks/bench_cas.py's.

    python benchmarks/bench_hot_routes.py [--requests N] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import uvicorn  # noqa: E402
import uvloop  # noqa: E402
from uvicorn.server import ServerState  # noqa: E402

from sgxcloud.cas.service.app import create_app  # noqa: E402
from sgxcloud.cas.service.core import AttestResult, NonceGrant  # noqa: E402
from sgxcloud.web.limits import RequestLimits, uvicorn_options  # noqa: E402

ATTEST_BODY = json.dumps(
    {
        "policy": "bench",
        "service": "svc",
        "nonce": "ab" * 32,
        "public_key": "-----BEGIN PUBLIC KEY-----\n" + "K" * 120 + "\n-----END PUBLIC KEY-----\n",
        "evidence": base64.b64encode(os.urandom(1400)).decode(),
    },
    separators=(",", ":"),
).encode()
"""The size of a SIMULATED attestation request (a real quote's is about twice)."""

PEM = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n"


class StubService:
    """Fixed answers of a real answer's size, at once."""

    attest_concurrency = 4
    deployment_id = "d" * 32

    def issue_nonce(self, now: int) -> NonceGrant:
        return NonceGrant("ab" * 32, now + 600)

    def attest(self, request: Any, now: int) -> AttestResult:
        return AttestResult(
            request.policy,
            request.service,
            "c" * 64,
            request.nonce,
            b"s" * 600,
            PEM.format("A" * 800),
            PEM.format("B" * 700),
            True,
            "UpToDate",
            7,
        )


REQUESTS = {"nonce": ("/v1/nonces", b""), "attest": ("/v1/attest", ATTEST_BODY)}


def _scope(path: str, body: bytes) -> dict:
    headers = [
        (b"host", b"127.0.0.1:8443"),
        (b"user-agent", b"sgxcloud-cas-client"),
        (b"accept-encoding", b"identity"),
    ]
    if body:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8443),
        "client": ("127.0.0.1", 50000),
        "scheme": "https",
        "root_path": "",
        "headers": headers,
        "state": {},
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
    }


async def _asgi_once(serve: Callable[..., Awaitable[None]], path: str, body: bytes) -> None:
    status: list[int] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await serve(_scope(path, body), receive, send)
    if status != [200]:
        raise RuntimeError(f"{path} answered {status}")


class _MemoryTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "sockname": ("127.0.0.1", 8443),
            "peername": ("127.0.0.1", 50000),
            "sslcontext": object(),
        }.get(name, default)

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _wire(path: str, body: bytes) -> bytes:
    kind = b"Content-Type: application/json\r\n" if body else b""
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n"
        b"User-Agent: sgxcloud-cas-client\r\nAccept-Encoding: identity\r\n"
        + kind
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


async def _measure(requests: int, repeat: int) -> dict[str, float]:
    app = create_app(StubService())  # type: ignore[arg-type]
    await _asgi_once(app, "/v1/nonces", b"")  # starts the application

    async def stack(scope: dict, receive: Any, send: Any) -> None:
        scope["app"] = app  # what Starlette does before its stack
        await app.middleware_stack(scope, receive, send)  # type: ignore[misc]

    options = uvicorn_options(RequestLimits())
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", **options)
    config.load()
    # The HTTP protocol the connection gate hands a connection to once TLS is
    # done (the gate itself needs a real socket; TLS is not measured here).
    protocol = options["http"].protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _MemoryTransport()
    protocol.connection_made(transport)

    async def over_protocol(path: str, body: bytes) -> None:
        before = transport.written
        protocol.data_received(_wire(path, body))
        while not (transport.written > before and protocol.cycle.response_complete):
            await asyncio.sleep(0)

    ways: dict[str, Callable[[str, bytes], Awaitable[None]]] = {
        "asgi_direct": lambda p, b: _asgi_once(app, p, b),
        "asgi_stack": lambda p, b: _asgi_once(stack, p, b),
        "protocol": over_protocol,
    }
    best: dict[str, float] = {}
    for _ in range(repeat):
        for way, serve in ways.items():  # interleaved: the machine's noise hits all alike
            for name, (path, body) in REQUESTS.items():
                for _ in range(min(requests, 50)):  # warm
                    await serve(path, body)
                started = time.process_time()
                for _ in range(requests):
                    await serve(path, body)
                cost = 1e6 * (time.process_time() - started) / requests
                key = f"{way}_{name}_us"
                best[key] = min(best.get(key, cost), cost)
    protocol.connection_lost(None)
    return best


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="CPU per request of POST /v1/nonces and /v1/attest in the CAS's HTTP "
        "layer (stub service, no TLS): direct path, FastAPI's stack, uvicorn's "
        "protocol."
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best is kept")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.repeat < 1:
        print("error: --requests and --repeat must be at least 1", file=sys.stderr)
        return 2
    figures = uvloop.run(_measure(args.requests, args.repeat))
    if args.json:
        print(json.dumps(figures, indent=2, sort_keys=True))
        return 0
    print(f"CPU per request, best of {args.repeat} x {args.requests} (us):")
    print(f"{'':28}{'nonce':>10}{'attest':>10}")
    for way, label in (
        ("asgi_stack", "ASGI, FastAPI's stack"),
        ("asgi_direct", "ASGI, direct path"),
        ("protocol", "uvicorn protocol + app"),
    ):
        print(f"{label:28}{figures[f'{way}_nonce_us']:10.1f}{figures[f'{way}_attest_us']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
