"""Exports of a verified result: CSV for spreadsheets, the signed bundle as
JSON (what ``sgxcloud cleanroom verify-result`` checks), the HTML lift report."""

from __future__ import annotations

import csv
import io
import json

from sgxcloud.cleanroom.results import Result
from sgxcloud.cleanroom.sdk import VerifiedResult

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell_text(value: object) -> str:
    """A spreadsheet must not run a label as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    if text.startswith(_FORMULA_START) and not _is_number(text):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def result_csv(result: Result) -> str:
    """One row per released cell: its dimensions, value and flags."""
    dims = sorted({k for c in result.cells for k in c.dims})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["result_id", "analysis", "template", "metric", *dims, "value", "suppressed", "dp_noise"]
    )
    for cell in result.cells:
        value = (
            ""
            if cell.suppressed or cell.value is None
            else repr(cell.value)
            if isinstance(cell.value, float)
            else cell.value
        )
        writer.writerow(
            [
                _cell_text(x)
                for x in (
                    result.result_id,
                    result.analysis,
                    result.template,
                    cell.metric,
                    *(cell.dims.get(d, "") for d in dims),
                    value,
                    str(cell.suppressed).lower(),
                    str(cell.noisy).lower(),
                )
            ]
        )
    return out.getvalue()


def bundle_json(verified: VerifiedResult) -> str:
    """The signed bundle exactly as the coordinator sent it."""
    return json.dumps(verified.bundle, indent=2, sort_keys=True) + "\n"


def file_stem(result: Result) -> str:
    return f"{result.analysis}-{result.result_id[:8]}"
