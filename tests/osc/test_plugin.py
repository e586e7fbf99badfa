"""The OSC plugin's protocol, its argument handling and the chart file."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import tomllib
import types
from pathlib import Path

import pytest
from osc_lib import exceptions

from sgxcloud.nova.accounting import Period, Timeline
from sgxcloud.nova.charts import write_chart
from sgxcloud.nova.errors import UsageError
from sgxcloud.nova.osc import plugin
from sgxcloud.nova.osc.usage import (
    COLUMNS,
    EXPORT_COLUMNS,
    ShowSGXUsage,
    export_rows,
    parse_when,
    row,
    window,
)
from sgxcloud.nova.usage import ProjectEpcUsage, ServerEpcUsage

ROOT = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)


def test_plugin_protocol():
    assert plugin.API_NAME == "sgx"
    assert plugin.API_VERSION_OPTION == "os_sgx_api_version"
    assert plugin.DEFAULT_API_VERSION in plugin.API_VERSIONS
    parser = plugin.build_option_parser(argparse.ArgumentParser())
    assert parser.parse_args([]).os_sgx_api_version == "1"
    manager = types.SimpleNamespace(sdk_connection=object())
    assert plugin.make_client(manager) is manager.sdk_connection


def test_declared_entry_points_name_real_commands():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups = pyproject["project"]["entry-points"]
    assert groups["openstack.cli.extension"]["sgx"] == "sgxcloud.nova.osc.plugin"
    commands = groups[f"openstack.{plugin.API_NAME}.v{plugin.DEFAULT_API_VERSION}"]
    assert set(commands) == {
        "sgx_usage_show", "sgx_usage_list", "sgx_usage_export", "sgx_host_list",
    }  # fmt: skip
    for target in commands.values():
        module, attribute = target.split(":")
        command_class = getattr(importlib.import_module(module), attribute)
        assert hasattr(command_class, "take_action")


def test_window_defaults_and_refusals():
    parser = ShowSGXUsage(types.SimpleNamespace(), None).get_parser("sgx usage show")
    start, end = window(parser.parse_args([]))
    assert dt.timedelta(weeks=4) < end - start <= dt.timedelta(weeks=4, days=1, seconds=5)
    start, end = window(parser.parse_args(["--start", "2026-03-01", "--end", "2026-03-02T06:00"]))
    assert (start, end) == (T0 - dt.timedelta(days=1), T0 + dt.timedelta(hours=6))
    with pytest.raises(exceptions.CommandError, match="before --end"):
        window(parser.parse_args(["--start", "2026-03-02", "--end", "2026-03-01"]))
    with pytest.raises(exceptions.CommandError, match="invalid date"):
        parse_when("yesterday", T0)
    assert parser.parse_args(["--chart", "x.png"]).chart_by == "server"


def _usage() -> ProjectEpcUsage:
    servers = [
        ServerEpcUsage(
            server_id=f"id-{n}",
            name=n,
            project_id="p",
            flavor="f",
            hours=h,
            vcpus=1,
            memory_mb=512,
            local_gb=1,
            state="terminated",
            epc_mb=mb,
            timeline=Timeline((Period(T0, T0 + h * dt.timedelta(hours=1), mb),)),
            epc_mb_hours=mb * h,
            held_hours=h,
        )
        for n, mb, h in (("a", 64, 3.0), ("b", 128, 6.0))
    ]
    return ProjectEpcUsage("p", T0, T0 + dt.timedelta(hours=10), servers=servers)


@pytest.mark.parametrize("by", ["server", "day"])
def test_chart_is_a_png(tmp_path, by):
    path = write_chart([_usage()], str(tmp_path / "epc.png"), by=by)
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_refusals(tmp_path):
    with pytest.raises(UsageError, match="choose"):
        write_chart([_usage()], str(tmp_path / "x.png"), by="week")
    with pytest.raises(UsageError, match="cannot write chart"):
        write_chart([_usage()], str(tmp_path / "missing-dir" / "x.png"))


def test_rows_render_for_tables_and_json():
    cells = row(_usage())
    shown = [c.human_readable() if hasattr(c, "human_readable") else c for c in cells]
    # OSC's own usage columns: "2" and "960.00" from OSC 8 on; OSC 6 and 7
    # (2024.1, 2025.1) show the numbers 2 and 960.0, as their `usage show` does.
    assert shown in (
        ["p", "2", "0.00", "0.00", "0.00", "960.00"],
        ["p", 2, 0.0, 0.0, 0.0, 960.0],
    )  # fmt: skip
    machine = [c.machine_readable() if hasattr(c, "machine_readable") else c for c in cells]
    document = json.loads(json.dumps(dict(zip(COLUMNS, machine, strict=True))))
    assert document["EPC MB-Hours"] == 64 * 3.0 + 128 * 6.0
    assert [s["epc_mb_hours"] for s in document["Servers"]] == [192.0, 768.0]


def test_export_columns_are_a_stable_contract():
    # Billing systems import these by name: changing them is a breaking change.
    assert EXPORT_COLUMNS == (
        "window_start", "window_end", "project_id", "server_id", "server_name", "flavor",
        "epc_mb", "epc_mb_hours", "held_hours", "exact", "nova_hours", "nova_hours_differ",
    )  # fmt: skip
    usage = _usage()
    usage.start, usage.stop = T0, T0 + dt.timedelta(hours=10)
    lines = [dict(zip(EXPORT_COLUMNS, line, strict=True)) for line in export_rows([usage])]
    assert lines[1] == {
        "window_start": "2026-03-02T00:00:00Z", "window_end": "2026-03-02T10:00:00Z",
        "project_id": "p", "server_id": "id-b", "server_name": "b", "flavor": "f",
        "epc_mb": 128, "epc_mb_hours": 768.0, "held_hours": 6.0, "exact": True,
        "nova_hours": 6.0, "nova_hours_differ": False,
    }  # fmt: skip
