"""Concurrency on SQLite and a real PostgreSQL: many attesting clients, racing owners, restarts.

Several ``CasService`` instances share one database, as several server
processes behind a load balancer would; each has its own engine and
connection pool, so the races are decided by the database, not by Python.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from sgxcloud.cas import audit, protocol, secrets
from sgxcloud.cas.errors import ConflictError
from sgxcloud.cas.evidence import make_simulated_evidence
from sgxcloud.cas.policy import policy_hash, public_key_id
from sgxcloud.cas.service.core import AttestRequest, CasService

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url
NOW = pg.CLOCK
CLIENTS = 8
ROUNDS = 4


def _attest_once(service: CasService, now: int, policy: str = "shop") -> protocol.Configuration:
    key = protocol.new_enclave_key()
    nonce = service.issue_nonce(now).nonce
    evidence = make_simulated_evidence(
        pg.simulated_identity(), protocol.report_data_for(key.public_key(), bytes.fromhex(nonce))
    )
    request = AttestRequest(
        policy, "web", nonce, pg.public_pem(key), base64.b64encode(evidence.raw).decode()
    )
    result = service.attest(request, now)
    return protocol.open_configuration(result.sealed_configuration, key, bytes.fromhex(nonce))


@pytest.fixture
def cluster(database_url: str):  # type: ignore[no-untyped-def]
    keyring = secrets.Keyring(secrets.MasterKey.generate())
    services = [pg.make_service(database_url, keyring) for _ in range(3)]
    yield database_url, keyring, services
    for service in services:
        service.stop()


def test_many_clients_attest_at_once_and_the_chain_holds(cluster) -> None:  # type: ignore[no-untyped-def]
    url, keyring, services = cluster
    owner_a, owner_b = pg.owner_key(), pg.owner_key()
    text = pg.policy_text([owner_a, owner_b])
    services[0].apply_policy(
        public_key_id(pg.public_pem(owner_a)), text, NOW, pg.consents(text, owner_b)
    )
    barrier = threading.Barrier(CLIENTS)

    def client(i: int) -> list[str]:
        barrier.wait()
        return [_attest_once(services[i % len(services)], NOW + 1).argv[2] for _ in range(ROUNDS)]

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [argv for batch in pool.map(client, range(CLIENTS)) for argv in batch]
    # Everyone got the configuration, with the one stored secret (never regenerated).
    assert len(results) == CLIENTS * ROUNDS and len(set(results)) == 1
    report = audit.verify_chain(services[0].database)
    assert report.ok, report.problems
    assert report.entries == 1 + CLIENTS * ROUNDS
    # Restart: a fresh service on the same database and master key has everything.
    for service in services:
        service.stop()
    reopened = pg.make_service(url, keyring)
    assert _attest_once(reopened, NOW + 2).argv[2] == results[0]
    assert audit.verify_chain(reopened.database).entries == 2 + CLIENTS * ROUNDS
    reopened.stop()


def test_two_owners_update_one_policy_at_once_exactly_one_wins(cluster) -> None:  # type: ignore[no-untyped-def]
    _url, _keyring, services = cluster
    owners = [pg.owner_key(), pg.owner_key()]
    ids = [public_key_id(pg.public_pem(o)) for o in owners]
    text = pg.policy_text(owners)
    services[0].apply_policy(ids[0], text, NOW, pg.consents(text, owners[1]))
    current = policy_hash(text)
    for round_ in range(ROUNDS):
        updates = [
            pg.policy_text(owners, predecessor=current, description=f"r{round_} by {i}")
            for i in range(2)
        ]
        barrier = threading.Barrier(2)

        def update(i: int, updates: list[str] = updates, barrier=barrier, at=NOW + round_):  # type: ignore[no-untyped-def]
            barrier.wait()
            try:
                return services[i].apply_policy(ids[i], updates[i], at)
            except ConflictError as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(update, range(2)))
        winners = [o for o in outcomes if not isinstance(o, ConflictError)]
        losers = [o for o in outcomes if isinstance(o, ConflictError)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert winners[0].version == round_ + 2
        current = winners[0].policy_hash
        with services[2].database.transaction() as repo:
            stored = repo.get_policy("shop")
            assert stored is not None and stored.policy_hash == current
            assert [v.version for v in repo.policy_history("shop")] == list(range(1, round_ + 3))
    report = audit.verify_chain(services[0].database)
    assert report.ok and report.entries == 1 + ROUNDS  # losers leave no trace but a 409


def test_concurrent_creation_of_one_policy(cluster) -> None:  # type: ignore[no-untyped-def]
    _url, _keyring, services = cluster
    owner = pg.owner_key()
    owner_id = public_key_id(pg.public_pem(owner))
    texts = [pg.policy_text(owner, description=f"creator {i}") for i in range(3)]
    barrier = threading.Barrier(3)

    def create(i: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        try:
            return services[i].apply_policy(owner_id, texts[i], NOW)
        except ConflictError as exc:
            return exc

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(create, range(3)))
    assert sum(not isinstance(o, ConflictError) for o in outcomes) == 1, outcomes
    assert audit.verify_chain(services[0].database).ok


def test_attestations_beyond_the_concurrency_limit_wait_their_turn(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """At most ``attest_concurrency`` attestations are worked on at once; all complete."""
    from sgxcloud.cas.evidence import DefaultVerifier
    from sgxcloud.cas.store import Database

    inside, most = 0, 0
    count = threading.Lock()

    class Watched(DefaultVerifier):
        def verify(self, evidence, now):  # type: ignore[no-untyped-def]
            nonlocal inside, most
            with count:
                inside += 1
                most = max(most, inside)
            try:
                threading.Event().wait(0.05)  # long enough for every caller to pile up
                return super().verify(evidence, now)
            finally:
                with count:
                    inside -= 1

    service = CasService(
        Database.open(f"sqlite:///{tmp_path / 'cas.db'}"),
        secrets.Keyring(secrets.MasterKey.generate()),
        Watched(None),
        attest_concurrency=2,
    )
    service.start()
    owner = pg.owner_key()
    service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), NOW)
    with ThreadPoolExecutor(8) as pool:
        configurations = list(pool.map(lambda _: _attest_once(service, NOW), range(8)))
    assert len({c.argv[2] for c in configurations}) == 1
    assert most == 2
    with pytest.raises(ValueError, match="at least 1"):
        CasService(service.database, service.keyring, Watched(None), attest_concurrency=0)
    service.stop()
