"""Reading a definition: YAML → JSON Schema → semantic checks → typed model.

Validation is split by section (parties, enclaves, datasets, analyses,
privacy); each problem is a :class:`DefinitionError` whose ``field`` is the
path of the offending value, e.g. ``analyses[2].breakdowns[0]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from sgxcloud.cleanroom.definition.model import (
    Analysis,
    Attribute,
    ContributionBounds,
    Dataset,
    Definition,
    DifferentialPrivacy,
    EnclavePin,
    Enclaves,
    IdentifierColumn,
    Party,
    Privacy,
)
from sgxcloud.cleanroom.errors import DefinitionError

Problem = tuple[str, str]  # (field path, message)

# Segment names a breakdown adds to an attribute's declared values.
RESERVED_SEGMENTS = ("(all)", "(none)")
# DP settings when a definition has no differential_privacy section: DP is on by
# default; exact answers need an explicit ``enabled: false``
# ε ≤ 1 in total: a yes/no guess about one person right at most 73 % of the time
# (docs/cleanroom/privacy-model.md, 'What a budget permits'; red team cr7)
DEFAULT_EPSILON_PER_QUERY = 0.25
DEFAULT_BUDGET_PER_ANALYST = 1.0
DEFAULT_BUDGET_PER_COLLABORATION = 1.0


@cache
def definition_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package (docs/ holds the same file)."""
    text = resources.files(__package__).joinpath("schema.json").read_text("utf-8")
    return json.loads(text)


def load_definition(path: str | Path) -> Definition:
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise DefinitionError("", f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # never echo the bytes: they may be data
        raise DefinitionError("", f"{path} is not UTF-8 text") from exc
    return parse_definition(text)


def parse_definition(text: str | bytes) -> Definition:
    """Parse YAML (or JSON) text, or UTF-8 bytes; raise the first problem found."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DefinitionError("", "not UTF-8 text") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise DefinitionError("", f"not valid YAML{where}") from exc
    return definition_from_dict(document)


def definition_from_dict(document: Any) -> Definition:
    problems = validate_document(document)
    if problems:
        field, message = problems[0]
        raise DefinitionError(field, message)
    return _build(document)


def validate_document(document: Any) -> list[Problem]:
    """Every problem in the document: schema first, semantics only if the shape is right."""
    if not isinstance(document, dict):
        return [("", "the definition must be a mapping")]
    validator = jsonschema.Draft202012Validator(definition_schema())
    schema_problems = [
        (_path(err.absolute_path), _schema_message(err))
        for err in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    if schema_problems:
        return schema_problems
    problems: list[Problem] = []
    for check in _SECTION_CHECKS:
        problems.extend(check(document))
    return problems


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_message(err: jsonschema.ValidationError) -> str:
    # The default message quotes the offending instance, which may be a data
    # value; say what was expected instead.
    if err.validator == "required":
        return err.message.split(" is a required")[0] + " is required"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return "unknown field(s): " + ", ".join(map(str, extra))
    if err.validator in ("enum", "const"):
        allowed = err.validator_value if err.validator == "enum" else [err.validator_value]
        return "must be one of " + ", ".join(map(str, allowed))
    if err.validator == "pattern":
        return f"must match {err.validator_value}"
    if err.validator == "type":
        return f"must be of type {err.validator_value}"
    if err.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"violates {err.validator} {err.validator_value}"
    if err.validator in ("minItems", "maxItems", "uniqueItems", "maxLength"):
        return f"violates {err.validator} {err.validator_value}"
    return f"violates {err.validator}"


# -- semantic checks, one per section -----------------------------------------


def _check_parties(doc: dict[str, Any]) -> Iterator[Problem]:
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for i, party in enumerate(doc["parties"]):
        if party["name"] in seen_names:
            yield f"parties[{i}].name", "duplicate party name"
        if party["public_key"] in seen_keys:
            yield f"parties[{i}].public_key", "public key used by another party"
        seen_names.add(party["name"])
        seen_keys.add(party["public_key"])
    roles = {r for p in doc["parties"] for r in p["roles"]}
    for role in ("data_provider", "analyst"):
        if role not in roles:
            yield "parties", f"no party has the role {role}"


def _check_enclaves(doc: dict[str, Any]) -> Iterator[Problem]:
    if doc["enclaves"]["coordinator"]["mrenclave"] == doc["enclaves"]["node"]["mrenclave"]:
        yield "enclaves.node.mrenclave", "must differ from the coordinator's MRENCLAVE"


def _check_datasets(doc: dict[str, Any]) -> Iterator[Problem]:
    roles = {p["name"]: p["roles"] for p in doc["parties"]}
    refs: set[str] = set()
    for i, ds in enumerate(doc["datasets"]):
        at = f"datasets[{i}]"
        if "data_provider" not in roles.get(ds["provider"], ()):
            yield f"{at}.provider", "not a party with the role data_provider"
        ref = f"{ds['provider']}.{ds['name']}"
        if ref in refs:
            yield f"{at}.name", f"duplicate dataset {ref}"
        refs.add(ref)
        columns = (
            [c["column"] for c in ds["identifiers"]]
            + [a["column"] for a in ds.get("attributes", [])]
            + [ds[k] for k in ("group_column", "timestamp_column", "amount_column") if k in ds]
        )
        for col in {c for c in columns if columns.count(c) > 1}:
            yield at, f"column {col} is declared more than once"
        kinds = [c["kind"] for c in ds["identifiers"]]
        if "phone" in kinds and "default_phone_region" not in ds:
            yield f"{at}.default_phone_region", "required when a phone column is declared"
        yield from _check_event_columns(ds, at)
        for j, attr in enumerate(ds.get("attributes", [])):
            yield from _check_attribute(attr, f"{at}.attributes[{j}]")


def _check_event_columns(ds: dict[str, Any], at: str) -> Iterator[Problem]:
    needed = {
        "attributes": (),
        "exposures": ("group_column", "timestamp_column"),
        "purchases": ("timestamp_column", "amount_column"),
    }[ds["kind"]]
    if "timestamp_timezone" in ds:
        if "timestamp_column" not in needed:
            yield f"{at}.timestamp_timezone", f"not allowed for kind {ds['kind']}"
        elif not _known_zone(ds["timestamp_timezone"]):
            yield f"{at}.timestamp_timezone", "not an IANA time zone (e.g. UTC, Europe/Berlin)"
    for key in ("group_column", "timestamp_column", "amount_column"):
        if key in needed and key not in ds:
            yield f"{at}.{key}", f"required for kind {ds['kind']}"
        if key not in needed and key in ds:
            yield f"{at}.{key}", f"not allowed for kind {ds['kind']}"
    if ds["kind"] != "attributes" and ds.get("attributes"):
        yield f"{at}.attributes", "only datasets of kind attributes carry attributes"


def _known_zone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _check_attribute(attr: dict[str, Any], at: str) -> Iterator[Problem]:
    if attr["type"] == "category" and "values" not in attr:
        yield f"{at}.values", "required for type category"
    if attr["type"] != "category" and "values" in attr:
        yield f"{at}.values", "only for type category"
    for j, value in enumerate(attr.get("values", [])):
        if value in RESERVED_SEGMENTS:  # a breakdown prints these as segment names
            yield f"{at}.values[{j}]", f"{value} is reserved"
    if ("min" in attr or "max" in attr) and attr["type"] not in ("integer", "number"):
        yield at, "min/max only for integer and number"
    if "min" in attr and "max" in attr and attr["min"] > attr["max"]:
        yield f"{at}.min", "greater than max"


def _check_analyses(doc: dict[str, Any]) -> Iterator[Problem]:
    roles = {p["name"]: p["roles"] for p in doc["parties"]}
    datasets = {f"{d['provider']}.{d['name']}": d for d in doc["datasets"]}
    attrs = {
        f"{ref}.{a['column']}": a for ref, d in datasets.items() for a in d.get("attributes", [])
    }
    names: set[str] = set()
    for i, an in enumerate(doc["analyses"]):
        at = f"analyses[{i}]"
        if an["name"] in names:
            yield f"{at}.name", "duplicate analysis name"
        names.add(an["name"])
        for j, who in enumerate(an["analysts"]):
            if "analyst" not in roles.get(who, ()):
                yield f"{at}.analysts[{j}]", "not a party with the role analyst"
        for j, who in enumerate(an.get("recipients", [])):
            if not {"analyst", "result_recipient"} & set(roles.get(who, ())):
                yield f"{at}.recipients[{j}]", "not a party with the role result_recipient"
        for j, ref in enumerate(an.get("attributes", [])):
            if ref not in attrs:
                yield f"{at}.attributes[{j}]", "no such attribute in an attributes dataset"
        yield from _check_template_fields(an, at, datasets, attrs)


_TEMPLATE_FIELDS = {
    "audience_size": {"attributes"},
    "overlap": {"attributes", "datasets"},
    "campaign_lift": {
        "attributes",
        "exposures",
        "purchases",
        "attribution_window_days",
        "breakdowns",
    },
}


def _check_template_fields(
    an: dict[str, Any], at: str, datasets: dict[str, Any], attrs: dict[str, Any]
) -> Iterator[Problem]:
    template = an["template"]
    for key in ("datasets", "exposures", "purchases", "attribution_window_days", "breakdowns"):
        if key in an and key not in _TEMPLATE_FIELDS[template]:
            yield f"{at}.{key}", f"not used by template {template}"
    if template == "overlap":
        refs = an.get("datasets", [])
        if len(refs) < 2:
            yield f"{at}.datasets", "overlap needs at least two datasets"
        for j, ref in enumerate(refs):
            if ref not in datasets:
                yield f"{at}.datasets[{j}]", "no such dataset"
    if template == "campaign_lift":
        for key, kind in (("exposures", "exposures"), ("purchases", "purchases")):
            if key not in an:
                yield f"{at}.{key}", "required for campaign_lift"
            elif datasets.get(an[key], {}).get("kind") != kind:
                yield f"{at}.{key}", f"must name a dataset of kind {kind}"
        for j, ref in enumerate(an.get("breakdowns", [])):
            attr = attrs.get(ref)
            if attr is None:
                yield f"{at}.breakdowns[{j}]", "no such attribute in an attributes dataset"
            elif attr["type"] not in ("boolean", "category"):
                yield f"{at}.breakdowns[{j}]", "breakdowns need a boolean or category attribute"


def _check_privacy(doc: dict[str, Any]) -> Iterator[Problem]:
    dp = doc["privacy"].get("differential_privacy")
    if not dp:
        return
    if dp["budget_per_analyst"] < dp["epsilon_per_query"]:
        yield "privacy.differential_privacy.budget_per_analyst", "smaller than epsilon_per_query"
    pooled = dp.get("budget_per_collaboration")
    if pooled is not None and pooled < dp["epsilon_per_query"]:
        yield (
            "privacy.differential_privacy.budget_per_collaboration",
            "smaller than epsilon_per_query",
        )
    analysts = {name for an in doc.get("analyses", []) for name in an.get("analysts", [])}
    if pooled is not None and pooled > len(analysts) * dp["budget_per_analyst"]:
        yield (
            "privacy.differential_privacy.budget_per_collaboration",
            f"larger than the analysts' budgets added up ({len(analysts)} × "
            f"{dp['budget_per_analyst']:g}): it would never apply",
        )
    gaussian = dp.get("mechanism", "laplace") == "gaussian"
    if gaussian and "delta" not in dp:
        yield "privacy.differential_privacy.delta", "required for the gaussian mechanism"
    if not gaussian and "delta" in dp:
        yield "privacy.differential_privacy.delta", "only for the gaussian mechanism"


_SECTION_CHECKS: tuple[Callable[[dict[str, Any]], Iterator[Problem]], ...] = (
    _check_parties,
    _check_enclaves,
    _check_datasets,
    _check_analyses,
    _check_privacy,
)


# -- building the model ---------------------------------------------------------


def _pin(doc: dict[str, Any]) -> EnclavePin:
    return EnclavePin(
        doc["mrenclave"], doc.get("mrsigner"), doc.get("isvprodid"), doc.get("min_isvsvn")
    )


def _build(doc: dict[str, Any]) -> Definition:
    enclaves = doc["enclaves"]
    privacy = doc["privacy"]
    dp_doc = privacy.get("differential_privacy")
    # DP is on unless the definition turns it off (``enabled: false``): k-suppression
    # and the differencing check alone cannot stop every tracker (issue 9)
    dp = DifferentialPrivacy(
        DEFAULT_EPSILON_PER_QUERY,
        DEFAULT_BUDGET_PER_ANALYST,
        budget_per_collaboration=DEFAULT_BUDGET_PER_COLLABORATION,
    )
    if dp_doc:
        bounds = dp_doc.get("contribution_bounds", {})
        dp = DifferentialPrivacy(
            epsilon_per_query=float(dp_doc["epsilon_per_query"]),
            budget_per_analyst=float(dp_doc["budget_per_analyst"]),
            enabled=dp_doc.get("enabled", True),
            mechanism=dp_doc.get("mechanism", "laplace"),
            delta=dp_doc.get("delta"),
            bounds=ContributionBounds(
                int(bounds.get("max_purchases_per_person", 10)),
                float(bounds.get("max_revenue_per_person", 1000.0)),
            ),
            budget_per_collaboration=(
                float(dp_doc["budget_per_collaboration"])
                if "budget_per_collaboration" in dp_doc
                else None
            ),
        )
    # who may spend the budget: analysts pooling their answers add their budgets up
    # when no budget_per_collaboration caps them (red team cr8, F2)
    analysts = {name for a in doc["analyses"] for name in a["analysts"]}
    dp = replace(dp, analysts=max(1, len(analysts)))
    return Definition(
        name=doc["name"],
        description=doc.get("description", ""),
        parties=tuple(
            Party(p["name"], tuple(p["roles"]), p["public_key"], p.get("display_name", ""))
            for p in doc["parties"]
        ),
        enclaves=Enclaves(
            coordinator=_pin(enclaves["coordinator"]),
            node=_pin(enclaves["node"]),
            allow_simulated=enclaves.get("allow_simulated", False),
            allowed_tcb_statuses=tuple(enclaves.get("allowed_tcb_statuses", ["UpToDate"])),
            tolerated_advisories=tuple(enclaves.get("tolerated_advisories", ())),
        ),
        datasets=tuple(
            Dataset(
                provider=d["provider"],
                name=d["name"],
                kind=d["kind"],
                identifiers=tuple(
                    IdentifierColumn(i["column"], i["kind"]) for i in d["identifiers"]
                ),
                attributes=tuple(
                    Attribute(
                        a["column"],
                        a["type"],
                        tuple(a.get("values", ())),
                        a.get("min"),
                        a.get("max"),
                    )
                    for a in d.get("attributes", [])
                ),
                default_phone_region=d.get("default_phone_region"),
                group_column=d.get("group_column"),
                timestamp_column=d.get("timestamp_column"),
                amount_column=d.get("amount_column"),
                timestamp_timezone=d.get("timestamp_timezone", "UTC"),
            )
            for d in doc["datasets"]
        ),
        analyses=tuple(
            Analysis(
                name=a["name"],
                template=a["template"],
                analysts=tuple(a["analysts"]),
                recipients=tuple(a.get("recipients", a["analysts"])),
                attributes=tuple(a.get("attributes", ())),
                datasets=tuple(a.get("datasets", ())),
                exposures=a.get("exposures"),
                purchases=a.get("purchases"),
                attribution_window_days=a.get("attribution_window_days", 28),
                breakdowns=tuple(a.get("breakdowns", ())),
            )
            for a in doc["analyses"]
        ),
        privacy=Privacy(
            min_group_size=privacy["min_group_size"],
            differencing_check=privacy.get("differencing_check", True),
            dp=dp,
        ),
        document=doc,
    )
