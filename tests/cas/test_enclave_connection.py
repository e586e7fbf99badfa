"""The enclave's connection to the CAS (``CasConnection``, standard library http.client).

Everything a general HTTP client gave the enclave is checked against a real
CAS over HTTPS on loopback: the TLS pin (also through a proxy), keep-alive,
a connection the CAS closed while idle, timeouts, retries with a fresh
connection, ``HTTPS_PROXY``/``NO_PROXY`` through a real CONNECT proxy, and
one-line refusals that carry no credentials.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sgxcloud.cas import client
from sgxcloud.cas.policy import public_key_id
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls
from sgxcloud.web.limits import RequestLimits

try:
    from tests.cas import postgres as pg
    from tests.cas.loadbalancer import RoundRobinBalancer
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]
    from loadbalancer import RoundRobinBalancer  # type: ignore[no-redef]


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(url, pinned CA file) of a CAS over HTTPS, policy 'shop'; idle ones close after 1 s."""
    service = pg.make_service(f"sqlite:///{tmp_path / 'cas.db'}")
    owner = pg.owner_key()
    service.apply_policy(
        public_key_id(pg.public_pem(owner)), pg.policy_text(owner), int(time.time())
    )
    tls = make_loopback_tls(tmp_path / "tls")
    with background_https(create_app(service), tls, limits=RequestLimits(keep_alive_s=1)) as url:
        yield url, tls.ca_cert
    service.stop()


def _fetch(url: str, root: Path, **options):  # type: ignore[no-untyped-def]
    return client.fetch_configuration(
        url,
        policy="shop",
        service="web",
        root=root,
        simulate=pg.simulated_identity(),
        **options,
    )


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# -- loopback helpers: a TCP relay, a CONNECT proxy, a server that never answers --


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _splice(a: socket.socket, b: socket.socket) -> None:
    for source, sink in ((a, b), (b, a)):
        threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


@contextlib.contextmanager
def _listener(handle) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """A loopback listener giving each accepted socket to ``handle`` (a thread); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


@contextlib.contextmanager
def _relay(target_port: int, *, drop_first: int = 0) -> Iterator[tuple[int, list[str]]]:
    """A TCP relay to ``target_port`` that closes its first ``drop_first`` connections at once."""
    seen: list[str] = []

    def handle(conn: socket.socket) -> None:
        seen.append("dropped" if len(seen) < drop_first else "relayed")
        if seen[-1] == "dropped":
            conn.close()
            return
        _splice(conn, socket.create_connection(("127.0.0.1", target_port)))

    with _listener(handle) as port:
        yield port, seen


@contextlib.contextmanager
def _connect_proxy() -> Iterator[tuple[int, list[bytes]]]:
    """An HTTP CONNECT proxy; yields (port, the request heads it received)."""
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        heads.append(head)
        target = head.split(b" ", 2)[1].decode()
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        _splice(conn, upstream)

    with _listener(handle) as port:
        yield port, heads


# -- what the connection keeps from a general HTTP client -----------------------


def test_one_connection_serves_many_attestations(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, ca = cas
    with RoundRobinBalancer([("127.0.0.1", _port(url))]) as balancer:
        with client.CasConnection(balancer.url, ca) as connection:
            keys = {
                _fetch(balancer.url, tmp_path, connection=connection)
                .private_key.public_key()
                .public_numbers()
                for _ in range(5)
            }
        assert len(keys) == 5  # a fresh enclave key every time, on one TLS connection
        assert balancer.connections == [1]


@pytest.mark.parametrize("poll", [True, False], ids=["poll", "select-only"])
def test_a_connection_the_cas_closed_while_idle_is_reopened(
    cas,
    tmp_path: Path,
    poll,  # type: ignore[no-untyped-def]
    monkeypatch,
) -> None:
    """Also where ``select`` has no poll(): eventlet's green select (the demo runs the
    client beside Nova's harness) — the demo stopped with an AttributeError there."""
    if not poll:
        import select

        monkeypatch.delattr(select, "poll")
    url, ca = cas
    with client.CasConnection(url, ca) as connection:
        _fetch(url, tmp_path, connection=connection)
        time.sleep(2.5)  # the CAS closes idle keep-alive connections after 1 s
        # attempts=1: no retry hides it, the closed connection must be noticed before use.
        assert _fetch(url, tmp_path, connection=connection, attempts=1).policy_hash


def test_the_pin_holds_and_a_refused_pin_is_one_line(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, _ = cas
    other = make_loopback_tls(tmp_path / "other")
    with pytest.raises(
        client.ServiceUnavailable,
        match=r"^cannot reach the CAS at https://127\.0\.0\.1:\d+: "
        r"SSLCertVerificationError$",
    ):
        _fetch(url, tmp_path, ca_file=other.ca_cert)


def test_unreachable_cas_is_retried_with_backoff_on_a_fresh_connection(cas, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    url, ca = cas
    with _relay(_port(url), drop_first=2) as (port, seen):
        relayed = f"https://127.0.0.1:{port}"
        with pytest.raises(client.ServiceUnavailable, match="cannot reach the CAS"):
            _fetch(relayed, tmp_path, ca_file=ca, attempts=1)
        started = time.monotonic()
        fetched = _fetch(relayed, tmp_path, ca_file=ca, attempts=3, backoff=0.2)
        assert fetched.policy_hash and time.monotonic() - started >= 0.2
        assert seen == ["dropped", "dropped", "relayed"]


def test_a_cas_that_never_answers_times_out(tmp_path: Path) -> None:
    ca = make_loopback_tls(tmp_path / "tls").ca_cert
    with _listener(lambda conn: time.sleep(30)) as port:  # accepts, says nothing
        started = time.monotonic()
        with pytest.raises(client.ServiceUnavailable, match="cannot reach the CAS"):
            _fetch(f"https://127.0.0.1:{port}", tmp_path, ca_file=ca, timeout=0.5)
        assert time.monotonic() - started < 5


def test_https_proxy_is_used_through_connect_and_the_pin_still_holds(  # type: ignore[no-untyped-def]
    cas, tmp_path: Path, monkeypatch
) -> None:
    url, ca = cas
    with _connect_proxy() as (port, heads):
        monkeypatch.setenv("HTTPS_PROXY", f"http://enclave:s%3Acret@127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert _fetch(url, tmp_path, ca_file=ca).policy_hash
        assert len(heads) == 1 and heads[0].startswith(
            f"CONNECT 127.0.0.1:{_port(url)} HTTP/1.".encode()  # 1.0 from Python 3.11
        )
        # base64("enclave:s:cret"): the credentials of the proxy URL, percent-decoded.
        assert b"Proxy-Authorization: Basic ZW5jbGF2ZTpzOmNyZXQ=\r\n" in heads[0]
        other = make_loopback_tls(tmp_path / "other")
        with pytest.raises(client.ServiceUnavailable, match="SSLCertVerificationError"):
            _fetch(url, tmp_path, ca_file=other.ca_cert)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert _fetch(url, tmp_path, ca_file=ca).policy_hash
        assert len(heads) == 2  # the refused pin went through the proxy, the bypass did not


# -- refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:8443", r"must be https://HOST\[:PORT\] \(got http://…\)"),
        ("127.0.0.1:8443", r"must be https://"),
        ("https://admin:hunter2@127.0.0.1:8443", r"must not carry credentials"),
        ("https://127.0.0.1:99999", r"invalid port"),
    ],
)
def test_bad_urls_are_refused_in_one_line_without_credentials(  # type: ignore[no-untyped-def]
    url: str, message: str, tmp_path: Path
) -> None:
    ca = make_loopback_tls(tmp_path / "tls").ca_cert
    with pytest.raises(client.ClientError, match=message) as refused:
        _fetch(url, tmp_path, ca_file=ca)
    assert "\n" not in str(refused.value) and "hunter2" not in str(refused.value)


def test_a_context_that_does_not_verify_is_refused(tmp_path: Path) -> None:
    loose = ssl.create_default_context()
    loose.check_hostname = False
    with pytest.raises(client.ClientError, match="must verify the CAS's certificate"):
        client.CasConnection("https://127.0.0.1:8443", tls=loose)
    with pytest.raises(client.ClientError, match=r"ca_file .* is required"):
        client.CasConnection("https://127.0.0.1:8443")


def test_only_http_connect_proxies_are_used(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ca = make_loopback_tls(tmp_path / "tls").ca_cert
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080")
    with pytest.raises(client.ClientError, match=r"http:// proxy \(CONNECT\), not socks5://$"):
        client.CasConnection("https://127.0.0.1:8443", ca)


# -- reading answers: every framing a CAS or a load balancer in front may use ----------

OK_JSON = b'{"nonce":"00"}'


class _Trickle(io.RawIOBase):
    """A stream that gives at most 7 bytes per read, as a slow network may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        chunk = self._data.read(min(7, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


# How answers arrive: the connection reads through a buffer, where a head is
# usually all there (split at once) but may have arrived only in part (read
# line by line); a plain stream is read line by line.  Same answers either way.
READERS = {
    "buffered": lambda data: io.BufferedReader(io.BytesIO(data)),
    "trickled": lambda data: io.BufferedReader(_Trickle(data)),
    "small-buffer": lambda data: io.BufferedReader(io.BytesIO(data), buffer_size=16),
    "unbuffered": io.BytesIO,
}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + OK_JSON, (200, OK_JSON, True)),
        # header names in any case; same Content-Length twice is one length
        (
            b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 14\r\nContent-Length: 14\r\nX-A: b\r\n\r\n"
            + OK_JSON,
            (200, OK_JSON, True),
        ),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            (503, b"{}", False),
        ),
        (b"HTTP/1.1 200\n\rContent-Length: 0\n\n", None),  # a header name is a token
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + OK_JSON,
            (200, OK_JSON, True),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4;ext=1\r\n{"no\r\nA\r\nnce":"00"}\r\n0\r\nX-Trailer: t\r\n\r\n',
            (200, OK_JSON, True),
        ),
        (
            b"HTTP/1.0 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<html>bad</html>",
            (502, b"<html>bad</html>", False),
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 14\r\n\r\n" + OK_JSON, (200, OK_JSON, False)),
        (b"HTTP/1.1 204 No Content\r\n\r\n", (204, b"", True)),
        # a bare LF ends a line wherever it is, as it does when read line by line
        (b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 14\r\n\r\n" + OK_JSON, (200, OK_JSON, True)),
        (b"HTTP/1.1 200 OK\nContent-Length: 14\n\r\n" + OK_JSON, (200, OK_JSON, True)),
        # a bare CR ends nothing: no Content-Length here, the body ends with the connection
        (b"HTTP/1.1 200 OK\r\nX-A: b\rContent-Length: 2\r\n\r\n{}", (200, b"{}", False)),
    ],
)
@pytest.mark.parametrize("reader", READERS)
def test_answers_are_read_by_their_framing(answer: bytes, expected, reader: str) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas.client.connection import read_response

    if expected is None:
        with pytest.raises(http.client.HTTPException):
            read_response(READERS[reader](answer))
        return
    if not expected[2]:  # the body ends with the connection
        assert read_response(READERS[reader](answer)) == expected
        return
    stream = READERS[reader](answer + b"HTTP/1.1 200 OK\r\n")
    assert read_response(stream) == expected
    assert stream.read() == b"HTTP/1.1 200 OK\r\n"  # the next answer is left untouched


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"", http.client.RemoteDisconnected),
        (b"SSH-2.0-OpenSSH_9.6\r\n", http.client.BadStatusLine),
        (b"HTTP/2 200\r\n\r\n", http.client.BadStatusLine),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", http.client.BadStatusLine),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{"nonce"', http.client.IncompleteRead),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Length: 15\r\n\r\n",
            http.client.HTTPException,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n folded\r\n\r\n{}", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", http.client.LineTooLong),
        (b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 101 + b"\r\n", http.client.HTTPException),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", http.client.IncompleteRead),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x4\r\n{"no\r\n0\r\n\r\n',
            http.client.HTTPException,
        ),
        (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{"no\r\n0\r\n\r\n',
            http.client.HTTPException,
        ),  # the chunk swallowed the last one: no end
    ],
)
@pytest.mark.parametrize("reader", READERS)
def test_malformed_answers_are_refused(answer: bytes, error: type[Exception], reader: str) -> None:
    from sgxcloud.cas.client.connection import read_response

    with pytest.raises(error):
        read_response(READERS[reader](answer))


@contextlib.contextmanager
def _scripted_https(tls, answers: list) -> Iterator[tuple[int, list[bytes]]]:  # type: ignore[no-untyped-def]
    """A TLS server answering each request with the next of ``answers`` (closing after a 1.0
    answer or one saying close); yields (port, the request heads it saw, one entry per
    connection joined by b'|')."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    script = iter(answers)
    seen: list[bytes] = []

    def handle(raw: socket.socket) -> None:
        with context.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as reader:
            heads = []
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        seen.append(b"|".join(heads))
                        return
                    head += line
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                reader.read(length)
                heads.append(head.split(b"\r\n")[0])
                answer = next(script)
                if isinstance(answer, tuple):  # (delay in seconds, answer)
                    time.sleep(answer[0])
                    answer = answer[1]
                with contextlib.suppress(OSError):  # the client may have gone
                    conn.sendall(answer)
                if answer.startswith(b"HTTP/1.0") or b"Connection: close" in answer:
                    seen.append(b"|".join(heads))
                    return

    with _listener(handle) as port:
        yield port, seen


def test_keep_alive_follows_the_answers_framing(tmp_path: Path) -> None:
    tls = make_loopback_tls(tmp_path / "tls")
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nE\r\n" + OK_JSON + b"\r\n0\r\n\r\n"
    )
    answers = [
        chunked,
        b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + OK_JSON,
        b"HTTP/1.0 200 OK\r\n\r\n" + OK_JSON,  # ends with the connection
        b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nConnection: close\r\n\r\n" + OK_JSON,
        chunked,
        chunked,
    ]
    with _scripted_https(tls, answers) as (port, seen):
        with client.CasConnection(f"https://127.0.0.1:{port}/cas/", tls.ca_cert) as connection:
            for _ in answers[:-1]:
                assert connection.post_json("/v1/nonces") == (200, OK_JSON)
            assert connection.post_json("/v1/attest", {"policy": "ü"})[0] == 200
        time.sleep(0.2)
    # Three connections: the 1.0 answer and the 'close' each ended one.
    assert seen == [
        b"POST /cas/v1/nonces HTTP/1.1|" * 2 + b"POST /cas/v1/nonces HTTP/1.1",
        b"POST /cas/v1/nonces HTTP/1.1",
        b"POST /cas/v1/nonces HTTP/1.1|POST /cas/v1/attest HTTP/1.1",
    ]


def test_an_interrupted_request_never_leaves_its_answer_for_the_next(tmp_path: Path) -> None:
    tls = make_loopback_tls(tmp_path / "tls")
    first, second = b'{"nonce":"01"}', b'{"nonce":"02"}'
    answers = [
        (1.0, b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + first),
        b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + second,
    ]

    class Interrupted(BaseException):
        pass

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with (
            _scripted_https(tls, answers) as (port, _),
            client.CasConnection(f"https://127.0.0.1:{port}", tls.ca_cert) as connection,
        ):
            signal.setitimer(signal.ITIMER_REAL, 0.3)  # while the first answer is late
            with pytest.raises(Interrupted):
                connection.post_json("/v1/nonces")
            # At once, before the late answer arrives (which the idle check would catch).
            assert connection.post_json("/v1/nonces") == (200, second)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# -- answers the enclave will not buffer or wait for without bound (red team rt10 F3) --


@contextlib.contextmanager
def _rogue_https(tls, send) -> Iterator[tuple[int, list[int]]]:  # type: ignore[no-untyped-def]
    """A TLS server holding the pinned CA's certificate (a TLS-ending proxy, a compromised
    replica) that reads each request's head and body, then calls ``send(conn)``; yields
    (port, bytes of answer each connection got out before the client left)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    sent: list[int] = []

    def handle(raw: socket.socket) -> None:
        with context.wrap_socket(raw, server_side=True) as conn, conn.makefile("rb") as reader:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            reader.read(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
            sent.append(send(conn))

    with _listener(handle) as port:
        yield port, sent


def _endless(head: bytes, piece: bytes, *, chunked: bool = False):  # type: ignore[no-untyped-def]
    def send(conn: ssl.SSLSocket) -> int:
        total = 0
        with contextlib.suppress(OSError):
            conn.sendall(head)
            while total < 1 << 30:  # 1 GiB at most: the client must leave long before
                frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                conn.sendall(frame)
                total += len(piece)
        return total

    return send


MIB = 1 << 20
ENDLESS = {
    "to-close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", False),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
}


@pytest.mark.parametrize("framing", ENDLESS)
def test_an_endless_answer_is_cut_at_the_cap_as_it_arrives(tmp_path: Path, framing: str) -> None:
    """rt10 F3: 300 MiB streamed to close grew the client 39 -> 647 MiB (all buffered)."""
    tls = make_loopback_tls(tmp_path / "tls")
    head, chunked = ENDLESS[framing]
    with _rogue_https(tls, _endless(head, b"x" * 65536, chunked=chunked)) as (port, sent):
        url = f"https://127.0.0.1:{port}"
        with (
            client.CasConnection(url, tls.ca_cert, max_answer_bytes=MIB) as connection,
            pytest.raises(client.ServiceUnavailable, match=f"at most {MIB} bytes"),
        ):
            connection.post_json("/v1/nonces")
        for _ in range(100):
            if sent:
                break
            time.sleep(0.05)
    # what was sent before the client left: the cap and what the socket buffers held
    assert sent and sent[0] < 16 * MIB


def test_a_huge_declared_length_is_refused_before_reading_and_retried(tmp_path: Path) -> None:
    """rt10 F3: Content-Length 100 GB was a bare MemoryError, not retried nor one line."""
    tls = make_loopback_tls(tmp_path / "tls")

    def send(conn: ssl.SSLSocket) -> int:
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n{")
        return 0

    with _rogue_https(tls, send) as (port, sent):
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(client.ServiceUnavailable, match="declared 100000000000 bytes"):
            _fetch(url, tmp_path, ca_file=tls.ca_cert, attempts=2, backoff=0.05)
        time.sleep(0.2)
    assert len(sent) == 2  # a transient failure: retried on a fresh connection


def test_a_trickled_answer_ends_at_the_requests_deadline(tmp_path: Path) -> None:
    """rt10 F3: one byte every 2 s held a client with a 3 s timeout for as long as the server
    went on (the timeout was per receive)."""
    tls = make_loopback_tls(tmp_path / "tls")

    def send(conn: ssl.SSLSocket) -> int:
        total = 0
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(40):
                time.sleep(0.25)
                conn.sendall(b" ")
                total += 1
        return total

    with _rogue_https(tls, send) as (port, _):
        url = f"https://127.0.0.1:{port}"
        with client.CasConnection(url, tls.ca_cert, timeout=1.0, deadline=1.5) as connection:
            started = time.monotonic()
            with pytest.raises(client.ServiceUnavailable, match="deadline"):
                connection.post_json("/v1/nonces")
            assert time.monotonic() - started < 2.5
    # the default deadline is twice the timeout
    assert client.CasConnection("https://cas.example", tls.ca_cert, timeout=3).deadline == 6


def test_the_launcher_ends_an_oversized_answer_with_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from sgxcloud.cas.client import launcher

    try:
        from tests.cas.fake_gramine import FakeAttestationDevice
    except ImportError:
        from fake_gramine import FakeAttestationDevice  # type: ignore[no-redef]

    tls = make_loopback_tls(tmp_path / "tls")
    head, _ = ENDLESS["to-close"]
    root = tmp_path / "root"
    with (
        _rogue_https(tls, _endless(head, b"x" * 65536)) as (port, _),
        FakeAttestationDevice(root, pg.simulated_identity()),
    ):
        status = launcher.main(
            [
                "launch",
                "--attempts",
                "1",
                "--root",
                str(root),
                "--url",
                f"https://127.0.0.1:{port}",
                "--policy",
                "shop",
                "--service",
                "web",
                "--ca-file",
                str(tls.ca_cert),
                "--policy-owner",
                "someone",
            ]
        )
    error = capsys.readouterr().err.strip()
    assert status == 1
    assert "Traceback" not in error and "\n" not in error
    assert error.startswith("error: the CAS at") and "at most 8388608 bytes" in error
