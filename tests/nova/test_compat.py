"""sgxcloud.nova.compat is the one place of the Nova layer that knows versions:
the minima are declared there and compared there, and messages print them
from there (STYLE.md, "Older Nova releases")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from sgxcloud.nova import compat

NOVA = Path(__file__).resolve().parents[2] / "src" / "sgxcloud" / "nova"
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_version(node: ast.expr) -> bool:
    """A version written in place (``(5, 11)``) or a minimum (``MIN_…``, ``x.MIN_…``)."""
    if isinstance(node, ast.Tuple):
        return bool(node.elts) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, int) for e in node.elts
        )
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.startswith("MIN_")


def _version_comparisons(source: str) -> list[int]:
    """The lines of ``source`` that order a version against something."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Compare)
        and any(isinstance(op, _ORDER) for op in node.ops)
        and any(_is_version(side) for side in (node.left, *node.comparators))
    ]


def test_nothing_but_compat_compares_versions() -> None:
    outside = [
        f"{path.relative_to(NOVA)}:{line}"
        for path in sorted(NOVA.rglob("*.py"))
        if path.name != "compat.py"
        for line in _version_comparisons(path.read_text())
    ]
    assert outside == []


def test_the_survey_sees_the_comparisons_it_forbids() -> None:
    """What the checks used to write (before compat.older_than)."""
    source = (
        "old = kernel[:2] < MIN_KERNEL\n"
        "guest = version[:2] < (5, 11)\n"
        "fine = compat.MIN_QEMU <= found\n"
        "unrelated = len(x) < 3\n"
    )
    assert _version_comparisons(source) == [1, 2, 3]


@pytest.mark.parametrize(
    ("found", "minimum", "older"),
    [
        ((5, 12), (5, 13), True),
        ((5, 13), (5, 13), False),
        ((6, 1), (5, 13), False),
        ((8, 9, 9), (8, 10, 0), True),
        ((8, 10, 0), (8, 10, 0), False),
        ((10, 0, 0), (8, 10, 0), False),  # numbers, not text: 10 > 8
    ],
)
def test_older_than_compares_part_by_part(
    found: tuple[int, ...], minimum: tuple[int, ...], older: bool
) -> None:
    assert compat.older_than(found, minimum) is older


def test_minima_print_dotted() -> None:
    assert compat.dotted(compat.MIN_KERNEL) == "5.13"
    assert compat.dotted(compat.MIN_KERNEL_SGX_DRIVER) == "5.11"
    assert compat.dotted(compat.MIN_LIBVIRT) == "8.10.0"
    assert compat.dotted(compat.MIN_QEMU) == "7.0.0"
