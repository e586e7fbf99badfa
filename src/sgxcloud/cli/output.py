"""Where command output goes: full values whenever nobody is reading a terminal.

Rich fits tables to the terminal and, without one, to 80 columns, cutting
hashes and measurements with an ellipsis: ``policy show > file`` would keep
a cropped MRENCLAVE.  Piped or redirected output (and ``--wide`` on a
terminal) is therefore never fitted to a width.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text

from sgxcloud.bounded import printable

UNLIMITED = 1_000_000


def wide_output(wide: bool = False, *, stderr: bool = False) -> bool:
    stream = sys.stderr if stderr else sys.stdout
    return wide or not stream.isatty()


def console(wide: bool = False, *, stderr: bool = False) -> Console:
    """A console that crops nothing unless it writes to a terminal without ``--wide``."""
    if wide_output(wide, stderr=stderr):
        return Console(stderr=stderr, width=UNLIMITED, soft_wrap=True)
    return Console(stderr=stderr)


def safe(value: Any) -> str:
    """``value`` as data in a Rich string or table cell: shown as written, never as markup
    (``[/x]`` made ``audit show`` fail; red team rt9 finding F2), and with control, format
    and bidi characters shown as escapes, so stored text cannot drive the terminal."""
    return escape(printable(str(value)))


def code(text: str, lexer: str, wide: bool = False) -> Any:
    """Highlighted on a terminal; verbatim otherwise (Syntax pads and crops to a width)."""
    text = printable(text, lines=True)  # no terminal control from a stored document
    if wide_output(wide):
        return Text(text.rstrip("\n"))  # as written: a document is not markup
    return Syntax(text, lexer)
