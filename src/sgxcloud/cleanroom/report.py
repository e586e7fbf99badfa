"""Campaign lift as a self-contained HTML report (one file, chart inlined).

The chart shows the test and control conversion rates of every segment with
95% Wilson intervals (computed from the released people and converter
counts; nothing unreleased is needed) and the relative lift with its
released confidence interval.  Suppressed cells are drawn as markers, never
as numbers.  A result from SIMULATED attestation says so at the top.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from sgxcloud.cleanroom.results import Cell, Result

ARMS = ("test", "control")
ALL = "(all)"


# -- differential-privacy noise, as readers need to see it -------------------------------
#
# Every noised figure is shown with the standard deviation of the noise in it
# and a 95% noise margin; figures derived from noised ones (rates, lifts) get
# an interval propagated from their parts.  All of it follows from the signed
# privacy block of the result and the public definition parameters in it.

BASE_LIFT_METRICS = {
    "people": "count",
    "converters": "count",
    "purchases": "purchases",
    "revenue": "revenue",
}
LAPLACE_95 = 2.1183  # ln(20)/sqrt(2): a Laplace draw lies within this many sd 95% of the time
GAUSS_95 = 1.96


def _draw_sd(dp: dict[str, Any], sensitivity: float, epsilon: float, delta: float | None) -> float:
    if dp.get("mechanism", "laplace") == "laplace":
        return sensitivity / epsilon * 2**0.5
    from sgxcloud.cleanroom.privacy.dp import _gaussian_scale

    return _gaussian_scale(float(sensitivity), float(epsilon), float(delta or 1e-6))


def noise_sd(result: Result, cell: Cell) -> float | None:
    """Standard deviation of the DP noise in ``cell``'s released value; None when
    the cell carries none or is derived from several noised figures."""
    dp = (result.privacy or {}).get("differential_privacy")
    if not dp or not cell.noisy or cell.suppressed:
        return None
    eps = float(dp.get("epsilon_per_measure") or dp.get("epsilon") or 0)
    if eps <= 0:
        return None
    if result.template == "audience_size" and cell.metric == "people":
        return _draw_sd(dp, 1.0, eps, dp.get("delta"))
    if result.template == "overlap" and cell.metric == "people":
        datasets = result.query.get("datasets") or []
        members = len(cell.dims.get("datasets", "").split("+"))
        draws = 2 ** max(0, len(datasets) - members)  # the Venn regions summed
        return _draw_sd(dp, 1.0, eps, dp.get("delta")) * draws**0.5
    if result.template == "campaign_lift" and cell.metric in BASE_LIFT_METRICS:
        measures = int(dp.get("measures") or 1)
        delta = dp["delta"] / measures if dp.get("delta") else None
        bounds = dp.get("contribution_bounds") or {}
        sensitivity = {
            "count": 1.0,
            "purchases": float(bounds.get("max_purchases_per_person", 1)),
            "revenue": float(bounds.get("max_revenue_per_person", 1)),
        }[BASE_LIFT_METRICS[cell.metric]]
        sd = _draw_sd(dp, sensitivity, eps, delta)
        segments = {c.dims.get("segment") for c in result.cells} - {ALL, None}
        if cell.dims.get("segment") == ALL and segments:
            sd *= len(segments) ** 0.5  # the total is the sum of the noised segments
        return sd
    return None


def noise_margin(result: Result, cell: Cell) -> float | None:
    """Half-width of the 95% interval of the noise in ``cell`` (None: no noise of its own)."""
    sd = noise_sd(result, cell)
    if sd is None:
        return None
    dp = result.privacy.get("differential_privacy") or {}
    return sd * (LAPLACE_95 if dp.get("mechanism", "laplace") == "laplace" else GAUSS_95)


def noise_interval(result: Result, cell: Cell) -> tuple[float, float] | None:
    """A 95% interval for ``cell`` that accounts for the noise: the noise margin of
    a noised figure (never below 0), or, for a rate derived from two noised
    figures, the range their margins allow."""
    if not cell.noisy or cell.suppressed or cell.value is None:
        return None
    margin = noise_margin(result, cell)
    if margin is not None:
        return max(0.0, cell.value - margin), cell.value + margin
    if result.template == "campaign_lift" and cell.metric in (
        "conversion_rate",
        "revenue_per_person",
    ):
        top = "converters" if cell.metric == "conversion_rate" else "revenue"
        dims = dict(cell.dims)
        try:
            num, den = result.cell(top, **dims), result.cell("people", **dims)
        except KeyError:
            return None
        m_num, m_den = noise_margin(result, num), noise_margin(result, den)
        if None in (m_num, m_den) or num.value is None or den.value is None:
            return None
        low_den, high_den = max(1.0, den.value - m_den), den.value + m_den
        low = max(0.0, num.value - m_num) / high_den
        high = (num.value + m_num) / low_den
        return (low, min(high, 1.0)) if cell.metric == "conversion_rate" else (low, high)
    return None


def _index(result: Result) -> dict[tuple[str, str, str], Cell]:
    """(metric, segment, arm or '') -> cell."""
    out = {}
    for cell in result.cells:
        out[(cell.metric, cell.dims.get("segment", ALL), cell.dims.get("arm", ""))] = cell
    return out


def segments(result: Result) -> list[str]:
    seen = [c.dims.get("segment", ALL) for c in result.cells]
    ordered = sorted(set(seen), key=lambda s: (s != ALL, s))
    return ordered


def _value(cells, metric: str, segment: str, arm: str = "") -> float | None:
    cell = cells.get((metric, segment, arm))
    return None if cell is None or cell.suppressed else cell.value


def _suppressed(cells, metric: str, segment: str, arm: str = "") -> bool:
    cell = cells.get((metric, segment, arm))
    return cell is not None and cell.suppressed


def wilson(converters: float | None, people: float | None) -> tuple[float, float] | None:
    """95% Wilson interval of a conversion rate from released counts."""
    if converters is None or not people:
        return None
    from statsmodels.stats.proportion import proportion_confint

    k = min(max(round(converters), 0), round(people))
    low, high = proportion_confint(k, round(people), alpha=0.05, method="wilson")
    return float(low), float(high)


def chart_png(result: Result) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _index(result)
    segs = segments(result)[:SEGMENTS_SHOWN]  # the table lists every one
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.38
    colors = {"test": "#2b6cb0", "control": "#a0aec0"}
    for offset, arm in ((-width / 2, "test"), (width / 2, "control")):
        for i, seg in enumerate(segs):
            x = i + offset
            rate = _value(cells, "conversion_rate", seg, arm)
            if rate is None:
                left.bar(x, 0.002, width, color="white", edgecolor="#c05621", hatch="//")
                left.annotate(
                    "suppressed",
                    (x, 0.004),
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=7,
                    color="#c05621",
                )
                continue
            ci = wilson(_value(cells, "converters", seg, arm), _value(cells, "people", seg, arm))
            # Under DP the rate is noised apart from the counts the interval comes
            # from, so it may lie outside it: no bar below the rate (or above).
            err = [[max(rate - ci[0], 0.0)], [max(ci[1] - rate, 0.0)]] if ci else None
            left.bar(
                x,
                rate,
                width,
                color=colors[arm],
                yerr=err,
                capsize=3,
                label=arm if i == 0 else None,
            )
    left.set_xticks(range(len(segs)), segs, rotation=20, ha="right")
    left.set_ylabel("conversion rate")
    left.set_title("Conversion rate, test vs control (95% CI)")
    left.legend()
    for i, seg in enumerate(segs):
        lift = _value(cells, "conversion_lift_rel", seg)
        if lift is None:
            right.plot(i, 0, marker="x", color="#c05621")
            right.annotate(
                "suppressed",
                (i, 0),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
                color="#c05621",
            )
            continue
        low = _value(cells, "conversion_lift_rel_ci_low", seg)
        high = _value(cells, "conversion_lift_rel_ci_high", seg)
        err = [[lift - low], [high - lift]] if low is not None and high is not None else None
        right.errorbar(
            i,
            lift * 100,
            yerr=[[e[0] * 100] for e in err] if err else None,
            fmt="o",
            color="#2b6cb0",
            capsize=4,
        )
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(range(len(segs)), segs, rotation=20, ha="right")
    right.set_ylabel("relative lift (%)")
    right.set_title("Relative conversion lift (95% CI)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _fmt(
    cells,
    metric: str,
    seg: str,
    arm: str = "",
    pct: bool = False,
    money: bool = False,
    digits: int = 1,
    result: Result | None = None,
) -> str:
    if _suppressed(cells, metric, seg, arm):
        return '<span class="sup">suppressed (&lt; k)</span>'
    value = _value(cells, metric, seg, arm)
    if value is None:
        return "–"
    text = _plain(value, pct, money, digits)
    cell = cells.get((metric, seg, arm))
    if result is not None and cell is not None and cell.noisy:
        margin = noise_margin(result, cell)
        interval = None if margin is not None else noise_interval(result, cell)
        if margin is not None:
            wide = ' class="wide"' if margin > abs(value) else ""
            text += f"<br><small{wide}>± {_plain(margin, pct, money, digits)} noise</small>"
        elif interval is not None:
            text += (
                f"<br><small>[{_plain(interval[0], pct, money, digits)}, "
                f"{_plain(interval[1], pct, money, digits)}] with noise</small>"
            )
    return text


def _plain(value: float, pct: bool, money: bool, digits: int) -> str:
    if pct:
        return f"{value * 100:.2f}%"
    if money:
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ci(cells, metric: str, seg: str, pct: bool = False, money: bool = False) -> str:
    low = _value(cells, f"{metric}_ci_low", seg)
    high = _value(cells, f"{metric}_ci_high", seg)
    if low is None or high is None:
        return ""
    if pct:
        return f" <small>[{low * 100:.2f}%, {high * 100:.2f}%]</small>"
    return (
        f" <small>[{low:,.2f}, {high:,.2f}]</small>"
        if money
        else f" <small>[{low:,.1f}, {high:,.1f}]</small>"
    )


def lift_report_html(result: Result, *, simulated: bool, title: str | None = None) -> str:
    """The whole report as one HTML string (chart embedded as a PNG data URI)."""
    if result.template != "campaign_lift":
        raise ValueError("an HTML lift report needs a campaign_lift result")
    cells = _index(result)
    png = base64.b64encode(chart_png(result)).decode()
    esc = html.escape
    rows = []
    for seg in segments(result):
        rows.append(
            "<tr>"
            f"<th>{esc(seg)}</th>"
            + "".join(
                f"<td>{_fmt(cells, 'people', seg, arm, result=result)}</td>"
                f"<td>{_fmt(cells, 'converters', seg, arm, result=result)}</td>"
                f"<td>{_fmt(cells, 'conversion_rate', seg, arm, pct=True, result=result)}"
                "</td>"
                f"<td>{_fmt(cells, 'revenue', seg, arm, money=True, result=result)}</td>"
                f"<td>{_fmt(cells, 'revenue_per_person', seg, arm, False, True, 1, result)}"
                "</td>"
                for arm in ARMS
            )
            + f"<td>{_fmt(cells, 'conversion_lift_abs', seg, pct=True)}"
            f"{_ci(cells, 'conversion_lift_abs', seg, pct=True)}</td>"
            + f"<td>{_fmt(cells, 'conversion_lift_rel', seg, pct=True)}"
            f"{_ci(cells, 'conversion_lift_rel', seg, pct=True)}</td>"
            + f"<td>{_fmt(cells, 'conversion_p_value', seg, digits=4)}</td>"
            + f"<td>{_fmt(cells, 'incremental_conversions', seg)}"
            f"{_ci(cells, 'incremental_conversions', seg)}</td>"
            + f"<td>{_fmt(cells, 'incremental_revenue', seg, money=True)}"
            f"{_ci(cells, 'incremental_revenue', seg, money=True)}</td>"
            "</tr>"
        )
    banner = (
        (
            '<div class="sim">SIMULATED attestation: this result was produced without SGX '
            "hardware and proves nothing about confidentiality.</div>"
        )
        if simulated
        else ""
    )
    privacy = "".join(
        f"<li>{esc(str(k))}: {esc(str(v))}</li>" for k, v in sorted(result.privacy.items())
    )
    heading = esc(title or f"Campaign lift — {result.collaboration} / {result.analysis}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{heading}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#1a202c}}
table{{border-collapse:collapse;font-size:0.9em}}
td,th{{border:1px solid #cbd5e0;padding:4px 8px;text-align:right}}
th{{background:#edf2f7}}.sup{{color:#c05621;font-style:italic}}
.sim{{background:#fed7d7;border:2px solid #c53030;padding:0.6em;font-weight:bold;margin-bottom:1em}}
.wide{{color:#c05621;font-weight:bold}}.dp{{background:#fefcbf;padding:0.5em}}
small{{color:#4a5568}}code{{font-size:0.85em}}
</style></head><body>
{banner}
<h1>{heading}</h1>
<p>Result <code>{esc(result.result_id)}</code>, released {esc(result.released_at)}, for
definition <code>{esc(result.definition_hash)}</code>;
signed by <code>{esc(result.signer)}</code>.</p>
<img alt="test vs control conversion rates and lift" src="data:image/png;base64,{png}">
<h2>Figures</h2>
<table>
<tr><th rowspan="2">segment</th><th colspan="5">test (exposed)</th><th colspan="5">control</th>
<th rowspan="2">lift (abs) [95% CI]</th><th rowspan="2">lift (rel) [95% CI]</th>
<th rowspan="2">p-value</th><th rowspan="2">incremental conversions</th>
<th rowspan="2">incremental revenue</th></tr>
<tr>{ARM_HEADINGS * 2}</tr>
{"".join(rows[:SEGMENTS_SHOWN])}
</table>
{_more_rows(rows[SEGMENTS_SHOWN:])}
{_noise_note(result)}
<h2>Privacy applied</h2><ul>{privacy}</ul>
<p><small>Cells covering fewer than k people are suppressed. Arm conversion-rate intervals in
the chart are Wilson intervals from the released counts.</small></p>
</body></html>
"""


ARM_HEADINGS = (
    "<th>people</th><th>converters</th><th>rate</th><th>revenue</th><th>revenue/person</th>"
)
SEGMENTS_SHOWN = 12
"""Segments in the report's table before the rest is collapsed (and in the chart)."""


def _more_rows(rows: list[str]) -> str:
    if not rows:
        return ""
    return (
        f"<details><summary>{len(rows)} more segment(s)</summary><table>"
        + "".join(rows)
        + "</table></details>"
    )


def _noise_note(result: Result) -> str:
    dp = (result.privacy or {}).get("differential_privacy")
    if not dp:
        return ""
    return (
        f'<p class="dp">Differential privacy: {html.escape(str(dp.get("mechanism")))} '
        f"noise, ε = {html.escape(str(dp.get('epsilon')))} for this query. Under each noised "
        "figure, ± is the 95% margin of the noise added to it (marked when larger than the "
        "figure itself: such a figure says little); rates show the interval their noised "
        "parts allow. Lifts, p-values and their confidence intervals are computed from the "
        "noised figures and cover sampling error only.</p>"
    )


def write_lift_report(result: Result, path: str | Path, *, simulated: bool) -> Path:
    target = Path(path)
    target.write_text(lift_report_html(result, simulated=simulated), encoding="utf-8")
    return target


def summary(result: Result) -> dict[str, Any]:
    """Headline numbers of the overall segment (for consoles and demo summaries)."""
    cells = _index(result)
    return {
        m: _value(cells, m, ALL)
        for m in (
            "conversion_lift_abs",
            "conversion_lift_rel",
            "conversion_p_value",
            "incremental_conversions",
            "incremental_revenue",
        )
    }
