"""Secret placeholders in a service's argv, environment and files.

One syntax: ``{{secret:NAME}}`` or ``{{secret:NAME:FORMAT}}`` (spaces allowed
inside the braces).  ``{{`` is reserved: any ``{{`` that does not start a valid
placeholder is an error, so a typo can never reach an enclave verbatim.

Formats by secret kind (the first is the default):

==============  ===============================================
random          hex, base64, raw
gramine-key     hex, base64, raw
private-key     pem (PKCS#8), public-pem
x509            pem (the certificate), chain-pem (cert + policy CA), ca-pem
==============  ===============================================

``raw`` yields bytes, so it may only be a file's entire content (the way a
Gramine key reaches ``/dev/attestation/keys/NAME``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{\{\s*secret:([A-Za-z_][A-Za-z0-9_.-]{0,63})(?::([a-z0-9-]+))?\s*\}\}")
_OPEN = "{{"

FORMATS: dict[str, tuple[str, ...]] = {
    "random": ("hex", "base64", "raw"),
    "gramine-key": ("hex", "base64", "raw"),
    "private-key": ("pem", "public-pem"),
    "x509": ("pem", "chain-pem", "ca-pem"),
}
BINARY_FORMATS = frozenset({"raw"})


@dataclass(frozen=True)
class Placeholder:
    secret: str
    format: str | None  # None: the kind's default
    start: int
    end: int

    def format_for(self, kind: str) -> str:
        return self.format or FORMATS[kind][0]


class PlaceholderSyntaxError(ValueError):
    """A ``{{`` that does not start a valid placeholder (message says where)."""


def find_placeholders(text: str) -> Iterator[Placeholder]:
    """Every placeholder in ``text``; raises ``PlaceholderSyntaxError`` on a stray ``{{``."""
    position = 0
    while (start := text.find(_OPEN, position)) != -1:
        match = PLACEHOLDER.match(text, start)
        if match is None:
            raise PlaceholderSyntaxError(
                f"the '{{{{' at character {start} does not start a placeholder "
                "({{secret:NAME}} or {{secret:NAME:FORMAT}})"
            )
        yield Placeholder(match.group(1), match.group(2), start, match.end())
        position = match.end()


def is_whole(text: str, placeholder: Placeholder) -> bool:
    """True if ``placeholder`` is all of ``text`` (required for binary formats)."""
    return placeholder.start == 0 and placeholder.end == len(text)


def substitute(text: str, value_of: Callable[[str, str | None], str]) -> str:
    """``text`` with each placeholder replaced by ``value_of(secret, format)``."""
    pieces: list[str] = []
    position = 0
    for placeholder in find_placeholders(text):
        pieces.append(text[position : placeholder.start])
        pieces.append(value_of(placeholder.secret, placeholder.format))
        position = placeholder.end
    pieces.append(text[position:])
    return "".join(pieces)


def render_file(text: str, value_of: Callable[[str, str | None], bytes]) -> bytes:
    """File content as bytes; ``value_of`` returns bytes (raw formats stay binary)."""
    pieces: list[bytes] = []
    position = 0
    for placeholder in find_placeholders(text):
        pieces.append(text[position : placeholder.start].encode())
        pieces.append(value_of(placeholder.secret, placeholder.format))
        position = placeholder.end
    pieces.append(text[position:].encode())
    return b"".join(pieces)


@dataclass(frozen=True)
class RenderPlan:
    """What rendering one service's configuration takes, read once from its texts.

    ``literal_bytes``: UTF-8 bytes of the argv entries, environment names and
    values, and file paths and contents, without their placeholders.
    ``uses``: (secret, format or None) -> how many placeholders name it.  The
    rendered size is ``literal_bytes`` + each use's count times its value's
    formatted length: known before anything is rendered.
    """

    literal_bytes: int
    uses: dict[tuple[str, str | None], int]

    def size_with(self, length_of: Callable[[str, str | None], int]) -> int:
        """The rendered size if each (secret, format) fills ``length_of`` bytes."""
        return self.literal_bytes + sum(
            count * length_of(secret, fmt) for (secret, fmt), count in self.uses.items()
        )


def render_plan(texts: Iterator[str] | list[str]) -> RenderPlan:
    """The :class:`RenderPlan` of ``texts`` (every string that ends up in a configuration)."""
    literal = 0
    uses: dict[tuple[str, str | None], int] = {}
    for text in texts:
        literal += len(text.encode())
        for placeholder in find_placeholders(text):
            literal -= placeholder.end - placeholder.start  # placeholders are ASCII
            key = (placeholder.secret, placeholder.format)
            uses[key] = uses.get(key, 0) + 1
    return RenderPlan(literal, uses)
