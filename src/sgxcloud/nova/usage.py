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

The computation (:func:`hours_for`, :func:`epc_mb_hours`, :func:`epc_spans`)
is pure and works on plain records; :func:`project_usage` and
:func:`usages` fetch those records through an ``openstack.connection
.Connection`` (openstacksdk) with admin rights.  The CPU, RAM and disk figures
are Nova's own numbers, passed through unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sgxcloud.errors import SgxcloudError
from sgxcloud.nova import resources
from sgxcloud.nova.requirements import sgx_request_from_extra_specs

UTC = dt.UTC

# Instance actions that change the flavor a server runs with, and the
# compute-side event whose finish is the moment the guest runs at its new size
# (Nova sets ``launched_at`` in that same step).
_RESIZE = "resize"
_REVERT = "revertResize"
_FINISH_EVENT = {_RESIZE: "compute_finish_resize", _REVERT: "compute_finish_revert_resize"}
_CREATE = "create"
_BUILD_EVENT = "compute__do_build_and_run_instance"
_DONE_MIGRATIONS = {"finished", "confirming", "confirmed", "reverting", "reverted"}


class UsageError(SgxcloudError):
    """Usage could not be computed from what the cloud returned."""

    exit_code = 1


# -- the arithmetic ---------------------------------------------------------


def as_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    """A timezone-aware UTC datetime from Nova's ISO strings or naive datetimes.

    Nova's API reports UTC without an offset; naive values are taken as UTC.
    """
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def hours_for(
    launched_at: dt.datetime | None,
    terminated_at: dt.datetime | None,
    period_start: dt.datetime,
    period_stop: dt.datetime,
) -> float:
    """Hours of ``[launched_at, terminated_at)`` inside the window, as Nova counts them.

    Mirrors ``SimpleTenantUsageController._hours_for`` clause by clause (a
    property test checks it against Nova's own function): nothing before
    launch, nothing after termination, nothing for a server never launched.
    """
    if terminated_at is not None and terminated_at < period_start:
        return 0
    if launched_at is not None and launched_at > period_stop:
        return 0
    if launched_at is None:
        return 0
    start = max(launched_at, period_start)
    stop = min(period_stop, terminated_at) if terminated_at is not None else period_stop
    return (stop - start).total_seconds() / 3600.0


@dataclass(frozen=True)
class EpcSpan:
    """From ``start`` on (until the next span or termination) the server had ``epc_mb``."""

    start: dt.datetime
    epc_mb: int


def epc_mb_hours(
    spans: Sequence[EpcSpan],
    terminated_at: dt.datetime | None,
    period_start: dt.datetime,
    period_stop: dt.datetime,
) -> float:
    """Σ size × Nova-clipped hours over the spans of one server's life."""
    total = 0.0
    for index, span in enumerate(spans):
        end = spans[index + 1].start if index + 1 < len(spans) else terminated_at
        if end is not None and terminated_at is not None:
            end = min(end, terminated_at)
        total += span.epc_mb * hours_for(span.start, end, period_start, period_stop)
    return total


# -- what the cloud tells us ------------------------------------------------


@dataclass(frozen=True)
class ActionRecord:
    """One instance action: ``action`` name, when it was asked for, when its
    compute step finished (``None`` when the events are not visible)."""

    action: str
    start_time: dt.datetime
    finished_at: dt.datetime | None = None


@dataclass(frozen=True)
class MigrationRecord:
    """A resize's migration record; flavor ids are Nova's internal ids."""

    created_at: dt.datetime
    status: str
    old_flavor_id: int | None
    new_flavor_id: int | None


def epc_spans(
    launched_at: dt.datetime | None,
    current_epc_mb: int,
    actions: Sequence[ActionRecord],
    migrations: Sequence[MigrationRecord],
    epc_by_flavor_id: Mapping[int, int],
) -> tuple[tuple[EpcSpan, ...], bool]:
    """The server's EPC over time and whether every size is known for sure.

    ``launched_at`` is Nova's (reset by each resize/revert), so the last span
    always starts exactly where Nova starts counting.  Earlier spans need the
    create/resize records; a size that cannot be resolved is taken as the
    current one and the result is flagged as not exact.
    """
    if launched_at is None:
        return (), True
    changes = sorted((a for a in actions if a.action in _FINISH_EVENT), key=lambda a: a.start_time)
    # A change asked for after the current launch has not finished (yet).
    changes = [a for a in changes if a.start_time <= launched_at]
    if not changes:
        return (EpcSpan(launched_at, current_epc_mb),), True
    resizes = sorted(
        (m for m in migrations if m.status in _DONE_MIGRATIONS), key=lambda m: m.created_at
    )
    exact = True
    # Walk back from the present: before each change the server had the size
    # the change moved away from.
    sizes = [current_epc_mb]
    resize_index = sum(1 for a in changes if a.action == _RESIZE) - 1
    for change in reversed(changes):
        if change.action == _RESIZE:
            record = resizes[resize_index] if 0 <= resize_index < len(resizes) else None
            before = epc_by_flavor_id.get(record.old_flavor_id) if record else None
            resize_index -= 1
        else:  # a revert restores the size the reverted resize had left
            record = resizes[resize_index] if 0 <= resize_index < len(resizes) else None
            before = epc_by_flavor_id.get(record.new_flavor_id) if record else None
        if before is None:
            exact = False
            before = sizes[-1]
        sizes.append(before)
    sizes.reverse()
    created = _first_launch(actions)
    if created is None:
        exact = False
        return (EpcSpan(launched_at, current_epc_mb),), exact
    starts = [created] + [c.finished_at or c.start_time for c in changes[:-1]] + [launched_at]
    return tuple(EpcSpan(s, size) for s, size in zip(starts, sizes, strict=True)), exact


def _first_launch(actions: Iterable[ActionRecord]) -> dt.datetime | None:
    creates = [a for a in actions if a.action == _CREATE]
    if not creates:
        return None
    first = min(creates, key=lambda a: a.start_time)
    return first.finished_at or first.start_time


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
    if any(a.action in _FINISH_EVENT for a in actions):
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
        wanted = _FINISH_EVENT.get(action.action) or (
            _BUILD_EVENT if action.action == _CREATE else None
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
        done = [m for m in migrations if m.status in _DONE_MIGRATIONS]
        if not done or flavor is None:
            return True
        latest = max(done, key=lambda m: m.created_at)
        reverted = latest.status == "reverted"
        wanted = latest.old_flavor_id if reverted else latest.new_flavor_id
        name = getattr(flavor, "original_name", None) or getattr(flavor, "name", None)
        return wanted in self.name_by_id and self.name_by_id[wanted] == name


# -- EPC capacity per compute node (Placement) --------------------------------


@dataclass(frozen=True)
class HostEpc:
    """One compute node's EPC as Placement accounts it."""

    name: str
    uuid: str
    total_mb: int
    reserved_mb: int
    used_mb: int
    traits: tuple[str, ...]
    sgx_servers: int

    @property
    def free_mb(self) -> int:
        # EPC is never over-committed (allocation ratio 1.0).
        return max(self.total_mb - self.reserved_mb - self.used_mb, 0)


def host_epc(conn: Any) -> list[HostEpc]:
    """Every resource provider with EPC inventory or the SGX trait, by name."""
    placement = conn.placement
    providers = _placement_get(placement, "/resource_providers", "1.14")["resource_providers"]
    hosts = []
    for provider in providers:
        uuid = provider["uuid"]
        base = f"/resource_providers/{uuid}"
        inventory = _placement_get(placement, f"{base}/inventories", "1.14")["inventories"]
        traits = _placement_get(placement, f"{base}/traits", "1.14")["traits"]
        epc = inventory.get(resources.EPC_RESOURCE_CLASS)
        if epc is None and resources.TRAIT_SGX not in traits:
            continue
        used = _placement_get(placement, f"{base}/usages", "1.14")["usages"]
        allocations = _placement_get(placement, f"{base}/allocations", "1.14")["allocations"]
        sgx_servers = sum(
            1
            for alloc in allocations.values()
            if alloc["resources"].get(resources.EPC_RESOURCE_CLASS, 0) > 0
        )
        hosts.append(
            HostEpc(
                name=provider["name"],
                uuid=uuid,
                total_mb=(epc or {}).get("total", 0),
                reserved_mb=(epc or {}).get("reserved", 0),
                used_mb=used.get(resources.EPC_RESOURCE_CLASS, 0),
                traits=tuple(t for t in resources.SGX_TRAITS if t in traits),
                sgx_servers=sgx_servers,
            )
        )
    return sorted(hosts, key=lambda h: h.name)


def _placement_get(placement: Any, path: str, microversion: str) -> dict[str, Any]:
    response = placement.get(path, microversion=microversion)
    if response.status_code != 200:
        raise UsageError(f"Placement GET {path} failed with HTTP {response.status_code}")
    return response.json()


# -- charts ---------------------------------------------------------------------


def write_chart(usages: Sequence[ProjectEpcUsage], path: str, by: str = "server") -> str:
    """A PNG bar chart of EPC MB-hours per server or per day; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    if by == "server":
        labels = [
            f"{s.name or s.server_id[:8]} ({s.project_id[:8]})" for u in usages for s in u.servers
        ]
        values = [s.epc_mb_hours for u in usages for s in u.servers]
        title = "EPC MB-hours per server"
    elif by == "day":
        days: dict[dt.date, float] = {}
        for u in usages:
            for day, value in u.epc_mb_hours_per_day().items():
                days[day] = days.get(day, 0.0) + value
        labels = [d.isoformat() for d in sorted(days)]
        values = [days[d] for d in sorted(days)]
        title = "EPC MB-hours per day (UTC)"
    else:
        raise UsageError(f"chart by {by!r}: choose 'server' or 'day'")
    if usages:
        start = min(u.start for u in usages).strftime("%Y-%m-%d %H:%M")
        stop = max(u.stop for u in usages).strftime("%Y-%m-%d %H:%M")
        title += f"\n{start} to {stop} UTC"
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(labels) + 2), 4.5))
    try:
        axes.bar(range(len(values)), values, color="#3b6ea5")
        axes.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        axes.set_ylabel("EPC MB-hours")
        axes.set_title(title)
        for index, value in enumerate(values):
            axes.annotate(f"{value:.2f}", (index, value), ha="center", va="bottom", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    except OSError as exc:
        raise UsageError(f"cannot write chart {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return path
