"""An unread ``GET /v1/audit`` holds about a page of 1 MiB of the coordinator,
however long its audit log.

The coordinator answered the whole log in one JSON body, and uvicorn keeps a
one-piece body whole for a client that never reads it (it only waits for the
client between body messages): every party could make the coordinator hold a
copy of the whole log per connection, and the log only grows.  The CAS had the
same fault (red team rt9 F6).  Against a real coordinator process over its
attested HTTPS: a long log, read page by page by the SDK with the chain checked
across pages, then connections that ask and never read.
"""

from __future__ import annotations

import json
import socket
import ssl
import time

import httpx
import psutil
import pytest

from sgxcloud.cleanroom.approvals import private_key_from_pem
from sgxcloud.cleanroom.audit import PAGE_BYTES, AuditEntry, AuditLog, verify_chain
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.errors import AuditChainError
from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cleanroom.sdk import CleanroomClient
from sgxcloud.cleanroom.transport.request_auth import sign_request

LONG = 1500  # entries of ~20 KB (a long query text each): ~30 MB of log
READERS = 4


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("coordaudit")
    collab = prepare_example(workdir, people=300, min_group_size=20)
    collab.start()
    try:
        # Written by another process while the coordinator runs, as its own appends
        # are (the log takes a file lock and re-reads its head).
        (log_path,) = (workdir / "coordinator").rglob("audit.jsonl")
        log = AuditLog(log_path)
        for n in range(LONG):
            log.append("query", "brand", {"query": {"filter": f"{n} " + "x" * 20_000}})
        yield collab
    finally:
        collab.stop()


def _client(collab, party: str = "brand") -> CleanroomClient:
    key = private_key_from_pem((collab.workdir / "keys" / f"{party}.pem").read_bytes())
    return CleanroomClient.connect(collab.url, load_definition(collab.definition), party, key)


def test_the_sdk_reads_a_long_log_page_by_page_and_checks_the_chain_across_them(running):
    with _client(running) as brand:
        trail = brand.audit_verified()
        pages, after = [], 0
        while after is not None:
            page, after = brand.audit_page(after)
            pages.append(page)
    assert len(trail.entries) > LONG
    assert [e["seq"] for e in trail.entries] == list(range(1, len(trail.entries) + 1))
    assert trail.head == trail.entries[-1]["hash"]
    assert len(pages) > 20  # ~30 MB of log in pages of about 1 MiB
    assert all(len(json.dumps(p)) < PAGE_BYTES + 64 * 1024 for p in pages)
    assert [e for p in pages for e in p] == trail.entries


def test_the_chain_check_carries_over_from_page_to_page(running):
    """A page checks only from the head and seq the previous page ended on: the
    second page of the real log does not verify on its own or after another page."""
    with _client(running) as brand:
        first, after = brand.audit_page(0)
        second, _ = brand.audit_page(after)
    first_e = [AuditEntry(**e) for e in first]
    second_e = [AuditEntry(**e) for e in second]
    head = verify_chain(first_e)
    assert verify_chain(second_e, head, after) == second[-1]["hash"]
    with pytest.raises(AuditChainError, match="expected entry 1"):
        verify_chain(second_e)
    with pytest.raises(AuditChainError, match="does not follow the previous entry"):
        verify_chain(second_e, first[-2]["hash"], after)


def test_unread_audit_answers_hold_about_a_page_each(running):
    pid = running.processes["coordinator"].pid
    health = httpx.get(f"{running.url}/v1/health", verify=False).json()
    key = private_key_from_pem((running.workdir / "keys" / "bank.pem").read_bytes())
    host, port = running.url.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the attacker checks nothing
    before = _rss_mib(pid)
    readers = []
    for _ in range(READERS):
        headers = sign_request(
            key,
            "bank",
            "GET",
            "/v1/audit",
            definition_hash=health["definition_hash"],
            coordinator=health["coordinator"],
        )
        raw = socket.create_connection((host, int(port)))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock = context.wrap_socket(raw, server_hostname=host)
        request = f"GET /v1/audit HTTP/1.1\r\nHost: {host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        sock.sendall((request + "\r\n").encode())
        readers.append(sock)
    peak = before
    for _ in range(16):  # the answers are built and handed to the transport
        time.sleep(0.5)
        peak = max(peak, _rss_mib(pid))
    for sock in readers:
        sock.close()
    # Before the fix: the whole ~30 MB log per reader, kept until the answer timed out.
    print(f"coordinator RSS {before:.1f} -> {peak:.1f} MiB with {READERS} unread readers")
    assert peak - before < 8 * READERS, (before, peak)
    with _client(running) as brand:
        assert brand.status()["definition_hash"] == health["definition_hash"]
