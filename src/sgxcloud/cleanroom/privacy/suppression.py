"""Minimum group size: primary and complementary suppression.

Primary: a cell covering fewer than k distinct people is suppressed.
Complementary: when parts add up to a released total (segments of a
breakdown), a single suppressed part could be recovered as total minus the
others, so the smallest other part is suppressed too.
"""

from __future__ import annotations

from collections.abc import Mapping


def complementary_suppression(parts: Mapping[str, int], suppressed: set[str]) -> set[str]:
    """Parts to suppress, given primary ``suppressed`` ones, so none can be
    recovered by subtraction from the total of ``parts``.

    ``parts`` maps each part to the number of people it covers.  The total is
    assumed released; suppressing two or more parts leaves their sum but not
    each value recoverable.
    """
    result = set(suppressed) & set(parts)
    if len(result) == 1 and len(parts) > 1:
        others = sorted((n, name) for name, n in parts.items() if name not in result)
        result.add(others[0][1])
    return result
