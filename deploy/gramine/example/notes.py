"""An example enclave workload: a small notes web service and its database.

Both run under the CAS launcher and use only what the CAS delivered after
attestation (nothing is baked into the image):

- ``--role db``: a tiny key-value database over HTTPS that answers only
  requests carrying its password (``NOTES_DB_PASSWORD``);
- ``--role web``: the public HTTPS service (its TLS key and certificate from
  ``/etc/app/tls.key`` / ``/etc/app/tls.crt``) that stores notes in that
  database, authenticating with the same password and trusting only the
  policy's CA (``/etc/app/ca.pem``) for the database's certificate.

The policy (policy.yaml beside this file) generates the password, the keys
and the certificates; neither the image nor the host ever sees them.
Standard library only, so the enclave carries nothing but the client extra.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import ssl
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONFIG = Path(os.environ.get("NOTES_CONFIG_DIR", "/etc/app"))


def tls_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CONFIG / "tls.crt", CONFIG / "tls.key")
    return context


def database_handler(password: str, store: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Database(BaseHTTPRequestHandler):
        def _authorised(self) -> bool:
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {password}".encode()):
                return True
            self.send_error(401, "wrong database password")
            return False

        def do_GET(self) -> None:
            if not self._authorised():
                return
            with lock:
                body = json.dumps(store).encode()
            self._answer(200, body)

        def do_PUT(self) -> None:
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length", "0"))
            with lock:
                store[self.path.lstrip("/")] = self.rfile.read(length).decode()
            self._answer(204, b"")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:  # never log requests (they carry secrets)
            pass

    return Database


def web_handler(database_url: str, password: str) -> type[BaseHTTPRequestHandler]:
    # The database's certificate must chain to the policy CA, not to any public CA.
    trust = ssl.create_default_context(cafile=str(CONFIG / "ca.pem"))

    def database(method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(  # noqa: S310 - https only, pinned CA
            database_url + path,
            data=body,
            method=method,
            headers={"Authorization": f"Bearer {password}"},
        )
        with urllib.request.urlopen(request, context=trust, timeout=10) as answer:  # noqa: S310
            return answer.read()

    class Web(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                return self._answer(200, b'{"ok": true}')
            try:
                return self._answer(200, database("GET", "/"))
            except urllib.error.URLError as exc:
                return self._answer(502, json.dumps({"error": str(exc.reason)}).encode())

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            note = self.rfile.read(length)
            try:
                database("PUT", self.path, note)
            except urllib.error.URLError as exc:
                return self._answer(502, json.dumps({"error": str(exc.reason)}).encode())
            return self._answer(201, b'{"stored": true}')

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    return Web


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("db", "web"), required=True)
    parser.add_argument("--listen", default="127.0.0.1:8443", help="HOST:PORT")
    parser.add_argument("--database", help="web: the database's https://HOST:PORT")
    parser.add_argument("--port-file", type=Path, help="write the bound port here (tests)")
    args = parser.parse_args(argv)
    password = os.environ.get("NOTES_DB_PASSWORD")
    if not password:
        print("error: NOTES_DB_PASSWORD is not set (the CAS did not configure us)", file=sys.stderr)
        return 2
    if args.role == "web" and not args.database:
        print("error: --database is required for the web role", file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")
    if args.role == "db":
        handler = database_handler(password, {})
    else:
        handler = web_handler(args.database, password)
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.socket = tls_server_context().wrap_socket(server.socket, server_side=True)
    if args.port_file is not None:
        args.port_file.write_text(str(server.server_address[1]))
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
