"""EPC MB-hours against Nova's real os-simple-tenant-usage, with time under control.

Servers are created, resized and deleted at known (overridden) times on Nova's
in-process cloud; the usage library then reads everything through
openstacksdk, exactly as ``openstack sgx usage show`` does, and must report
Nova's own CPU/RAM/disk figures unchanged and EPC MB-hours equal to the
value computed by hand below.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import pathlib
import types
from unittest import mock

import fixtures
from openstack import connection
from openstackclient.compute.v2.usage import ShowUsage
from oslo_utils import timeutils
from rich.console import Console

from sgxcloud.demo import usage as demo_usage
from sgxcloud.demo.usage import harness_connection
from sgxcloud.nova import usage as epc_usage
from sgxcloud.nova.osc.host import ListSGXHost
from sgxcloud.nova.osc.usage import ListSGXUsage, ShowSGXUsage
from tests.functional_nova.base import SGXServersTestBase

T0 = dt.datetime(2026, 3, 2, 0, 0, 0)  # window start (naive UTC, as Nova stores it)
HOUR = dt.timedelta(hours=1)


def sdk_connection(test: SGXServersTestBase) -> connection.Connection:
    """openstacksdk on the in-process Nova and Placement, as an admin."""
    return harness_connection(
        test.api_fixture.admin_api.base_url,
        test.placement_fixture.endpoint,
        test.api_fixture.project_id,
    )


class EPCUsageTest(SGXServersTestBase):
    def setUp(self):
        # The clock is frozen before any service starts, and hours pass in
        # jumps below: keep services "up" across the jumps.
        timeutils.set_time_override(T0 - 6 * HOUR)
        self.addCleanup(timeutils.clear_time_override)
        self.flags(service_down_time=30 * 24 * 3600)
        super().setUp()
        self.flags(allow_resize_to_same_host=True)
        self.start_sgx_compute("sgx1", {0: 512})
        self.start_compute("plain1")
        self.small = self.create_sgx_flavor(64, name="sgx.small")
        self.tiny = self.create_sgx_flavor(32, name="sgx.tiny")
        self.large = self.create_sgx_flavor(128, name="sgx.large")
        self.plain = self._create_flavor(memory_mb=256, vcpu=1, disk=1, name="plain")
        self.conn = sdk_connection(self)

    def at(self, when: dt.datetime) -> None:
        timeutils.set_time_override(when)

    def boot(self, name: str, flavor: str) -> dict:
        return self._create_server(name=name, flavor_id=flavor, networks="none")

    def test_usage_rows_match_nova_and_epc_is_charged_by_size_over_time(self):
        # "old": lived and died before the window: not in any figure.
        self.at(T0 - 5 * HOUR)
        old = self.boot("old", self.small)
        self.at(T0 - 4 * HOUR)
        self._delete_server(old)
        # "a": 64 MiB, launched before the window, deleted 3 h into it.
        self.at(T0 - 2 * HOUR)
        a = self.boot("a", self.small)
        # "b": 32 MiB from T0+1h, resized to 128 MiB at T0+4h, still running.
        self.at(T0 + 1 * HOUR)
        b = self.boot("b", self.tiny)
        # "c": no SGX, T0+2h .. T0+5h.
        self.at(T0 + 2 * HOUR)
        c = self.boot("c", self.plain)
        self.at(T0 + 3 * HOUR)
        self._delete_server(a)
        self.at(T0 + 4 * HOUR)
        # As in Nova's own libvirt functional tests: the fake has no disks to move.
        with mock.patch(
            "nova.virt.libvirt.driver.LibvirtDriver.migrate_disk_and_power_off",
            return_value="{}",
        ):
            b = self._resize_server(b, self.large)
        self._confirm_resize(b)
        self.at(T0 + 5 * HOUR)
        self._delete_server(c)
        # The report is asked for at T0+10h with an end in the future, so
        # Nova clips the window to "now".
        self.at(T0 + 10 * HOUR)
        start, end = T0, T0 + 12 * HOUR

        project = self.api_fixture.project_id
        ours = epc_usage.project_usage(self.conn, project, start, end)
        nova = self.admin_api.api_get(
            f"/os-simple-tenant-usage/{project}?start={start.isoformat()}&end={end.isoformat()}"
        ).body["tenant_usage"]

        # Nova's own figures pass through unchanged.
        self.assertEqual(nova["total_vcpus_usage"], ours.total_vcpus_usage)
        self.assertEqual(nova["total_memory_mb_usage"], ours.total_memory_mb_usage)
        self.assertEqual(nova["total_local_gb_usage"], ours.total_local_gb_usage)
        self.assertEqual(nova["total_hours"], ours.total_hours)
        self.assertEqual(
            sorted(s["instance_id"] for s in nova["server_usages"]),
            sorted(s.server_id for s in ours.servers),
        )
        self.assertEqual({"a", "b", "c"}, {s.name for s in ours.servers})

        # By hand: a 64 MiB x 3 h; b 32 MiB x 3 h (T0+1h..T0+4h) then
        # 128 MiB x 6 h (T0+4h..T0+10h); c has no EPC.
        by_name = {s.name: s for s in ours.servers}
        self.assertEqual(64 * 3, by_name["a"].epc_mb_hours)
        self.assertEqual(32 * 3 + 128 * 6, by_name["b"].epc_mb_hours)
        self.assertEqual(0, by_name["c"].epc_mb_hours)
        self.assertEqual(64 * 3 + 32 * 3 + 128 * 6, ours.epc_mb_hours)
        self.assertTrue(all(s.epc_exact for s in ours.servers))
        # Nova itself counts b only from the resize on (it resets launched_at).
        self.assertEqual(6.0, by_name["b"].hours)
        self.assertEqual(128, by_name["b"].epc_mb)

        # Split per day adds up to the same total.
        self.assertAlmostEqual(ours.epc_mb_hours, sum(ours.epc_mb_hours_per_day().values()))

        # The list view (every project) agrees with the single-project view.
        (listed,) = epc_usage.usages(self.conn, start, end)
        self.assertEqual(ours.epc_mb_hours, listed.epc_mb_hours)
        self.assertEqual(nova["total_memory_mb_usage"], listed.total_memory_mb_usage)

        self._check_osc_commands(project, start, end, ours)

    def _check_osc_commands(self, project, start, end, ours):
        """The plugin's commands against the same cloud, beside OSC's own."""
        app = osc_app(self.conn, project)
        when = ["--start", start.isoformat(), "--end", end.isoformat()]
        chart = os.path.join(self.useFixture(fixtures.TempDir()).path, "epc.png")
        columns, data = run_command(app, ShowSGXUsage, [*when, "--chart", chart])
        shown = dict(zip(columns, (_plain(v) for v in data), strict=True))
        self.assertEqual("1056.00", shown["EPC MB-Hours"])
        self.assertEqual("3", shown["Servers"])
        with open(chart, "rb") as handle:
            self.assertEqual(b"\x89PNG", handle.read(4))

        # OSC's own "openstack usage show" on the same window: same rows, same values.
        days = ["--start", start.date().isoformat(), "--end", (end + 24 * HOUR).date().isoformat()]
        osc_columns, osc_data = run_command(app, ShowUsage, days)
        ours_same_window = run_command(app, ShowSGXUsage, days)
        theirs = dict(zip(osc_columns, (_plain(v) for v in osc_data), strict=True))
        mine = dict(zip(ours_same_window[0], (_plain(v) for v in ours_same_window[1]), strict=True))
        self.assertEqual(theirs, {k: mine[k] for k in theirs})

        columns, rows = run_command(
            app, ListSGXUsage, [*when, "--chart", chart, "--chart-by", "day"]
        )
        (listed,) = [dict(zip(columns, (_plain(v) for v in r), strict=True)) for r in rows]
        self.assertEqual(shown, listed)

        columns, rows = run_command(app, ListSGXHost, [])
        hosts = [dict(zip(columns, (_plain(v) for v in r), strict=True)) for r in rows]
        self.assertEqual(["sgx1"], [h["Host"] for h in hosts])  # plain1 has no SGX
        sgx1 = hosts[0]
        self.assertEqual((512, 0, 128, 384, 1), (
            sgx1["EPC Total MB"], sgx1["EPC Reserved MB"], sgx1["EPC Used MB"],
            sgx1["EPC Free MB"], sgx1["SGX Servers"]))  # fmt: skip
        self.assertIn("HW_CPU_X86_SGX", sgx1["SGX Traits"])


def _plain(value):
    """What a cell shows in a table (cliff columns format themselves)."""
    return value.human_readable() if hasattr(value, "human_readable") else value


def osc_app(conn, project_id):
    """The parts of OSC's app object the commands use, around a real SDK connection."""
    # Nova's harness runs no Keystone; OSC's usage commands only check the
    # identity API version unless --project is given, so that is all we stand in for.
    no_keystone = types.SimpleNamespace(identity=types.SimpleNamespace(api_version="3"))
    client_manager = types.SimpleNamespace(
        sgx=conn,
        compute=conn.compute,
        sdk_connection=no_keystone,
        auth_ref=types.SimpleNamespace(project_id=project_id),
    )
    return types.SimpleNamespace(client_manager=client_manager, stdout=io.StringIO())


def run_command(app, command_class, argv):
    command = command_class(app, None)
    parsed = command.get_parser(command_class.__name__).parse_args(argv)
    return command.take_action(parsed)


class DemoUsageScreenTest(SGXServersTestBase):
    """The demo's usage screen on the same harness, with the real clock."""

    def test_demo_reports_the_servers_it_booted(self):
        self.start_sgx_compute("sgx1", {0: 256})
        flavor = self.create_sgx_flavor(64, name="sgx.demo")
        for name in ("enclave-1", "enclave-2"):
            self._create_server(name=name, flavor_id=flavor, networks="none")
        workdir = self.useFixture(fixtures.TempDir()).path
        console = Console(file=io.StringIO(), width=120)
        summary = demo_usage.run(console, pathlib.Path(workdir), self)
        self.assertEqual(2, summary["servers"], console.file.getvalue())
        self.assertEqual(2, summary["sgx_servers"])
        self.assertGreater(summary["epc_mb_hours"], 0)
        self.assertEqual({"total_mb": 256, "used_mb": 128}, summary["hosts"]["sgx1"])
        with open(summary["chart"], "rb") as handle:
            self.assertEqual(b"\x89PNG", handle.read(4))
        self.assertIn("EPC MB-Hours", console.file.getvalue())
