"""Issue 9 finding 5: a signed owner request is accepted once, by the service it was made for.

An attacker who captured owner requests (from a proxy log, a shared
terminal, a compromised load balancer) replays them over real HTTPS on
loopback: a create after the owner deleted the policy, an update after the
owner reverted, a request sent to another CAS — also one that owners reach
at the same origin (red team a06 part 3) — and a request sent again to
another replica sharing the database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sgxcloud.cas import client, secrets
from sgxcloud.cas.client import pinned_tls
from sgxcloud.cas.errors import AccessDenied
from sgxcloud.cas.policy import policy_hash, public_key_id
from sgxcloud.cas.service import auth
from sgxcloud.cas.service.app import create_app
from sgxcloud.cas.service.server import background_https, make_loopback_tls

try:
    from tests.cas import postgres as pg
except ImportError:  # tests/cas is not a package: pytest put its directory on sys.path
    import postgres as pg  # type: ignore[no-redef]

database_url = pg.database_url


class Wire:
    """An owner client whose requests an eavesdropper records as they leave."""

    def __init__(self, url: str, ca_file: Path, key: Any, audience: str | None = None) -> None:
        self.captured: list[httpx.Request] = []
        http = httpx.Client(
            base_url=url,
            verify=pinned_tls(ca_file),
            event_hooks={"request": [self.captured.append]},
        )
        self.owner = client.OwnerClient(
            url, key, ca_file=ca_file, http_client=http, audience=audience
        )

    def last(self) -> httpx.Request:
        return self.captured[-1]


def replay(request: httpx.Request, ca_file: Path, url: str | None = None) -> httpx.Response:
    """Send a captured request again, byte for byte (to ``url``'s host if given)."""
    target = request.url if url is None else httpx.URL(url).join(request.url.raw_path.decode())
    headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
    with httpx.Client(verify=pinned_tls(ca_file)) as http:
        return http.request(request.method, target, headers=headers, content=request.content)


@pytest.fixture
def two_cas(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two independent CAS on loopback (own databases), one pinned CA for both."""
    tls = make_loopback_tls(tmp_path / "tls")
    services = [pg.make_service(f"sqlite:///{tmp_path / f'cas{i}.db'}") for i in (0, 1)]
    with (
        background_https(create_app(services[0]), tls) as first,
        background_https(create_app(services[1]), tls) as second,
    ):
        yield (first, second), tls.ca_cert
    for service in services:
        service.stop()


def test_captured_create_replayed_after_delete_does_not_bring_the_policy_back(
    two_cas,  # type: ignore[no-untyped-def]
) -> None:
    (url, _), ca = two_cas
    owner = pg.owner_key()
    wire = Wire(url, ca, owner)
    text = pg.policy_text(owner)
    wire.owner.apply(text)
    captured_create = wire.last()
    wire.owner.delete("shop", policy_hash(text))
    replayed = replay(captured_create, ca)
    assert replayed.status_code == 409, replayed.text
    assert replayed.json()["error"] == "already-received"
    with pytest.raises(client.PolicyNotFound):
        wire.owner.show("shop")


def test_captured_update_replayed_after_a_revert_changes_nothing(two_cas) -> None:  # type: ignore[no-untyped-def]
    (url, _), ca = two_cas
    owner = pg.owner_key()
    wire = Wire(url, ca, owner)
    v1 = pg.policy_text(owner)
    wire.owner.apply(v1)
    v2 = pg.policy_text(owner, predecessor=policy_hash(v1), description="v2 (withdrawn)")
    wire.owner.apply(v2)
    captured_update = wire.last()
    # The owner reverts to v1 (delete, create v1 again): v2's predecessor is current again.
    wire.owner.delete("shop", policy_hash(v2))
    wire.owner.apply(v1)
    replayed = replay(captured_update, ca)
    assert replayed.status_code == 409, replayed.text
    assert wire.owner.show("shop")["policy_hash"] == policy_hash(v1)


def test_request_signed_for_one_cas_is_refused_by_another(two_cas) -> None:  # type: ignore[no-untyped-def]
    (first, second), ca = two_cas
    owner = pg.owner_key()
    text = pg.policy_text(owner)
    at_first, at_second = Wire(first, ca, owner), Wire(second, ca, owner)
    at_first.owner.apply(text)
    at_second.owner.apply(text)  # the same policy (same hash) on both services
    at_first.owner.delete("shop", policy_hash(text))
    relayed = replay(at_first.last(), ca, url=second)
    assert relayed.status_code == 401, relayed.text
    assert "another service" in relayed.json()["message"]
    assert at_second.owner.show("shop")["version"] == 1


PUBLIC = "https://cas.example:443"
"""The one origin two deployments share in the tests below (both set it in public_urls)."""


@pytest.fixture
def same_origin(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two CAS deployments (own databases) that owners reach at one origin, ``PUBLIC``."""
    tls = make_loopback_tls(tmp_path / "tls")
    services = [pg.make_service(f"sqlite:///{tmp_path / f'deployment{i}.db'}") for i in (0, 1)]
    with (
        background_https(create_app(services[0], audiences=[PUBLIC]), tls) as first,
        background_https(create_app(services[1], audiences=[PUBLIC]), tls) as second,
    ):
        yield (first, second), tls.ca_cert, services
    for service in services:
        service.stop()


def test_a_request_for_one_deployment_is_refused_by_another_at_the_same_origin(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    """Red team a06 part 3: A's captured delete, replayed at B (same origin), deleted there too."""
    (a, b), ca, _ = same_origin
    owner = pg.owner_key()
    text = pg.policy_text(owner)
    at_a, at_b = Wire(a, ca, owner, audience=PUBLIC), Wire(b, ca, owner, audience=PUBLIC)
    at_a.owner.apply(text)
    at_b.owner.apply(text)  # the same owner, the same policy (same hash) on both deployments
    at_a.owner.delete("shop", policy_hash(text))
    relayed = replay(at_a.last(), ca, url=b)
    assert relayed.status_code == 401, relayed.text
    assert "another CAS deployment" in relayed.json()["message"]
    assert at_b.owner.show("shop")["version"] == 1
    with pytest.raises(client.PolicyNotFound):
        at_a.owner.show("shop")  # A did accept it: it was A's


def test_a_request_refused_by_the_other_deployment_is_still_accepted_by_its_own(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    (a, b), ca, services = same_origin
    owner = pg.owner_key()
    for service in services:
        service.apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    assert services[0].deployment_id != services[1].deployment_id
    signed_for_a = auth.sign_request(
        owner,
        "GET",
        "/v1/policies/shop",
        b"",
        now=int(time.time()),
        audience=PUBLIC,
        deployment=services[0].deployment_id,
    )
    with httpx.Client(verify=pinned_tls(ca)) as http:
        at_b = http.get(f"{b}/v1/policies/shop", headers=signed_for_a)
        assert at_b.status_code == 401
        assert at_b.json()["message"] == (
            f"request was signed for another CAS deployment ({services[0].deployment_id}); "
            f"this CAS is deployment {services[1].deployment_id} (GET /v1/health): sign for it"
        )
        # B's refusal spent nothing: the request is A's, once.
        assert http.get(f"{a}/v1/policies/shop", headers=signed_for_a).status_code == 200
        assert http.get(f"{a}/v1/policies/shop", headers=signed_for_a).status_code == 409


def test_a_consent_for_one_deployment_is_refused_by_another_at_the_same_origin(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    (a, b), ca, services = same_origin
    alice, bob = pg.owner_key(), pg.owner_key()
    text = pg.policy_text([alice, bob])
    bobs = client.consent(
        bob, PUBLIC, text, now=int(time.time()), deployment=services[0].deployment_id
    )
    with client.OwnerClient(b, alice, ca_file=ca, audience=PUBLIC) as at_b:
        with pytest.raises(
            AccessDenied,
            match=r"consent of key:sha256:[0-9a-f]+ was made for "
            r"another CAS deployment",
        ):
            at_b.apply(text, [bobs])
        with pytest.raises(client.PolicyNotFound):
            at_b.show("shop")
    with client.OwnerClient(a, alice, ca_file=ca, audience=PUBLIC) as at_a:
        assert at_a.apply(text, [bobs])["created"]
    with client.OwnerClient(a, bob, ca_file=ca, audience=PUBLIC) as as_bob:
        assert as_bob.show("shop")["version"] == 1


def test_a_request_is_accepted_once_across_replicas_on_one_database(
    database_url: str, tmp_path: Path
) -> None:
    """Replicas behind one public URL share the database, so they share the used ids."""
    public = "https://cas.example:443"
    ring = secrets.Keyring(secrets.MasterKey.generate())
    replicas = [pg.make_service(database_url, ring) for _ in range(2)]
    tls = make_loopback_tls(tmp_path / "tls")
    owner = pg.owner_key()
    replicas[0].apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    deployment = replicas[0].deployment_id
    assert replicas[1].deployment_id == deployment  # one database: one deployment
    try:
        with (
            background_https(create_app(replicas[0], audiences=[public]), tls) as one,
            background_https(create_app(replicas[1], audiences=[public]), tls) as two,
        ):
            headers = auth.sign_request(
                owner,
                "GET",
                "/v1/policies/shop",
                b"",
                now=int(time.time()),
                audience=public,
                deployment=deployment,
            )
            with httpx.Client(verify=pinned_tls(tls.ca_cert)) as http:
                assert http.get(f"{one}/v1/policies/shop", headers=headers).status_code == 200
                again = http.get(f"{two}/v1/policies/shop", headers=headers)
                assert again.status_code == 409 and again.json()["error"] == "already-received"
                assert http.get(f"{one}/v1/policies/shop", headers=headers).status_code == 409
                fresh = auth.sign_request(
                    owner,
                    "GET",
                    "/v1/policies/shop",
                    b"",
                    now=int(time.time()),
                    audience=public,
                    deployment=deployment,
                )
                assert http.get(f"{two}/v1/policies/shop", headers=fresh).status_code == 200
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.parametrize("ahead", [200, 3000])
def test_a_replica_with_a_clock_ahead_does_not_purge_a_request_another_still_accepts(
    database_url: str, tmp_path: Path, ahead: int
) -> None:
    """Replica B's clock is ``ahead`` s fast: its purge must not let A accept a replay."""
    public = "https://cas.example:443"
    ring = secrets.Keyring(secrets.MasterKey.generate())
    replicas = [pg.make_service(database_url, ring) for _ in range(2)]
    tls = make_loopback_tls(tmp_path / "tls")
    owner, stranger = pg.owner_key(), pg.owner_key()
    replicas[0].apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    start = int(time.time())
    slow, fast = [float(start)], [float(start + ahead)]
    try:
        with (
            background_https(
                create_app(replicas[0], audiences=[public], clock=lambda: slow[0]), tls
            ) as one,
            background_https(
                create_app(replicas[1], audiences=[public], clock=lambda: fast[0]), tls
            ) as two,
            httpx.Client(verify=pinned_tls(tls.ca_cert)) as http,
        ):
            captured = auth.sign_request(
                owner,
                "GET",
                "/v1/policies/shop",
                b"",
                now=start,
                audience=public,
                deployment=replicas[0].deployment_id,
            )
            assert http.get(f"{one}/v1/policies/shop", headers=captured).status_code == 200
            slow[0] += 110
            fast[0] += 110  # A would still accept the request's date (±300 s)
            # Any signed request at B, even a stranger's, runs B's purge.
            anyone = auth.sign_request(
                stranger,
                "GET",
                "/v1/audit",
                b"",
                now=int(fast[0]),
                audience=public,
                deployment=replicas[1].deployment_id,
            )
            http.get(f"{two}/v1/audit", headers=anyone)
            again = http.get(f"{one}/v1/policies/shop", headers=captured)
            assert again.status_code == 409 and again.json()["error"] == "already-received"
    finally:
        for replica in replicas:
            replica.stop()


def _older_signature(key: Any, method: str, path: str, *, now: int, audience: str) -> dict:
    """Headers as owner clients signed before the deployment id (sgxcloud-cas-request-v2)."""
    import base64
    import hashlib
    import os

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    request_id = os.urandom(16).hex()
    payload = b"\n".join(
        [
            b"sgxcloud-cas-request-v2",
            audience.encode(),
            method.encode(),
            path.encode(),
            str(now).encode(),
            request_id.encode(),
            hashlib.sha256(b"").hexdigest().encode(),
        ]
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        auth.DATE_HEADER: str(now),
        auth.AUDIENCE_HEADER: audience,
        auth.REQUEST_ID_HEADER: request_id,
        auth.KEY_HEADER: base64.b64encode(der).decode(),
        auth.SIGNATURE_HEADER: base64.b64encode(
            key.sign(payload, ec.ECDSA(hashes.SHA256()))
        ).decode(),
    }


def test_older_signatures_are_refused_naming_the_upgrade(same_origin) -> None:  # type: ignore[no-untyped-def]
    """v2 (origin only) named no deployment: accepted anywhere, it would keep a06 open."""
    (a, _), ca, services = same_origin
    owner = pg.owner_key()
    services[0].apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    older = _older_signature(
        owner, "GET", "/v1/policies/shop", now=int(time.time()), audience=PUBLIC
    )
    with httpx.Client(verify=pinned_tls(ca)) as http:
        answer = http.get(f"{a}/v1/policies/shop", headers=older)
        assert answer.status_code == 401
        message = answer.json()["message"]
        assert "older form (sgxcloud-cas-request-v2 or before)" in message
        assert "upgrade the owner client" in message and "sgxcloud-cas-request-v4" in message
        # Naming a deployment does not revive a v2 signature: the domain differs.
        dressed = {**older, auth.DEPLOYMENT_HEADER: services[0].deployment_id}
        answer = http.get(f"{a}/v1/policies/shop", headers=dressed)
        assert answer.status_code == 401 and "does not verify" in answer.json()["message"]
        # Refused before the body is read (sgxcloud.web.limits), so no body is held.
        put = http.put(
            f"{a}/v1/policies",
            headers={**older, "content-length": "100000"},
            content=b"{" + b" " * 99_999,
        )
        assert put.status_code == 401 and "older form" in put.json()["message"]
    # An older consent (sgxcloud-cas-owner-consent-v1, no deployment) is refused too.
    alice, bob = pg.owner_key(), pg.owner_key()
    text = pg.policy_text([alice, bob], name="shared")
    consent = client.consent(
        bob, PUBLIC, text, now=int(time.time()), deployment=services[0].deployment_id
    )
    del consent["deployment"]
    with (
        client.OwnerClient(a, alice, ca_file=ca, audience=PUBLIC) as owner_client,
        pytest.raises(AccessDenied, match=r"older form \(sgxcloud-cas-owner-consent-v1\)"),
    ):
        owner_client.apply(text, [consent])


def test_requests_without_request_id_or_audience_are_refused(two_cas) -> None:  # type: ignore[no-untyped-def]
    """The old v1 signature (no audience, no request id) no longer authenticates."""
    (url, _), ca = two_cas
    owner = pg.owner_key()
    with client.OwnerClient(url, owner, ca_file=ca) as owner_client:
        deployment = owner_client.deployment_id()  # what GET /v1/health says
    headers = auth.sign_request(
        owner,
        "GET",
        "/v1/audit",
        b"",
        now=int(time.time()),
        audience=auth.origin_of(url),
        deployment=deployment,
    )
    with httpx.Client(verify=pinned_tls(ca)) as http:
        # Whole, it authenticates (403: the caller owns no policy to audit).
        assert http.get(f"{url}/v1/audit", headers=headers).status_code == 403
        for dropped, says in (
            (auth.REQUEST_ID_HEADER, "request-id"),
            (auth.AUDIENCE_HEADER, "request-id"),
            (auth.DEPLOYMENT_HEADER, "older form"),
        ):
            partial = {k: v for k, v in headers.items() if k != dropped}
            answer = http.get(f"{url}/v1/audit", headers=partial)
            assert answer.status_code == 401 and says in answer.json()["message"]
        short = {**headers, auth.REQUEST_ID_HEADER: "ab" * 8}  # 8 bytes: too few to be random
        assert http.get(f"{url}/v1/audit", headers=short).status_code == 401


def test_one_signature_is_accepted_once_whichever_credential_names_its_key(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    """The credential headers are not signed: a request signed with a certificate's key
    also verifies with the bare key (and with any other certificate of that key).  A
    captured read, replayed under the owner's bare key, was answered again."""
    import base64
    import datetime as dt
    import hashlib

    import yaml
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    (a, _), ca, services = same_origin
    owner = pg.owner_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(owner.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(owner, hashes.SHA256())
    )
    # The owner's bare key owns the policy; the owner's certificate (same key) reads it.
    document = yaml.safe_load(pg.policy_text(owner))
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    document["access"]["readers"] = [
        {"name": "owner-cert", "client_certificate_sha256": fingerprint}
    ]
    owner_id = public_key_id(pg.public_pem(owner))
    services[0].apply_policy(owner_id, yaml.safe_dump(document), pg.CLOCK)
    signed = auth.sign_request(
        owner,
        "GET",
        "/v1/policies/shop",
        b"",
        now=int(time.time()),
        audience=PUBLIC,
        deployment=services[0].deployment_id,
        certificate=certificate,
    )
    as_key = {k: v for k, v in signed.items() if k != auth.CERT_HEADER}
    spki = owner.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    as_key[auth.KEY_HEADER] = base64.b64encode(spki).decode()
    with httpx.Client(verify=pinned_tls(ca)) as http:
        # Since v4 the signature names the credential: under the bare key it is
        # another principal's request, and does not verify — also presented first.
        first = http.get(f"{a}/v1/policies/shop", headers=as_key)
        assert first.status_code == 401, first.text
        assert first.json()["message"] == "request signature does not verify"
        assert http.get(f"{a}/v1/policies/shop", headers=signed).status_code == 200
        replayed = http.get(f"{a}/v1/policies/shop", headers=as_key)
        assert replayed.status_code == 401, replayed.text
        # Either way round.
        fresh = auth.sign_request(
            owner,
            "GET",
            "/v1/policies/shop",
            b"",
            now=int(time.time()),
            audience=PUBLIC,
            deployment=services[0].deployment_id,
        )
        assert http.get(f"{a}/v1/policies/shop", headers=fresh).status_code == 200
        as_certificate = {k: v for k, v in fresh.items() if k != auth.KEY_HEADER}
        as_certificate[auth.CERT_HEADER] = signed[auth.CERT_HEADER]
        assert http.get(f"{a}/v1/policies/shop", headers=as_certificate).status_code == 401


def _self_signed(key: Any) -> Any:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_a_consent_counts_only_for_the_credential_it_was_made_with(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    """A consent's signature did not cover its credential: bob's consent made with his
    certificate (to read) also verified under his bare key (another principal, listed as
    an owner), and was spent once per form — so alice made bob's bare key a co-owner of
    her policy with a consent bob gave as a reader.  The signature now covers the
    credential's principal id (sgxcloud-cas-owner-consent-v3); v2 consents are refused
    with the command that makes a new one."""
    import base64
    import hashlib

    import yaml
    from cryptography.hazmat.primitives import serialization

    (a, _), ca, services = same_origin
    alice, bob = pg.owner_key(), pg.owner_key()
    certificate = _self_signed(bob)
    document = yaml.safe_load(pg.policy_text([alice, bob], name="shared"))
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    document["access"]["readers"] = [{"name": "bob-cert", "client_certificate_sha256": fingerprint}]
    text = yaml.safe_dump(document)
    deployment = services[0].deployment_id
    as_reader = client.consent(
        bob, PUBLIC, text, now=int(time.time()), deployment=deployment, certificate=certificate
    )
    assert as_reader["principal"] == "cert:sha256:" + fingerprint
    spki = bob.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    as_key = {k: v for k, v in as_reader.items() if k != "certificate"}
    as_key["key"] = base64.b64encode(spki).decode()
    bob_key = public_key_id(pg.public_pem(bob))
    with client.OwnerClient(a, alice, ca_file=ca, audience=PUBLIC) as owner:
        with pytest.raises(
            AccessDenied,
            match=rf"consent presented with the credential of {bob_key} was made for "
            rf"cert:sha256:{fingerprint}",
        ):
            owner.apply(text, [as_reader, as_key])
        # Nor without the principal field (the signature is over the credential's id).
        unnamed = {k: v for k, v in as_key.items() if k != "principal"}
        with pytest.raises(AccessDenied, match="older form"):
            owner.apply(text, [as_reader, unnamed])
        with pytest.raises(client.PolicyNotFound):
            owner.show("shared")
        # A consent of the older form (v2: no credential signed) is refused, naming the fix.
        expires = int(time.time()) + 600
        v2 = b"\n".join(
            f.encode()
            for f in (
                "sgxcloud-cas-owner-consent-v2",
                deployment,
                PUBLIC,
                "shared",
                policy_hash(text),
                str(expires),
            )
        )
        older = {
            "deployment": deployment,
            "audience": PUBLIC,
            "policy": "shared",
            "policy_hash": policy_hash(text),
            "expires_at": expires,
            "key": base64.b64encode(spki).decode(),
            "signature": base64.b64encode(bob.sign(v2, _ecdsa())).decode(),
        }
        with pytest.raises(
            AccessDenied,
            match=r"older form \(sgxcloud-cas-owner-consent-v2\) whose signature does not "
            r"name the credential.*'sgxcloud policy consent'",
        ):
            owner.apply(text, [as_reader, older])
        # Made for the bare key, bob's consent makes him a co-owner.
        as_owner = client.consent(bob, PUBLIC, text, now=int(time.time()), deployment=deployment)
        assert owner.apply(text, [as_reader, as_owner])["created"]
    with client.OwnerClient(a, bob, ca_file=ca, audience=PUBLIC) as as_bob:
        assert as_bob.show("shared")["version"] == 1


def _ecdsa() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.ECDSA(hashes.SHA256())


def test_a_request_signed_without_its_credential_v3_is_refused_naming_the_upgrade(
    same_origin,  # type: ignore[no-untyped-def]
) -> None:
    """v3 signatures did not cover the credential headers: one verified under the bare key
    and under every certificate of the key (each another principal).  v4 names the
    credential's principal id; a v3 signature is refused with the upgrade, not as bad."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives import serialization

    (a, _), ca, services = same_origin
    owner = pg.owner_key()
    services[0].apply_policy(public_key_id(pg.public_pem(owner)), pg.policy_text(owner), pg.CLOCK)
    now, request_id = int(time.time()), "ab" * 16
    deployment = services[0].deployment_id
    v3 = b"\n".join(
        [
            b"sgxcloud-cas-request-v3",
            deployment.encode(),
            PUBLIC.encode(),
            b"GET",
            b"/v1/policies/shop",
            str(now).encode(),
            request_id.encode(),
            hashlib.sha256(b"").hexdigest().encode(),
        ]
    )
    spki = owner.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    headers = {
        auth.DATE_HEADER: str(now),
        auth.DEPLOYMENT_HEADER: deployment,
        auth.AUDIENCE_HEADER: PUBLIC,
        auth.REQUEST_ID_HEADER: request_id,
        auth.KEY_HEADER: base64.b64encode(spki).decode(),
        auth.SIGNATURE_HEADER: base64.b64encode(owner.sign(v3, _ecdsa())).decode(),
    }
    with httpx.Client(verify=pinned_tls(ca)) as http:
        answer = http.get(f"{a}/v1/policies/shop", headers=headers)
        assert answer.status_code == 401
        message = answer.json()["message"]
        assert "older form (sgxcloud-cas-request-v3)" in message
        assert "upgrade the owner client" in message and "sgxcloud-cas-request-v4" in message
        # the upgraded client's request is accepted
        fresh = auth.sign_request(
            owner,
            "GET",
            "/v1/policies/shop",
            b"",
            now=int(time.time()),
            audience=PUBLIC,
            deployment=deployment,
        )
        assert http.get(f"{a}/v1/policies/shop", headers=fresh).status_code == 200
