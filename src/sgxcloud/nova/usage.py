"""EPC MB-hours per server and project, fetched from Nova, beside Nova's usage.

For a window ``[start, end)`` (the end clipped to "now", as Nova does) every
server that may have lived in it is found from the server list — live servers
plus every server changed since ``start`` (Nova includes deleted ones when
``changes-since`` is given) — and its EPC timeline is built from records Nova
never rewrites: instance actions with their events, resize/migration records
and the termination time (:func:`sgxcloud.nova.accounting.timeline_from_history`).
Nova's ``os-simple-tenant-usage`` rows are not used for EPC: Nova resets
``launched_at`` at every resize, revert, rebuild, evacuation, unshelve and
rescue and then leaves the server out of windows before that moment, so its
rows for a past window change after the fact.

The CPU, RAM and disk totals are Nova's own, passed through unchanged so they
reconcile with ``openstack usage show``; each server row carries Nova's
hours beside the hours the timeline says it held its resources, and
``nova_hours_differ`` where they disagree (see docs/operations/usage.md).

Everything is read through an ``openstack.connection.Connection``
(openstacksdk) with admin rights.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgxcloud.nova.accounting import (
    CREATE,
    MOVES,
    REVERT,
    SHELVE,
    SHELVE_OFFLOAD,
    UNSHELVE,
    ActionRecord,
    EventRecord,
    MigrationRecord,
    Timeline,
    as_utc,
    needs_migrations,
    timeline_from_history,
)
from sgxcloud.nova.errors import UsageError
from sgxcloud.nova.requirements import sgx_request_from_extra_specs

__all__ = ["ProjectEpcUsage", "ServerEpcUsage", "UsageError", "project_usage", "usages"]


# Actions whose events the timeline reads (the others change nothing it counts).
_TIMED_ACTIONS = {CREATE, REVERT, SHELVE, SHELVE_OFFLOAD, UNSHELVE, *MOVES}
# Nova's hours and the timeline's are both from the same events, seconds
# apart at most; a larger gap means Nova's row left part of the life out.
_NOVA_TOLERANCE_HOURS = 1 / 60


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEpcUsage:
    """One server's usage row: EPC from its timeline, Nova's figures beside it."""

    server_id: str
    name: str
    project_id: str
    flavor: str
    hours: float  # Nova's (0 when Nova has no row for the server in the window)
    vcpus: int
    memory_mb: int
    local_gb: int
    state: str
    epc_mb: int  # current size
    timeline: Timeline
    epc_mb_hours: float
    held_hours: float  # hours inside the window the server held its resources
    epc_exact: bool = True

    @property
    def nova_hours_differ(self) -> bool:
        """Nova's hours leave out (or add) part of what the server held."""
        return abs(self.hours - self.held_hours) > _NOVA_TOLERANCE_HOURS

    @property
    def notes(self) -> tuple[str, ...]:
        return self.timeline.notes


@dataclass
class ProjectEpcUsage:
    """A project's usage in a window: Nova's totals, unchanged, plus EPC MB-hours."""

    project_id: str
    start: dt.datetime
    stop: dt.datetime
    total_hours: float = 0.0
    total_vcpus_usage: float = 0.0
    total_memory_mb_usage: float = 0.0
    total_local_gb_usage: float = 0.0
    servers: list[ServerEpcUsage] = field(default_factory=list)

    @property
    def epc_mb_hours(self) -> float:
        # Summed exactly, then converted: a partition of windows adds up.
        total = sum(s.timeline.mb_microseconds(self.start, self.stop) for s in self.servers)
        return total / 3_600_000_000

    @property
    def sgx_servers(self) -> list[ServerEpcUsage]:
        return [s for s in self.servers if s.epc_mb or any(p.epc_mb for p in s.timeline.periods)]

    @property
    def nova_rows_differ(self) -> bool:
        return any(s.nova_hours_differ for s in self.servers)

    def epc_mb_hours_per_day(self) -> dict[dt.date, float]:
        """EPC MB-hours split by UTC calendar day (for charts)."""
        days: dict[dt.date, float] = {}
        day = self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < self.stop:
            lo, hi = max(day, self.start), min(day + dt.timedelta(days=1), self.stop)
            days[day.date()] = sum(s.timeline.mb_hours(lo, hi) for s in self.servers)
            day += dt.timedelta(days=1)
        return days


# -- fetching through openstacksdk -------------------------------------------


def project_usage(
    conn: Any,
    project_id: str,
    start: dt.datetime,
    end: dt.datetime,
    now: dt.datetime | None = None,
) -> ProjectEpcUsage:
    """One project's usage, as ``openstack usage show`` sees it, plus EPC.

    ``conn`` is an ``openstack.connection.Connection`` with admin rights
    (deleted servers, instance actions and migrations are admin views).
    """
    period_start, period_stop = _window(start, end, now)
    usage = conn.compute.get_usage(project_id, start=_naive(start), end=_naive(end))
    catalog = FlavorCatalog.from_cloud(conn)
    servers = _servers(conn, period_start, project_id)
    return _project(conn, project_id, usage, servers, catalog, period_start, period_stop)


def usages(
    conn: Any, start: dt.datetime, end: dt.datetime, now: dt.datetime | None = None
) -> list[ProjectEpcUsage]:
    """Every project's usage, as ``openstack usage list`` sees it, plus EPC.

    A project appears when Nova lists it or when one of its servers held EPC
    in the window (Nova leaves out a project whose only server was resized
    after the window).
    """
    period_start, period_stop = _window(start, end, now)
    catalog = FlavorCatalog.from_cloud(conn)
    # Nova only lists servers for detailed=1 (a boolean True is sent as "True").
    nova = {
        u.project_id: u
        for u in conn.compute.usages(start=_naive(start), end=_naive(end), detailed=1)
    }
    by_project: dict[str, dict[str, Any]] = {}
    for server_id, server in _servers(conn, period_start, None).items():
        by_project.setdefault(server.project_id, {})[server_id] = server
    result = []
    for project_id in sorted(set(nova) | set(by_project)):
        servers = by_project.get(project_id, {})
        project = _project(
            conn, project_id, nova.get(project_id), servers, catalog, period_start, period_stop
        )
        if project.servers or project_id in nova:
            result.append(project)
    return result


def _utcnow() -> dt.datetime:
    # oslo's clock: the same "now" Nova uses (and tests can move).
    from oslo_utils import timeutils

    now = as_utc(timeutils.utcnow())
    assert now is not None
    return now


def _window(
    start: dt.datetime, end: dt.datetime, now: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime]:
    """The window as counted: the end clipped to "now", as Nova clips it."""
    period_start, period_stop = as_utc(start), as_utc(end)
    assert period_start is not None and period_stop is not None
    current = as_utc(now) if now is not None else _utcnow()
    assert current is not None
    return period_start, max(period_start, min(period_stop, current))


def _naive(value: dt.datetime) -> dt.datetime:
    # Nova parses the query without an offset and treats it as UTC.
    aware = as_utc(value)
    assert aware is not None
    return aware.replace(tzinfo=None)


def _servers(conn: Any, since: dt.datetime, project_id: str | None) -> dict[str, Any]:
    """Every server that may have lived in a window starting at ``since``.

    Live servers, plus every server changed since then: with ``changes-since``
    Nova includes deleted servers, and a server deleted inside or after the
    window was changed (deleted) after its start.
    """
    query: dict[str, Any] = {"all_projects": True}
    if project_id is not None:
        query["project_id"] = project_id
    found: dict[str, Any] = {}
    for server in conn.compute.servers(details=True, **query):
        found[server.id] = server
    changed = conn.compute.servers(details=True, changes_since=_naive(since).isoformat(), **query)
    for server in changed:
        found.setdefault(server.id, server)
    return found


def _project(
    conn: Any,
    project_id: str,
    usage: Any,
    servers: Mapping[str, Any],
    catalog: FlavorCatalog,
    period_start: dt.datetime,
    period_stop: dt.datetime,
) -> ProjectEpcUsage:
    result = ProjectEpcUsage(project_id=project_id, start=period_start, stop=period_stop)
    rows: dict[str, Mapping[str, Any]] = {}
    if usage is not None and getattr(usage, "total_hours", None) is not None:
        result.total_hours = usage.total_hours or 0.0
        result.total_vcpus_usage = usage.total_vcpus_usage or 0.0
        result.total_memory_mb_usage = usage.total_memory_mb_usage or 0.0
        result.total_local_gb_usage = usage.total_local_gb_usage or 0.0
        rows = {_get(r)["instance_id"]: _get(r) for r in usage.server_usages or []}
    for server_id in sorted(set(servers) | set(rows)):
        row = _server_usage(
            conn, server_id, servers.get(server_id), rows.get(server_id), catalog,
            period_start, period_stop,
        )  # fmt: skip
        if row.held_hours > 0 or server_id in rows:
            result.servers.append(row)
    return result


def _get(row: Any) -> Mapping[str, Any]:
    return row if isinstance(row, Mapping) else row.to_dict()


def _server_usage(
    conn: Any,
    server_id: str,
    server: Any,
    row: Mapping[str, Any] | None,
    catalog: FlavorCatalog,
    period_start: dt.datetime,
    period_stop: dt.datetime,
) -> ServerEpcUsage:
    row = row or {}
    flavor = getattr(server, "flavor", None)
    extra_specs = getattr(flavor, "extra_specs", None) or {}
    current = sgx_request_from_extra_specs(extra_specs).epc_mb
    timeline = _timeline(conn, server_id, server, current, catalog, period_start)
    return ServerEpcUsage(
        server_id=server_id,
        name=row.get("name") or getattr(server, "name", None) or "",
        project_id=row.get("tenant_id") or getattr(server, "project_id", None) or "",
        flavor=row.get("flavor") or _flavor_name(flavor),
        hours=row.get("hours") or 0.0,
        vcpus=row.get("vcpus") or getattr(flavor, "vcpus", None) or 0,
        memory_mb=row.get("memory_mb") or getattr(flavor, "ram", None) or 0,
        local_gb=row.get("local_gb") or getattr(flavor, "disk", None) or 0,
        state=row.get("state") or getattr(server, "vm_state", None) or "",
        epc_mb=current,
        timeline=timeline,
        epc_mb_hours=timeline.mb_hours(period_start, period_stop),
        held_hours=timeline.held_hours(period_start, period_stop),
        epc_exact=timeline.exact,
    )


def _flavor_name(flavor: Any) -> str:
    return getattr(flavor, "original_name", None) or getattr(flavor, "name", None) or ""


def _timeline(
    conn: Any,
    server_id: str,
    server: Any,
    current: int,
    catalog: FlavorCatalog,
    period_start: dt.datetime,
) -> Timeline:
    if server is None:
        return Timeline((), False, ("the server is not in Nova's server list",))
    terminated = as_utc(getattr(server, "terminated_at", None))
    if terminated is not None and terminated < period_start:
        return Timeline(())  # gone before the window: nothing to fetch
    actions = _actions(conn, server_id)
    migrations = _migrations(conn, server_id) if needs_migrations(actions) else []
    timeline = timeline_from_history(actions, migrations, current, catalog.epc_by_id, terminated)
    if migrations and not catalog.consistent_with(getattr(server, "flavor", None), migrations):
        note = "flavor ids in the migration records do not match the flavor list"
        return Timeline(timeline.periods, False, (*timeline.notes, note))
    return timeline


def _actions(conn: Any, server_id: str) -> list[ActionRecord]:
    records = []
    for action in conn.compute.server_actions(server_id):
        start = as_utc(action.start_time)
        assert start is not None
        events: tuple[EventRecord, ...] = ()
        if action.action in _TIMED_ACTIONS:
            detail = conn.compute.get_server_action(action.request_id, server_id)
            events = tuple(
                EventRecord(e.get("event") or "", as_utc(e.get("finish_time")), e.get("result"))
                for e in (_get(event) for event in detail.events or [])
            )
        records.append(ActionRecord(action.action, start, events))
    return records


def _migrations(conn: Any, server_id: str) -> list[MigrationRecord]:
    records = []
    for migration in conn.compute.migrations(server_id=server_id):
        created = as_utc(migration.created_at)
        assert created is not None
        records.append(
            MigrationRecord(
                created,
                migration.status,
                migration.old_flavor_id,
                migration.new_flavor_id,
                migration.migration_type or "resize",
            )
        )
    return records


_DONE_MIGRATIONS = {"finished", "confirming", "confirmed", "reverting", "reverted"}


@dataclass
class FlavorCatalog:
    """EPC size per flavor, by Nova's internal flavor id (what migrations record).

    The compute API never shows internal ids, but lists flavors sorted by
    them (``sort_key=id``).  Internal ids count up from 1 and are never
    reused, so position + 1 is the id as long as no flavor was ever deleted;
    :meth:`consistent_with` checks that against each resized server's current
    flavor, and a mismatch marks the server's EPC figure as not exact.
    """

    epc_by_id: dict[int, int]
    name_by_id: dict[int, str]

    @classmethod
    def from_cloud(cls, conn: Any) -> FlavorCatalog:
        flavors = list(
            conn.compute.flavors(details=True, is_public=None, sort_key="id", sort_dir="asc")
        )
        epc = {}
        names = {}
        for position, flavor in enumerate(flavors, start=1):
            epc[position] = sgx_request_from_extra_specs(flavor.extra_specs or {}).epc_mb
            names[position] = flavor.name
        return cls(epc, names)

    def consistent_with(self, flavor: Any, migrations: Sequence[MigrationRecord]) -> bool:
        """The latest finished move's flavor (new, or old if reverted) is the current one."""
        done = [m for m in migrations if m.status in _DONE_MIGRATIONS]
        if not done or flavor is None:
            return True
        latest = max(done, key=lambda m: m.created_at)
        wanted = latest.old_flavor_id if latest.status == "reverted" else latest.new_flavor_id
        name = _flavor_name(flavor)
        return wanted in self.name_by_id and self.name_by_id[wanted] == name
