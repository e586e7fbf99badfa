"""``load_policy``: text or mapping -> validated, immutable ``Policy``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.policy.access import certificate_fingerprint_id, public_key_id
from sgxcloud.cas.policy.document import canonical_bytes, parse_document
from sgxcloud.cas.policy.model import (
    DEFAULT_TCB_STATUSES,
    DEFAULT_VALIDITY_DAYS,
    GRAMINE_KEY_SIZE,
    AccessRules,
    ExportGrant,
    MrenclaveIdentity,
    Policy,
    Principal,
    SecretImport,
    SecretSpec,
    ServicePolicy,
    SignerIdentity,
)
from sgxcloud.cas.policy.validate import schema_problems, semantic_problems


def load_policy(
    text_or_mapping: str | bytes | Mapping[str, Any], *, max_bytes: int | None = None
) -> Policy:
    """Parse and validate a policy (YAML text, or an already-parsed mapping).

    Raises ``PolicyError`` listing every problem (``.problems``), each with the
    field path it concerns.  ``max_bytes`` bounds the text's UTF-8 size (see
    ``parse_document``).
    """
    document = parse_document(text_or_mapping, max_bytes=max_bytes)
    problems = schema_problems(document)
    if not problems:  # semantic checks rely on the schema's shape
        problems = semantic_problems(document)
    if problems:
        raise PolicyError.from_problems(problems)
    return _build(document)


def _code_fingerprint() -> str:
    """SHA-256 of the schema and the code that validates and builds a policy."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in (
        "policy.schema.json",
        "document.py",
        "validate.py",
        "load.py",
        "model.py",
        "placeholders.py",
    ):
        digest.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    return digest.hexdigest()[:32]


COMPILED_TAG = "sgxcloud-policy-v1:" + _code_fingerprint()
"""What a stored validated form must start with to be used without validating again:
any change to the schema or to this code changes it, and the text is read again."""


def compiled_form(policy: Policy) -> str:
    """``policy``'s validated document, to store next to its text (see :func:`load_compiled`)."""
    return COMPILED_TAG + "\n" + canonical_bytes(policy.document).decode()


def load_compiled(compiled: str | None, policy_hash: str) -> Policy | None:
    """The policy :func:`compiled_form` stored, or None to load it from its text.

    Used only if this very code validated it (``COMPILED_TAG``) and it is the
    document of ``policy_hash``: JSON read and the model built, the schema and
    semantic checks skipped (red team rt9 finding 4: a valid 247 KB policy of
    3,000 identities took 187 ms to validate again on every cold attestation,
    ~4 ms this way).
    """
    prefix = COMPILED_TAG + "\n"
    if not compiled or not compiled.startswith(prefix):
        return None
    try:
        document = json.loads(compiled[len(prefix) :])
        policy = _build(document)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return policy if policy.hash == policy_hash else None


def owner_ids(text: str) -> frozenset[str]:
    """Owner ids named by a stored policy text, read leniently.

    For history: an old version may not validate against today's schema, yet
    its owners must still be known (who may re-create a deleted policy's name).
    Unreadable entries are skipped, so the result can only shrink, never grow.
    """
    try:
        owners = parse_document(text).get("access", {}).get("owners", [])
    except (PolicyError, AttributeError):
        return frozenset()
    ids = set()
    for spec in owners if isinstance(owners, list) else []:
        try:
            ids.add(_principal(spec).id)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return frozenset(ids)


def _build(doc: dict[str, Any]) -> Policy:
    return Policy(
        name=doc["name"],
        services={name: _service(name, spec) for name, spec in doc["services"].items()},
        secrets={name: _secret(name, spec) for name, spec in doc.get("secrets", {}).items()},
        access=AccessRules(
            owners=tuple(_principal(p) for p in doc["access"]["owners"]),
            readers=tuple(_principal(p) for p in doc["access"].get("readers", [])),
        ),
        predecessor=doc.get("predecessor"),
        hash=hashlib.sha256(canonical_bytes(doc)).hexdigest(),
        document=doc,
    )


def _service(name: str, spec: dict[str, Any]) -> ServicePolicy:
    identities = tuple(
        MrenclaveIdentity(i["mrenclave"].lower())
        if "mrenclave" in i
        else SignerIdentity(i["mrsigner"].lower(), i["isvprodid"], i["min_isvsvn"])
        for i in spec["identities"]
    )
    service = ServicePolicy(
        name=name,
        identities=identities,
        allow_debug=spec.get("allow_debug", False),
        allow_simulated=spec.get("allow_simulated", False),
        tolerated_tcb_statuses=tuple(spec.get("tolerated_tcb_statuses", DEFAULT_TCB_STATUSES)),
        tolerated_advisories=tuple(spec.get("tolerated_advisories", ())),
        command=tuple(spec.get("command", ())),
        environment=dict(spec.get("environment", {})),
        files=dict(spec.get("files", {})),
    )
    service.render_plan()  # now, while parsing (outside any transaction)
    return service


def _secret(name: str, spec: dict[str, Any]) -> SecretSpec:
    kind = spec["kind"]
    source = spec.get("import_from")
    imported = SecretImport(source["policy"], source["owner"], source["secret"]) if source else None
    size = spec.get("size")
    if kind == "gramine-key":
        size = GRAMINE_KEY_SIZE
    validity = spec.get("validity_days")
    if kind == "x509" and imported is None and validity is None:
        validity = DEFAULT_VALIDITY_DAYS
    return SecretSpec(
        name=name,
        kind=kind,
        size=size,
        algorithm=spec.get("algorithm"),
        key=spec.get("key"),
        subject=spec.get("subject"),
        sans=tuple(spec.get("sans", ())),
        validity_days=validity,
        export_to=tuple(ExportGrant(g["policy"], g["owner"]) for g in spec.get("export_to", ())),
        import_from=imported,
    )


def _principal(spec: dict[str, Any]) -> Principal:
    if "public_key" in spec:
        return Principal(spec["name"], public_key_id(spec["public_key"]))
    return Principal(spec["name"], certificate_fingerprint_id(spec["client_certificate_sha256"]))
