"""EPC MB-hours arithmetic: pure functions over plain records, no I/O.

:mod:`sgxcloud.nova.usage` fetches the records from Nova; this module only
counts.  Keeping it pure lets property tests drive it with generated
lifecycles and windows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

UTC = dt.UTC

# Instance actions that change the flavor a server runs with, and the
# compute-side event whose finish is the moment the guest runs at its new size
# (Nova sets ``launched_at`` in that same step).
_RESIZE = "resize"
_REVERT = "revertResize"
FINISH_EVENT = {_RESIZE: "compute_finish_resize", _REVERT: "compute_finish_revert_resize"}
CREATE = "create"
BUILD_EVENT = "compute__do_build_and_run_instance"
DONE_MIGRATIONS = {"finished", "confirming", "confirmed", "reverting", "reverted"}


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
    changes = sorted((a for a in actions if a.action in FINISH_EVENT), key=lambda a: a.start_time)
    # A change asked for after the current launch has not finished (yet).
    changes = [a for a in changes if a.start_time <= launched_at]
    if not changes:
        return (EpcSpan(launched_at, current_epc_mb),), True
    sizes, exact = _sizes_before_changes(changes, current_epc_mb, migrations, epc_by_flavor_id)
    created = _first_launch(actions)
    if created is None:
        exact = False
        return (EpcSpan(launched_at, current_epc_mb),), exact
    starts = [created] + [c.finished_at or c.start_time for c in changes[:-1]] + [launched_at]
    return tuple(EpcSpan(s, size) for s, size in zip(starts, sizes, strict=True)), exact


def _sizes_before_changes(
    changes: Sequence[ActionRecord],
    current_epc_mb: int,
    migrations: Sequence[MigrationRecord],
    epc_by_flavor_id: Mapping[int, int],
) -> tuple[list[int], bool]:
    """The size before each change and the current one, oldest first.

    Walks back from the present: before each change the server had the size
    the change moved away from (a revert restores the size the reverted
    resize had left).
    """
    resizes = sorted(
        (m for m in migrations if m.status in DONE_MIGRATIONS), key=lambda m: m.created_at
    )
    exact = True
    sizes = [current_epc_mb]
    resize_index = sum(1 for a in changes if a.action == _RESIZE) - 1
    for change in reversed(changes):
        record = resizes[resize_index] if 0 <= resize_index < len(resizes) else None
        if change.action == _RESIZE:
            before = epc_by_flavor_id.get(record.old_flavor_id) if record else None
            resize_index -= 1
        else:
            before = epc_by_flavor_id.get(record.new_flavor_id) if record else None
        if before is None:
            exact = False
            before = sizes[-1]
        sizes.append(before)
    sizes.reverse()
    return sizes, exact


def _first_launch(actions: Iterable[ActionRecord]) -> dt.datetime | None:
    creates = [a for a in actions if a.action == CREATE]
    if not creates:
        return None
    first = min(creates, key=lambda a: a.start_time)
    return first.finished_at or first.start_time


