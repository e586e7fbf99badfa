"""Policy validation: the JSON Schema first, then one semantic check per section.

Each check returns a list of ``PolicyProblem`` (field path + message) instead
of stopping at the first, so an author sees everything wrong at once and the
API can answer 400 naming each field.  Messages never echo field values:
environment entries and files may hold sensitive literals.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

import jsonschema
from cryptography import x509

from sgxcloud.cas.errors import PolicyProblem
from sgxcloud.cas.policy import placeholders as ph
from sgxcloud.cas.policy.access import (
    OwnerKeyError,
    certificate_fingerprint_id,
    public_key_id,
)
from sgxcloud.cas.policy.model import GRAMINE_KEY_SIZE

GRAMINE_KEYS_DIR = "/dev/attestation/keys/"
_GRAMINE_KEY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_DNS_NAME = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_GENERATION_FIELDS = ("size", "algorithm", "key", "subject", "sans", "validity_days")
MAX_SECRETS = 256
"""Secrets one policy may declare (also the schema's ``maxProperties``)."""
MAX_PRIVATE_KEYS = 64
"""Private keys one policy may have the CAS generate: an RSA-3072 key costs up to
about half a second of CPU, paid by the service for whoever applies the policy
(red team rt8 finding 1: 1,500 RSA-3072 keys in one 82 KB policy)."""
MAX_RSA_KEYS = 8
"""RSA keys among them (an EC or Ed25519 key costs well under a millisecond)."""


@functools.cache
def policy_schema() -> dict[str, Any]:
    """The policy JSON Schema (also published as docs/cas/policy.schema.json)."""
    text = resources.files(__package__).joinpath("policy.schema.json").read_text("utf-8")
    return json.loads(text)


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(policy_schema())


def field_path(parts: Iterable[Any]) -> str:
    """A readable field path: ``services.web.identities[0].mrenclave``.

    Keys that are not plain words (file paths) are quoted: ``files["/app/x"]``.
    """
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


# -- schema ----------------------------------------------------------------


def schema_problems(document: Any) -> list[PolicyProblem]:
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.path)))
    problems = [problem for error in errors for problem in _describe_choice(error)]
    return _unique(problems)


def _describe_choice(error: jsonschema.ValidationError) -> list[PolicyProblem]:
    """For oneOf/anyOf, report inside the one branch the author evidently meant.

    A branch is "meant" when the object has that branch's required keys and no
    keys foreign to it; then ``identities[0].mrenclave`` is blamed, not
    ``identities[0]`` as a whole.
    """
    if error.validator not in ("oneOf", "anyOf") or not error.context:
        return [_describe(error)]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    shape_errors = ("additionalProperties", "not", "type")
    meant = [
        subs
        for subs in branches.values()
        if not any(sub.validator in shape_errors and not sub.relative_path for sub in subs)
    ]
    if len(meant) != 1:
        return [_describe(error)]
    return [problem for sub in meant[0] for problem in _describe_choice(sub)]


def _describe(error: jsonschema.ValidationError) -> PolicyProblem:
    path = field_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    description = schema.get("description")
    kind = error.validator
    if "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        rule = description or _bound_message(kind, error.validator_value)
        return PolicyProblem(path, f"has a bad key {error.instance!r}: must be {rule}")
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "a field"
        return PolicyProblem(field_path([*error.absolute_path, missing]), "is required")
    if kind == "additionalProperties":
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        if extra:
            return PolicyProblem(path, f"unknown field(s): {', '.join(map(str, extra))}")
        return PolicyProblem(path, "has fields not allowed here")
    if kind == "type":
        hint = " (quote hex values in YAML)" if "hex" in (description or "") else ""
        return PolicyProblem(path, f"must be of type {error.validator_value}{hint}")
    if kind in ("pattern", "oneOf", "anyOf", "format"):
        return PolicyProblem(
            path, f"must be {description}" if description else "has the wrong form"
        )
    if kind == "propertyNames":
        return PolicyProblem(path, f"has a bad key: must be {_names_description(schema)}")
    if kind in ("enum", "const"):
        choices = ", ".join(map(str, error.validator_value))
        return PolicyProblem(path, f"must be one of: {choices}")
    if kind in (
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "minProperties",
        "maxProperties",
        "uniqueItems",
    ):
        return PolicyProblem(path, _bound_message(kind, error.validator_value))
    return PolicyProblem(path, f"is invalid ({kind})")


def _names_description(schema: dict[str, Any]) -> str:
    names = schema.get("propertyNames", {})
    if "$ref" in names:
        target = names["$ref"].rsplit("/", 1)[-1]
        names = policy_schema()["$defs"].get(target, {})
    return names.get("description", "a valid name")


def _bound_message(kind: str, bound: Any) -> str:
    return {
        "minimum": f"must be at least {bound}",
        "maximum": f"must be at most {bound}",
        "minItems": f"needs at least {bound} item(s)",
        "maxItems": f"allows at most {bound} items",
        "maxProperties": f"allows at most {bound} entries",
        "minLength": f"must be at least {bound} character(s)",
        "maxLength": f"must be at most {bound} characters",
        "minProperties": f"needs at least {bound} entry(ies)",
        "uniqueItems": "has duplicate items",
    }[kind]


def _unique(problems: Sequence[PolicyProblem]) -> list[PolicyProblem]:
    return list(dict.fromkeys(problems))


# -- semantics, one section at a time -------------------------------------------


def semantic_problems(document: dict[str, Any]) -> list[PolicyProblem]:
    """Checks the schema cannot express; assumes the document passed the schema."""
    secrets = document.get("secrets", {})
    problems = [
        *check_access(document["access"]),
        *check_secrets(document["name"], secrets),
        *check_services(document["services"], secrets),
    ]
    return _unique(problems)


def check_access(access: dict[str, Any]) -> Iterator[PolicyProblem]:
    seen_names: dict[str, str] = {}
    seen_ids: dict[str, str] = {}
    for role in ("owners", "readers"):
        for index, principal in enumerate(access.get(role, [])):
            where = f"access.{role}[{index}]"
            if principal["name"] in seen_names:
                yield PolicyProblem(
                    f"{where}.name",
                    f"duplicate principal name (also {seen_names[principal['name']]})",
                )
            seen_names.setdefault(principal["name"], where)
            if "public_key" in principal:
                try:
                    principal_id = public_key_id(principal["public_key"])
                except OwnerKeyError as exc:
                    yield PolicyProblem(f"{where}.public_key", str(exc))
                    continue
                except (ValueError, TypeError):
                    yield PolicyProblem(f"{where}.public_key", "is not a readable PEM public key")
                    continue
            else:
                principal_id = certificate_fingerprint_id(principal["client_certificate_sha256"])
            if principal_id in seen_ids:
                yield PolicyProblem(where, f"the same key/certificate as {seen_ids[principal_id]}")
            seen_ids.setdefault(principal_id, where)


def check_secrets(policy_name: str, secrets: dict[str, Any]) -> Iterator[PolicyProblem]:
    generated_keys = [
        spec.get("algorithm", "")
        for spec in secrets.values()
        if spec["kind"] == "private-key" and "import_from" not in spec
    ]
    if len(generated_keys) > MAX_PRIVATE_KEYS:
        yield PolicyProblem(
            "secrets",
            f"declares {len(generated_keys)} private keys to "
            f"generate; at most {MAX_PRIVATE_KEYS} are allowed",
        )
    rsa_keys = sum(1 for algorithm in generated_keys if algorithm.startswith("rsa"))
    if rsa_keys > MAX_RSA_KEYS:
        yield PolicyProblem(
            "secrets",
            f"declares {rsa_keys} RSA private keys to generate; "
            f"at most {MAX_RSA_KEYS} are allowed (EC and Ed25519 keys are "
            "cheap to make)",
        )
    for name, spec in secrets.items():
        where = f"secrets.{name}"
        kind = spec["kind"]
        if any(grant["policy"] == policy_name for grant in spec.get("export_to", [])):
            yield PolicyProblem(f"{where}.export_to", "a policy cannot export to itself")
        if "import_from" in spec:
            yield from _check_import_spec(where, policy_name, spec)
            continue
        if kind == "random" and "size" not in spec:
            yield PolicyProblem(f"{where}.size", "is required for a random secret")
        if kind == "private-key" and "algorithm" not in spec:
            yield PolicyProblem(f"{where}.algorithm", "is required for a private key")
        if kind == "x509":
            yield from _check_certificate(where, spec, secrets)


def _check_import_spec(
    where: str, policy_name: str, spec: dict[str, Any]
) -> Iterator[PolicyProblem]:
    if spec["import_from"]["policy"] == policy_name:
        yield PolicyProblem(f"{where}.import_from.policy", "a policy cannot import from itself")
    for extra in (*_GENERATION_FIELDS, "export_to"):
        if extra in spec:
            yield PolicyProblem(
                f"{where}.{extra}", "an imported secret is made by its exporter; remove this"
            )


def _check_certificate(
    where: str, spec: dict[str, Any], secrets: dict[str, Any]
) -> Iterator[PolicyProblem]:
    key = spec.get("key")
    if key is None:
        yield PolicyProblem(f"{where}.key", "is required: the private-key secret to certify")
    elif secrets.get(key, {}).get("kind") != "private-key":
        yield PolicyProblem(f"{where}.key", "must name a private-key secret of this policy")
    if "subject" not in spec:
        yield PolicyProblem(f"{where}.subject", "is required (an RFC 4514 name like CN=web)")
    else:
        try:
            if not x509.Name.from_rfc4514_string(spec["subject"]).rdns:
                raise ValueError("empty")
        except ValueError:
            yield PolicyProblem(f"{where}.subject", "is not an RFC 4514 name like CN=web,O=Acme")
    for index, san in enumerate(spec.get("sans", [])):
        if not _valid_san(san):
            yield PolicyProblem(f"{where}.sans[{index}]", "is neither a DNS name nor an IP address")


def _valid_san(san: str) -> bool:
    try:
        ipaddress.ip_address(san)
        return True
    except ValueError:
        return len(san) <= 253 and _DNS_NAME.fullmatch(san) is not None


def check_services(services: dict[str, Any], secrets: dict[str, Any]) -> Iterator[PolicyProblem]:
    for name, service in services.items():
        where = f"services.{name}"
        yield from _check_identities(where, service["identities"])
        for index, arg in enumerate(service.get("command", [])):
            yield from _check_text(f"{where}.command[{index}]", arg, secrets, binary_ok=False)
        for var, value in service.get("environment", {}).items():
            yield from _check_text(
                field_path([*where.split("."), "environment", var]), value, secrets, binary_ok=False
            )
        for path, content in service.get("files", {}).items():
            file_where = f"{where}.files[{json.dumps(path)}]"
            if ".." in path.split("/"):
                # the launcher writes under its root; ".." would leave it
                yield PolicyProblem(file_where, "a file path may not contain '..'")
            yield from _check_text(file_where, content, secrets, binary_ok=True)
            if path.startswith(GRAMINE_KEYS_DIR):
                yield from _check_gramine_key_file(file_where, path, content, secrets)


def _check_identities(where: str, identities: list[dict[str, Any]]) -> Iterator[PolicyProblem]:
    seen: dict[tuple, int] = {}
    for index, identity in enumerate(identities):
        key = tuple(sorted((k, str(v).lower()) for k, v in identity.items()))
        if key in seen:
            yield PolicyProblem(
                f"{where}.identities[{index}]", f"duplicate of identities[{seen[key]}]"
            )
        seen.setdefault(key, index)


def _check_text(
    where: str, text: str, secrets: dict[str, Any], *, binary_ok: bool
) -> Iterator[PolicyProblem]:
    try:
        found = list(ph.find_placeholders(text))
    except ph.PlaceholderSyntaxError as exc:
        yield PolicyProblem(where, str(exc))
        return
    for placeholder in found:
        spec = secrets.get(placeholder.secret)
        if spec is None:
            yield PolicyProblem(where, f"refers to undefined secret {placeholder.secret!r}")
            continue
        formats = ph.FORMATS[spec["kind"]]
        fmt = placeholder.format_for(spec["kind"])
        if fmt not in formats:
            yield PolicyProblem(
                where,
                f"format {fmt!r} does not apply to {spec['kind']} secret "
                f"{placeholder.secret!r} (use one of {', '.join(formats)})",
            )
        elif fmt in ph.BINARY_FORMATS and not (binary_ok and ph.is_whole(text, placeholder)):
            yield PolicyProblem(
                where, f"format {fmt!r} is binary: only allowed as a file's entire content"
            )


def _check_gramine_key_file(
    where: str, path: str, content: str, secrets: dict[str, Any]
) -> Iterator[PolicyProblem]:
    key_name = path[len(GRAMINE_KEYS_DIR) :]
    if not _GRAMINE_KEY_NAME.fullmatch(key_name):
        yield PolicyProblem(where, "is not a Gramine key path /dev/attestation/keys/NAME")
    try:
        found = list(ph.find_placeholders(content))
    except ph.PlaceholderSyntaxError:
        return  # already reported
    if (
        len(found) != 1
        or not ph.is_whole(content, found[0])
        or found[0].format != "raw"
        or secrets.get(found[0].secret, {}).get("kind") != "gramine-key"
    ):
        yield PolicyProblem(
            where,
            f"a Gramine key file must be exactly "
            f"{{{{secret:NAME:raw}}}} of a gramine-key secret ({GRAMINE_KEY_SIZE} bytes)",
        )
