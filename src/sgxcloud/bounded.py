"""Text from outside as it may be stored and shown: printable, and bounded.

Records (audit entries, refusals) keep what callers chose to send only in this
form: control, format and bidirectional characters written as escapes, so no
stored text moves a terminal's cursor, recolours it or reorders what a reader
sees; strings and lists cut at a fixed size, each cut saying how much went
(red team rt9 finding F2: a keyless stranger put 48 KB of its own text into
another tenant's audit entries).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MAX_TEXT = 500
"""Characters kept of any one string in an entry's detail (the rest counted)."""
MAX_ITEMS = 300
"""Items kept of any one list in an entry's detail (a policy's secrets fit: 256)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


_CONTROL_BUT_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` with control, format and bidi characters written as escapes (``\\x1b``);
    with ``lines``, tabs and line feeds kept (documents shown as they are laid out)."""
    return (_CONTROL_BUT_LINES if lines else _CONTROL).sub(_escape, text)


def bounded(value: Any) -> Any:
    """``value`` as it may be recorded: strings printable and cut at :data:`MAX_TEXT`
    characters, lists cut at :data:`MAX_ITEMS` items, each cut saying how much went.

    Reasons can carry text the requester chose (a keyless stranger names any
    CAS policy, red team rt9 finding F2): whatever a caller passes, an entry stays
    small and shows as text.
    """
    if isinstance(value, str):
        text = printable(value)
        if len(text) > MAX_TEXT:
            return f"{text[:MAX_TEXT]}… ({len(text) - MAX_TEXT} more characters)"
        return text
    if isinstance(value, Mapping):
        return {printable(str(k))[:MAX_TEXT]: bounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        items = [bounded(v) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"… ({len(value) - MAX_ITEMS} more)")
        return items
    return value
