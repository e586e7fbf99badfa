"""Policy data: plain frozen records, built only by ``load_policy`` after validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sgxcloud.cas.policy.placeholders import RenderPlan, render_plan

SecretKind = Literal["random", "private-key", "x509", "gramine-key"]
Action = Literal["read", "update", "delete"]

DEFAULT_TCB_STATUSES: tuple[str, ...] = ("UpToDate",)
GRAMINE_KEY_SIZE = 16
"""Bytes in a Gramine encrypted-files key (AES-GCM-128), as /dev/attestation/keys/ wants."""
DEFAULT_VALIDITY_DAYS = 365


@dataclass(frozen=True)
class MrenclaveIdentity:
    """Accept exactly this enclave build."""

    mrenclave: str


@dataclass(frozen=True)
class SignerIdentity:
    """Accept any build by this signer of this product at or above a security version."""

    mrsigner: str
    isvprodid: int
    min_isvsvn: int


AcceptedIdentity = MrenclaveIdentity | SignerIdentity


@dataclass(frozen=True)
class ServicePolicy:
    """Which enclaves may run a service, and what the service receives."""

    name: str
    identities: tuple[AcceptedIdentity, ...]
    allow_debug: bool = False
    allow_simulated: bool = False
    tolerated_tcb_statuses: tuple[str, ...] = DEFAULT_TCB_STATUSES
    tolerated_advisories: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def render_plan(self) -> RenderPlan:
        """What rendering this service's configuration takes (read once, then kept):
        ``load_policy`` reads it, so no transaction that renders has to."""
        plan = self.__dict__.get("_render_plan")
        if plan is None:
            texts = [
                *self.command,
                *self.environment.keys(),
                *self.environment.values(),
                *self.files.keys(),
                *self.files.values(),
            ]
            plan = render_plan(texts)
            object.__setattr__(self, "_render_plan", plan)  # derived from frozen fields
        return plan


@dataclass(frozen=True)
class SecretImport:
    """Where an imported secret comes from: another policy's exported secret.

    ``owner`` pins the exporter by identity (a principal id, see ``Principal``):
    a policy name alone could be taken by anyone once its holder deletes it.
    """

    policy: str
    owner: str
    secret: str


@dataclass(frozen=True)
class ExportGrant:
    """To whom a secret is offered: a policy name *and* one of its owners.

    The name alone is not enough: any caller may create a policy under a name
    not yet (or no longer) taken, so the importer must also be owned by
    ``owner`` (a principal id).
    """

    policy: str
    owner: str


@dataclass(frozen=True)
class SecretSpec:
    """How a secret is made (or imported); never its value.

    Fields unused by a kind are ``None``/empty: ``size`` for ``random`` (bytes;
    ``gramine-key`` is always 16), ``algorithm`` for ``private-key``, ``key``
    (a private-key secret of this policy), ``subject``, ``sans`` and
    ``validity_days`` for ``x509`` certificates issued by the policy's CA.
    """

    name: str
    kind: SecretKind
    size: int | None = None
    algorithm: str | None = None
    key: str | None = None
    subject: str | None = None
    sans: tuple[str, ...] = ()
    validity_days: int | None = None
    export_to: tuple[ExportGrant, ...] = ()
    import_from: SecretImport | None = None

    @property
    def imported(self) -> bool:
        return self.import_from is not None


@dataclass(frozen=True)
class Principal:
    """Someone allowed to act on a policy, known by a key or certificate fingerprint.

    ``id`` is ``key:sha256:<hex of SubjectPublicKeyInfo DER>`` or
    ``cert:sha256:<hex of certificate DER>`` (see ``sgxcloud.cas.policy.access``).
    """

    name: str
    id: str


@dataclass(frozen=True)
class AccessRules:
    """Owners may read, update and delete; readers may only read."""

    owners: tuple[Principal, ...]
    readers: tuple[Principal, ...] = ()

    def allows(self, action: Action, principal_id: str) -> bool:
        if any(p.id == principal_id for p in self.owners):
            return True
        return action == "read" and any(p.id == principal_id for p in self.readers)


@dataclass(frozen=True)
class Policy:
    """A validated policy.  ``hash`` is ``policy_hash`` of the document it came from."""

    name: str
    services: dict[str, ServicePolicy]
    secrets: dict[str, SecretSpec]
    access: AccessRules
    predecessor: str | None
    hash: str
    document: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def imports(self) -> tuple[SecretSpec, ...]:
        """Secrets this policy takes from other policies."""
        return tuple(s for s in self.secrets.values() if s.import_from is not None)

    @property
    def exports(self) -> dict[str, tuple[ExportGrant, ...]]:
        """Secret name -> (policy, owner) pairs it is offered to."""
        return {s.name: s.export_to for s in self.secrets.values() if s.export_to}

    @property
    def owner_ids(self) -> frozenset[str]:
        return frozenset(p.id for p in self.access.owners)

    def service(self, name: str) -> ServicePolicy:
        from sgxcloud.cas.errors import PolicyError

        try:
            return self.services[name]
        except KeyError:
            raise PolicyError("services", f"policy {self.name!r} has no service {name!r}") from None
