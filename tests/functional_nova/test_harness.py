"""The in-process cloud itself: its services are greenthreads of one process.

A compute service's heartbeat and its resource claims use one admin context
(the one the service started with).  Each greenthread must have its own
database transaction on it, as in a real nova-compute, where eventlet
monkey-patches before anything else is imported.
"""

from __future__ import annotations

import threading
import time

import fixtures
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


class SimulatedClockTest(SGXServersTestBase):
    """The demo's simulated clock moves only once Nova has recorded what happened.

    A server turns ACTIVE a moment before Nova records the finish of the build
    step (``wrap_instance_event`` writes it after the step returns), and usage
    accounting charges EPC from that finish.  A CI run of the demo once charged
    enclave-3 for 96 h instead of 120: the clock had jumped to hour 24 in between.
    """

    def setUp(self):
        self.flags(service_down_time=30 * 24 * 3600)  # hours pass in jumps
        super().setUp()

    def test_a_late_build_record_is_stamped_before_the_clock_moves(self):
        from nova import objects
        from oslo_utils import timeutils

        from sgxcloud.demo.nova import SimulatedClock

        self.start_sgx_compute("sgx1", {0: 256})
        flavor = self.create_sgx_flavor(64)
        clock = SimulatedClock(self)
        real_finish = objects.InstanceActionEvent.event_finish_with_failure

        def late_finish(*args, **kwargs):
            time.sleep(1.0)  # green: the API already shows the server ACTIVE
            return real_finish(*args, **kwargs)

        self.useFixture(
            fixtures.MockPatchObject(
                objects.InstanceActionEvent, "event_finish_with_failure", late_finish
            )
        )
        created = self.api.post_server(
            {"server": self._build_server(flavor_id=flavor, networks="none")}
        )
        server = self.wait_for_any_status(created, {"ACTIVE"}, attempts=300)
        clock.watched["enclave"] = server
        clock.advance_to(24)

        (create,) = self.admin_api.get_instance_actions(server["id"])
        for _ in range(100):  # the record itself, whenever it comes
            events = self.admin_api.get_instance_action_details(server["id"], create["request_id"])
            (build,) = [
                e for e in events["events"] if e["event"] == "compute__do_build_and_run_instance"
            ]
            if build["finish_time"]:
                break
            time.sleep(0.1)
        finished = timeutils.parse_isotime(build["finish_time"]).replace(tzinfo=None)
        self.assertEqual(clock.start, finished)  # hour 0, when it was built
