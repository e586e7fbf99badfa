"""The in-process cloud itself: its services are greenthreads of one process.

A compute service's heartbeat and its resource claims use one admin context
(the one the service started with).  Each greenthread must have its own
database transaction on it, as in a real nova-compute, where eventlet
monkey-patches before anything else is imported.
"""

from __future__ import annotations

import threading

from nova.db.main import api as main_db_api

from tests.functional_nova.base import SGXServersTestBase


class GreenthreadTransactionsTest(SGXServersTestBase):
    def test_build_while_the_heartbeat_reads_with_the_services_context(self):
        self.start_sgx_compute("sgx-b", {0: 512}, sgx2=True)
        # Like the demo's coordinator: one host can take it, so a build that
        # fails there cannot be rescheduled anywhere else.
        flavor = self.create_sgx_flavor(256, extra={"sgx:require_sgx2": "true"})
        service = self.computes["sgx-b"]
        heartbeat_context = service.service_ref._context
        claims_context = service.manager.rt.compute_nodes["sgx-b"]._context
        self.assertIs(heartbeat_context, claims_context)

        # The heartbeat (Service.save) caught inside a read transaction, as
        # when it yields to the other greenthreads at a connection check-in.
        inside, release = threading.Event(), threading.Event()

        def heartbeat_reading():
            # The context's own (cell) database, as Nova's DB API picks it.
            database = main_db_api.get_context_manager(heartbeat_context)
            with database.reader.using(heartbeat_context):
                inside.set()
                release.wait(60)

        heartbeat = threading.Thread(target=heartbeat_reading)
        heartbeat.start()
        self.assertTrue(inside.wait(60))
        try:
            created = self.api.post_server(
                {"server": self._build_server(flavor_id=flavor, networks="none")}
            )
            server = self.wait_for_any_status(created, {"ACTIVE", "ERROR"}, attempts=300)
        finally:
            release.set()
            heartbeat.join(60)
        self.assertEqual("ACTIVE", server["status"], server.get("fault"))
        self.assertEqual("sgx-b", server["OS-EXT-SRV-ATTR:host"])
