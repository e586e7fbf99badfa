"""EPC MB-hours arithmetic: Nova's clipping, spans over resizes, per-day split."""

from __future__ import annotations

import datetime as dt
import types

from hypothesis import given
from hypothesis import strategies as st
from nova.api.openstack.compute.simple_tenant_usage import SimpleTenantUsageController

from sgxcloud.nova.accounting import (
    ActionRecord,
    EpcSpan,
    MigrationRecord,
    epc_mb_hours,
    epc_spans,
    hours_for,
)
from sgxcloud.nova.usage import ProjectEpcUsage, ServerEpcUsage

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, tzinfo=UTC)
H = dt.timedelta(hours=1)

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


def test_single_span_is_size_times_novas_hours():
    spans = (EpcSpan(T0 - 2 * H, 64),)
    assert epc_mb_hours(spans, T0 + 3 * H, T0, T0 + 10 * H) == 64 * 3
    assert epc_mb_hours(spans, None, T0, T0 + 10 * H) == 64 * 10
    assert epc_mb_hours((), None, T0, T0 + 10 * H) == 0


CATALOG = {7: 32, 8: 128, 9: 0}


def test_confirmed_resize_charges_each_size_for_its_time():
    # Created T0+1h with flavor 7 (32 MiB); resized at T0+4h to flavor 8.
    actions = [
        ActionRecord("create", T0 + H, T0 + H),
        ActionRecord("resize", T0 + 4 * H, T0 + 4 * H),
        ActionRecord("confirmResize", T0 + 5 * H, T0 + 5 * H),
    ]
    migrations = [MigrationRecord(T0 + 4 * H, "confirmed", 7, 8)]
    spans, exact = epc_spans(T0 + 4 * H, 128, actions, migrations, CATALOG)
    assert exact
    assert spans == (EpcSpan(T0 + H, 32), EpcSpan(T0 + 4 * H, 128))
    assert epc_mb_hours(spans, None, T0, T0 + 10 * H) == 32 * 3 + 128 * 6
    # A window starting after the resize sees only the new size, like Nova.
    assert epc_mb_hours(spans, None, T0 + 5 * H, T0 + 10 * H) == 128 * 5


def test_resize_then_revert_returns_to_the_old_size():
    actions = [
        ActionRecord("create", T0, T0),
        ActionRecord("resize", T0 + 2 * H, T0 + 2 * H),
        ActionRecord("revertResize", T0 + 3 * H, T0 + 3 * H),
    ]
    migrations = [MigrationRecord(T0 + 2 * H, "reverted", 7, 8)]
    spans, exact = epc_spans(T0 + 3 * H, 32, actions, migrations, CATALOG)
    assert exact
    assert [s.epc_mb for s in spans] == [32, 128, 32]
    assert epc_mb_hours(spans, T0 + 5 * H, T0, T0 + 10 * H) == 32 * 2 + 128 + 32 * 2


def test_unknown_flavor_is_flagged_not_guessed_silently():
    actions = [ActionRecord("create", T0, T0), ActionRecord("resize", T0 + 2 * H, T0 + 2 * H)]
    migrations = [MigrationRecord(T0 + 2 * H, "confirmed", 99, 8)]
    spans, exact = epc_spans(T0 + 2 * H, 128, actions, migrations, CATALOG)
    assert not exact
    assert [s.epc_mb for s in spans] == [128, 128]


def test_resize_requested_after_launch_is_not_yet_a_change():
    actions = [ActionRecord("create", T0, T0), ActionRecord("resize", T0 + 5 * H, None)]
    spans, exact = epc_spans(T0, 32, actions, [], CATALOG)
    assert exact and spans == (EpcSpan(T0, 32),)


def test_per_day_split_adds_up():
    server = ServerEpcUsage(
        server_id="s1", name="s1", project_id="p", flavor="f", hours=30.0, vcpus=1,
        memory_mb=512, local_gb=1, started_at=T0 - 6 * H, ended_at=None, state="active",
        epc_mb=64, spans=(EpcSpan(T0 - 6 * H, 64),), epc_mb_hours=64 * 30.0,
    )  # fmt: skip
    usage = ProjectEpcUsage("p", T0 + 18 * H, T0 + 48 * H, servers=[server])
    days = usage.epc_mb_hours_per_day()
    assert days == {
        dt.date(2026, 3, 2): 64 * 6,
        dt.date(2026, 3, 3): 64 * 24,
    }
    assert usage.epc_mb_hours == sum(days.values())
