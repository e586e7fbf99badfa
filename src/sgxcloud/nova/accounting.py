"""EPC MB-hours arithmetic: pure functions over plain records, no I/O.

A server's EPC history is a :class:`Timeline`: the periods during which it
held EPC, each with one size.  The charge for a window is the sum over the
periods of ``size × (hours of the period inside the window)`` — an integral,
so it depends only on what happened inside the window, and the charges of
back-to-back windows add up to the charge of the span they cover.  It is
counted exactly, in MiB-microseconds (integers), and turned into MB-hours only
at the end, so additivity holds to the last bit.

:func:`timeline_from_history` builds the timeline from records that Nova never
rewrites (instance actions and their events, resize/migration records, the
server's termination time); :mod:`sgxcloud.nova.usage` fetches them.  Nova's
own ``launched_at`` is not used: Nova resets it at every resize, revert,
rebuild, evacuation, unshelve and rescue, which is why its usage rows change
after the fact.  :func:`hours_for` mirrors Nova's arithmetic only to explain
Nova's CPU/RAM rows beside ours.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

UTC = dt.UTC
_MICROSECONDS_PER_HOUR = 3_600_000_000

# Instance actions and the compute event whose successful finish is the
# moment the change takes effect on the host.  Nova names events
# ``compute_<method>`` (``wrap_instance_event(prefix='compute')``).
CREATE = "create"
BUILD_EVENT = "compute__do_build_and_run_instance"
MOVES = {"resize": "compute_finish_resize", "migrate": "compute_finish_resize"}
REVERT = "revertResize"
REVERT_EVENT = "compute_finish_revert_resize"
CONFIRM = "confirmResize"
SHELVE = "shelve"
SHELVE_EVENT = "compute_shelve_instance"
SHELVE_OFFLOAD = "shelveOffload"
SHELVE_OFFLOAD_EVENT = "compute_shelve_offload_instance"
UNSHELVE = "unshelve"
# Unshelving an offloaded server spawns it again; unshelving one that was
# only shelved (shelved_offload_time > 0, not yet offloaded) starts it.
UNSHELVE_EVENTS = ("compute_unshelve_instance", "compute_start_instance")
# The compute driver records the EPC size a guest is given as an event of the
# action that gave it (create, resize, revert...): "sgxcloud_epc_mb_<MiB>".
# Unlike migration records (soft-deleted with the server), instance actions
# and their events stay visible after the server is deleted.
EPC_EVENT_PREFIX = "sgxcloud_epc_mb_"
# Migration records of resizes and cold migrations (evacuations and live
# migrations keep the flavor).
MOVE_MIGRATION_TYPES = ("resize", "migration")


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
    property test checks it against Nova's own function).  Used only to say
    where Nova's rows differ from the timeline, never to charge EPC.
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


# -- timelines ------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """The server held ``epc_mb`` MiB of EPC from ``start`` to ``end`` (``None``: still)."""

    start: dt.datetime
    end: dt.datetime | None
    epc_mb: int


@dataclass(frozen=True)
class Timeline:
    """One server's EPC over its life; ``exact`` is False when a size was guessed."""

    periods: tuple[Period, ...]
    exact: bool = True
    notes: tuple[str, ...] = ()

    def mb_microseconds(self, start: dt.datetime, stop: dt.datetime) -> int:
        """EPC MiB × microseconds held inside ``[start, stop)`` — exact, additive."""
        return sum(_overlap_mb_us(p, start, stop) for p in self.periods)

    def mb_hours(self, start: dt.datetime, stop: dt.datetime) -> float:
        return self.mb_microseconds(start, stop) / _MICROSECONDS_PER_HOUR

    def held_hours(self, start: dt.datetime, stop: dt.datetime) -> float:
        """Hours inside the window during which the server held its resources."""
        held = sum(_overlap_us(p, start, stop) for p in self.periods)
        return held / _MICROSECONDS_PER_HOUR


def _overlap_us(period: Period, start: dt.datetime, stop: dt.datetime) -> int:
    lo = max(period.start, start)
    hi = stop if period.end is None else min(period.end, stop)
    if hi <= lo:
        return 0
    delta = hi - lo
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _overlap_mb_us(period: Period, start: dt.datetime, stop: dt.datetime) -> int:
    return period.epc_mb * _overlap_us(period, start, stop)


class ChangeKind(enum.Enum):
    HOLD = "hold"  # the guest runs (again) on a host: it holds EPC from now on
    RESIZE = "resize"  # from now on it has another size
    RELEASE = "release"  # it holds no EPC any more (shelved, deleted)


@dataclass(frozen=True)
class Change:
    at: dt.datetime
    kind: ChangeKind
    epc_mb: int | None = None  # HOLD/RESIZE: the size from now on (HOLD: None keeps it)


def timeline_from_changes(
    changes: Sequence[Change], exact: bool = True, notes: tuple[str, ...] = ()
) -> Timeline:
    """Periods of holding EPC at one size, from changes in time order.

    Changes at the same instant apply in the order given (Python's sort is
    stable), so a release and a hold in the same microsecond cost nothing.
    """
    periods: list[Period] = []
    size = 0
    since: dt.datetime | None = None  # holding since, or None
    for change in sorted(changes, key=lambda c: c.at):
        if since is not None and change.kind is not ChangeKind.HOLD:
            if change.at > since:
                periods.append(Period(since, change.at, size))
            since = change.at if change.kind is ChangeKind.RESIZE else None
        elif since is None and change.kind is ChangeKind.HOLD:
            since = change.at
        if change.epc_mb is not None:
            size = change.epc_mb
    if since is not None:
        periods.append(Period(since, None, size))
    return Timeline(tuple(periods), exact, notes)


# -- from Nova's records ------------------------------------------------------------


@dataclass(frozen=True)
class EventRecord:
    """One instance-action event: its name, when it finished, whether it succeeded."""

    event: str
    finish_time: dt.datetime | None
    result: str | None = "Success"

    @property
    def succeeded(self) -> bool:
        return self.finish_time is not None and (self.result or "").lower() == "success"


@dataclass(frozen=True)
class ActionRecord:
    """One instance action: ``action`` name, when it was asked for, its events."""

    action: str
    start_time: dt.datetime
    events: tuple[EventRecord, ...] = ()

    def finished(self, *names: str) -> dt.datetime | None:
        """When the last successful event among ``names`` finished, if any did."""
        times = [e.finish_time for e in self.events if e.event in names and e.succeeded]
        return max(times) if times else None  # type: ignore[type-var]


@dataclass(frozen=True)
class MigrationRecord:
    """A resize or cold migration record; flavor ids are Nova's internal ids."""

    created_at: dt.datetime
    status: str
    old_flavor_id: int | None
    new_flavor_id: int | None
    migration_type: str = "resize"


def recorded_epc_mb(action: ActionRecord) -> int | None:
    """The EPC size the driver recorded in this action, if it did."""
    for event in action.events:
        if event.event.startswith(EPC_EVENT_PREFIX) and event.succeeded:
            size = event.event.removeprefix(EPC_EVENT_PREFIX)
            if size.isdigit():
                return int(size)
    return None


def epc_event_name(epc_mb: int) -> str:
    return f"{EPC_EVENT_PREFIX}{epc_mb}"


def needs_migrations(actions: Sequence[ActionRecord]) -> bool:
    """Whether the server's sizes over time depend on migration records
    (a successful move whose size the driver did not record)."""
    return any(
        a.action in MOVES and a.finished(MOVES[a.action]) and recorded_epc_mb(a) is None
        for a in actions
    )


def timeline_from_history(
    actions: Sequence[ActionRecord],
    migrations: Sequence[MigrationRecord],
    current_epc_mb: int,
    epc_by_flavor_id: Mapping[int, int],
    terminated_at: dt.datetime | None,
) -> Timeline:
    """The server's EPC timeline from records Nova does not rewrite.

    - built: holds EPC from the finish of ``compute__do_build_and_run_instance``;
    - resized / cold-migrated: the new size from the finish of
      ``compute_finish_resize`` (the guest runs at it from then, confirmed or
      not); reverted: the size before, from ``compute_finish_revert_resize``;
    - shelved: nothing from the finish of ``compute_shelve_instance`` (an
      offloaded server holds no EPC; the moment a periodic offload happens is
      not recorded by Nova, so the shelve is the boundary); unshelved: holds
      again from the finish of its compute step;
    - evacuated, rebuilt, stopped, rescued: unchanged (the size is the same and
      Placement keeps the allocation);
    - deleted: nothing from ``terminated_at``.

    Sizes come from the events the compute driver records in each action
    (``sgxcloud_epc_mb_<MiB>``: they survive the server's deletion), else
    from the migration records (old/new flavor) through ``epc_by_flavor_id``;
    the server's current size is authoritative for the last period.  Where
    a size cannot be resolved the current one is used and the timeline is
    marked not exact, with a note saying why.
    """
    ordered = sorted(actions, key=lambda a: a.start_time)
    notes: list[str] = []
    sizes = _move_sizes(ordered, migrations, epc_by_flavor_id, notes)
    created = next((a for a in ordered if a.action == CREATE), None)
    initial = recorded_epc_mb(created) if created is not None else None
    if initial is None:
        initial = sizes.get(-1, current_epc_mb)
    walk = _Walk(size=initial, sizes=sizes, current=current_epc_mb)
    for index, action in enumerate(ordered):
        handler = _HANDLERS.get(action.action)
        if handler is not None:
            handler(walk, index, action)
    if terminated_at is not None:
        walk.changes.append(Change(terminated_at, ChangeKind.RELEASE))
    if ordered and not any(a.action == CREATE for a in ordered):
        notes.append("no create action visible: the build time is unknown")
    if walk.size != current_epc_mb:
        notes.append(
            f"sizes from the migration records end at {walk.size} MiB, the flavor has "
            f"{current_epc_mb} MiB"
        )
    return timeline_from_changes(walk.changes, not notes, tuple(notes))


@dataclass
class _Walk:
    """The state while walking a server's actions in time order."""

    size: int  # the size the guest has now (in the walk)
    sizes: Mapping[int, int]  # size after each move, by action index
    current: int  # the flavor's size today (for moves whose size is unknown)
    before_move: list[int] = field(default_factory=list)  # what a revert goes back to
    changes: list[Change] = field(default_factory=list)


def _on_create(walk: _Walk, index: int, action: ActionRecord) -> None:
    when = action.finished(BUILD_EVENT)
    if when is not None:
        walk.changes.append(Change(when, ChangeKind.HOLD, walk.size))


def _on_move(walk: _Walk, index: int, action: ActionRecord) -> None:
    when = action.finished(MOVES[action.action])
    if when is not None:
        walk.before_move.append(walk.size)
        walk.size = walk.sizes.get(index, walk.current)
        walk.changes.append(Change(when, ChangeKind.RESIZE, walk.size))


def _on_revert(walk: _Walk, index: int, action: ActionRecord) -> None:
    when = action.finished(REVERT_EVENT)
    if when is not None and walk.before_move:
        walk.size = walk.before_move.pop()
        walk.changes.append(Change(when, ChangeKind.RESIZE, walk.size))


def _on_confirm(walk: _Walk, index: int, action: ActionRecord) -> None:
    walk.before_move.clear()


def _at_finish_of(kind: ChangeKind, *events: str) -> Callable[[_Walk, int, ActionRecord], None]:
    def handle(walk: _Walk, index: int, action: ActionRecord) -> None:
        when = action.finished(*events)
        if when is not None:
            walk.changes.append(Change(when, kind))

    return handle


# What each instance action does to the timeline (others change nothing).
_HANDLERS: dict[str, Callable[[_Walk, int, ActionRecord], None]] = {
    CREATE: _on_create,
    **dict.fromkeys(MOVES, _on_move),
    REVERT: _on_revert,
    CONFIRM: _on_confirm,
    # Volume-backed servers are offloaded by the API directly.
    SHELVE: _at_finish_of(ChangeKind.RELEASE, SHELVE_EVENT, SHELVE_OFFLOAD_EVENT),
    SHELVE_OFFLOAD: _at_finish_of(ChangeKind.RELEASE, SHELVE_OFFLOAD_EVENT),
    UNSHELVE: _at_finish_of(ChangeKind.HOLD, *UNSHELVE_EVENTS),
}


def _move_sizes(
    ordered: Sequence[ActionRecord],
    migrations: Sequence[MigrationRecord],
    epc_by_flavor_id: Mapping[int, int],
    notes: list[str],
) -> dict[int, int]:
    """Size after each resize/migrate action (by action index), and ``-1`` key:
    the size before the first one.

    Each move is paired with the first migration record created at or after
    the action was asked for (the conductor creates it while handling the
    action) and before the next move was asked for.
    """
    records = sorted(
        (m for m in migrations if m.migration_type in MOVE_MIGRATION_TYPES),
        key=lambda m: m.created_at,
    )
    moves = [(i, a) for i, a in enumerate(ordered) if a.action in MOVES]
    sizes: dict[int, int] = {}
    used = 0
    for position, (index, action) in enumerate(moves):
        limit = moves[position + 1][1].start_time if position + 1 < len(moves) else None
        record = None
        while used < len(records) and records[used].created_at < action.start_time:
            used += 1
        if used < len(records) and (limit is None or records[used].created_at < limit):
            record = records[used]
            used += 1
        if action.finished(MOVES[action.action]) is None:
            continue  # never took effect: its sizes do not matter
        recorded = recorded_epc_mb(action)
        if recorded is not None:
            sizes[index] = recorded
            continue
        if record is None:
            notes.append(f"no migration record for the {action.action} at {action.start_time}")
            continue
        new = epc_by_flavor_id.get(record.new_flavor_id) if record.new_flavor_id else None
        old = epc_by_flavor_id.get(record.old_flavor_id) if record.old_flavor_id else None
        if new is None or old is None:
            notes.append(f"a flavor of the {action.action} at {action.start_time} is unknown")
            continue
        sizes[index] = new
        sizes.setdefault(-1, old)
    return sizes
