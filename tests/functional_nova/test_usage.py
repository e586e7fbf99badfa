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
from sgxcloud.nova import compat
from sgxcloud.nova import usage as epc_usage
from sgxcloud.nova.osc.host import ListSGXHost
from sgxcloud.nova.osc.usage import ExportSGXUsage, ListSGXUsage, ShowSGXUsage
from tests.functional_nova.base import SGXServersTestBase

T0 = dt.datetime(2026, 3, 2, 0, 0, 0)  # window start (naive UTC, as Nova stores it)
HOUR = dt.timedelta(hours=1)


def sdk_connection(test: SGXServersTestBase) -> connection.Connection:
    """openstacksdk on the in-process Nova and Placement, as an admin."""
    return harness_connection(
        test.api_fixture.admin_api.base_url,
        compat.placement_endpoint(test),
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
        # OSC's own columns format these: "1056.00" and "3" from OSC 8, the
        # float 1056.0 and the int 3 before (2025.1 and older).
        self.assertEqual(1056.0, float(shown["EPC MB-Hours"]))
        self.assertEqual(3, int(shown["Servers"]))
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


class EPCUsageStableWindowsTest(SGXServersTestBase):
    """Issue 11: a closed window's bill must not change after the fact.

    Six servers on two SGX hosts, with hours T+0h.. on a frozen clock:

    - A 32 MiB, built at 0h, runs throughout;
    - B 64 MiB, built at 2h, deleted at 20h;
    - D 32 MiB, built at 5h, resized to 128 MiB at 30h, reverted at 32h;
    - E 64 MiB, built at 6h, shelved (offloaded) at 12h, unshelved at 20h;
    - F 64 MiB, built at 7h, cold-migrated to the other host at 15h;
    - C 64 MiB, built at 10h, resized to 128 MiB at 40h (the issue's server).

    Window W1 = [8h, 36h] by hand (MiB x h):
    A 32x28 = 896; B 64x12 = 768; C 64x26 = 1664; D 32x22 + 128x2 + 32x4 = 1088;
    E 64x(4+16) = 1280; F 64x28 = 1792; total 7488.
    Window W2 = [36h, 48h]: A 384; C 64x4 + 128x8 = 1280; D 384; E 768; F 768;
    total 3584.  W1 + W2 = [8h, 48h] = 11072.  Then C is deleted at 56h: both
    windows keep their figures.
    """

    def setUp(self):
        timeutils.set_time_override(T0 - 6 * HOUR)
        self.addCleanup(timeutils.clear_time_override)
        self.flags(service_down_time=30 * 24 * 3600)
        super().setUp()
        self.flags(allow_resize_to_same_host=True)
        self.flags(shelved_offload_time=0)
        self.start_sgx_compute("sgx1", {0: 512})
        self.start_sgx_compute("sgx2", {0: 512})
        self.flavors = {mb: self.create_sgx_flavor(mb, name=f"sgx.{mb}") for mb in (32, 64, 128)}
        self.conn = sdk_connection(self)
        # The fake libvirt has no disks to move (as in Nova's own libvirt tests).
        patcher = mock.patch(
            "nova.virt.libvirt.driver.LibvirtDriver.migrate_disk_and_power_off",
            return_value="{}",
        )
        patcher.start()
        self.addCleanup(patcher.stop)

    def at(self, hours: float) -> None:
        timeutils.set_time_override(T0 + hours * HOUR)

    def settle(self, server: dict, action: str, event: str) -> None:
        """Wait until the compute step's event is recorded before the clock moves on."""
        self._wait_for_instance_action_event(server, action, event, "success")

    def boot(self, hours: float, name: str, mb: int) -> dict:
        self.at(hours)
        server = self._create_server(name=name, flavor_id=self.flavors[mb], networks="none")
        self.settle(server, "create", "compute__do_build_and_run_instance")
        return server

    def resize(self, hours: float, server: dict, mb: int) -> dict:
        self.at(hours)
        server = self._resize_server(server, self.flavors[mb])
        self.settle(server, "resize", "compute_finish_resize")
        return server

    def window(self, lo: float, hi: float) -> dict[str, float]:
        project = self.api_fixture.project_id
        usage = epc_usage.project_usage(self.conn, project, T0 + lo * HOUR, T0 + hi * HOUR)
        self.assertTrue(all(s.epc_exact for s in usage.servers), [s.notes for s in usage.servers])
        figures = {s.name: s.epc_mb_hours for s in usage.servers}
        figures["total"] = usage.epc_mb_hours
        return figures

    def test_windows_before_and_after_resizes_keep_their_figures(self):
        a = self.boot(0, "A", 32)
        b = self.boot(2, "B", 64)
        d = self.boot(5, "D", 32)
        e = self.boot(6, "E", 64)
        f = self.boot(7, "F", 64)
        c = self.boot(10, "C", 64)
        self.at(12)
        e = self._shelve_server(e)
        self.settle(e, "shelve", "compute_shelve_instance")
        self.at(15)
        source = f["OS-EXT-SRV-ATTR:host"]
        f = self._migrate_server(f)
        self.assertNotEqual(source, f["OS-EXT-SRV-ATTR:host"])
        self.settle(f, "migrate", "compute_finish_resize")
        self.at(16)
        self._confirm_resize(f)
        self.at(20)
        self._delete_server(b)
        e = self._unshelve_server(e)
        self.settle(e, "unshelve", "compute_unshelve_instance")
        d = self.resize(30, d, 128)
        self.at(32)
        self._revert_resize(d)
        self.settle(d, "revertResize", "compute_finish_revert_resize")

        w1 = {"A": 896, "B": 768, "C": 1664, "D": 1088, "E": 1280, "F": 1792, "total": 7488}
        self.at(37)
        self.assertEqual(w1, self.window(8, 36))

        c = self.resize(40, c, 128)
        self.at(41)
        self._confirm_resize(c)
        self.at(55)
        # Asked long after, with C resized: the same figures.
        self.assertEqual(w1, self.window(8, 36))
        w2 = {"A": 384, "C": 1280, "D": 384, "E": 768, "F": 768, "total": 3584}
        self.assertEqual(w2, self.window(36, 48))
        self.assertEqual(w1["total"] + w2["total"], self.window(8, 48)["total"])

        # Nova's own rows leave C out of W1 now (its launched_at moved to 40h):
        # the CPU/RAM figures passed through are Nova's, and C is flagged.
        project = self.api_fixture.project_id
        ours = epc_usage.project_usage(self.conn, project, T0 + 8 * HOUR, T0 + 36 * HOUR)
        nova = self.admin_api.api_get(
            f"/os-simple-tenant-usage/{project}?start={(T0 + 8 * HOUR).isoformat()}"
            f"&end={(T0 + 36 * HOUR).isoformat()}"
        ).body["tenant_usage"]
        nova_ids = {s["instance_id"] for s in nova["server_usages"]}
        self.assertNotIn(c["id"], nova_ids)
        self.assertEqual(nova["total_memory_mb_usage"], ours.total_memory_mb_usage)
        by_name = {s.name: s for s in ours.servers}
        self.assertEqual(0.0, by_name["C"].hours)
        self.assertEqual(26.0, by_name["C"].held_hours)
        self.assertTrue(by_name["C"].nova_hours_differ)
        self.assertFalse(by_name["A"].nova_hours_differ)
        flagged = {s.name for s in ours.servers if s.nova_hours_differ}
        self.assertEqual({"C", "D", "E", "F"}, flagged)
        del a

        # The billing export (every project) carries the same figures.
        app = osc_app(self.conn, project)
        when = ["--start", (T0 + 8 * HOUR).isoformat(), "--end", (T0 + 36 * HOUR).isoformat()]
        columns, lines = run_command(app, ExportSGXUsage, when)
        exported = [dict(zip(columns, line, strict=True)) for line in lines]
        self.assertEqual(
            {k: v for k, v in w1.items() if k != "total"},
            {line["server_name"]: line["epc_mb_hours"] for line in exported},
        )
        self.assertEqual({project}, {line["project_id"] for line in exported})

        # C deleted after its resize: Nova soft-deletes its migration records,
        # but the sizes the driver recorded in its instance actions remain,
        # so its bill for W1 is still exact and unchanged.
        self.at(56)
        self._delete_server(c)
        self.at(57)
        self.assertEqual(
            [], self.admin_api.api_get(f"/os-migrations?instance_uuid={c['id']}").body["migrations"]
        )
        self.assertEqual(w1, self.window(8, 36))
        self.assertEqual(w2, self.window(36, 48))


def _plain(value):
    """What a cell shows in a table (cliff columns format themselves)."""
    return value.human_readable() if hasattr(value, "human_readable") else value


def osc_app(conn, project_id):
    """The parts of OSC's app object the commands use, around a real SDK connection."""
    # Nova's harness runs no Keystone; OSC's usage commands only check the
    # identity API version unless --project is given, so that is all we stand in for.
    # OSC 6 (2024.1) reads its compute client from sdk_connection and names
    # (without calling) a keystoneclient ``identity``.
    no_keystone = types.SimpleNamespace(
        identity=types.SimpleNamespace(api_version="3"), compute=conn.compute
    )
    client_manager = types.SimpleNamespace(
        sgx=conn,
        compute=conn.compute,
        identity=None,
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
