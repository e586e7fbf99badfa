"""What a policy makes the service render per attestation is bounded, and rendered
outside every transaction (red team rt9 finding 7: a 195 KB policy whose placeholders
expanded 680x cost ~2 s of CPU, a 177 MB answer and ~290 ms of the writer lock per
keyless attestation)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import yaml

from sgxcloud.cas import protocol
from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.policy.access import public_key_id
from sgxcloud.cas.service import materials
from sgxcloud.cas.service.core import AttestationRejected, AttestRequest

try:
    from tests.cas import measure
    from tests.cas import postgres as pg
except ImportError:  # pragma: no cover - run from tests/cas
    import measure  # type: ignore[no-redef]
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url  # SQLite, then a real PostgreSQL
LIMIT = materials.MAX_RENDERED_BYTES


def _bomb(owner: Any, placeholders: int, name: str = "bomb") -> str:
    """One 4,096-byte random secret, named ``placeholders`` times (8,192 hex characters each)."""
    document = yaml.safe_load(pg.policy_text(owner, name=name))
    document["services"]["web"]["environment"]["BOMB"] = "{{secret:s}}" * placeholders
    document["secrets"]["s"] = {"kind": "random", "size": 4096}
    return yaml.safe_dump(document, sort_keys=False, width=10**9)


def _attest(service: Any, policy: str, mrenclave: str = pg.MRENCLAVE) -> Any:
    key = protocol.new_enclave_key()
    nonce = service.issue_nonce(pg.CLOCK).nonce
    evidence = make_simulated_evidence(
        pg.simulated_identity(mrenclave),
        protocol.report_data_for(key.public_key(), bytes.fromhex(nonce)),
    )
    request = AttestRequest(
        policy, "web", nonce, pg.public_pem(key), base64.b64encode(evidence.raw).decode()
    )
    result = service.attest(request, pg.CLOCK)
    return protocol.open_configuration(result.sealed_configuration, key, bytes.fromhex(nonce))


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each text the service fills in, and whether a transaction was open then."""
    seen: list[bool] = []
    inside = measure.track_transactions(monkeypatch)
    real_substitute, real_file = materials.substitute, materials._render_file

    def substitute(text, value_of):  # type: ignore[no-untyped-def]
        seen.append(inside())
        return real_substitute(text, value_of)

    def render_file(text, value_of):  # type: ignore[no-untyped-def]
        seen.append(inside())
        return real_file(text, value_of)

    monkeypatch.setattr(materials, "substitute", substitute)
    monkeypatch.setattr(materials, "_render_file", render_file)
    return seen


def test_a_policy_whose_configuration_could_be_too_large_is_refused(database_url: str) -> None:
    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        who = public_key_id(pg.public_pem(owner))
        # 128 x 8,192 hex characters: 1 MiB and then some (the red team's was 44 MB).
        with pytest.raises(PolicyError) as refused:
            service.apply_policy(who, _bomb(owner, 128), pg.CLOCK)
        problems = [(p.field, p.message) for p in refused.value.problems]
        assert problems and all(field == "services.web" for field, _ in problems)
        assert f"at most {LIMIT} are allowed" in problems[0][1]
        assert service.database.run(lambda repo: repo.get_policy("bomb")) is None
        # Well under the limit: applied, and what it renders is what was promised.
        service.apply_policy(who, _bomb(owner, 100), pg.CLOCK)
        configuration = _attest(service, "bomb")
        assert len(configuration.env["BOMB"]) == 100 * 8192
    finally:
        service.stop()


def test_a_stored_configuration_over_the_limit_is_rejected_before_it_is_rendered(
    database_url: str, renders: list[bool]
) -> None:
    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        # Stored under a larger limit (an older CAS, or an operator who lowered it since).
        service.max_rendered_bytes = 64 * LIMIT
        service.apply_policy(public_key_id(pg.public_pem(owner)), _bomb(owner, 200), pg.CLOCK)
        service.max_rendered_bytes = LIMIT
        with pytest.raises(AttestationRejected) as rejected:
            _attest(service, "bomb")
        assert rejected.value.code == "secrets"
        assert f"at most {LIMIT} are allowed" in rejected.value.reasons[0]
        assert renders == []  # nothing was rendered
        entry = service.audit_entries(public_key_id(pg.public_pem(owner)), limit=100)[-1]
        assert entry.outcome == "rejected"
    finally:
        service.stop()


def test_configurations_are_rendered_outside_the_transaction(
    database_url: str, renders: list[bool]
) -> None:
    service = pg.make_service(database_url)
    try:
        owner = pg.owner_key()
        service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
        configuration = _attest(service, "shop")
        assert configuration.argv[2].startswith("--db-password=")
        assert len(configuration.files["/dev/attestation/keys/data"]) == 16
        assert renders and not any(renders)  # every text filled in after the commit
        # A request that is refused renders nothing at all.
        renders.clear()
        with pytest.raises(AttestationRejected):
            _attest(service, "shop", mrenclave="ef" * 32)
        assert renders == []
    finally:
        service.stop()


def test_the_apply_time_bound_covers_what_is_rendered() -> None:
    """Each secret's formatted length is within the bound the apply check assumed."""
    import datetime as dt

    from sgxcloud.cas import secrets
    from sgxcloud.cas.policy import load_policy
    from sgxcloud.cas.policy.placeholders import FORMATS

    owner = pg.owner_key()
    document = yaml.safe_load(pg.policy_text(owner))
    document["secrets"].update(
        {
            "rsa": {"kind": "private-key", "algorithm": "rsa-3072"},
            "ed": {"kind": "private-key", "algorithm": "ed25519"},
            "big": {
                "kind": "x509",
                "key": "rsa",
                "subject": "CN=web," + ",".join(f"OU={i:02d}" + "o" * 58 for i in range(15)),
                "sans": [f"h{i}." + ".".join(["x" * 60] * 3) + ".example" for i in range(25)],
            },
            "r1": {"kind": "random", "size": 1},
            "r4096": {"kind": "random", "size": 4096},
        }
    )
    policy = load_policy(yaml.safe_dump(document))
    now = dt.datetime.fromtimestamp(pg.CLOCK, tz=dt.UTC)
    ca = secrets.make_ca("p" * 63, now)
    made: dict[str, secrets.SecretValue] = {}
    for spec in sorted(policy.secrets.values(), key=lambda s: (s.kind == "x509", s.name)):
        made[spec.name] = materials._generate(spec, ca, made, {}.get, None, policy.name, pg.CLOCK)  # type: ignore[arg-type]
        for fmt in FORMATS[spec.kind]:
            actual = len(materials.formatted(made[spec.name], fmt))
            assert actual <= materials.max_formatted_bytes(spec, fmt), (spec.name, fmt)
