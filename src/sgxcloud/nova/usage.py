"""EPC MB-hours: what each server's enclave page cache cost, beside Nova's usage.

Nova's ``os-simple-tenant-usage`` already counts, per server, the hours it ran
inside a window (``_hours_for``: from ``max(start, launched_at)`` to
``min(end, terminated_at)``).  EPC MB-hours are the EPC size of the server's
flavor (``resources:CUSTOM_SGX_EPC_MB``) times those hours, with one
refinement: a server resized to a flavor with another EPC size is charged by
size over time.  Nova resets ``launched_at`` when a resize (or revert)
finishes, so its own hours for such a server only start there; the earlier
part of the server's life is rebuilt from its instance actions (when the
create/resize finished) and migration records (which flavors it moved
between), and charged at the size it had then.

The computation lives in :mod:`sgxcloud.nova.accounting` (pure, plain
records); :func:`project_usage` and
:func:`usages` fetch those records through an ``openstack.connection
.Connection`` (openstacksdk) with admin rights.  The CPU, RAM and disk figures
are Nova's own numbers, passed through unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgxcloud.nova.accounting import (
    BUILD_EVENT,
    CREATE,
    DONE_MIGRATIONS,
    FINISH_EVENT,
    ActionRecord,
    EpcSpan,
    MigrationRecord,
    as_utc,
    epc_mb_hours,
    epc_spans,
)
from sgxcloud.nova.errors import UsageError
from sgxcloud.nova.requirements import sgx_request_from_extra_specs

__all__ = ["ProjectEpcUsage", "ServerEpcUsage", "UsageError", "project_usage", "usages"]


# -- results ------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEpcUsage:
    """One server's usage row: Nova's figures plus EPC."""

    server_id: str
    name: str
    project_id: str
    flavor: str
    hours: float  # Nova's
    vcpus: int
    memory_mb: int
    local_gb: int
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    state: str
    epc_mb: int  # current size
    spans: tuple[EpcSpan, ...]
    epc_mb_hours: float
    epc_exact: bool = True


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
        return sum(s.epc_mb_hours for s in self.servers)

    @property
    def sgx_servers(self) -> list[ServerEpcUsage]:
        return [s for s in self.servers if s.epc_mb or any(x.epc_mb for x in s.spans)]

    def epc_mb_hours_per_day(self) -> dict[dt.date, float]:
        """EPC MB-hours split by UTC calendar day (for charts)."""
        days: dict[dt.date, float] = {}
        day = self.start.replace(hour=0, minute=0, second=0, microsecond=0)
        while day < self.stop:
            lo, hi = max(day, self.start), min(day + dt.timedelta(days=1), self.stop)
            total = sum(epc_mb_hours(s.spans, s.ended_at, lo, hi) for s in self.servers)
            days[day.date()] = total
            day += dt.timedelta(days=1)
        return days


# -- fetching through openstacksdk -------------------------------------------


def project_usage(
    conn: Any, project_id: str, start: dt.datetime, end: dt.datetime
) -> ProjectEpcUsage:
    """One project's usage, as ``openstack usage show`` sees it, plus EPC.

    ``conn`` is an ``openstack.connection.Connection`` with admin rights
    (deleted servers, instance actions and migrations are admin views).
    """
    usage = conn.compute.get_usage(project_id, start=_naive(start), end=_naive(end))
    catalog = FlavorCatalog.from_cloud(conn)
    return _project_from_usage(conn, usage, project_id, start, end, catalog)


def usages(conn: Any, start: dt.datetime, end: dt.datetime) -> list[ProjectEpcUsage]:
    """Every project's usage, as ``openstack usage list`` sees it, plus EPC."""
    catalog = FlavorCatalog.from_cloud(conn)
    result = []
    # Nova only lists servers for detailed=1 (a boolean True is sent as "True").
    for usage in conn.compute.usages(start=_naive(start), end=_naive(end), detailed=1):
        result.append(_project_from_usage(conn, usage, usage.project_id, start, end, catalog))
    return result


def _naive(value: dt.datetime) -> dt.datetime:
    # Nova parses the query without an offset and treats it as UTC.
    aware = as_utc(value)
    assert aware is not None
    return aware.replace(tzinfo=None)


def _project_from_usage(
    conn: Any,
    usage: Any,
    project_id: str,
    start: dt.datetime,
    end: dt.datetime,
    catalog: FlavorCatalog,
) -> ProjectEpcUsage:
    # Nova clips the window's end to "now" and reports the window it used.
    period_start = as_utc(getattr(usage, "start", None)) or as_utc(start)
    period_stop = as_utc(getattr(usage, "stop", None)) or as_utc(end)
    assert period_start is not None and period_stop is not None
    result = ProjectEpcUsage(
        project_id=project_id,
        start=period_start,
        stop=period_stop,
        total_hours=usage.total_hours or 0.0,
        total_vcpus_usage=usage.total_vcpus_usage or 0.0,
        total_memory_mb_usage=usage.total_memory_mb_usage or 0.0,
        total_local_gb_usage=usage.total_local_gb_usage or 0.0,
    )
    rows = list(usage.server_usages or [])
    servers = _servers_by_id(conn, project_id)
    for row in rows:
        result.servers.append(
            _server_usage(conn, _get(row), servers, catalog, period_start, period_stop)
        )
    return result


def _get(row: Any) -> Mapping[str, Any]:
    return row if isinstance(row, Mapping) else row.to_dict()


def _servers_by_id(conn: Any, project_id: str) -> dict[str, Any]:
    """Live and deleted servers of the project, with their embedded flavors."""
    found: dict[str, Any] = {}
    query = {"all_projects": True, "project_id": project_id}
    for server in conn.compute.servers(details=True, **query):
        found[server.id] = server
    for server in conn.compute.servers(details=True, deleted_only=True, **query):
        found.setdefault(server.id, server)
    return found


def _server_usage(
    conn: Any,
    row: Mapping[str, Any],
    servers: Mapping[str, Any],
    catalog: FlavorCatalog,
    period_start: dt.datetime,
    period_stop: dt.datetime,
) -> ServerEpcUsage:
    server_id = row["instance_id"]
    launched_at = as_utc(row.get("started_at"))
    ended_at = as_utc(row.get("ended_at"))
    server = servers.get(server_id)
    flavor = getattr(server, "flavor", None) if server is not None else None
    extra_specs = getattr(flavor, "extra_specs", None) or {}
    current = sgx_request_from_extra_specs(extra_specs).epc_mb
    exact = server is not None
    actions = _actions(conn, server_id) if exact else []
    spans: tuple[EpcSpan, ...]
    if any(a.action in FINISH_EVENT for a in actions):
        migrations = _migrations(conn, server_id)
        spans, exact = epc_spans(launched_at, current, actions, migrations, catalog.epc_by_id)
        exact = exact and catalog.consistent_with(flavor, migrations)
    else:
        spans = (EpcSpan(launched_at, current),) if launched_at else ()
    return ServerEpcUsage(
        server_id=server_id,
        name=row.get("name") or "",
        project_id=row.get("project_id") or row.get("tenant_id") or "",
        flavor=row.get("flavor") or "",
        hours=row.get("hours") or 0.0,
        vcpus=row.get("vcpus") or 0,
        memory_mb=row.get("memory_mb") or 0,
        local_gb=row.get("local_gb") or 0,
        started_at=launched_at,
        ended_at=ended_at,
        state=row.get("state") or "",
        epc_mb=current,
        spans=spans,
        epc_mb_hours=epc_mb_hours(spans, ended_at, period_start, period_stop),
        epc_exact=exact,
    )


def _actions(conn: Any, server_id: str) -> list[ActionRecord]:
    records = []
    for action in conn.compute.server_actions(server_id):
        finished = None
        wanted = FINISH_EVENT.get(action.action) or (
            BUILD_EVENT if action.action == CREATE else None
        )
        if wanted:
            detail = conn.compute.get_server_action(action.request_id, server_id)
            for event in detail.events or []:
                event = _get(event)
                if event.get("event") == wanted and event.get("finish_time"):
                    finished = as_utc(event["finish_time"])
        start = as_utc(action.start_time)
        assert start is not None
        records.append(ActionRecord(action.action, start, finished))
    return records


def _migrations(conn: Any, server_id: str) -> list[MigrationRecord]:
    records = []
    for migration in conn.compute.migrations(server_id=server_id, migration_type="resize"):
        created = as_utc(migration.created_at)
        assert created is not None
        records.append(
            MigrationRecord(
                created, migration.status, migration.old_flavor_id, migration.new_flavor_id
            )
        )
    return records


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
        """The latest resize's new flavor is the server's current flavor."""
        done = [m for m in migrations if m.status in DONE_MIGRATIONS]
        if not done or flavor is None:
            return True
        latest = max(done, key=lambda m: m.created_at)
        reverted = latest.status == "reverted"
        wanted = latest.old_flavor_id if reverted else latest.new_flavor_id
        name = getattr(flavor, "original_name", None) or getattr(flavor, "name", None)
        return wanted in self.name_by_id and self.name_by_id[wanted] == name


