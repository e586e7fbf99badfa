"""The collaboration definition as typed, immutable Python objects.

Built only by :mod:`.load` after the document passed schema and semantic
checks, so code using these objects can trust every reference in them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from sgxcloud.canonical import canonical_json
from sgxcloud.sgx.identity import EnclaveIdentity

ROLES = ("data_provider", "analyst", "result_recipient")
DATASET_KINDS = ("attributes", "exposures", "purchases")
IDENTIFIER_KINDS = ("email", "phone", "customer_id")
ATTRIBUTE_TYPES = ("boolean", "category", "integer", "number")
TEMPLATES = ("audience_size", "overlap", "campaign_lift")
EXPOSURE_GROUPS = ("test", "control")


@dataclass(frozen=True)
class Party:
    name: str
    roles: tuple[str, ...]
    public_key: str
    display_name: str = ""

    def has_role(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class IdentifierColumn:
    column: str
    kind: str


@dataclass(frozen=True)
class Attribute:
    column: str
    type: str
    values: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Dataset:
    provider: str
    name: str
    kind: str
    identifiers: tuple[IdentifierColumn, ...]
    attributes: tuple[Attribute, ...] = ()
    default_phone_region: str | None = None
    group_column: str | None = None
    timestamp_column: str | None = None
    amount_column: str | None = None
    timestamp_timezone: str = "UTC"
    """IANA zone in which naive timestamps (no zone, no offset) are read."""

    @property
    def ref(self) -> str:
        """``provider.dataset``, the name analyses use."""
        return f"{self.provider}.{self.name}"

    def attribute(self, column: str) -> Attribute | None:
        return next((a for a in self.attributes if a.column == column), None)

    @property
    def event_columns(self) -> tuple[str, ...]:
        cols = (self.group_column, self.timestamp_column, self.amount_column)
        return tuple(c for c in cols if c)


@dataclass(frozen=True)
class Analysis:
    name: str
    template: str
    analysts: tuple[str, ...]
    recipients: tuple[str, ...] = ()
    attributes: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    exposures: str | None = None
    purchases: str | None = None
    attribution_window_days: int = 28
    breakdowns: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContributionBounds:
    max_purchases_per_person: int = 10
    max_revenue_per_person: float = 1000.0


@dataclass(frozen=True)
class DifferentialPrivacy:
    epsilon_per_query: float
    budget_per_analyst: float
    enabled: bool = True
    mechanism: str = "laplace"
    delta: float | None = None
    bounds: ContributionBounds = field(default_factory=ContributionBounds)
    budget_per_collaboration: float | None = None
    """Total ε of every analyst together (None: only the per-analyst budgets):
    analysts who collude or pool their answers cannot add their budgets beyond it."""
    analysts: int = 1
    """How many parties may spend the budget (every analyst of an analysis)."""

    @property
    def pooled_budget(self) -> float:
        """The ε analysts who pool their answers can spend together: the
        collaboration's cap, or without one every analyst's budget added up."""
        if self.budget_per_collaboration is not None:
            return self.budget_per_collaboration
        return self.analysts * self.budget_per_analyst

    @property
    def delta_per_query(self) -> float:
        """δ each query spends: the definition's δ under the Gaussian mechanism, else 0."""
        return float(self.delta or 0.0) if self.mechanism == "gaussian" else 0.0

    def delta_budget(self, epsilon_budget: float) -> float:
        """The δ an ε budget comes with: δ per query times the queries it pays for.
        δ composes additively (basic composition), so k queries of (ε, δ) are
        (kε, kδ)-DP; the ledger checks Σδ against this as it checks Σε."""
        return self.delta_per_query * math.floor(epsilon_budget / self.epsilon_per_query + 1e-9)


DP_OFF_WARNING = (
    "differential privacy is OFF (differential_privacy.enabled: false): only counts of "
    "people are protected (k, and the differencing check between pairs of releases); "
    "sums of purchases and revenue are not compared across analyses over the same "
    "people, so two releases (e.g. lift with attribution windows of 27 and 28 days) can "
    "reveal one purchase's amount, and combinations of three or more releases are not "
    "stopped — see docs/cleanroom/privacy-model.md, 'Limits'"
)

# Above this total ε per analyst the approval warns (what it permits, in plain words).
# ε ≤ 1 is what the DP literature calls strong protection (e.g. Dwork and Roth, "The
# Algorithmic Foundations of Differential Privacy", 2014): a guess about one person is
# then right at most 73 % of the time where a coin is right 50 %.  At 2 it is 88 %,
# at 10 it is 99.995 %.  See docs/cleanroom/privacy-model.md, 'What a budget permits'.
STRONG_DP_BUDGET = 1.0


def inference_bound(epsilon: float, delta: float = 0.0) -> float:
    """The best probability, under (ε, δ)-DP, of telling correctly a yes/no fact
    about one person that is a coin-flip beforehand: (e^ε + δ) / (1 + e^ε)."""
    small = math.exp(-epsilon)
    return min(1.0, (1.0 + delta * small) / (1.0 + small))


def _percent(p: float) -> str:
    """``73 %``, ``99.3 %``, ``99.995 %``: enough digits that it does not round to 100."""
    miss = (1.0 - p) * 100
    if miss < 1e-6:
        return "~100 %"
    return f"{p * 100:.{max(0, -math.floor(math.log10(miss)))}f} %"


def budget_warning(dp: DifferentialPrivacy) -> str:
    """What ``budget_per_analyst`` permits one analyst, and analysts pooling answers."""
    budget = dp.budget_per_analyst
    # gaussian: each query adds its δ (the ledger composes linearly)
    delta = dp.delta_budget(budget)
    pooled = dp.budget_per_collaboration
    if pooled is None:
        many = max(2, dp.analysts)
        pooling = (
            "and budgets are per analyst, so analysts who pool their answers add them up "
            f"({'two' if dp.analysts < 2 else f'the {many} analysts'}: "
            f"{_percent(inference_bound(many * budget, many * delta))}; "
            "budget_per_collaboration caps them)"
        )
    else:
        pooling = (
            "and analysts who pool their answers are held together to "
            f"budget_per_collaboration={pooled:g} "
            f"(up to {_percent(inference_bound(pooled, dp.delta_budget(pooled)))})"
        )
    return (
        f"differential-privacy budget_per_analyst is {budget:g}, above "
        f"{STRONG_DP_BUDGET:g} (the usual level for strong protection): an analyst who "
        "spends it can tell a yes/no fact about one person (an attribute, or being in a "
        "dataset) correctly with probability up to "
        f"{_percent(inference_bound(budget, delta))} (e^B/(1+e^B) for B={budget:g}; "
        f"guessing gives 50 %, B=1 at most 73 %), {pooling} — see "
        "docs/cleanroom/privacy-model.md, 'What a budget permits'"
    )


def budget_summary(dp: DifferentialPrivacy) -> str:
    """One line: the budgets and the bound they give (said by ``cleanroom init``)."""
    pooled = dp.budget_per_collaboration
    bound = inference_bound(dp.budget_per_analyst, dp.delta_budget(dp.budget_per_analyst))
    text = (
        f"differential privacy: ε {dp.epsilon_per_query:g} per new question, "
        f"{dp.budget_per_analyst:g} per analyst"
    )
    if pooled is not None:
        text += f", {pooled:g} for every analyst together"
    if dp.delta_per_query:
        text += f" (δ {dp.delta_per_query:g} per question)"
    text += (
        f": a yes/no fact about one person can be told right at most {_percent(bound)} "
        "of the time by one analyst"
    )
    if pooled is not None or dp.analysts > 1:
        together = dp.pooled_budget
        text += (
            " and "
            f"{_percent(inference_bound(together, dp.delta_budget(together)))} by analysts "
            "pooling their answers"
        )
        if pooled is None:
            text += (
                f" ({dp.analysts} analysts, ε {together:g} together: no budget_per_collaboration)"
            )
    return text + " (a coin: 50 %)"


def collaboration_budget_warning(dp: DifferentialPrivacy) -> str:
    """What ``budget_per_collaboration`` permits analysts who pool their answers."""
    pooled = dp.budget_per_collaboration
    assert pooled is not None
    return (
        f"differential-privacy budget_per_collaboration is {pooled:g}, above "
        f"{STRONG_DP_BUDGET:g} (the usual level for strong protection): analysts who "
        "pool their answers can tell a yes/no fact about one person correctly with "
        f"probability up to {_percent(inference_bound(pooled, dp.delta_budget(pooled)))} "
        "(guessing gives 50 %) — see docs/cleanroom/privacy-model.md, "
        "'What a budget permits'"
    )


def uncapped_pooling_warning(dp: DifferentialPrivacy) -> str:
    """What analysts who pool their answers can spend when no
    ``budget_per_collaboration`` caps them: every analyst's budget added up."""
    together = dp.pooled_budget
    return (
        f"differential privacy sets no budget_per_collaboration: the {dp.analysts} analysts "
        f"hold {dp.budget_per_analyst:g} each, so analysts who pool their answers spend "
        f"ε={together:g} together, above {STRONG_DP_BUDGET:g} (the usual level for strong "
        "protection), and can tell a yes/no fact about one person correctly with "
        f"probability up to {_percent(inference_bound(together, dp.delta_budget(together)))} "
        "(guessing gives 50 %); set budget_per_collaboration to cap them — see "
        "docs/cleanroom/privacy-model.md, 'What a budget permits'"
    )


@dataclass(frozen=True)
class Privacy:
    min_group_size: int
    differencing_check: bool = True
    dp: DifferentialPrivacy | None = None

    @property
    def dp_enabled(self) -> bool:
        return self.dp is not None and self.dp.enabled

    def warnings(self) -> list[str]:
        """What a party approving these settings must know (said loudly by the
        CLI at approval and start, and logged by the engine)."""
        if not self.dp_enabled:
            return [DP_OFF_WARNING]
        assert self.dp is not None
        if self.dp.budget_per_analyst > STRONG_DP_BUDGET:
            return [budget_warning(self.dp)]
        if self.dp.pooled_budget <= STRONG_DP_BUDGET + 1e-9:
            return []
        if self.dp.budget_per_collaboration is None:
            # several analysts and no cap: their budgets add up (red team cr8, F2)
            return [uncapped_pooling_warning(self.dp)]
        return [collaboration_budget_warning(self.dp)]


@dataclass(frozen=True)
class EnclavePin:
    """What the definition demands of an enclave; MRENCLAVE is always pinned."""

    mrenclave: str
    mrsigner: str | None = None
    isvprodid: int | None = None
    min_isvsvn: int | None = None

    def matches(self, identity: EnclaveIdentity) -> bool:
        """True when an attested identity satisfies this pin (debug enclaves never do)."""
        if identity.debug or identity.mrenclave.lower() != self.mrenclave:
            return False
        if self.mrsigner is not None and identity.mrsigner.lower() != self.mrsigner:
            return False
        if self.isvprodid is not None and identity.isvprodid != self.isvprodid:
            return False
        return self.min_isvsvn is None or identity.isvsvn >= self.min_isvsvn


@dataclass(frozen=True)
class Enclaves:
    coordinator: EnclavePin
    node: EnclavePin
    allow_simulated: bool = False
    allowed_tcb_statuses: tuple[str, ...] = ("UpToDate",)
    # Intel advisories (INTEL-SA-NNNNN, or "*") a peer's TCB may carry; none by default
    tolerated_advisories: tuple[str, ...] = ()


@dataclass(frozen=True)
class Definition:
    """A validated collaboration definition; ``document`` is exactly what was signed."""

    name: str
    description: str
    parties: tuple[Party, ...]
    enclaves: Enclaves
    datasets: tuple[Dataset, ...]
    analyses: tuple[Analysis, ...]
    privacy: Privacy
    document: dict[str, Any] = field(repr=False, compare=False, hash=False)

    def definition_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of the document: any change changes it."""
        return hashlib.sha256(canonical_json(self.document)).hexdigest()

    def party(self, name: str) -> Party | None:
        return next((p for p in self.parties if p.name == name), None)

    def parties_with_role(self, role: str) -> tuple[Party, ...]:
        return tuple(p for p in self.parties if role in p.roles)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parties_with_role("data_provider"))

    def dataset(self, ref: str) -> Dataset | None:
        """Look up ``provider.dataset``."""
        return next((d for d in self.datasets if d.ref == ref), None)

    def datasets_of(self, provider: str) -> tuple[Dataset, ...]:
        return tuple(d for d in self.datasets if d.provider == provider)

    def analysis(self, name: str) -> Analysis | None:
        return next((a for a in self.analyses if a.name == name), None)

    def resolve_attribute(self, ref: str) -> tuple[Dataset, Attribute] | None:
        """Look up ``provider.dataset.column`` among attribute datasets."""
        provider, dataset, column = [*ref.split("."), "", "", ""][:3]
        ds = self.dataset(f"{provider}.{dataset}")
        attr = ds.attribute(column) if ds else None
        return (ds, attr) if ds and attr else None

    def columns_needed(self, dataset_ref: str) -> tuple[str, ...]:
        """Columns a node may send for ``dataset_ref``: identifiers plus what some
        allowed analysis uses.  Everything else stays with the provider."""
        ds = self.dataset(dataset_ref)
        if ds is None:
            return ()
        used: set[str] = set()
        for analysis in self.analyses:
            for ref in (*analysis.attributes, *analysis.breakdowns):
                if ref.rsplit(".", 1)[0] == dataset_ref:
                    used.add(ref.rsplit(".", 1)[1])
            if dataset_ref in (analysis.exposures, analysis.purchases):
                used.update(ds.event_columns)
        cols = [i.column for i in ds.identifiers]
        cols += [a.column for a in ds.attributes if a.column in used]
        cols += [c for c in ds.event_columns if c in used]
        return tuple(cols)
