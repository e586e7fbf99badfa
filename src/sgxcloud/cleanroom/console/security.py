"""What keeps other web pages and other local users away from a console that
holds a party's key.

* Bound to 127.0.0.1 only (see :mod:`.server`), so nothing off the machine
  connects.
* A random access token per start, printed once in the console URL (as
  Jupyter does).  The first request that carries it gets an HttpOnly,
  SameSite=Strict session cookie and is redirected to a URL without the
  token, so it does not linger in the address bar, history or a Referer.
  Every other request needs that cookie.
* ``Host`` must be this console's own address: a page on an attacker's name
  that re-resolves to 127.0.0.1 (DNS rebinding) is refused before anything
  else happens.
* Every POST needs the per-start CSRF token from a form this console served,
  and an ``Origin`` (when the browser sends one) of this console; cookies are
  SameSite=Strict besides.
* No CORS headers ever; a strict Content-Security-Policy (no script at all,
  styles and images from this console only), no framing, no referrer to other sites, no
  caching.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",  # no-referrer would make POSTs carry Origin: null
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
TOKEN_PARAM = "token"  # noqa: S105 (the query parameter's name, not a secret)
PUBLIC_PREFIXES = ("/static/",)
"""Served without the session cookie: stylesheet only, nothing from the coordinator."""

ASGIApp = Callable[
    [
        dict[str, Any],
        Callable[[], Awaitable[dict[str, Any]]],
        Callable[[dict[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]


@dataclass
class Guard:
    """The secrets of one console start and the checks made with them."""

    port: int = 0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    session: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    @property
    def cookie_name(self) -> str:
        # Cookies ignore ports: a name of its own per console keeps two
        # consoles (two parties) on one machine from clobbering each other.
        return f"sgxcloud-console-{self.port}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(f"http://{h}" for h in self.hosts)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}?{urlencode({TOKEN_PARAM: self.token})}"

    def csrf_ok(self, submitted: str) -> bool:
        return hmac.compare_digest(submitted.encode(), self.csrf.encode())

    def origin_ok(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is not None and origin not in self.origins:
            return False
        # Sent by every current browser: a request started by another site says so.
        return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


class GuardMiddleware:
    """ASGI middleware: Host check, token exchange, session cookie, headers."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        guard = self.guard
        if headers.get("host") not in guard.hosts:
            await _plain(
                send,
                421,
                f"This console answers only on its own address (http://127.0.0.1:{guard.port}).",
            )
            return
        path = scope.get("path", "/")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if TOKEN_PARAM in query:
            await self._exchange(scope, send, query)
            return
        if not path.startswith(PUBLIC_PREFIXES) and not self._has_session(headers):
            await _page(
                send,
                401,
                "Access token needed",
                "Open the URL the console printed when it started: it carries "
                "an access token. Restarting the console prints a new one.",
            )
            return
        if scope["method"] not in ("GET", "HEAD", "POST"):
            await _plain(send, 405, "method not allowed")
            return
        if scope["method"] == "POST" and not guard.origin_ok(headers):
            await _page(
                send, 403, "Refused", "This request did not come from a page of this console."
            )
            return
        await self.app(scope, receive, _with_headers(send))

    def _has_session(self, headers: dict[str, str]) -> bool:
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is simply no session
            return False
        morsel = cookie.get(self.guard.cookie_name)
        return morsel is not None and hmac.compare_digest(
            morsel.value.encode(), self.guard.session.encode()
        )

    async def _exchange(self, scope, send, query: dict[str, str]) -> None:
        guard = self.guard
        if not hmac.compare_digest(query[TOKEN_PARAM].encode(), guard.token.encode()):
            await _page(
                send,
                403,
                "Wrong access token",
                "This token is not the one this console printed at its start "
                "(restarting the console prints a new one).",
            )
            return
        rest = {k: v for k, v in query.items() if k != TOKEN_PARAM}
        location = scope.get("path", "/") + (f"?{urlencode(rest)}" if rest else "")
        cookie = f"{guard.cookie_name}={guard.session}; Path=/; HttpOnly; SameSite=Strict"
        await _send(
            send,
            303,
            b"",
            "text/plain",
            [(b"location", location.encode()), (b"set-cookie", cookie.encode())],
        )


def _with_headers(send):
    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            existing = [
                (k, v)
                for k, v in message.get("headers", [])
                if k.decode("latin-1").lower() not in SECURITY_HEADERS
            ]
            existing += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
            message = {**message, "headers": existing}
        await send(message)

    return wrapped


async def _send(
    send, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] = ()
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _plain(send, status: int, text: str) -> None:
    await _send(send, status, (text + "\n").encode(), "text/plain; charset=utf-8")


async def _page(send, status: int, title: str, text: str) -> None:
    body = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/console.css">'
        f'</head><body><main id="main"><h1>{escape(title)}</h1><p>{escape(text)}</p>'
        f"</main></body></html>"
    )
    await _send(send, status, body.encode(), "text/html; charset=utf-8")
