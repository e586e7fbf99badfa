"""An attestation loads a stored policy from the form validated when it was applied,
not by validating its text again (red team rt9 finding 4: a valid 247 KB policy of
3,000 identities took 187 ms of CPU to load; keyless attestations cycling 260 of them,
more than the caches hold, cost ~270 ms of CPU each)."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
import yaml
from sqlalchemy import text as sql

from sgxcloud.cas import protocol
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.policy import load, load_policy
from sgxcloud.cas.policy.access import public_key_id
from sgxcloud.cas.service.core import AttestationRejected, AttestRequest

try:
    from tests.cas import postgres as pg
except ImportError:  # pragma: no cover - run from tests/cas
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url  # SQLite, then a real PostgreSQL


def _many_identities(owner: Any, count: int = 3000) -> str:
    document = yaml.safe_load(pg.policy_text(owner))
    document["services"]["web"]["identities"] = [
        {"mrenclave": pg.MRENCLAVE},
        *({"mrenclave": f"{i:064x}"} for i in range(1, count)),
    ]
    return yaml.safe_dump(document, sort_keys=False)


def _attest(service: Any, mrenclave: str = pg.MRENCLAVE) -> Any:
    key = protocol.new_enclave_key()
    nonce = service.issue_nonce(pg.CLOCK).nonce
    evidence = make_simulated_evidence(
        pg.simulated_identity(mrenclave),
        protocol.report_data_for(key.public_key(), bytes.fromhex(nonce)),
    )
    request = AttestRequest(
        "shop", "web", nonce, pg.public_pem(key), base64.b64encode(evidence.raw).decode()
    )
    return service.attest(request, pg.CLOCK)


@pytest.fixture
def validations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each schema validation of a policy document (the costly part of loading one)."""
    seen: list[int] = []
    real = load.schema_problems

    def schema_problems(document):  # type: ignore[no-untyped-def]
        seen.append(1)
        return real(document)

    monkeypatch.setattr(load, "schema_problems", schema_problems)
    return seen


def test_a_cold_attestation_does_not_validate_the_stored_policy_again(
    database_url: str, validations: list[int]
) -> None:
    owner = pg.owner_key()
    text = _many_identities(owner)
    applier = pg.make_service(database_url)
    keyring = applier.keyring
    try:
        applier.apply_policy(public_key_id(pg.public_pem(owner)), text, pg.CLOCK)
    finally:
        applier.stop()
    validations.clear()
    # Another process (replica, restart): nothing cached.
    cold = pg.make_service(database_url, keyring)
    try:
        with pytest.raises(AttestationRejected):  # verified and bound, identity not listed
            _attest(cold, "ef" * 32)
        assert validations == []
        assert _attest(cold).policy_hash  # and it decides as the text says
        # What a cold load costs now, against validating the text (same process, same data).
        stored = cold.database.run(lambda repo: repo.get_policy("shop"))
        started = time.process_time()
        for _ in range(3):
            assert load.load_compiled(stored.compiled, stored.policy_hash) is not None
        compiled_cpu = time.process_time() - started
        started = time.process_time()
        for _ in range(3):
            load_policy(stored.text)
        text_cpu = time.process_time() - started
        assert compiled_cpu < text_cpu / 5, (compiled_cpu, text_cpu)
    finally:
        cold.stop()


def test_a_stored_form_not_made_by_this_code_is_not_trusted(
    database_url: str, validations: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = pg.owner_key()
    applier = pg.make_service(database_url)
    keyring = applier.keyring
    try:
        applier.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
        stored = applier.database.run(lambda repo: repo.get_policy("shop"))
    finally:
        applier.stop()
    assert stored.compiled is not None and stored.compiled.startswith(load.COMPILED_TAG)
    # Another hash, another code's form, none at all (applied before migration 0008):
    assert load.load_compiled(stored.compiled, "0" * 64) is None
    assert load.load_compiled(stored.compiled.replace("v1:", "v0:", 1), stored.policy_hash) is None
    assert load.load_compiled(None, stored.policy_hash) is None
    # A row applied before the column existed loads from its text, validated, as before.
    cold = pg.make_service(database_url, keyring)
    try:
        cold.database.run(
            lambda repo: repo.session.execute(sql("UPDATE policies SET compiled = NULL"))
        )
        validations.clear()
        assert _attest(cold).policy_hash == stored.policy_hash
        assert validations == [1]
    finally:
        cold.stop()
    # ... once: the form it validated is kept, and the next process uses it.
    again = pg.make_service(database_url, keyring)
    try:
        after = again.database.run(lambda repo: repo.get_policy("shop"))
        assert after.compiled == stored.compiled
        validations.clear()
        assert _attest(again).policy_hash == stored.policy_hash
        assert validations == []
    finally:
        again.stop()
