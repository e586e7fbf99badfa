"""Demo screen: SGX virtual machines in an in-process OpenStack cloud.

Nova's own API, conductor, scheduler and Placement run in this process with
``sgxcloud.SGXLibvirtDriver`` on five compute hosts whose (fake) libvirt
reports different EPC sizes, and one without SGX.  No SGX hardware is used:
what is real is Nova's scheduling and Placement accounting, and the domain
XML our driver generates (checked by libvirt's own schema and parser).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from unittest import mock

from rich.console import Console, Group
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from sgxcloud.nova import resources

# name -> (EPC MiB per host NUMA node, FLC, SGX2); None: no SGX at all
HOSTS: dict[str, tuple[dict[int, int], bool, bool] | None] = {
    "sgx-a": ({0: 128, 1: 128}, True, False),
    "sgx-b": ({0: 512}, True, True),
    "sgx-c": ({0: 64}, False, False),
    "plain-1": None,
    "plain-2": None,
}

# name -> (EPC MiB or 0, extra sgx: keys)
FLAVORS: dict[str, tuple[int, dict[str, str]]] = {
    "std.small": (0, {}),
    "sgx.small": (64, {}),
    "sgx.medium": (128, {"sgx:require_flc": "true"}),
    "sgx.large": (256, {"sgx:require_sgx2": "true"}),
    "sgx.huge": (1024, {}),
}

# (hours after the demo's week starts, server name, flavor) in boot order
SERVERS = [
    (0, "web-1", "std.small"),
    (0, "web-2", "std.small"),
    (0, "web-3", "std.small"),
    (0, "enclave-1", "sgx.small"),
    (0, "enclave-2", "sgx.small"),
    (0, "enclave-3", "sgx.small"),
    (24, "cleanroom-node", "sgx.medium"),
    (24, "coordinator", "sgx.large"),
    (24, "too-big", "sgx.huge"),
]
RESIZE_AT_HOURS = 72  # enclave-1: sgx.small (64 MiB) -> sgx.medium (128 MiB)
DELETE_AT_HOURS = 120  # enclave-3 deleted
WEEK_HOURS = 168


def run(console: Console, workdir: Path, cloud: Any) -> dict[str, Any]:
    workdir = workdir / "nova"
    workdir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]1 · SGX virtual machines in OpenStack Nova")
    console.print(
        "In-process cloud: Nova API, conductor, scheduler and Placement for real; "
        "libvirt [bold yellow]faked[/] as in Nova's own functional tests (no SGX here). "
        "Its clock is [bold]simulated[/]: the demo plays one week of operations so "
        "that the usage report has hours to count."
    )
    clock = SimulatedClock(cloud)

    with console.status("Starting compute hosts…"):
        for name, spec in HOSTS.items():
            if spec is None:
                cloud.start_compute(name)
            else:
                sections, flc, sgx2 = spec
                cloud.start_sgx_compute(name, sections, flc=flc, sgx2=sgx2)
    flavor_ids = {
        name: (
            cloud.create_sgx_flavor(epc, extra=extra, name=name)
            if epc
            else cloud._create_flavor(memory_mb=512, vcpu=1, disk=1, name=name)
        )
        for name, (epc, extra) in FLAVORS.items()
    }

    servers: dict[str, dict] = {}
    with console.status("Booting servers…") as status:
        for at_hours, name, flavor in SERVERS:
            clock.advance_to(at_hours)
            status.update(f"Booting {name} ({flavor})…")
            created = cloud.api.post_server(
                {
                    "server": cloud._build_server(
                        name=name, flavor_id=flavor_ids[flavor], networks="none"
                    )
                }
            )
            servers[name] = cloud.wait_for_any_status(created, {"ACTIVE", "ERROR"})
            if servers[name]["status"] == "ACTIVE":  # a server in ERROR holds nothing
                clock.watched[name] = servers[name]

    console.print(_servers_table(servers))
    console.print(_hosts_table(cloud))

    refusal = _try_live_migration(cloud, servers["enclave-1"])
    console.print(
        Panel(refusal, title="Live migration of enclave-1 (an SGX server)", border_style="yellow")
    )

    xml = cloud.domain_xml(servers["cleanroom-node"])
    xml_path = workdir / "cleanroom-node.xml"
    xml_path.write_text(xml)
    checks = _libvirt_checks(xml_path)
    console.print(
        Panel(
            Group(
                Syntax(_excerpt(xml), "xml", theme="ansi_dark"),
                "",
                checks.render(),
                f"[dim]whole file: {xml_path}[/]",
            ),
            title="Domain XML of cleanroom-node (the parts SGX adds)",
        )
    )

    with console.status("Later that week: a resize and a deletion…"):
        clock.advance_to(RESIZE_AT_HOURS)
        servers["enclave-1"] = _resize(cloud, servers["enclave-1"], flavor_ids["sgx.medium"])
        clock.advance_to(DELETE_AT_HOURS)
        del clock.watched["enclave-3"]  # its deletion is stamped before it is gone
        cloud._delete_server(servers["enclave-3"])
        cloud._wait_until_deleted(servers["enclave-3"])
        clock.advance_to(WEEK_HOURS)
    console.print(
        f"Hour {RESIZE_AT_HOURS}: enclave-1 resized sgx.small → sgx.medium (64 → 128 MiB "
        f"EPC, now on {servers['enclave-1']['OS-EXT-SRV-ATTR:host']}); hour "
        f"{DELETE_AT_HOURS}: enclave-3 deleted; the week ends at hour {WEEK_HOURS}."
    )
    cloud.usage_window = (clock.start, clock.now)
    # What Nova's services logged (INFO and up), for a server that ended in
    # ERROR: its fault says what failed, the log says why.
    log_path = workdir / "nova.log"
    log_path.write_text(cloud.stdlog.logger.output)
    return {
        "servers": {name: _server_summary(s) for name, s in servers.items()},
        "log": str(log_path),
        "epc_used_mb": {h: cloud.epc_usage(h) for h, spec in HOSTS.items() if spec},
        "domain_xml": str(xml_path),
        "libvirt_checks": checks.results,
    }


def _server_summary(server: dict) -> dict[str, Any]:
    """Status and host; for a server in ERROR, Nova's fault (why it failed)."""
    summary = {"status": server["status"], "host": server.get("OS-EXT-SRV-ATTR:host")}
    if server["status"] == "ERROR":
        summary["fault"] = (server.get("fault") or {}).get("message", "?")
    return summary


class SimulatedClock:
    """The in-process cloud's clock (oslo ``timeutils.utcnow``), moved by hand.

    Nova stamps launches, deletions and migrations with ``timeutils.utcnow()``,
    so moving it lets the demo play a week of operations in seconds.  The
    cloud must have been started with a long ``service_down_time``, or its
    services would look dead after a jump.
    """

    def __init__(self, cloud: Any) -> None:
        from oslo_utils import timeutils

        real_now = timeutils.utcnow()
        self.start = (real_now - dt.timedelta(days=8)).replace(microsecond=0)
        self.now = self.start
        self.cloud = cloud
        self.watched: dict[str, dict] = {}  # servers whose records must settle first
        patcher = mock.patch.object(timeutils, "utcnow", side_effect=self._utcnow)
        patcher.start()
        cloud.addCleanup(patcher.stop)

    def _utcnow(self, with_timezone: bool = False) -> dt.datetime:
        return self.now.replace(tzinfo=dt.UTC) if with_timezone else self.now

    def advance_to(self, hours: float) -> None:
        """Move to ``hours`` once Nova has finished stamping what happened so far.

        A server turns ACTIVE (or VERIFY_RESIZE) a moment before Nova records the
        finish of the compute step that did it (``wrap_instance_event`` runs after
        the step returns), and that finish is when usage accounting starts charging
        the new size: moved in between, the clock stamped a build at the next hour
        (enclave-3 charged 96 h instead of 120 in one CI run)."""
        for server in self.watched.values():
            _wait_for_finished_events(self.cloud, server)
        self.now = max(self.now, self.start + dt.timedelta(hours=hours))


def _wait_for_finished_events(cloud: Any, server: dict, attempts: int = 200) -> None:
    """Wait until every event of every action Nova recorded for ``server`` has finished."""
    api = cloud.admin_api
    for _ in range(attempts):
        actions = api.get_instance_actions(server["id"])
        if all(
            event.get("finish_time")
            for action in actions
            for event in api.get_instance_action_details(server["id"], action["request_id"])[
                "events"
            ]
        ):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Nova did not finish recording the actions of server {server['id']}")


def _resize(cloud: Any, server: dict, flavor_id: str) -> dict:
    # The fake hosts have no instance directories to rename; Nova's own resize
    # tests stub the same call.
    with mock.patch("os.rename"):
        cloud.api.post_server_action(server["id"], {"resize": {"flavorRef": flavor_id}})
        cloud._wait_for_state_change(server, "VERIFY_RESIZE")
        cloud.api.post_server_action(server["id"], {"confirmResize": None})
        return cloud._wait_for_state_change(server, "ACTIVE")


def _servers_table(servers: dict[str, dict]) -> Table:
    table = Table(title="Where each server landed")
    for column in ("server", "flavor", "EPC MiB", "status", "host / reason"):
        table.add_column(column)
    flavor_of = {name: flavor for _, name, flavor in SERVERS}
    for name, server in servers.items():
        epc = FLAVORS[flavor_of[name]][0]
        if server["status"] == "ACTIVE":
            where, style = server["OS-EXT-SRV-ATTR:host"], "green"
        else:
            where, style = server.get("fault", {}).get("message", "?"), "red"
        table.add_row(
            name, flavor_of[name], str(epc or "–"), f"[{style}]{server['status']}[/]", where
        )
    return table


def _hosts_table(cloud: Any) -> Table:
    table = Table(title="EPC per host (from Placement)")
    for column in ("host", "SGX traits", "EPC total", "used", "free"):
        table.add_column(column, justify="right" if column[0] in "Euf" else "left")
    for host in HOSTS:
        inventory = cloud.epc_inventory(host)
        traits = sorted(
            t.removeprefix("CUSTOM_").removeprefix("HW_CPU_X86_")
            for t in cloud.traits(host) & set(resources.SGX_TRAITS)
        )
        if not inventory:
            table.add_row(host, "[dim]none[/]", "–", "–", "–")
            continue
        used = cloud.epc_usage(host)
        free = inventory["total"] - inventory["reserved"] - used
        table.add_row(
            host, ", ".join(traits), f"{inventory['total']} MiB", f"{used} MiB", f"{free} MiB"
        )
    return table


def _try_live_migration(cloud: Any, server: dict) -> str:
    from nova.tests.functional.api import client

    try:
        cloud.admin_api.post_server_action(
            server["id"], {"os-migrateLive": {"host": None, "block_migration": "auto"}}
        )
    except client.OpenStackApiException as exc:
        import json

        body = json.loads(exc.response.text)
        fault = next(iter(body.values()))
        return f"HTTP {fault['code']}: {fault['message']}"
    return "[red]accepted — this should not happen for an SGX server[/]"


def _excerpt(xml: str) -> str:
    """The lines of the domain XML that SGX adds or needs."""
    keep, inside = [], False
    for line in xml.splitlines():
        stripped = line.strip()
        if stripped.startswith(("<numa>", "<memory model=")):
            inside = True
        if inside:
            keep.append(line)
            inside = not stripped.startswith(("</numa>", "</memory>"))
        elif stripped.startswith(("<maxMemory", "<memory>", "<vcpu", '<feature name="sgx')):
            keep.append(line)
    return "\n".join(keep)


class _LibvirtChecks:
    def __init__(self) -> None:
        self.results: dict[str, str] = {}

    def render(self) -> Table:
        table = Table(show_header=False, box=None)
        for check, result in self.results.items():
            style = "green" if result.startswith("ok") else "yellow"
            table.add_row(check, f"[{style}]{result}[/]")
        return table


def _libvirt_checks(path: Path) -> _LibvirtChecks:
    checks = _LibvirtChecks()
    commands = {
        "virt-xml-validate (libvirt RNG schema)": ["virt-xml-validate", str(path), "domain"],
        "virsh -c test:///default define (libvirt parser)": [
            "virsh",
            "-c",
            "test:///default",
            "define",
            str(path),
        ],
    }
    for label, argv in commands.items():
        if not shutil.which(argv[0]):
            checks.results[label] = "not installed here"
            continue
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        checks.results[label] = (
            "ok" if done.returncode == 0 else f"FAILED: {done.stderr.strip()[:200]}"
        )
    return checks
