"""CAS policies: a YAML contract naming enclaves, what they receive, and who may change it.

``load_policy`` validates (JSON Schema, then semantic checks per section) and
returns an immutable ``Policy``; ``evaluate`` decides whether verified evidence
may run a service and lists every reason if not; ``check_import`` checks the
secrets one policy takes from another; ``policy_hash`` is the canonical hash
that updates name as ``predecessor``.
"""

from sgxcloud.cas.policy.access import certificate_fingerprint_id, certificate_id, public_key_id
from sgxcloud.cas.policy.decision import Decision, evaluate, evaluate_strength
from sgxcloud.cas.policy.document import canonical_bytes, parse_document, policy_hash
from sgxcloud.cas.policy.imports import check_import
from sgxcloud.cas.policy.load import load_policy
from sgxcloud.cas.policy.model import (
    AcceptedIdentity,
    AccessRules,
    Action,
    ExportGrant,
    MrenclaveIdentity,
    Policy,
    Principal,
    SecretImport,
    SecretKind,
    SecretSpec,
    ServicePolicy,
    SignerIdentity,
)
from sgxcloud.cas.policy.placeholders import (
    FORMATS,
    find_placeholders,
    render_file,
    substitute,
)
from sgxcloud.cas.policy.validate import policy_schema

__all__ = [
    "FORMATS",
    "AcceptedIdentity",
    "AccessRules",
    "Action",
    "Decision",
    "ExportGrant",
    "MrenclaveIdentity",
    "Policy",
    "Principal",
    "SecretImport",
    "SecretKind",
    "SecretSpec",
    "ServicePolicy",
    "SignerIdentity",
    "canonical_bytes",
    "certificate_fingerprint_id",
    "certificate_id",
    "check_import",
    "evaluate",
    "evaluate_strength",
    "find_placeholders",
    "load_policy",
    "parse_document",
    "policy_hash",
    "policy_schema",
    "public_key_id",
    "render_file",
    "substitute",
]
