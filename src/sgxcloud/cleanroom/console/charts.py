"""Charts as inline SVG, drawn on the server from released cells only.

No script and no style attribute: shapes use SVG presentation attributes, so
the console's Content-Security-Policy (no inline style, no script) holds.
Every label passes through :func:`html.escape`.  Each chart has a title and
a description for screen readers; the same figures are in a table beside it.
Suppressed cells are drawn as a marked gap with the word "suppressed", never
as a number.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

from sgxcloud.cleanroom.report import ALL, wilson
from sgxcloud.cleanroom.results import Cell, Result

PLOT_W = 500
CHAR_W = 7.2  # width of one 12px label character, near enough to size the label column
RIGHT_PAD = 70
ROW_H = 30
TOP = 46
BOTTOM = 40
MAX_ROWS = 12
"""Longer breakdowns are charted in part; the table below the chart has them all."""

COLOURS = {
    "test": "#1d4ed8",
    "control": "#6b7280",
    "lift": "#1d4ed8",
    "bar": "#0f766e",
    "suppressed": "#b45309",
    "axis": "#374151",
    "grid": "#e5e7eb",
}


@dataclass(frozen=True)
class Interval:
    value: float | None  # None: suppressed
    low: float | None = None
    high: float | None = None


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min(
        (m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=magnitude * 10
    )
    start = math.floor(low / step) * step
    out = [round(start, 12)]
    while out[-1] < high - step * 1e-9:  # the last tick covers the highest value
        out.append(round(out[-1] + step, 12))
    return out


class _Canvas:
    def __init__(
        self,
        title: str,
        description: str,
        rows: int,
        labels: Sequence[str],
        legend: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.height = TOP + rows * ROW_H + BOTTOM
        # The label column fits the longest label, so no label is cut off.
        self.label_w = min(
            max(120, int(max((len(x) for x in labels), default=0) * CHAR_W) + 20), 460
        )
        self.width = self.label_w + PLOT_W + RIGHT_PAD
        self.parts: list[str] = []
        self.title = title
        self.description = description
        self.legend = legend

    def scale(self, low: float, high: float) -> None:
        ticks = _ticks(low, high)
        self.lo, self.hi = ticks[0], ticks[-1]
        self.ticks = ticks

    def x(self, value: float) -> float:
        span = (self.hi - self.lo) or 1.0
        return self.label_w + (value - self.lo) / span * PLOT_W

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        anchor: str = "start",
        size: int = 12,
        fill: str = "#111827",
        italic: bool = False,
    ) -> None:
        style = ' font-style="italic"' if italic else ""
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}"{style}>{escape(text)}</text>'
        )

    def axis(self, fmt) -> None:
        bottom = self.height - BOTTOM + 6
        for tick in self.ticks:
            x = self.x(tick)
            self.add(
                f'<line x1="{x:.1f}" y1="{TOP - 6}" x2="{x:.1f}" y2="{bottom}" '
                f'stroke="{COLOURS["grid"]}"/>'
            )
            self.text(x, bottom + 14, fmt(tick), anchor="middle", size=11, fill=COLOURS["axis"])

    def render(self) -> Markup:
        legend = []
        x = self.label_w
        for label, colour in self.legend:
            legend.append(f'<rect x="{x}" y="24" width="12" height="12" fill="{colour}"/>')
            legend.append(
                f'<text x="{x + 16}" y="34" font-size="12" fill="#111827">{escape(label)}</text>'
            )
            x += 24 + 8 * len(label)
        body = "".join(self.parts)
        # Every piece of text above went through escape(): the markup is ours.
        return Markup(  # noqa: S704
            f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
            f'viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" '
            f'aria-labelledby="{self._id}-t {self._id}-d">'
            f'<title id="{self._id}-t">{escape(self.title)}</title>'
            f'<desc id="{self._id}-d">{escape(self.description)}</desc>'
            f'<text x="8" y="16" font-size="14" font-weight="bold" fill="#111827">'
            f"{escape(self.title)}</text>{''.join(legend)}{body}</svg>"
        )

    @property
    def _id(self) -> str:
        return "c" + hashlib.sha256(self.title.encode()).hexdigest()[:10]


def _segments(result: Result) -> list[str]:
    found = {c.dims.get("segment", ALL) for c in result.cells}
    return sorted(found, key=lambda s: (s != ALL, s))


def _index(result: Result) -> dict[tuple[str, str, str], Cell]:
    return {(c.metric, c.dims.get("segment", ALL), c.dims.get("arm", "")): c for c in result.cells}


def _val(cells, metric: str, seg: str, arm: str = "") -> float | None:
    cell = cells.get((metric, seg, arm))
    return None if cell is None or cell.suppressed or cell.value is None else float(cell.value)


def _row_y(i: int) -> float:
    return TOP + i * ROW_H + ROW_H / 2


def _suppressed_mark(canvas: _Canvas, y: float) -> None:
    canvas.text(
        canvas.x(canvas.lo) + 4,
        y + 4,
        "suppressed (< k)",
        size=11,
        fill=COLOURS["suppressed"],
        italic=True,
    )


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%" if abs(value) >= 0.1 or value == 0 else f"{value * 100:.1f}%"


def lift_chart(result: Result) -> Markup:
    """Relative conversion lift per segment with its released 95% CI (a forest plot)."""
    cells = _index(result)
    segs = _segments(result)[:MAX_ROWS]
    rows = [
        (
            seg,
            Interval(
                _val(cells, "conversion_lift_rel", seg),
                _val(cells, "conversion_lift_rel_ci_low", seg),
                _val(cells, "conversion_lift_rel_ci_high", seg),
            ),
        )
        for seg in segs
    ]
    shown = [v for _, iv in rows for v in (iv.value, iv.low, iv.high) if v is not None]
    canvas = _Canvas(
        "Relative conversion lift, test vs control (95% CI)",
        "Point estimate and 95% confidence interval of the relative lift in "
        "conversion rate for each segment; zero means no effect.",
        len(rows),
        segs,
    )
    canvas.scale(min([0.0, *shown]), max([0.0, *shown]))
    canvas.axis(_percent)
    zero = canvas.x(0.0)
    canvas.add(
        f'<line x1="{zero:.1f}" y1="{TOP - 6}" x2="{zero:.1f}" '
        f'y2="{canvas.height - BOTTOM + 6}" stroke="{COLOURS["axis"]}" stroke-width="1.5"/>'
    )
    for i, (seg, iv) in enumerate(rows):
        y = _row_y(i)
        canvas.text(canvas.label_w - 10, y + 4, seg, anchor="end")
        if iv.value is None:
            _suppressed_mark(canvas, y)
            continue
        if iv.low is not None and iv.high is not None:
            canvas.add(
                f'<line x1="{canvas.x(iv.low):.1f}" y1="{y:.1f}" '
                f'x2="{canvas.x(iv.high):.1f}" y2="{y:.1f}" stroke="{COLOURS["lift"]}" '
                'stroke-width="2"/>'
            )
            for end in (iv.low, iv.high):
                canvas.add(
                    f'<line x1="{canvas.x(end):.1f}" y1="{y - 6:.1f}" '
                    f'x2="{canvas.x(end):.1f}" y2="{y + 6:.1f}" '
                    f'stroke="{COLOURS["lift"]}" stroke-width="2"/>'
                )
        canvas.add(
            f'<circle cx="{canvas.x(iv.value):.1f}" cy="{y:.1f}" r="5" '
            f'fill="{COLOURS["lift"]}"><title>{escape(seg)}: '
            f"{iv.value * 100:+.1f}%</title></circle>"
        )
        canvas.text(canvas.width - RIGHT_PAD + 6, y + 4, f"{iv.value * 100:+.1f}%", size=11)
    return canvas.render()


def arm_chart(result: Result) -> Markup:
    """Conversion rate of test and control per segment, with 95% Wilson intervals
    computed from the released people and converter counts."""
    cells = _index(result)
    segs = _segments(result)[:MAX_ROWS]
    canvas = _Canvas(
        "Conversion rate by arm (95% Wilson interval)",
        "For each segment, the conversion rate of the test (exposed) and control "
        "groups with 95% intervals.",
        len(segs) * 2,
        segs,
        legend=(("test", COLOURS["test"]), ("control", COLOURS["control"])),
    )
    bars = []
    for seg in segs:
        for arm in ("test", "control"):
            rate = _val(cells, "conversion_rate", seg, arm)
            ci = (
                wilson(_val(cells, "converters", seg, arm), _val(cells, "people", seg, arm))
                if rate is not None
                else None
            )
            bars.append((seg, arm, rate, ci))
    highs = [ci[1] for *_, ci in bars if ci] + [r for *_, r, _ in bars if r is not None]
    canvas.scale(0.0, max([0.01, *highs]))
    canvas.axis(_percent)
    for i, (seg, arm, rate, ci) in enumerate(bars):
        y = _row_y(i)
        if arm == "test":
            canvas.text(canvas.label_w - 10, y + ROW_H / 2 + 4, seg, anchor="end")
        if rate is None:
            _suppressed_mark(canvas, y)
            continue
        x0 = canvas.x(0.0)
        canvas.add(
            f'<rect x="{x0:.1f}" y="{y - 9:.1f}" width="{canvas.x(rate) - x0:.1f}" '
            f'height="18" fill="{COLOURS[arm]}"><title>{escape(seg)} {arm}: '
            f"{rate * 100:.2f}%</title></rect>"
        )
        if ci:
            canvas.add(
                f'<line x1="{canvas.x(ci[0]):.1f}" y1="{y:.1f}" x2="{canvas.x(ci[1]):.1f}"'
                f' y2="{y:.1f}" stroke="#111827" stroke-width="1.5"/>'
            )
        canvas.text(canvas.width - RIGHT_PAD + 6, y + 4, f"{rate * 100:.2f}%", size=11)
    return canvas.render()


def bar_chart(title: str, description: str, rows: Sequence[tuple[str, float | None]]) -> Markup:
    """Horizontal bars of counts (overlap, audience); None is a suppressed cell."""
    rows = list(rows)[:MAX_ROWS]
    canvas = _Canvas(title, description, len(rows), [label for label, _ in rows])
    canvas.scale(0.0, max([1.0, *(v for _, v in rows if v is not None)]))
    canvas.axis(lambda v: f"{v:,.0f}")
    for i, (label, value) in enumerate(rows):
        y = _row_y(i)
        canvas.text(canvas.label_w - 10, y + 4, label, anchor="end")
        if value is None:
            _suppressed_mark(canvas, y)
            continue
        x0 = canvas.x(0.0)
        canvas.add(
            f'<rect x="{x0:.1f}" y="{y - 10:.1f}" width="{canvas.x(value) - x0:.1f}" '
            f'height="20" fill="{COLOURS["bar"]}"><title>{escape(label)}: '
            f"{value:,.0f}</title></rect>"
        )
        canvas.text(canvas.width - RIGHT_PAD + 6, y + 4, f"{value:,.0f}", size=11)
    return canvas.render()


def charts_for(result: Result) -> list[Markup]:
    """The charts that suit a result's template."""
    if result.template == "campaign_lift":
        return [lift_chart(result), arm_chart(result)]
    if result.template == "overlap":
        rows = [
            (c.dims.get("datasets", "").replace("+", " ∩ "), None if c.suppressed else c.value)
            for c in result.cells
            if c.metric == "people"
        ]
        rows.sort(key=lambda r: (r[0].count("∩"), r[0]))
        return [
            bar_chart(
                "People per dataset and shared between them",
                "Distinct people in each dataset and in each intersection.",
                rows,
            )
        ]
    return []
