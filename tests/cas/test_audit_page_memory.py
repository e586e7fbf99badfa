"""An unread ``GET /v1/audit`` holds about a page of 1 MiB, whatever its entries hold.

Red team rt9 finding F6: pages were bounded by entry count only (1000), and entries by
nothing (F2), so one key's audit of 48 KB entries made each answer ~48 MB of JSON that
uvicorn kept, whole, for a client that never read it: +150 MiB of CAS RSS per
connection, 64 connections per client address. Against a real ``cas serve`` over
HTTPS on loopback: entries written as an earlier release recorded them (no bound),
then unread pages.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import psutil

from sgxcloud.cas import audit, client
from sgxcloud.cas.client.owner import OwnerClient
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.core import AUDIT_PAGE_BYTES
from sgxcloud.cas.store import Database
from sgxcloud.cas.store.db import make_engine
from tests.cas import postgres as pg
from tests.cas.test_workers import PUBLIC, Served

BLOATED = 300  # entries of ~48 KB: 14 MB of audit about one policy
READERS = 4


def _append_unbounded(url: str, policy: str, count: int) -> None:
    """Entries as a CAS before the rt9 fix stored them: 48 KB of a stranger's text each."""
    database = Database(make_engine(url))

    def work(repo):  # type: ignore[no-untyped-def]
        head = repo.lock_audit_head()
        seq, prev = head.seq, head.entry_hash
        for _ in range(count):
            seq += 1
            detail = audit.canonical_json(
                {"reasons": ["simulated evidence: unexpected ['" + "x" * 48_000 + "']"]}
            )
            fields = {
                "seq": seq,
                "at": pg.CLOCK,
                "kind": "attestation",
                "subject": f"{policy}/web",
                "actor": "enclave-key:0000000000000000",
                "outcome": "rejected",
                "detail": detail,
                "prev_hash": prev,
            }
            prev = audit.entry_hash(**fields)
            repo.add_audit_entry({**fields, "entry_hash": prev})

    database.run(work)
    database.close()


def _rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def test_unread_audit_pages_hold_about_a_page_each(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cas.db'}"
    served = Served(tmp_path, url, workers=1)
    try:
        served.wait_workers(0)
        owner = pg.owner_key()
        with OwnerClient(served.url, owner, ca_file=served.tls.ca_cert, audience=PUBLIC) as oc:
            oc.apply(pg.policy_text(owner, name="bloat"))
            deployment = oc.deployment_id()
        _append_unbounded(url, "bloat", BLOATED)

        # Paging still reaches every entry, each page cut near its byte bound.
        with OwnerClient(served.url, owner, ca_file=served.tls.ca_cert, audience=PUBLIC) as oc:
            seen, after, pages = 0, "", 0
            while True:
                page, more = oc.audit_page(after=after, limit=1000)
                pages += 1
                seen += len(page)
                assert len(str(page)) < 2 * AUDIT_PAGE_BYTES
                if not more:
                    break
                after = more
        assert seen == BLOATED + 1 and pages > 10

        pid = served.process.pid
        before = _rss_mib(pid)
        context = ssl.create_default_context(cafile=str(served.tls.ca_cert))
        readers = []
        for _ in range(READERS):
            path = "/v1/audit?limit=1000"
            headers = auth.sign_request(
                owner,
                "GET",
                path,
                b"",
                now=int(time.time()),
                deployment=deployment,
                audience=PUBLIC,
            )
            raw = socket.create_connection(("127.0.0.1", served.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
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
        # Before the fix: +~45 MiB per reader here (14 MB of JSON each, kept whole).
        assert peak - before < 8 * READERS, (before, peak)
        with httpx.Client(verify=client.pinned_tls(served.tls.ca_cert), timeout=10) as http:
            assert http.get(f"{served.url}/v1/health/ready").status_code == 200
    finally:
        served.stop()
