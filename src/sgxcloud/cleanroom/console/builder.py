"""The query builder: what the definition lets one party ask, and the query
document a filled-in form stands for.

Only analyses naming the party as an analyst are offered, and for each only
its own attributes (with their declared values), datasets and breakdowns.  A
form that names anything else is refused here with a field-named error before
anything is sent; the coordinator checks everything again anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sgxcloud.cleanroom.definition import Analysis, Attribute, Definition
from sgxcloud.cleanroom.errors import QueryError

TEMPLATE_TITLES = {
    "audience_size": "Audience size",
    "overlap": "Overlap between datasets",
    "campaign_lift": "Campaign lift (test vs control)",
}


@dataclass(frozen=True)
class AttributeOffer:
    ref: str  # provider.dataset.column
    type: str
    values: tuple[str, ...]
    min: float | None = None
    max: float | None = None

    @property
    def field(self) -> str:
        """The form field name (dots are awkward in ids and CSS selectors)."""
        return "a-" + self.ref.replace(".", "-")


@dataclass(frozen=True)
class AnalysisOffer:
    name: str
    template: str
    description: str
    attributes: tuple[AttributeOffer, ...]
    datasets: tuple[str, ...]
    breakdowns: tuple[str, ...]
    recipients: tuple[str, ...]
    attribution_window_days: int | None

    @property
    def title(self) -> str:
        return TEMPLATE_TITLES.get(self.template, self.template)


def _attribute(definition: Definition, ref: str) -> AttributeOffer | None:
    resolved = definition.resolve_attribute(ref)
    if resolved is None:
        return None
    attr: Attribute = resolved[1]
    return AttributeOffer(ref, attr.type, tuple(attr.values), attr.min, attr.max)


def _description(definition: Definition, name: str) -> str:
    for doc in definition.document.get("analyses", []):
        if doc.get("name") == name:
            return str(doc.get("description", ""))
    return ""


def offers(definition: Definition, party: str) -> list[AnalysisOffer]:
    """Every analysis ``party`` may run, with exactly what it may use in it."""
    out = []
    for analysis in definition.analyses:
        if party not in analysis.analysts:
            continue
        out.append(_offer(definition, analysis))
    return out


def _offer(definition: Definition, analysis: Analysis) -> AnalysisOffer:
    attrs = tuple(a for a in (_attribute(definition, r) for r in analysis.attributes) if a)
    return AnalysisOffer(
        name=analysis.name,
        template=analysis.template,
        description=_description(definition, analysis.name),
        attributes=attrs,
        datasets=tuple(analysis.datasets),
        breakdowns=tuple(analysis.breakdowns),
        recipients=tuple(analysis.recipients),
        attribution_window_days=(
            analysis.attribution_window_days if analysis.template == "campaign_lift" else None
        ),
    )


def offer_for(definition: Definition, party: str, name: str) -> AnalysisOffer | None:
    return next((o for o in offers(definition, party) if o.name == name), None)


# -- form -> query document --------------------------------------------------------------


class Form:
    """Read-only view of submitted fields (a name may repeat: checkboxes)."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self._items = list(items)

    def get(self, name: str, default: str = "") -> str:
        return next((v for k, v in self._items if k == name), default)

    def getlist(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    @classmethod
    def of(cls, mapping: Mapping[str, Any]) -> Form:
        items = []
        for key, value in mapping.items():
            for v in value if isinstance(value, list | tuple) else [value]:
                items.append((key, str(v)))
        return cls(items)


def _number(text: str, ref: str, bound: str) -> int | float:
    try:
        value = float(text)
    except ValueError as exc:
        raise QueryError(ref, f"{bound} must be a number") from exc
    return int(value) if value.is_integer() else value


def attribute_filters(offer: AnalysisOffer, form: Form) -> list[dict[str, Any]]:
    """One comparison (or two for a numeric range) per attribute the form constrains."""
    out: list[dict[str, Any]] = []
    for attr in offer.attributes:
        if attr.type == "boolean":
            out += _boolean_filter(attr, form.get(attr.field, "any"))
        elif attr.type == "category":
            out += _category_filter(attr, form.getlist(attr.field))
        else:
            out += _range_filters(attr, form)
    return out


def _boolean_filter(attr: AttributeOffer, choice: str) -> list[dict[str, Any]]:
    """``= true``/``= false``, or nothing for "any"."""
    if choice in ("true", "false"):
        return [{"attribute": attr.ref, "op": "=", "value": choice == "true"}]
    if choice != "any":
        raise QueryError(attr.ref, "choose any, true or false")
    return []


def _category_filter(attr: AttributeOffer, chosen: list[str]) -> list[dict[str, Any]]:
    """``=`` one value, ``in`` several; nothing for none or all of them (no constraint)."""
    if any(v not in attr.values for v in chosen):
        raise QueryError(attr.ref, "not a declared value of this attribute")
    if len(chosen) == 1:
        return [{"attribute": attr.ref, "op": "=", "value": chosen[0]}]
    if chosen and len(chosen) < len(attr.values):
        return [{"attribute": attr.ref, "op": "in", "value": chosen}]
    return []


def _range_filters(attr: AttributeOffer, form: Form) -> list[dict[str, Any]]:
    """``>=`` the minimum and ``<=`` the maximum given (a number each)."""
    out = []
    for bound, op in (("min", ">="), ("max", "<=")):
        text = form.get(f"{attr.field}-{bound}").strip()
        if text:
            out.append({"attribute": attr.ref, "op": op, "value": _number(text, attr.ref, bound)})
    return out


def build_query(offer: AnalysisOffer, form: Form) -> dict[str, Any]:
    """The query document for ``offer`` filled in with ``form``.

    Attribute controls are joined with AND; the optional text filter (the
    language of the CLI, for OR / NOT) is ANDed with them as its own clause.
    """
    doc: dict[str, Any] = {"template": offer.template, "analysis": offer.name}
    clauses: list[Any] = attribute_filters(offer, form)
    text = form.get("filter_text").strip()
    if text:
        from sgxcloud.cleanroom.engine.query import parse_filter_text

        clauses.append(parse_filter_text(text).to_dict())
    if len(clauses) == 1:
        doc["filter"] = clauses[0]
    elif clauses:
        doc["filter"] = {"and": clauses}
    if offer.template == "overlap":
        chosen = form.getlist("datasets")
        if any(d not in offer.datasets for d in chosen):
            raise QueryError("datasets", "not a dataset of this analysis")
        if not 2 <= len(chosen) <= 3:
            raise QueryError("datasets", "choose two or three datasets")
        doc["datasets"] = chosen
    if offer.template == "campaign_lift":
        breakdown = form.get("breakdown")
        if breakdown and breakdown not in offer.breakdowns:
            raise QueryError("breakdown", "not a breakdown of this analysis")
        if breakdown:
            doc["breakdown"] = breakdown
    return doc
