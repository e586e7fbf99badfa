"""Queries: typed dataclasses parsed from JSON, and a small, safe filter language.

A filter is a parsed tree of comparisons joined by AND / OR / NOT over the
attributes an analysis allows.  It is never pasted into SQL: the engine
compiles the tree, quoting only names checked against the definition and
passing every value as a bound parameter.

JSON forms::

    {"attribute": "bank.customers.premium_card", "op": "=", "value": true}
    {"attribute": "telecom.subscribers.region", "op": "in", "value": ["north", "west"]}
    {"and": [F, F, ...]}   {"or": [F, F, ...]}   {"not": F}

Text form (for people and the CLI), parsed by :func:`parse_filter_text`::

    retailer.customers.baby_buyer = true AND NOT telecom.subscribers.region IN ('north', 'west')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from sgxcloud.cleanroom.definition import Analysis, Attribute, Definition, canonical_json
from sgxcloud.cleanroom.errors import QueryError, QueryRefused

COMPARISON_OPS = ("=", "!=", "<", "<=", ">", ">=", "in")
MAX_FILTER_NODES = 64
"""Counted as written, before AND/OR are de-duplicated: ``a AND a AND …`` collapses
to one comparison, but every copy had to be read first."""
MAX_FILTER_DEPTH = 8
MAX_IN_VALUES = 100
MAX_FILTER_TEXT = 16 << 10
"""Characters in a text filter: 64 comparisons with IN lists fit several times
over; a longer text is refused before it is tokenised (a 15 MB filter once took
39 s to read)."""
MAX_LITERAL = 1 << 10
"""Characters in one string value (declared category values are short)."""
MAX_NAME = 200
"""Characters in an attribute name (``provider.dataset.column``)."""

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Comparison:
    attribute: str
    op: str
    value: Scalar | tuple[Scalar, ...]

    def to_dict(self) -> dict[str, Any]:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {"attribute": self.attribute, "op": self.op, "value": value}


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"and": [i.to_dict() for i in self.items]}


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"or": [i.to_dict() for i in self.items]}


@dataclass(frozen=True)
class Not:
    item: Filter

    def to_dict(self) -> dict[str, Any]:
        return {"not": self.item.to_dict()}


Filter = Comparison | And | Or | Not


def filter_attributes(node: Filter | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, Comparison):
        return {node.attribute}
    if isinstance(node, Not):
        return filter_attributes(node.item)
    return set().union(*(filter_attributes(i) for i in node.items))


# -- queries ------------------------------------------------------------------------


@dataclass(frozen=True)
class AudienceSizeQuery:
    """Distinct people matching ``filter`` (everyone known to the collaboration if None)."""

    analysis: str
    filter: Filter | None = None
    template = "audience_size"

    def to_dict(self) -> dict[str, Any]:
        return _query_dict(self, {})


@dataclass(frozen=True)
class OverlapQuery:
    """Audience of each dataset (people matching ``filter`` and present in it),
    and of every intersection of them."""

    analysis: str
    datasets: tuple[str, ...]
    filter: Filter | None = None
    template = "overlap"

    def to_dict(self) -> dict[str, Any]:
        return _query_dict(self, {"datasets": list(self.datasets)})


@dataclass(frozen=True)
class CampaignLiftQuery:
    """Test vs control lift among exposed people matching ``filter``,
    optionally broken down by an allowed attribute."""

    analysis: str
    filter: Filter | None = None
    breakdown: str | None = None
    template = "campaign_lift"

    def to_dict(self) -> dict[str, Any]:
        return _query_dict(self, {"breakdown": self.breakdown})


Query = AudienceSizeQuery | OverlapQuery | CampaignLiftQuery


def _query_dict(query: Query, extra: dict[str, Any]) -> dict[str, Any]:
    doc = {
        "template": query.template,
        "analysis": query.analysis,
        "filter": query.filter.to_dict() if query.filter else None,
    }
    doc.update(extra)
    return doc


def canonical_query(query: Query) -> dict[str, Any]:
    """The query as released in results and the audit log (normalised JSON)."""
    return query.to_dict()


def query_key(query: Query, definition_hash: str, data_version: str = "") -> str:
    """Cache key: the same question on the same definition and the same data gets
    the same answer (``data_version``: the engine's hash of what it holds)."""
    body: dict[str, Any] = {"definition_hash": definition_hash, "query": canonical_query(query)}
    if data_version:
        body["data_version"] = data_version
    return hashlib.sha256(canonical_json(body)).hexdigest()


def parse_query(doc: Any) -> Query:
    """Parse a JSON document into a typed query (shape only; see :func:`check_query`)."""
    if not isinstance(doc, dict):
        raise QueryError("", "a query must be a JSON object")
    template = doc.get("template")
    allowed = {
        "audience_size": {"template", "analysis", "filter"},
        "overlap": {"template", "analysis", "filter", "datasets"},
        "campaign_lift": {"template", "analysis", "filter", "breakdown"},
    }
    if template not in allowed:
        raise QueryError("template", "must be one of " + ", ".join(allowed))
    unknown = sorted(set(doc) - allowed[template])
    if unknown:
        raise QueryError(shown(unknown[0]), f"unknown field for {template}")
    analysis = doc.get("analysis")
    if not isinstance(analysis, str) or not analysis:
        raise QueryError("analysis", "must name an analysis of the definition")
    raw_filter = doc.get("filter")
    if isinstance(raw_filter, str):
        flt = parse_filter_text(raw_filter)
    else:
        flt = parse_filter(raw_filter, "filter") if raw_filter is not None else None
    if template == "audience_size":
        return AudienceSizeQuery(analysis, flt)
    if template == "overlap":
        return OverlapQuery(analysis, _overlap_datasets(doc.get("datasets")), flt)
    breakdown = doc.get("breakdown")
    if breakdown is not None and not isinstance(breakdown, str):
        raise QueryError("breakdown", "must be an attribute name or null")
    return CampaignLiftQuery(analysis, flt, breakdown)


def _overlap_datasets(datasets: Any) -> tuple[str, ...]:
    """An overlap's two or three different ``provider.dataset`` names, sorted
    (the order they are given in does not make another query)."""
    if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
        raise QueryError("datasets", "must be a list of provider.dataset names")
    if len(set(datasets)) != len(datasets) or not 2 <= len(datasets) <= 3:
        raise QueryError("datasets", "must name two or three different datasets")
    return tuple(sorted(datasets))


def parse_filter(doc: Any, path: str = "filter", depth: int = 0) -> Filter:
    return _parse_filter(doc, path, depth, _NodeBudget(path))


class _NodeBudget:
    """Counts filter nodes as they are read and stops at the limit, so a filter of
    a million copies costs no more to refuse than one of 65."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.left = MAX_FILTER_NODES

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise QueryError(
                self.path,
                f"more than {MAX_FILTER_NODES} filter nodes "
                "(comparisons, AND, OR and NOT, counted as written)",
            )


def _parse_filter(doc: Any, path: str, depth: int, budget: _NodeBudget) -> Filter:
    if depth > MAX_FILTER_DEPTH:
        raise QueryError(path, f"filter nested deeper than {MAX_FILTER_DEPTH}")
    if not isinstance(doc, dict):
        raise QueryError(path, "must be an object")
    budget.take()
    if set(doc) in ({"and"}, {"or"}):
        op = next(iter(doc))
        items = doc[op]
        if not isinstance(items, list) or len(items) < 2:
            raise QueryError(f"{path}.{op}", "needs a list of at least two filters")
        parsed = [
            _parse_filter(x, f"{path}.{op}[{i}]", depth + 1, budget) for i, x in enumerate(items)
        ]
        return _junction(And if op == "and" else Or, parsed)
    if set(doc) == {"not"}:
        return Not(_parse_filter(doc["not"], f"{path}.not", depth + 1, budget))
    if set(doc) != {"attribute", "op", "value"}:
        raise QueryError(
            path, "must be {attribute, op, value}, {and: [...]}, {or: [...]} or {not: ...}"
        )
    return _parse_comparison(doc["attribute"], doc["op"], doc["value"], path)


def _parse_comparison(attribute: Any, op: Any, value: Any, path: str) -> Comparison:
    """One ``{attribute, op, value}`` leaf, its shape only (types: :func:`check_query`);
    an ``in`` list's values de-duplicated and sorted, so their order makes no other query."""
    if not isinstance(attribute, str):
        raise QueryError(f"{path}.attribute", "must be a string")
    if len(attribute) > MAX_NAME:
        raise QueryError(f"{path}.attribute", f"longer than {MAX_NAME} characters")
    if op not in COMPARISON_OPS:
        raise QueryError(f"{path}.op", "must be one of " + ", ".join(COMPARISON_OPS))
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_IN_VALUES:
            raise QueryError(f"{path}.value", f"'in' needs a list of 1 to {MAX_IN_VALUES} values")
        if not all(_is_scalar(v) for v in value):
            raise QueryError(f"{path}.value", "values must be strings, numbers or booleans")
        _check_literals(f"{path}.value", value)
        return Comparison(attribute, op, tuple(sorted(set(value), key=repr)))
    if not _is_scalar(value):
        raise QueryError(f"{path}.value", "must be a string, number or boolean")
    _check_literals(f"{path}.value", [value])
    return Comparison(attribute, op, value)


def _check_literals(path: str, values: list[Any]) -> None:
    if any(isinstance(v, str) and len(v) > MAX_LITERAL for v in values):
        raise QueryError(path, f"a text value longer than {MAX_LITERAL} characters")


def _junction(kind: type[And] | type[Or], items: list[Filter]) -> Filter:
    """AND/OR in one canonical form: nested same-kind flattened, children
    de-duplicated and sorted, so ``a AND b`` and ``b AND a`` are one query
    (one cache entry, one budget charge)."""
    flat: dict[bytes, Filter] = {}
    for item in items:
        for part in item.items if isinstance(item, kind) else (item,):
            flat[canonical_json(part.to_dict())] = part
    ordered = tuple(flat[key] for key in sorted(flat))
    return ordered[0] if len(ordered) == 1 else kind(ordered)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str) and not (
        isinstance(value, float) and value != value  # NaN
    )


# -- the text form -------------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)|(?P<op><=|>=|!=|<>|==|=|<|>)"
    r"|(?P<str>'(?:[^']|'')*')|(?P<dq>\"[^\"]*\")|(?P<num>-?\d+(?:\.\d+)?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)


def parse_filter_text(text: str) -> Filter:
    """Parse ``a.b.c = 'x' AND (NOT d.e.f IN (1, 2) OR g.h.i >= 3)``."""
    if len(text) > MAX_FILTER_TEXT:
        # Before tokenising: the cost of reading must not grow with what was sent.
        raise QueryError("filter", f"a text filter longer than {MAX_FILTER_TEXT} characters")
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError("filter", _unreadable(text, pos))
        pos = match.end()
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
    parser = _TextParser(tokens)
    node = parser.parse_or(0)
    if parser.pos != len(tokens):
        raise QueryError("filter", "unexpected text after the end of the filter")
    return parse_filter(node.to_dict())  # re-check limits and normalise


def _unreadable(text: str, pos: int) -> str:
    """Where the filter stops making sense, and the usual cause (the text itself is
    not echoed: refusals are audited, and a filter could hold anything)."""
    while pos < len(text) - 1 and text[pos].isspace():
        pos += 1
    char = text[pos]
    hints = {
        "&": "write AND",
        "|": "write OR",
        "!": "write NOT, or != to compare",
        '"': "write text values in single quotes",
        "'": "a quote is not closed",
    }
    hint = hints.get(char, "")
    where = f"cannot read the filter at character {pos + 1}"
    if not char.isalnum() and char.isascii() and char.isprintable():
        where += f" ({char!r})"
    return f"{where}: {hint}" if hint else where


class _TextParser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.budget = _NodeBudget("filter")

    def _peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ("end", "")

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        self.pos += 1
        return token

    def _keyword(self, word: str) -> bool:
        kind, value = self._peek()
        if kind == "word" and value.upper() == word:
            self.pos += 1
            return True
        return False

    @staticmethod
    def _depth(depth: int) -> None:
        # Checked on every way down (parentheses and NOT), so recursion stays shallow.
        if depth > MAX_FILTER_DEPTH:
            raise QueryError(
                "filter", f"filter nested deeper than {MAX_FILTER_DEPTH} (parentheses and NOT)"
            )

    def parse_or(self, depth: int) -> Filter:
        self._depth(depth)
        items = [self.parse_and(depth)]
        while self._keyword("OR"):
            items.append(self.parse_and(depth))
        if len(items) == 1:
            return items[0]
        self.budget.take()
        return Or(tuple(items))

    def parse_and(self, depth: int) -> Filter:
        items = [self.parse_not(depth)]
        while self._keyword("AND"):
            items.append(self.parse_not(depth))
        if len(items) == 1:
            return items[0]
        self.budget.take()
        return And(tuple(items))

    def parse_not(self, depth: int) -> Filter:
        self._depth(depth)
        if self._keyword("NOT"):
            self.budget.take()
            return Not(self.parse_not(depth + 1))
        if self._peek()[0] == "lp":
            self._take()
            node = self.parse_or(depth + 1)
            if self._take()[0] != "rp":
                raise QueryError("filter", "missing closing parenthesis")
            return node
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        self.budget.take()
        kind, attribute = self._take()
        if kind != "word" or attribute.upper() in ("AND", "OR", "NOT", "IN"):
            raise QueryError("filter", "expected an attribute name")
        if self._keyword("IN"):
            if self._take()[0] != "lp":
                raise QueryError("filter", "IN needs a parenthesised list")
            values = [self._literal()]
            while self._peek()[0] == "comma":
                self._take()
                values.append(self._literal())
            if self._take()[0] != "rp":
                raise QueryError("filter", "missing closing parenthesis after IN list")
            return Comparison(attribute, "in", tuple(values))
        kind, op = self._take()
        if kind != "op":
            raise QueryError(
                "filter",
                f"expected a comparison operator after {shown(attribute)} "
                "(=, !=, <, <=, >, >= or IN)",
            )
        if op == "==":
            raise QueryError("filter", f"write = to compare, not == (after {shown(attribute)})")
        return Comparison(attribute, "!=" if op == "<>" else op, self._literal())

    def _literal(self) -> Scalar:
        kind, value = self._take()
        if kind == "str":
            return value[1:-1].replace("''", "'")
        if kind == "num":
            return float(value) if "." in value else int(value)
        if kind == "word" and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind == "dq":
            raise QueryError(
                "filter",
                "write text values in single quotes, e.g. "
                "region = 'north' (double quotes are not used)",
            )
        raise QueryError(
            "filter",
            "expected a value: a string in single quotes ('north'), a number, true or false",
        )


# -- checking a query against the definition ------------------------------------------

_NAME = re.compile(r"^[a-z][a-z0-9_.]{0,120}$")


def shown(text: str) -> str:
    """Echo a name from a query in a message only if it looks like a name.

    Refusals go to the audit log every party reads; a "name" that is really
    an e-mail address or a phone number must not end up there.
    """
    return text if isinstance(text, str) and _NAME.match(text) else "(not a valid name)"


def check_query(definition: Definition, query: Query, analyst: str) -> Analysis:
    """Authorise and type-check; raise QueryRefused("not_allowed") or QueryError.

    A name the definition does not have at all is a QueryError that lists the
    names the analysis allows (the definition is public to every party); a name
    it has but this analysis does not allow is a refusal.
    """
    analysis = definition.analysis(query.analysis)
    if analysis is None:
        mine = [a.name for a in definition.analyses if analyst in a.analysts]
        raise QueryError(
            "analysis",
            f"no analysis named {shown(query.analysis)} in the definition; yours: {_listed(mine)}",
        )
    if analysis.template != query.template:
        raise QueryRefused(
            "not_allowed",
            f"analysis {analysis.name} runs template {analysis.template}, not {query.template}",
        )
    if analyst not in analysis.analysts:
        raise QueryRefused("not_allowed", f"{shown(analyst)} may not run analysis {analysis.name}")
    for attribute in sorted(filter_attributes(query.filter)):
        known = definition.resolve_attribute(attribute) is not None
        _check_allowed(analysis, "filter", "attribute", attribute, known, analysis.attributes)
    if query.filter is not None:
        _check_types(definition, query.filter, "filter")
    for ref in query.datasets if isinstance(query, OverlapQuery) else ():
        known = definition.dataset(ref) is not None
        _check_allowed(analysis, "datasets", "dataset", ref, known, analysis.datasets)
    if isinstance(query, CampaignLiftQuery) and query.breakdown is not None:
        known = definition.resolve_attribute(query.breakdown) is not None
        _check_allowed(
            analysis,
            "breakdown",
            "attribute",
            query.breakdown,
            known,
            analysis.breakdowns,
            allows="allows breakdowns by",
            refused_as="breakdown",
        )
    return analysis


def _check_allowed(
    analysis: Analysis,
    field: str,
    kind: str,
    name: str,
    known: bool,
    allowed: tuple[str, ...],
    *,
    allows: str = "allows",
    refused_as: str | None = None,
) -> None:
    """A name the definition does not have is a QueryError listing what the
    analysis allows (the definition is public to every party); one it has but
    the analysis does not allow is a refusal (not_allowed)."""
    if not known:
        raise QueryError(
            field,
            f"unknown {kind} {shown(name)}; analysis {analysis.name} {allows} {_listed(allowed)}",
        )
    if name not in allowed:
        raise QueryRefused(
            "not_allowed",
            f"{refused_as or kind} {shown(name)} is not allowed in analysis "
            f"{analysis.name} (allowed: {_listed(allowed)})",
        )


def _listed(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(names) if names else "none"


def _check_types(definition: Definition, node: Filter, path: str) -> None:
    if isinstance(node, Not):
        _check_types(definition, node.item, f"{path}.not")
        return
    if isinstance(node, And | Or):
        key = "and" if isinstance(node, And) else "or"
        for i, item in enumerate(node.items):
            _check_types(definition, item, f"{path}.{key}[{i}]")
        return
    resolved = definition.resolve_attribute(node.attribute)
    if resolved is None:
        raise QueryError(f"{path}.attribute", "no such attribute")
    _check_comparison_type(resolved[1], node, path)


def _check_comparison_type(attr: Attribute, node: Comparison, path: str) -> None:
    """``node`` compares ``attr`` the way its type allows, with values of that type."""
    values = node.value if isinstance(node.value, tuple) else (node.value,)
    if attr.type == "boolean":
        if node.op not in ("=", "!=", "in") or not all(isinstance(v, bool) for v in values):
            raise QueryError(path, f"{node.attribute} is boolean: use = or != with true/false")
    elif attr.type == "category":
        if node.op not in ("=", "!=", "in") or not all(isinstance(v, str) for v in values):
            raise QueryError(path, f"{node.attribute} is a category: use =, != or in with strings")
        if any(v not in attr.values for v in values):
            raise QueryError(f"{path}.value", f"not a declared value of {node.attribute}")
    elif not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise QueryError(f"{path}.value", f"{node.attribute} is numeric: compare with numbers")
