"""The C-speed bound on a JSON body's values, checked before it is parsed.

:func:`sgxcloud.web.limits.json_values_within` must never let through a
document holding more values than its limit (it is what bounds the CPU a
bad body costs: red team rt5, finding 1), and must not refuse a document
within it because of what its strings hold.  Checked against the exact count
of every generated document, strings full of separators, quotes and escapes.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sgxcloud.web.limits import BodyTooLarge, json_values_within, load_json

TRICKY = st.text(alphabet=',:[]{}"\\ \n\tab\u00e9\u2028', max_size=12)
DOCUMENTS = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TRICKY, inner, max_size=5),
    max_leaves=30,
)


def separators(document: Any) -> int:
    """The ``,`` ``:`` ``[`` ``{`` outside strings: one before every value and key
    but the top one (what a parser builds objects for), one in every empty container."""
    if isinstance(document, list):
        return sum(1 + separators(v) for v in document) or 1
    if isinstance(document, dict):
        return sum(2 + separators(v) for v in document.values()) or 1
    return 0


@settings(max_examples=400, deadline=None)
@given(DOCUMENTS, st.booleans(), st.booleans())
def test_the_bound_is_exact_whatever_strings_hold(
    document: Any, ascii_only: bool, spaced: bool
) -> None:
    body = json.dumps(
        document, ensure_ascii=ascii_only, separators=(", ", ": ") if spaced else (",", ":")
    ).encode()
    count = separators(document)
    assert json_values_within(body, count)
    if count:
        assert not json_values_within(body, count - 1)


def test_many_values_are_refused_in_a_few_milliseconds() -> None:
    # The red team's shapes at 2 MiB: parsing alone took 0.3 s, pydantic 2.3 s.
    for item in (b"[]", b"{}", b"0", b'""', b'"a,b"'):
        body = b'{"x":[' + b",".join([item] * ((2 << 20) // (len(item) + 1))) + b"]}"
        started = time.process_time()
        assert not json_values_within(body, 1024)
        assert time.process_time() - started < 0.05


def test_big_strings_are_not_values() -> None:
    policy = 'rules:\n  - {a: [1, 2], b: "c\\\\"}\n' * 20_000  # 0.6 MB of separators
    body = json.dumps({"policy": policy, "consents": []}).encode()
    assert json_values_within(body, 5)  # { : , : [
    assert load_json(body, max_values=5)["policy"] == policy


def test_load_json_refuses_many_values_before_parsing() -> None:
    try:
        load_json(b"[" + b"0," * 100_000 + b"0]", max_values=4096)
    except BodyTooLarge as exc:
        assert "4096 values" in str(exc)
    else:
        raise AssertionError("100,001 values loaded under a limit of 4096")
