"""The HTML lift report: self-contained, with a chart, suppression markers and labels."""

from __future__ import annotations

import base64
import re

import pytest
from statsmodels.stats.proportion import proportion_confint

from sgxcloud.cleanroom.report import lift_report_html, summary, wilson, write_lift_report
from sgxcloud.cleanroom.results import Cell, Result


def arm_cells(segment, arm, people, converters, revenue):
    dims = {"segment": segment, "arm": arm}
    return [
        Cell("people", people, dims),
        Cell("converters", converters, dims),
        Cell("conversion_rate", converters / people, dims),
        Cell("revenue_per_person", revenue / people, dims),
    ]


def lift_cells(segment, rel, low, high):
    dims = {"segment": segment}
    return [
        Cell("conversion_lift_abs", 0.03, dims),
        Cell("conversion_lift_rel", rel, dims),
        Cell("conversion_lift_rel_ci_low", low, dims),
        Cell("conversion_lift_rel_ci_high", high, dims),
        Cell("conversion_p_value", 0.0123, dims),
        Cell("incremental_conversions", 31.5, dims),
        Cell("incremental_revenue", 1234.5, dims),
    ]


def suppressed(segment):
    cells = []
    for arm in ("test", "control"):
        dims = {"segment": segment, "arm": arm}
        cells += [
            Cell(m, None, dims, suppressed=True)
            for m in ("people", "converters", "conversion_rate", "revenue_per_person")
        ]
    dims = {"segment": segment}
    cells += [
        Cell(m, None, dims, suppressed=True)
        for m in ("conversion_lift_abs", "conversion_lift_rel", "incremental_revenue")
    ]
    return cells


@pytest.fixture
def result():
    cells = (
        arm_cells("(all)", "test", 1000, 130, 9000.0)
        + arm_cells("(all)", "control", 1000, 100, 7000.0)
        + lift_cells("(all)", 0.3, 0.05, 0.6)
        + arm_cells("north", "test", 400, 60, 4000.0)
        + arm_cells("north", "control", 380, 40, 2500.0)
        + lift_cells("north", 0.42, -0.02, 0.9)
        + suppressed("central")
    )
    return Result(
        result_id="r-1",
        collaboration="demo",
        definition_hash="ab" * 32,
        analysis="lift",
        template="campaign_lift",
        query={"template": "campaign_lift"},
        query_hash="cd" * 32,
        cells=tuple(cells),
        privacy={"min_group_size": 50},
        recipients=("brand",),
        released_at="2026-11-27T00:00:00+00:00",
        signer="ed25519:x",
        signature="sig",
    )


def test_report_is_self_contained_with_chart(result, tmp_path):
    path = write_lift_report(result, tmp_path / "lift.html", simulated=False)
    text = path.read_text()
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert match
    png = base64.b64decode(match.group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    # Nothing fetched from elsewhere.
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "SIMULATED" not in text
    assert "13.00%" in text and "10.00%" in text  # test and control conversion rates
    assert "30.00%" in text and "[5.00%, 60.00%]" in text  # relative lift and its CI
    assert "1,234.50" in text and "31.5" in text  # incremental revenue and conversions
    assert text.count("suppressed (&lt; k)") >= 8  # every suppressed cell is marked


def test_simulated_results_are_labelled(result):
    assert "SIMULATED attestation" in lift_report_html(result, simulated=True)


def test_only_lift_results(result):
    from dataclasses import replace

    with pytest.raises(ValueError):
        lift_report_html(replace(result, template="audience_size"), simulated=False)


def test_wilson_matches_statsmodels_and_summary(result):
    assert wilson(130, 1000) == pytest.approx(proportion_confint(130, 1000, method="wilson"))
    assert wilson(None, 1000) is None
    assert summary(result)["conversion_lift_rel"] == 0.3
