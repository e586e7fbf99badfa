"""Queries and the filter language: parsing, limits, canonical form, safe SQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.engine import (
    AudienceSizeQuery,
    CampaignLiftQuery,
    Comparison,
    FilterAnd,
    FilterNot,
    FilterOr,
    OverlapQuery,
    check_query,
    parse_filter,
    parse_filter_text,
    parse_query,
    query_key,
)
from sgxcloud.cleanroom.engine.sql import compile_filter
from sgxcloud.cleanroom.errors import QueryError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cleanroom" / "collaboration.yaml"


@pytest.fixture(scope="module")
def definition():
    return load_definition(EXAMPLE)


def canonical(tree):
    return parse_filter(tree.to_dict())


def test_text_and_json_forms_agree():
    text = (
        "retailer.customers.baby_buyer = true AND NOT (telecom.subscribers.region IN "
        "('north', 'west') OR bank.customers.income_band <> 'low')"
    )
    parsed = parse_filter_text(text)
    assert parsed == canonical(
        FilterAnd(
            (
                Comparison("retailer.customers.baby_buyer", "=", True),
                FilterNot(
                    FilterOr(
                        (
                            Comparison("telecom.subscribers.region", "in", ("north", "west")),
                            Comparison("bank.customers.income_band", "!=", "low"),
                        )
                    )
                ),
            )
        )
    )
    assert parse_filter(parsed.to_dict()) == parsed


def test_precedence_and_literals():
    node = parse_filter_text("a.b.c = 1 OR a.b.d = 2.5 AND a.b.e = 'it''s'")
    assert node == canonical(
        FilterOr(
            (
                Comparison("a.b.c", "=", 1),
                FilterAnd((Comparison("a.b.d", "=", 2.5), Comparison("a.b.e", "=", "it's"))),
            )
        )
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a.b.c",
        "a.b.c = ",
        "a.b.c = 'x' AND",
        "(a.b.c = 1",
        "a.b.c IN 1",
        "a.b.c = 'x'; DROP TABLE persons",
        'a.b.c = "x"',
        "a.b.c == 1",
        "AND = 1",
        "a.b.c = 1 a.b.d = 2",
    ],
)
def test_bad_text_is_a_query_error(text):
    with pytest.raises(QueryError):
        parse_filter_text(text)


def test_limits():
    deep = {"attribute": "a.b.c", "op": "=", "value": 1}
    for _ in range(10):
        deep = {"not": deep}
    with pytest.raises(QueryError, match="deeper"):
        parse_filter(deep)
    wide = {"or": [{"attribute": "a.b.c", "op": "=", "value": i} for i in range(70)]}
    with pytest.raises(QueryError, match="nodes"):
        parse_filter(wide)
    with pytest.raises(QueryError):
        parse_filter({"attribute": "a.b.c", "op": "in", "value": list(range(101))})
    with pytest.raises(QueryError):
        parse_filter({"attribute": "a.b.c", "op": "=", "value": float("nan")})
    with pytest.raises(QueryError):
        parse_filter({"and": [{"attribute": "a.b.c", "op": "=", "value": 1}]})


def test_filter_limits_count_what_was_written_and_bound_the_text():
    """Red-team 08/12: repeated AND terms collapsed to one before the 64-node check
    (a 15 MB filter was read for 39 s), and 5,000 NOTs were a RecursionError."""
    same = "bank.customers.premium_card = true"
    with pytest.raises(QueryError, match="more than 64 filter nodes"):
        parse_filter_text(" AND ".join([same] * 65))
    with pytest.raises(QueryError, match="more than 64 filter nodes"):
        parse_filter({"and": [{"attribute": "a.b.c", "op": "=", "value": 1}] * 100_000})
    assert parse_filter_text(" AND ".join([same] * 30)) == Comparison(
        "bank.customers.premium_card", "=", True
    )  # within the limit: still one comparison
    with pytest.raises(QueryError, match="longer than 16384 characters"):
        parse_filter_text(" AND ".join([same] * 150_000))
    with pytest.raises(QueryError, match="deeper"):
        parse_filter_text("NOT " * 3000 + same)  # within the length bound: depth stops it
    with pytest.raises(QueryError, match="longer than 16384"):
        parse_filter_text("NOT " * 5000 + same)
    with pytest.raises(QueryError, match="deeper"):
        parse_filter_text("(" * 3000 + same + ")" * 3000)
    with pytest.raises(QueryError, match="text value longer than 1024"):
        parse_filter_text("a.b.c = '" + "x" * 1025 + "'")
    with pytest.raises(QueryError, match="text value longer than 1024"):
        parse_filter({"attribute": "a.b.c", "op": "in", "value": ["x" * 1025]})
    with pytest.raises(QueryError, match="longer than 200"):
        parse_filter({"attribute": "a" * 201, "op": "=", "value": 1})
    assert parse_filter_text("a.b.c = '" + "x" * 1024 + "'") == Comparison("a.b.c", "=", "x" * 1024)


def test_query_shapes():
    assert isinstance(
        parse_query({"template": "audience_size", "analysis": "audience"}), AudienceSizeQuery
    )
    overlap = parse_query(
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": ["telecom.subscribers", "bank.customers"],
        }
    )
    assert isinstance(overlap, OverlapQuery)
    assert overlap.datasets == ("bank.customers", "telecom.subscribers")  # canonical order
    lift = parse_query({"template": "campaign_lift", "analysis": "lift", "breakdown": None})
    assert isinstance(lift, CampaignLiftQuery)
    for bad in (
        [],
        {"template": "sql"},
        {"template": "overlap", "analysis": "reach"},
        {"template": "overlap", "analysis": "reach", "datasets": ["a.b", "a.b"]},
        {"template": "audience_size"},
        {"template": "audience_size", "analysis": "x", "limit": 5},
        {"template": "campaign_lift", "analysis": "lift", "breakdown": 3},
    ):
        with pytest.raises(QueryError):
            parse_query(bad)


def test_canonical_key_ignores_spelling_not_meaning():
    a = parse_query(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "telecom.subscribers.region IN ('west', 'north')",
        }
    )
    b = parse_query(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": {
                "attribute": "telecom.subscribers.region",
                "op": "in",
                "value": ["north", "west", "west"],
            },
        }
    )
    c = parse_query(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "telecom.subscribers.region IN ('north')",
        }
    )
    assert query_key(a, "h") == query_key(b, "h") != query_key(c, "h")
    assert query_key(a, "h") != query_key(a, "other definition")


def test_type_checks_against_the_definition(definition):
    def check(flt):
        return check_query(
            definition,
            parse_query({"template": "audience_size", "analysis": "audience", "filter": flt}),
            "brand",
        )

    check("bank.customers.premium_card = true")
    for bad in (
        "bank.customers.premium_card = 'yes'",
        "bank.customers.premium_card > true",
        "bank.customers.income_band = 'rich'",
        "bank.customers.income_band < 'low'",
        "telecom.subscribers.region IN ('north', 3)",
    ):
        with pytest.raises(QueryError):
            check(bad)
    with pytest.raises(QueryError, match=r"unknown attribute retailer\.purchases\.amount"):
        check("retailer.purchases.amount > 3")  # an amount column, not an attribute


def test_compiled_sql_binds_every_value(definition):
    node = parse_filter_text(
        "telecom.subscribers.region IN ('north', 'we''st') AND NOT "
        "retailer.customers.baby_buyer = true"
    )
    params: list = []
    sql = compile_filter(definition, node, params)
    assert set(params[:2]) == {"north", "we'st"} and params[2] is True
    assert "north" not in sql and "we" not in sql.replace("WHERE", "")
    assert sql.count("?") == 3
    assert '"p_telecom__subscribers"' in sql and '"region"' in sql


def test_and_or_have_one_canonical_form():
    def key(text):
        return query_key(
            parse_query({"template": "audience_size", "analysis": "audience", "filter": text}), "h"
        )

    a, b, c = "a.b.x = 1", "a.b.y = 2", "a.b.z = 3"
    assert key(f"{a} AND {b}") == key(f"{b} AND {a}") == key(f"{b} AND {a} AND {b}")
    assert key(f"{a} AND ({b} AND {c})") == key(f"({c} AND {a}) AND {b}")
    assert key(f"{a} OR {b}") != key(f"{a} AND {b}")
    assert key(f"{a} AND ({b} OR {c})") != key(f"({a} AND {b}) OR {c}")
