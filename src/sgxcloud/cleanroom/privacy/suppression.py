"""Minimum group size: primary and complementary suppression.

Primary: a cell covering fewer than k distinct people is suppressed.
Complementary: when parts add up to a released total (segments of a
breakdown), the total minus the released parts is the sum of the hidden
ones — itself a figure about those people.  So parts are hidden, smallest
first, until the hidden ones together cover 0 or at least k people; a lone
hidden part, or two tiny ones, could otherwise be recovered by subtraction.
"""

from __future__ import annotations

from collections.abc import Mapping


def complementary_suppression(
    parts: Mapping[str, int], suppressed: set[str], k: int | None = None
) -> set[str]:
    """Parts to suppress, given primary ``suppressed`` ones, so that the total of
    ``parts`` minus the released ones covers 0 or at least ``k`` people.

    ``parts`` maps each part to the number of people it covers; the total is
    assumed released.  Without ``k`` (older callers), the hidden parts must
    together exceed the largest primary-suppressed one, so that none of them
    alone can be recovered.
    """
    result = set(suppressed) & set(parts)
    if not result:
        return result
    need = k if k is not None else max(parts[name] for name in result) + 1
    others = sorted((n, name) for name, n in parts.items() if name not in result)
    hidden = sum(parts[name] for name in result)
    while 0 < hidden < need and others:
        n, name = others.pop(0)
        result.add(name)
        hidden += n
    if k is None and len(result) == 1 and others:  # one hidden part is total − others
        result.add(others[0][1])
    return result
