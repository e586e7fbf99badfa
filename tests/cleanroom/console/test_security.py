"""A local web app that signs with a party's key: who may reach it, and what
it gives away.  Real `cleanroom console` processes over plain HTTP on
loopback, against the real coordinator of the shared collaboration."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import httpx
import psutil
import pytest
from cryptography.hazmat.primitives import serialization

from sgxcloud.cleanroom.approvals import private_key_from_pem
from sgxcloud.cleanroom.console.app import create_app
from sgxcloud.cleanroom.console.security import CSP, Guard

pytestmark = pytest.mark.timeout(240)

PAGES = (
    "/",
    "/definition",
    "/query",
    "/query/audience",
    "/query/lift",
    "/results",
    "/budget",
    "/audit",
    "/verify",
)


@pytest.fixture(scope="module")
def brand(collab):
    return collab.console("brand")


@pytest.fixture(scope="module")
def session(brand):
    """A browser-like client that exchanged the printed token for the cookie."""
    with httpx.Client(base_url=brand.base, timeout=60) as client:
        first = client.get(brand.url)
        assert first.status_code == 303
        assert first.headers["location"] == "/"  # the token leaves the address bar
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        yield client


def _csrf(client: httpx.Client, path: str = "/query/audience") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def post_routes() -> list[str]:
    from sgxcloud.cleanroom.definition import definition_from_dict
    from sgxcloud.cleanroom.local import example_definition

    class _Session:  # to list the routes only; never called
        definition = definition_from_dict(example_definition())

    guarded = create_app(_Session(), Guard(port=1))  # type: ignore[arg-type]
    return [r.path for r in guarded.app.routes if "POST" in (getattr(r, "methods", None) or ())]


def test_listens_on_loopback_only(brand):
    sockets = [
        c
        for c in psutil.Process(brand.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert [s.laddr.ip for s in sockets] == ["127.0.0.1"]


def test_every_page_needs_the_session_cookie(brand):
    with httpx.Client(base_url=brand.base) as stranger:
        for path in PAGES:
            response = stranger.get(path)
            assert response.status_code == 401, path
            assert "access token" in response.text
        assert stranger.get("/?token=" + "A" * 43).status_code == 403
        assert stranger.post("/approve", data={"csrf": "x"}).status_code == 401
        assert stranger.get("/static/console.css").status_code == 200  # the stylesheet only


def test_pages_render_with_strict_headers_and_no_cors(session):
    for path in PAGES:
        response = session.get(path, headers={"Origin": "http://evil.example"})
        assert response.status_code == 200, (path, response.text[:300])
        headers = response.headers
        assert headers["content-security-policy"] == CSP
        assert "script-src" not in CSP and "default-src 'none'" in CSP
        assert headers["x-frame-options"] == "DENY"
        assert headers["cache-control"] == "no-store"
        assert not [h for h in headers if h.startswith("access-control-")], path
        assert "<script" not in response.text and " style=" not in response.text
    assert session.request("OPTIONS", "/").status_code == 405


def test_dns_rebinding_is_refused_by_host(session, brand):
    for host in ("evil.example", f"evil.example:{brand.port}", "127.0.0.1", "0.0.0.0:80"):
        response = session.get("/", headers={"Host": host})
        assert response.status_code == 421, host
        assert "Tailspin" not in response.text
    assert session.get("/", headers={"Host": f"localhost:{brand.port}"}).status_code == 200


def test_every_post_needs_this_starts_csrf_token(session):
    routes = post_routes()
    assert set(routes) == {"/approve", "/ingest", "/query/{name}", "/verify"}
    for path in (r.replace("{name}", "audience") for r in routes):
        for data in ({}, {"csrf": "forged"}):
            response = session.post(path, data=data)
            assert response.status_code == 403, (path, data)
            assert "CSRF" in response.text


def test_a_post_from_another_site_is_refused_even_with_the_token(session):
    token = _csrf(session)
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        response = session.post("/query/audience", data={"csrf": token}, headers=headers)
        assert response.status_code == 403, headers
    ok = session.post(
        "/query/audience",
        data={"csrf": token, "filter_text": "("},
        headers={"Origin": session.base_url.scheme + "://" + session.base_url.netloc.decode()},
    )
    assert ok.status_code == 400  # past the guard; the filter itself is bad


def test_the_private_key_never_reaches_the_browser(session, collab):
    pem = (collab.workdir / "keys" / "brand.pem").read_bytes()
    key = private_key_from_pem(pem)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    secrets = [base64.b64encode(raw).decode(), raw.hex(), pem.decode().splitlines()[1]]
    session.post(
        "/query/audience", data={"csrf": _csrf(session), "a-retailer-customers-baby_buyer": "true"}
    )
    bodies = [session.get(p).text for p in PAGES]
    for link in set(re.findall(r'href="(/results/[0-9a-f-]+)"', session.get("/results").text)):
        bodies += [
            session.get(link).text,
            *(session.get(f"{link}/export.{f}").text for f in ("csv", "json")),
        ]
    assert len(bodies) > len(PAGES)
    for body in bodies:
        assert not any(s in body for s in secrets)


def test_approval_needs_the_reviewed_hash(session, collab):
    response = session.post("/approve", data={"csrf": _csrf(session), "definition_hash": "0"})
    assert response.status_code == 400
    assert "Tick the box" in response.text


def test_bad_result_ids_and_exports_are_plain_404s(session):
    for path in (
        "/results/..%2f..%2fetc",
        "/results/ZZZ",
        "/results/0000/export.csv",
        "/query/nope",
    ):
        assert session.get(path).status_code == 404, path


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "sgxcloud.cli.main", "cleanroom", "console", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = run("--party", "brand")
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "--definition and --key" in missing.stderr
    (tmp_path / "local.json").write_text("{}")
    broken = run("--party", "brand", "--workdir", str(tmp_path))
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
