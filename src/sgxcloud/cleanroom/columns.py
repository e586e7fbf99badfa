"""Reading a provider's attribute and event columns as their declared types.

CSV cells arrive as text; Parquet and DuckDB columns may already be typed.
Each column is converted column-wise with Arrow; only when that fails are the
offending rows found (one value at a time, on the failing batch only) so that
an error can say which rows, which column and what would be accepted — never
the value itself: these messages reach the coordinator and its audit log.

Timestamps written without a zone or offset (``2026-03-04 00:04:34``, what
most exports write) are read in the dataset's declared ``timestamp_timezone``
(UTC by default); those that carry ``Z`` or an offset keep it.  A local time
that occurs twice when clocks go back is read as the first (earlier)
instant; one that does not exist when clocks go forward is moved to the first
instant after the gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_ROWS_SHOWN = 5
_TRUE = ("true", "t", "yes", "y", "1")
_FALSE = ("false", "f", "no", "n", "0")
# a zone or offset after a time: 2026-03-04 10:00Z, …T10:00:00.5+02:00 — not the
# day of a date alone (2026-03-04 is midnight, not "-04" hours)
_OFFSET = r"[T ]\d{2}(?::?\d{2}){0,2}(?:[.,]\d+)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"


@dataclass(frozen=True)
class ColumnProblem:
    """Rows of one batch (0-based) whose value cannot be read as ``expected``."""

    column: str
    expected: str
    accepted: str
    rows: tuple[int, ...]
    count: int


def accepted_text(target: pa.DataType, timezone: str = "UTC") -> str:
    """What a provider may write in a column of this type."""
    if pa.types.is_boolean(target):
        return "true/false, yes/no, t/f, y/n or 1/0 (any case); empty for unknown"
    if pa.types.is_integer(target):
        return "whole numbers such as 42 or -7 (no thousands separators)"
    if pa.types.is_floating(target):
        return "numbers such as 12.5 or -0.75 (a dot for decimals, no thousands separators)"
    if pa.types.is_timestamp(target):
        return (
            "ISO 8601 date-times such as 2026-03-04 00:04:34 (read in "
            f"{timezone}), 2026-03-04T00:04:34Z or 2026-03-04 02:04:34+02:00"
        )
    return "text"


def type_name(target: pa.DataType) -> str:
    if pa.types.is_boolean(target):
        return "boolean"
    if pa.types.is_integer(target):
        return "integer"
    if pa.types.is_floating(target):
        return "number"
    if pa.types.is_timestamp(target):
        return "timestamp"
    return "text"


def convert(
    values: pa.Array | pa.ChunkedArray,
    target: pa.DataType,
    timezone: str = "UTC",
) -> pa.Array:
    """``values`` as ``target``; raises ``pa.ArrowInvalid`` (and kin) if any cannot be read."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    text = pa.types.is_string(values.type)
    if text:
        values = pc.utf8_trim_whitespace(values)
        values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
    if pa.types.is_timestamp(target):
        return _timestamps(values, target, timezone)
    if pa.types.is_boolean(target) and text:
        lowered = pc.utf8_lower(values)
        truth = pc.if_else(
            pc.is_in(lowered, pa.array(_TRUE)),
            "true",
            pc.if_else(pc.is_in(lowered, pa.array(_FALSE)), "false", lowered),
        )
        return truth.cast(target)
    return values.cast(target)


def _timestamps(values: pa.Array, target: pa.DataType, timezone: str) -> pa.Array:
    if pa.types.is_timestamp(values.type):
        if values.type.tz is None:
            values = pc.assume_timezone(
                values, timezone, ambiguous="earliest", nonexistent="latest"
            )
        return values.cast(target)
    if pa.types.is_date(values.type):
        return _timestamps(values.cast(pa.timestamp("us")), target, timezone)
    if not pa.types.is_string(values.type):
        return values.cast(target)
    aware = pc.fill_null(pc.match_substring_regex(values, _OFFSET), False)
    naive_text = pc.if_else(aware, pa.scalar(None, pa.string()), values)
    aware_text = pc.if_else(aware, values, pa.scalar(None, pa.string()))
    naive = pc.assume_timezone(
        naive_text.cast(pa.timestamp(target.unit)),
        timezone,
        ambiguous="earliest",
        nonexistent="latest",
    ).cast(target)
    return pc.if_else(aware, aware_text.cast(target), naive)


def bad_rows(
    values: pa.Array | pa.ChunkedArray, target: pa.DataType, timezone: str = "UTC"
) -> list[int]:
    """Rows (0-based) whose value :func:`convert` cannot read.  Slow: for the error
    path only."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    bad = []
    verdict: dict[object, bool] = {}
    for index in range(len(values)):
        item = values.slice(index, 1)
        key = item[0].as_py()
        if key not in verdict:
            try:
                convert(item, target, timezone)
                verdict[key] = True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                verdict[key] = False
        if not verdict[key]:
            bad.append(index)
    return bad


def problem(
    values: pa.Array | pa.ChunkedArray, column: str, target: pa.DataType, timezone: str = "UTC"
) -> ColumnProblem:
    rows = bad_rows(values, target, timezone)
    return ColumnProblem(
        column,
        type_name(target),
        accepted_text(target, timezone),
        tuple(rows[:MAX_ROWS_SHOWN]),
        len(rows),
    )


def local_time_gaps(values: pa.Array, timezone: str) -> tuple[pa.Array, pa.Array]:
    """Masks of the naive text timestamps that fall on a local time that occurs
    twice (clocks going back) or not at all (clocks going forward) in
    ``timezone``.  Values that cannot be read are neither: they are type
    problems, reported as such."""
    none = pa.array(np.zeros(len(values), dtype=bool))
    if not pa.types.is_string(values.type) or timezone == "UTC":
        return none, none
    text = pc.utf8_trim_whitespace(values)
    aware = pc.fill_null(pc.match_substring_regex(text, _OFFSET), True)
    local = _readable(pc.if_else(aware, pa.scalar(None, pa.string()), text), pa.timestamp("us"))
    first = pc.assume_timezone(local, timezone, ambiguous="earliest", nonexistent="latest")
    last = pc.assume_timezone(local, timezone, ambiguous="latest", nonexistent="earliest")
    differ = pc.fill_null(pc.not_equal(first, last), False)
    gap = pc.fill_null(pc.greater(first, last), False)  # nonexistent: "latest" lands after
    return pc.and_(differ, pc.invert(gap)), gap


_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)


def _readable(text: pa.Array, target: pa.DataType) -> pa.Array:
    """``text`` cast to ``target``, null where a value cannot be read.  Slow
    (one distinct value at a time) only when some cannot."""
    try:
        return text.cast(target)
    except _CAST_ERRORS:
        pass
    verdict: dict[str | None, bool] = {}
    for value in text.to_pylist():
        if value not in verdict:
            try:
                pa.array([value], pa.string()).cast(target)
                verdict[value] = True
            except _CAST_ERRORS:
                verdict[value] = False
    keep = pa.array([verdict[v] for v in text.to_pylist()], pa.bool_())
    return pc.if_else(keep, text, pa.scalar(None, pa.string())).cast(target)
