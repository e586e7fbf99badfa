"""Compiling a filter tree to SQL: names from the definition, values as parameters."""

# ruff: noqa: S608 -- SQL text here is assembled only from names the definition
# schema restricts to [a-z0-9_] (passed through quote()) and engine-made table
# names; every value is a bound parameter.

from __future__ import annotations

from typing import Any

from sgxcloud.cleanroom.definition import Dataset, Definition
from sgxcloud.cleanroom.engine.identity import person_table, quote
from sgxcloud.cleanroom.engine.query import COMPARISON_OPS, And, Comparison, Filter, Not, Or


def compile_filter(
    definition: Definition, node: Filter | None, params: list[Any], person_col: str = "person"
) -> str:
    """A SQL boolean expression over ``person_col``; appends bound values to ``params``.

    A comparison holds for a person when any of their rows in that dataset
    satisfies it; NOT negates that (people absent from the dataset match).
    """
    if node is None:
        return "TRUE"
    if isinstance(node, Not):
        return f"(NOT {compile_filter(definition, node.item, params, person_col)})"
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return (
            "("
            + joiner.join(
                compile_filter(definition, item, params, person_col) for item in node.items
            )
            + ")"
        )
    return _comparison(definition, node, params, person_col)


def comparison_condition(
    definition: Definition, node: Comparison, params: list[Any]
) -> tuple[Dataset, str]:
    """The dataset a comparison reads and its condition over that dataset's rows."""
    resolved = definition.resolve_attribute(node.attribute)
    if resolved is None or node.op not in COMPARISON_OPS:
        raise ValueError("filter was not checked against the definition")
    dataset, attribute = resolved
    column = quote(attribute.column)
    if node.op == "in":
        values = node.value if isinstance(node.value, tuple) else (node.value,)
        params.extend(values)
        return dataset, f"{column} IN ({', '.join('?' for _ in values)})"
    params.append(node.value)
    return dataset, f"{column} {node.op} ?"


def _comparison(
    definition: Definition, node: Comparison, params: list[Any], person_col: str
) -> str:
    dataset, condition = comparison_condition(definition, node, params)
    return f"{quote(person_col)} IN (SELECT person FROM {person_table(dataset)} WHERE {condition})"
