"""Shaping coordinator answers for pages: number formats, lift tables, audit
summaries.  Pure functions of released data; templates escape what they print."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sgxcloud.cleanroom.report import ALL, noise_interval, noise_margin
from sgxcloud.cleanroom.results import Cell, Result

PAGE_ROWS = 12
"""Segments shown before a long breakdown is folded away (the rest one click off)."""

_PERCENT = (
    "conversion_rate",
    "conversion_lift_abs",
    "conversion_lift_rel",
    "revenue_per_person_lift_rel",
)
_MONEY = ("revenue", "revenue_per_person", "revenue_per_person_lift_abs", "incremental_revenue")


def _base(metric: str) -> str:
    for suffix in ("_ci_low", "_ci_high"):
        if metric.endswith(suffix):
            return metric[: -len(suffix)]
    return metric


def number(metric: str, value: float | int | None) -> str:
    if value is None:
        return "–"
    base = _base(metric)
    if base in _PERCENT:
        return f"{float(value) * 100:.2f}%"
    if base.endswith("p_value"):
        return "< 0.0001" if 0 <= float(value) < 0.0001 else f"{float(value):.4f}"
    if base in _MONEY:
        return f"{float(value):,.2f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def cell_text(cell: Cell | None, result: Result | None = None) -> str:
    """A released figure as people should read it: suppression said, DP noise
    marked with ≈ and, when ``result`` is given, its 95% noise margin (± m) or,
    for a rate of two noised counts, the range the noise allows."""
    if cell is None:
        return "–"
    if cell.suppressed:
        return "suppressed (< k)"
    text = number(cell.metric, cell.value)
    if not cell.noisy:
        return text
    text = text if text.startswith("<") else f"≈ {text}"  # "< 0.0001" says enough
    if result is not None:
        margin = noise_margin(result, cell)
        if margin is not None:
            return f"{text} ± {number(cell.metric, margin)}"
        interval = noise_interval(result, cell)
        if interval is not None:
            return f"{text} ({number(cell.metric, interval[0])}–{number(cell.metric, interval[1])})"
    return text


@dataclass(frozen=True)
class LiftRow:
    segment: str
    arms: dict[str, dict[str, str]]  # arm -> metric -> text
    lift_abs: str
    lift_rel: str
    p_value: str
    incremental_conversions: str
    incremental_revenue: str


def _find(result: Result, metric: str, **dims: str) -> Cell | None:
    for cell in result.cells:
        if cell.metric == metric and cell.dims == dims:
            return cell
    return None


def _with_ci(result: Result, metric: str, segment: str) -> str:
    main = _find(result, metric, segment=segment)
    text = cell_text(main, result)
    low = _find(result, f"{metric}_ci_low", segment=segment)
    high = _find(result, f"{metric}_ci_high", segment=segment)
    if (
        main is None
        or main.suppressed
        or low is None
        or high is None
        or low.suppressed
        or high.suppressed
    ):
        return text
    return f"{text} [{number(metric, low.value)}, {number(metric, high.value)}]"


def lift_rows(result: Result) -> list[LiftRow]:
    segments = sorted(
        {c.dims.get("segment", ALL) for c in result.cells}, key=lambda s: (s != ALL, s)
    )
    rows = []
    for seg in segments:
        arms = {
            arm: {
                m: cell_text(_find(result, m, segment=seg, arm=arm), result)
                for m in ("people", "converters", "conversion_rate", "revenue_per_person")
            }
            for arm in ("test", "control")
        }
        rows.append(
            LiftRow(
                seg,
                arms,
                _with_ci(result, "conversion_lift_abs", seg),
                _with_ci(result, "conversion_lift_rel", seg),
                cell_text(_find(result, "conversion_p_value", segment=seg), result),
                _with_ci(result, "incremental_conversions", seg),
                _with_ci(result, "incremental_revenue", seg),
            )
        )
    return rows


def cell_rows(result: Result) -> tuple[list[str], list[dict[str, Any]]]:
    """Every released cell as a row: its dimensions, metric and shown value."""
    dims = sorted({k for c in result.cells for k in c.dims})
    rows = [
        {
            "dims": [c.dims.get(d, "") for d in dims],
            "metric": c.metric,
            "value": cell_text(c, result),
            "suppressed": c.suppressed,
            "noisy": c.noisy,
        }
        for c in result.cells
    ]
    return dims, rows


def flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested privacy parameters as ``a.b: value`` lines."""
    if isinstance(doc, dict):
        out: list[tuple[str, str]] = []
        for key in sorted(doc):
            out += flatten(doc[key], f"{prefix}{key}.")
        return out
    return [(prefix.rstrip("."), "–" if doc is None else str(doc))]


def filter_text(node: Any) -> str:
    """A query's filter tree in the CLI's text form (for headings and the audit)."""
    if node is None:
        return "everyone"
    if isinstance(node, str):
        return node
    if not isinstance(node, dict):
        return json.dumps(node)
    if "and" in node or "or" in node:
        key = "and" if "and" in node else "or"
        parts = [filter_text(n) for n in node[key]]
        return f" {key.upper()} ".join(
            f"({p})" if " " in p and ("AND" in p or "OR" in p) else p for p in parts
        )
    if "not" in node:
        return f"NOT ({filter_text(node['not'])})"
    value = node.get("value")
    shown = (
        json.dumps(value).replace('"', "'")
        if not isinstance(value, list)
        else "(" + ", ".join(json.dumps(v).replace('"', "'") for v in value) + ")"
    )
    return f"{node.get('attribute')} {str(node.get('op', '')).upper()} {shown}"


def audit_summary(entry: dict[str, Any]) -> str:
    """One line for an audit entry (what it says, never the whole cell list)."""
    data = entry.get("data") or {}
    event = entry.get("event")
    if event == "query":
        query = data.get("query") or {}
        return (
            f"{query.get('template')} · {query.get('analysis')} · "
            f"{filter_text(query.get('filter'))}"
        )
    if event == "release":
        return f"result {data.get('result_id')} · to {', '.join(data.get('recipients') or [])}"
    if event == "cache_hit":
        return f"repeated question: result {data.get('result_id')} again"
    if event == "refusal":
        message = str(data.get("message", ""))
        return (
            message
            if message.startswith("query refused")
            else f"refused ({data.get('reason')}): {message}"
        )
    if event == "ingest":
        return f"{data.get('dataset', '')} · ingested"
    if event == "ingest_rejected":
        return (
            f"{data.get('dataset') or ', '.join(data.get('datasets') or [])}: "
            f"{data.get('message', '')}"
        )
    return json.dumps(data, ensure_ascii=False)[:200]


def visible_releases(
    entries: list[dict[str, Any]], party: str, recipients: dict[str, tuple[str, ...]]
) -> list[dict[str, Any]]:
    """Released results this party may fetch (it asked, or it is a recipient),
    newest first, read from the audit log (the coordinator has no listing)."""
    analysis_of: dict[str, str] = {}
    out = []
    for entry in entries:
        data = entry.get("data") or {}
        if entry.get("event") == "query":
            analysis_of[str(data.get("query_hash"))] = str(
                (data.get("query") or {}).get("analysis")
            )
        elif entry.get("event") == "release":
            analysis = analysis_of.get(str(data.get("query_hash")), "")
            if entry.get("actor") == party or party in recipients.get(analysis, ()):
                out.append(
                    {
                        "result_id": data.get("result_id"),
                        "analysis": analysis,
                        "at": entry.get("at"),
                        "analyst": entry.get("actor"),
                    }
                )
    return list(reversed(out))


def when(stamp: Any) -> str:
    """``2026-12-03T14:50:09.383+00:00`` as ``2026-12-03 14:50:09`` (UTC)."""
    text = str(stamp or "")
    return text[:19].replace("T", " ") if len(text) >= 19 else text
