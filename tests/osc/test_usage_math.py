"""EPC MB-hours arithmetic over generated lifecycles and windows.

The properties a bill needs: the figure for a window is what the server held
inside it (checked against an independent minute-by-minute model), windows
that partition a span add up to the span exactly, and the figure for a closed
window is the same whether asked right after it or long after (when Nova
shows more actions, more events and another current flavor).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import types

from hypothesis import given, settings
from hypothesis import strategies as st
from nova.api.openstack.compute.simple_tenant_usage import SimpleTenantUsageController

from sgxcloud.nova.accounting import (
    ActionRecord,
    Change,
    ChangeKind,
    EventRecord,
    MigrationRecord,
    Period,
    Timeline,
    hours_for,
    timeline_from_changes,
    timeline_from_history,
)
from sgxcloud.nova.usage import ProjectEpcUsage, ServerEpcUsage

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, tzinfo=UTC)
H = dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)
US_PER_MIN = 60_000_000

times = st.one_of(
    st.none(),
    st.integers(min_value=-200, max_value=200).map(lambda m: T0 + dt.timedelta(minutes=7 * m)),
)


@given(launched=times, terminated=times, start=st.integers(-100, 100), length=st.integers(1, 300))
def test_hours_for_is_novas_hours_for(launched, terminated, start, length):
    period_start = T0 + dt.timedelta(minutes=5 * start)
    period_stop = period_start + dt.timedelta(minutes=5 * length)
    instance = types.SimpleNamespace(launched_at=launched, terminated_at=terminated)
    novas = SimpleTenantUsageController._hours_for(None, instance, period_start, period_stop)
    assert hours_for(launched, terminated, period_start, period_stop) == novas


# -- a generated lifecycle, with its truth computed independently ------------------

SIZE_BY_FLAVOR = {1: 0, 2: 32, 3: 64, 4: 128}


def at(minute: int) -> dt.datetime:
    return T0 + minute * MIN


def ev(name: str, minute: int | None, result: str = "Success") -> EventRecord:
    return EventRecord(name, None if minute is None else at(minute), result)


@dataclasses.dataclass
class Lifecycle:
    """Nova's records of one server, and minute by minute what it held."""

    actions: list[tuple[str, int, list[tuple[str, int, str]]]]  # name, asked, events
    migrations: list[tuple[int, str, int, int, str]]  # created, status, old, new, type
    terminated: int | None
    held: dict[int, int]  # minute -> EPC MiB held during [minute, minute+1)
    flavor_at: list[tuple[int, int]]  # (from minute, flavor size) — what Nova shows as current

    def records_as_of(self, now: int):
        """What Nova shows at minute ``now`` (nothing recorded later exists yet)."""
        actions = [
            ActionRecord(
                name,
                at(asked),
                tuple(
                    ev(e, finish if finish <= now else None, result) for e, finish, result in events
                ),
            )
            for name, asked, events in self.actions
            if asked <= now
        ]
        migrations = [
            MigrationRecord(at(created), status, old, new, kind)
            for created, status, old, new, kind in self.migrations
            if created <= now
        ]
        terminated = (
            at(self.terminated) if self.terminated is not None and self.terminated <= now else None
        )
        current = [size for since, size in self.flavor_at if since <= now][-1]
        return actions, migrations, current, terminated

    def truth_us(self, lo: int, hi: int) -> int:
        return sum(self.held.get(m, 0) for m in range(lo, hi)) * US_PER_MIN


@st.composite
def lifecycles(draw) -> Lifecycle:
    flavor = draw(st.sampled_from(sorted(SIZE_BY_FLAVOR)))
    t = draw(st.integers(0, 30))
    actions: list = []
    migrations: list = []
    held: dict[int, int] = {}
    holding_since: int | None = None
    size = SIZE_BY_FLAVOR[flavor]
    flavor_at = [(0, size)]
    # A driver that records sizes in the actions (sgxcloud's), and a server
    # whose migration records are gone (Nova soft-deletes them with it).
    recorded = draw(st.booleans())
    migrations_gone = recorded and draw(st.booleans())

    def sized(events: list, mib: int, at: int) -> list:
        return [*events, (f"sgxcloud_epc_mb_{mib}", at, "Success")] if recorded else events

    def hold_until(minute: int) -> None:
        for m in range(holding_since, minute):
            held[m] = size

    build = t + draw(st.integers(0, 5))
    actions.append(
        ("create", t, sized([("compute__do_build_and_run_instance", build, "Success")], size, t))
    )
    holding_since = build
    t = build
    terminated = None
    for _ in range(draw(st.integers(0, 6))):
        t += draw(st.integers(1, 40))
        step = draw(
            st.sampled_from(["resize", "migrate", "evacuate", "shelve", "delete", "failed-resize"])
        )
        if step == "delete":
            if holding_since is not None:
                hold_until(t)
            actions.append(("delete", t, []))
            terminated = t
            holding_since = None
            break
        if holding_since is None:  # shelved: the only way on is unshelve
            done = t + draw(st.integers(0, 5))
            actions.append(("unshelve", t, [("compute_unshelve_instance", done, "Success")]))
            holding_since, t = done, done
            continue
        if step == "shelve":
            done = t + draw(st.integers(0, 5))
            actions.append(("shelve", t, [("compute_shelve_instance", done, "Success")]))
            hold_until(done)
            holding_since, t = None, done
        elif step == "evacuate":
            actions.append(("evacuate", t, [("compute_rebuild_instance", t + 2, "Success")]))
            t += 2
        elif step == "failed-resize":
            new = draw(st.sampled_from(sorted(SIZE_BY_FLAVOR)))
            actions.append(("resize", t, [("compute_prep_resize", t + 1, "Error")]))
            migrations.append((t, "error", flavor, new, "resize"))
            t += 1
        else:
            new = flavor if step == "migrate" else draw(st.sampled_from(sorted(SIZE_BY_FLAVOR)))
            done = t + draw(st.integers(0, 5))
            kind = "migration" if step == "migrate" else "resize"
            finish = [("compute_finish_resize", done, "Success")]
            actions.append((step, t, sized(finish, SIZE_BY_FLAVOR[new], done)))
            outcome = draw(st.sampled_from(["confirm", "revert"]))
            record = [t, "finished", flavor, new, kind]
            migrations.append(record)  # status updated below (Nova updates it in place)
            hold_until(done)
            holding_since = done
            size, old_flavor, flavor = SIZE_BY_FLAVOR[new], flavor, new
            flavor_at.append((done, size))
            t = done + draw(st.integers(1, 30))
            if outcome == "confirm":
                actions.append(("confirmResize", t, [("compute_confirm_resize", t, "Success")]))
                record[1] = "confirmed"
            else:
                back = t + draw(st.integers(0, 5))
                actions.append(
                    ("revertResize", t, [("compute_finish_revert_resize", back, "Success")])
                )
                record[1] = "reverted"
                hold_until(back)
                holding_since = back
                size, flavor = SIZE_BY_FLAVOR[old_flavor], old_flavor
                flavor_at.append((back, size))
                t = back
    if holding_since is not None:
        hold_until(600)  # beyond every window the tests ask about
    kept = [] if migrations_gone else [tuple(m) for m in migrations]
    return Lifecycle(actions, kept, terminated, held, flavor_at)


def timeline_as_of(life: Lifecycle, now: int) -> Timeline:
    actions, migrations, current, terminated = life.records_as_of(now)
    return timeline_from_history(actions, migrations, current, SIZE_BY_FLAVOR, terminated)


windows = st.tuples(st.integers(0, 400), st.integers(0, 200)).map(lambda w: (w[0], w[0] + w[1]))


@settings(max_examples=300, deadline=None)
@given(life=lifecycles(), window=windows)
def test_window_charge_is_what_the_server_held_inside_it(life, window):
    lo, hi = window
    timeline = timeline_as_of(life, 600)
    assert timeline.exact, timeline.notes
    assert timeline.mb_microseconds(at(lo), at(hi)) == life.truth_us(lo, hi)


@settings(max_examples=300, deadline=None)
@given(life=lifecycles(), cuts=st.lists(st.integers(0, 500), min_size=1, max_size=6))
def test_windows_partitioning_a_span_add_up_to_the_span(life, cuts):
    timeline = timeline_as_of(life, 600)
    points = sorted({0, 500, *cuts})
    parts = [timeline.mb_microseconds(at(a), at(b)) for a, b in itertools.pairwise(points)]
    assert sum(parts) == timeline.mb_microseconds(at(0), at(500))


@settings(max_examples=300, deadline=None)
@given(life=lifecycles(), window=windows, later=st.integers(0, 300))
def test_a_closed_window_is_the_same_asked_at_its_end_or_later(life, window, later):
    lo, hi = window
    asked_then = timeline_as_of(life, hi).mb_microseconds(at(lo), at(hi))
    asked_later = timeline_as_of(life, hi + later).mb_microseconds(at(lo), at(hi))
    assert asked_then == asked_later == life.truth_us(lo, hi)


# -- the scenario of issue 11, by hand --------------------------------------------


def test_resize_after_the_window_does_not_change_its_bill():
    # C boots with 64 MiB at t+10h and is resized to 128 MiB at t+40h.
    create = ActionRecord("create", T0 + 10 * H, (ev("compute__do_build_and_run_instance", 600),))
    resize = ActionRecord("resize", T0 + 40 * H, (ev("compute_finish_resize", 2400),))
    confirm = ActionRecord("confirmResize", T0 + 41 * H, ())
    migration = MigrationRecord(T0 + 40 * H, "confirmed", 3, 4, "resize")
    at_37h = timeline_from_history([create], [], 64, SIZE_BY_FLAVOR, None)
    at_55h = timeline_from_history(
        [create, resize, confirm], [migration], 128, SIZE_BY_FLAVOR, None
    )
    window = (T0 + 8 * H, T0 + 36 * H)
    assert at_37h.mb_hours(*window) == at_55h.mb_hours(*window) == 64 * 26
    assert at_55h.mb_hours(T0 + 36 * H, T0 + 48 * H) == 64 * 4 + 128 * 8
    assert at_55h.periods == (
        Period(T0 + 10 * H, T0 + 40 * H, 64),
        Period(T0 + 40 * H, None, 128),
    )


def test_unknown_flavor_is_flagged_not_guessed_silently():
    create = ActionRecord("create", T0, (ev("compute__do_build_and_run_instance", 0),))
    resize = ActionRecord("resize", T0 + 2 * H, (ev("compute_finish_resize", 120),))
    timeline = timeline_from_history(
        [create, resize],
        [MigrationRecord(T0 + 2 * H, "confirmed", 99, 4)],
        128,
        SIZE_BY_FLAVOR,
        None,
    )
    assert not timeline.exact and timeline.notes
    # A deleted server's migration records are gone (Nova soft-deletes them with it).
    gone = timeline_from_history([create, resize], [], 128, SIZE_BY_FLAVOR, T0 + 5 * H)
    assert not gone.exact and "no migration record" in gone.notes[0]
    # ...unless the driver recorded the sizes in the actions themselves.
    create = ActionRecord(
        "create", T0, (ev("compute__do_build_and_run_instance", 0), ev("sgxcloud_epc_mb_32", 0))
    )
    resize = ActionRecord(
        "resize", T0 + 2 * H, (ev("compute_finish_resize", 120), ev("sgxcloud_epc_mb_128", 120))
    )
    kept = timeline_from_history([create, resize], [], 128, SIZE_BY_FLAVOR, T0 + 5 * H)
    assert kept.exact and kept.mb_hours(T0, T0 + 6 * H) == 32 * 2 + 128 * 3


def test_shelved_server_holds_no_epc_until_unshelved():
    changes = [
        Change(T0, ChangeKind.HOLD, 64),
        Change(T0 + 2 * H, ChangeKind.RELEASE),
        Change(T0 + 5 * H, ChangeKind.HOLD),
    ]
    timeline = timeline_from_changes(changes)
    assert timeline.mb_hours(T0, T0 + 6 * H) == 64 * 3
    assert timeline.held_hours(T0, T0 + 6 * H) == 3


def test_per_day_split_adds_up():
    timeline = Timeline((Period(T0 - 6 * H, None, 64),))
    server = ServerEpcUsage(
        server_id="s1", name="s1", project_id="p", flavor="f", hours=30.0, vcpus=1,
        memory_mb=512, local_gb=1, state="active", epc_mb=64, timeline=timeline,
        epc_mb_hours=64 * 30.0, held_hours=30.0,
    )  # fmt: skip
    usage = ProjectEpcUsage("p", T0 + 18 * H, T0 + 48 * H, servers=[server])
    days = usage.epc_mb_hours_per_day()
    assert days == {
        dt.date(2026, 3, 2): 64 * 6,
        dt.date(2026, 3, 3): 64 * 24,
    }
    assert usage.epc_mb_hours == sum(days.values())
    assert not server.nova_hours_differ
