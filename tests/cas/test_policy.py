"""Policy language: schema + semantic validation with field paths, hashing, imports."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import sgxcloud.cas.policy as policy_api
from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.policy import (
    MrenclaveIdentity,
    SignerIdentity,
    check_import,
    find_placeholders,
    load_policy,
    policy_hash,
    policy_schema,
    public_key_id,
    render_file,
    substitute,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples/cas").glob("*.yaml"))
HEX = "ab" * 32
CERT = "cd" * 32


def base(**overrides) -> dict:
    """A minimal valid policy document, with top-level overrides."""
    document = {
        "name": "shop",
        "access": {"owners": [{"name": "alice", "client_certificate_sha256": CERT}]},
        "services": {"web": {"identities": [{"mrenclave": HEX}]}},
    }
    document.update(overrides)
    return document


def service(**fields) -> dict:
    return {"web": {"identities": [{"mrenclave": HEX}], **fields}}


def problems_of(document) -> dict[str, str]:
    with pytest.raises(PolicyError) as caught:
        load_policy(document)
    assert caught.value.exit_code == 2
    assert caught.value.field == caught.value.problems[0].field
    return {p.field: p.message for p in caught.value.problems}


# -- schema, docs and examples agree ----------------------------------------------


def test_published_schema_is_the_one_enforced():
    published = json.loads((REPO / "docs/cas/policy.schema.json").read_text())
    assert published == policy_schema()
    jsonschema.Draft202012Validator.check_schema(published)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_docs_schema_and_load(path):
    published = json.loads((REPO / "docs/cas/policy.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(path.read_text()), published)
    policy = load_policy(path.read_text())
    assert policy.hash == policy_hash(path.read_text())


def test_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"webshop.yaml", "orders-db.yaml", "simulated-demo.yaml"}


def test_example_policy_reads_as_documented():
    policy = load_policy((REPO / "examples/cas/webshop.yaml").read_text())
    web = policy.services["frontend"]
    assert web.identities == (
        MrenclaveIdentity("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"),
        SignerIdentity("815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6", 1, 2),
    )
    assert web.allow_debug is False and web.allow_simulated is False
    assert web.tolerated_tcb_statuses == ("UpToDate", "SWHardeningNeeded")
    assert policy.secrets["volume_key"].size == 16
    assert policy.secrets["tls_cert"].validity_days == 90
    assert policy.secrets["db_password"].imported
    assert policy.predecessor is None


def test_defaults_are_the_safe_ones():
    web = load_policy(base()).services["web"]
    assert web.allow_debug is False
    assert web.allow_simulated is False
    assert web.tolerated_tcb_statuses == ("UpToDate",)
    assert web.tolerated_advisories == ()


# -- field paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identity", "field"),
    [
        ({"mrenclave": "ab" * 31}, "services.web.identities[0].mrenclave"),  # bad hex length
        ({"mrenclave": "zz" * 32}, "services.web.identities[0].mrenclave"),
        ({"mrenclave": 12345}, "services.web.identities[0].mrenclave"),  # YAML made it a number
        (
            {"mrsigner": HEX, "isvprodid": 70000, "min_isvsvn": 0},
            "services.web.identities[0].isvprodid",
        ),
        ({"mrsigner": HEX, "isvprodid": 1}, "services.web.identities[0].min_isvsvn"),
        (
            {"mrsigner": "ab", "isvprodid": 1, "min_isvsvn": 1},
            "services.web.identities[0].mrsigner",
        ),
        ({"mrenclave": HEX, "mrsigner": HEX}, "services.web.identities[0]"),
    ],
)
def test_identity_errors_name_the_field(identity, field):
    problems = problems_of(base(services={"web": {"identities": [identity]}}))
    assert field in problems


def test_every_problem_is_reported_at_once():
    document = base(
        name="Bad Name",
        services={
            "web": {"identities": [], "allow_debug": "yes", "tolerated_tcb_statuses": ["Revoked"]}
        },
    )
    problems = problems_of(document)
    assert set(problems) >= {
        "name",
        "services.web.identities",
        "services.web.allow_debug",
        "services.web.tolerated_tcb_statuses[0]",
    }


@pytest.mark.parametrize(
    ("document", "field", "words"),
    [
        (base(extra=1), "", "unknown field(s): extra"),
        (base(services={}), "services", "at least 1"),
        (base(access={"owners": []}), "access.owners", "at least 1"),
        (base(predecessor="abc"), "predecessor", "SHA-256"),
        (
            base(services=service(tolerated_advisories=["SA-1"])),
            "services.web.tolerated_advisories[0]",
            "INTEL-SA",
        ),
        (base(services=service(environment={"1BAD": "x"})), "services.web.environment", "bad key"),
        (base(services=service(files={"relative/path": "x"})), "services.web.files", "bad key"),
        (base(secrets={"k": {"kind": "random", "size": 0}}), "secrets.k.size", "at least 1"),
        (
            base(secrets={"k": {"kind": "private-key", "algorithm": "dsa"}}),
            "secrets.k.algorithm",
            "one of",
        ),
        (
            base(secrets={"k": {"kind": "random", "size": 4, "algorithm": "ec-p256"}}),
            "secrets.k",
            "algorithm",
        ),
    ],
)
def test_schema_problems_have_paths_and_plain_messages(document, field, words):
    problems = problems_of(document)
    assert field in problems, problems
    assert words in problems[field]


# -- semantic checks, section by section -------------------------------------------------


def test_placeholder_to_an_undefined_secret():
    problems = problems_of(base(services=service(environment={"TOKEN": "{{secret:nope}}"})))
    assert problems["services.web.environment.TOKEN"] == "refers to undefined secret 'nope'"


def test_placeholder_checks_in_argv_env_and_files():
    secrets = {
        "k": {"kind": "private-key", "algorithm": "ed25519"},
        "r": {"kind": "random", "size": 8},
    }
    document = base(
        secrets=secrets,
        services=service(
            command=["app", "--key={{secret:k:hex}}", "{{ secrets:r }}", "--r={{secret:r:raw}}"],
            files={"/etc/r": "{{secret:r:raw}}", "/etc/mixed": "x{{secret:r:raw}}"},
        ),
    )
    problems = problems_of(document)
    assert "does not apply to private-key" in problems["services.web.command[1]"]
    assert "does not start a placeholder" in problems["services.web.command[2]"]
    assert "binary" in problems["services.web.command[3]"]
    assert "binary" in problems['services.web.files["/etc/mixed"]']
    assert 'services.web.files["/etc/r"]' not in problems  # raw as a whole file is fine


@pytest.mark.parametrize("path", ["/../x", "/etc/../../etc/cron.d/x", "/a/.."])
def test_file_paths_may_not_climb_out_of_the_launcher_root(path):
    problems = problems_of(base(services=service(files={path: "y"})))
    assert problems[f"services.web.files[{json.dumps(path)}]"] == "a file path may not contain '..'"
    assert load_policy(base(services=service(files={"/etc/a..b": "y"}))).services


def test_gramine_key_files_must_be_raw_gramine_keys():
    secrets = {"vol": {"kind": "gramine-key"}, "r": {"kind": "random", "size": 16}}
    ok = base(
        secrets=secrets,
        services=service(files={"/dev/attestation/keys/default": "{{secret:vol:raw}}"}),
    )
    assert load_policy(ok).secrets["vol"].size == 16
    for content in ("{{secret:vol}}", "{{secret:r:raw}}", "x"):
        bad = base(
            secrets=secrets, services=service(files={"/dev/attestation/keys/default": content})
        )
        assert 'services.web.files["/dev/attestation/keys/default"]' in problems_of(bad)


def test_certificate_secrets_are_checked():
    secrets = {
        "key": {"kind": "random", "size": 8},
        "cert": {
            "kind": "x509",
            "key": "key",
            "subject": "not a name",
            "sans": ["ok.example", "10.0.0.1", "bad_name!"],
        },
        "cert2": {"kind": "x509", "subject": "CN=x"},
    }
    problems = problems_of(base(secrets=secrets))
    assert problems["secrets.cert.key"] == "must name a private-key secret of this policy"
    assert "RFC 4514" in problems["secrets.cert.subject"]
    assert "secrets.cert.sans[2]" in problems and "secrets.cert.sans[0]" not in problems
    assert "secrets.cert2.key" in problems


def test_secret_generation_parameters_are_required():
    problems = problems_of(base(secrets={"r": {"kind": "random"}, "p": {"kind": "private-key"}}))
    assert set(problems) == {"secrets.r.size", "secrets.p.algorithm"}


def test_duplicate_names_are_refused():
    text = """
name: shop
access:
  owners: [{name: alice, client_certificate_sha256: "%s"}]
services:
  web: {identities: [{mrenclave: "%s"}]}
  web: {identities: [{mrenclave: "%s"}]}
""" % (CERT, HEX, HEX)  # noqa: UP031 - YAML braces
    with pytest.raises(PolicyError, match="duplicate key 'web'"):
        load_policy(text)
    owners = [
        {"name": "alice", "client_certificate_sha256": CERT},
        {"name": "alice", "client_certificate_sha256": "ee" * 32},
        {"name": "bob", "client_certificate_sha256": CERT},
    ]
    problems = problems_of(base(access={"owners": owners}))
    assert "access.owners[1].name" in problems and "access.owners[2]" in problems
    identities = [{"mrenclave": HEX}, {"mrenclave": HEX.upper()}]
    problems = problems_of(base(services={"web": {"identities": identities}}))
    assert problems["services.web.identities[1]"] == "duplicate of identities[0]"


ALICE = "cert:sha256:" + CERT  # the principal id of base()'s owner
MALLORY = "cert:sha256:" + "ee" * 32
MALLORY_OWNER = {"name": "mallory", "client_certificate_sha256": "ee" * 32}


def test_import_and_export_sections():
    problems = problems_of(
        base(
            secrets={
                "a": {
                    "kind": "random",
                    "size": 4,
                    "export_to": [{"policy": "shop", "owner": ALICE}],
                },
                "b": {
                    "kind": "random",
                    "size": 4,
                    "import_from": {"policy": "shop", "owner": ALICE, "secret": "a"},
                },
                "c": {
                    "kind": "random",
                    "import_from": {"policy": "other", "owner": ALICE, "secret": "x"},
                    "export_to": [{"policy": "z", "owner": ALICE}],
                },
            }
        )
    )
    assert "export to itself" in problems["secrets.a.export_to"]
    assert "import from itself" in problems["secrets.b.import_from.policy"]
    assert "secrets.b.size" in problems and "secrets.c.export_to" in problems


@pytest.mark.parametrize(
    ("secret", "field"),
    [
        ({"kind": "random", "size": 4, "export_to": ["consumer"]}, "secrets.s.export_to[0]"),
        (
            {"kind": "random", "size": 4, "export_to": [{"policy": "consumer"}]},
            "secrets.s.export_to[0].owner",
        ),
        (
            {"kind": "random", "size": 4, "export_to": [{"policy": "c", "owner": "alice"}]},
            "secrets.s.export_to[0].owner",
        ),
        (
            {"kind": "random", "import_from": {"policy": "db", "secret": "x"}},
            "secrets.s.import_from.owner",
        ),
    ],
)
def test_imports_and_exports_must_pin_the_counterpart_owner(secret, field):
    """A bare policy name can be squatted: the schema demands an owner id beside it."""
    assert field in problems_of(base(secrets={"s": secret}))


def test_check_import_needs_both_sides():
    exporter = load_policy(
        base(
            name="db",
            secrets={
                "pw": {
                    "kind": "random",
                    "size": 16,
                    "export_to": [{"policy": "shop", "owner": ALICE}],
                },
                "private": {"kind": "random", "size": 16},
                "key": {
                    "kind": "private-key",
                    "algorithm": "ec-p256",
                    "export_to": [{"policy": "shop", "owner": ALICE}],
                },
            },
        )
    )
    good = load_policy(
        base(
            secrets={
                "db_pw": {
                    "kind": "random",
                    "import_from": {"policy": "db", "owner": ALICE, "secret": "pw"},
                }
            }
        )
    )
    assert check_import(good, exporter, **SIGNED_BY_ALICE) == {"db_pw": "pw"}

    def importing(source, owner=ALICE):
        return {"kind": "random", "import_from": {"policy": source, "owner": owner, "secret": "x"}}

    bad = load_policy(
        base(
            secrets={
                "a": {
                    "kind": "random",
                    "import_from": {"policy": "db", "owner": ALICE, "secret": "private"},
                },
                "b": {
                    "kind": "random",
                    "import_from": {"policy": "db", "owner": ALICE, "secret": "missing"},
                },
                "c": {
                    "kind": "random",
                    "import_from": {"policy": "db", "owner": ALICE, "secret": "key"},
                },
                "d": importing("elsewhere"),
                "e": {
                    "kind": "random",
                    "import_from": {"policy": "db", "owner": MALLORY, "secret": "pw"},
                },
            }
        )
    )
    with pytest.raises(PolicyError) as caught:
        check_import(bad, exporter, **SIGNED_BY_ALICE)
    problems = {p.field: p.message for p in caught.value.problems}
    assert "does not export 'private' to 'shop'" in problems["secrets.a.import_from"]
    assert "has no secret 'missing'" in problems["secrets.b.import_from"]
    assert "is random but db/key is private-key" in problems["secrets.c.kind"]
    assert not any(field.startswith("secrets.d") for field in problems)  # not this exporter's
    assert "is not an owner of policy 'db'" in problems["secrets.e.import_from.owner"]


SIGNED_BY_ALICE = {"importer_owners": frozenset({ALICE}), "exporter_owners": frozenset({ALICE})}


def test_export_reaches_only_an_importer_with_the_pinned_owner():
    """The squat: someone else's policy named 'shop' importing db's secret gets nothing."""
    exporter = load_policy(
        base(
            name="db",
            secrets={
                "pw": {
                    "kind": "random",
                    "size": 16,
                    "export_to": [{"policy": "shop", "owner": ALICE}],
                }
            },
        )
    )
    squatter = base(
        access={"owners": [{"name": "mallory", "client_certificate_sha256": "ee" * 32}]},
        secrets={
            "pw": {
                "kind": "random",
                "import_from": {"policy": "db", "owner": ALICE, "secret": "pw"},
            }
        },
    )
    signed = {"exporter_owners": frozenset({ALICE})}
    with pytest.raises(PolicyError, match="does not export 'pw' to 'shop'"):
        check_import(load_policy(squatter), exporter, importer_owners={MALLORY}, **signed)
    # Listing Alice's public id beside her own is Mallory's word alone: as long
    # as Alice did not sign the importer, the offer to Alice does not reach it.
    squatter["access"]["owners"].append({"name": "alice", "client_certificate_sha256": CERT})
    with pytest.raises(PolicyError, match="does not export 'pw' to 'shop'"):
        check_import(load_policy(squatter), exporter, importer_owners={MALLORY}, **signed)
    # Alice co-signed (she consented to co-own it with Mallory): her decision, it holds.
    both = frozenset({MALLORY, ALICE})
    assert check_import(load_policy(squatter), exporter, importer_owners=both, **signed) == {
        "pw": "pw"
    }
    # The mirror: an exporter listing Alice without her signature is not Alice's.
    with pytest.raises(PolicyError, match="is not an owner of policy 'db'"):
        check_import(
            load_policy(squatter), exporter, importer_owners=both, exporter_owners={MALLORY}
        )
    # A stored owner set never widens a document: owners it no longer lists do not count.
    with pytest.raises(PolicyError, match="is not an owner of policy 'db'"):
        check_import(
            load_policy(squatter),
            load_policy(base(name="db", access={"owners": [MALLORY_OWNER]})),
            importer_owners=both,
            exporter_owners=both,
        )


# -- reading YAML strictly -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: [unclosed", "not valid YAML at line"),
        ("- a list", "a policy is a mapping"),
        ("a: &x [1]\nb: *x", "aliases are not allowed"),
        ("? [complex]\n: 1", "keys must be strings"),
        (b"\xff\xfe", "not UTF-8"),
        ("", "a policy is a mapping"),
        ("name: x\nsize: " + "9" * 5000, "integer too large to read"),
        ("name: x\nsize: " + "9" * 30, "integer out of range"),
        ("name: x\ndescription: !!binary AAAA", "unsupported value of type bytes"),
        ("name: x\ndescription: !!set {a: null}", "unsupported value of type set"),
    ],
)
def test_unreadable_documents(text, words):
    with pytest.raises(PolicyError, match=words):
        load_policy(text)


def test_dates_stay_strings_and_are_not_accepted_as_names():
    problems = problems_of("name: 2025-01-01\naccess: {owners: []}\nservices: {}\n")
    assert "name" not in problems  # a valid name pattern, kept as the string it was written as


def test_messages_never_echo_literal_values():
    secret_literal = "hunter2-{{oops"
    with pytest.raises(PolicyError) as caught:
        load_policy(base(services=service(environment={"DB": secret_literal, "X": 5})))
    text = str(caught.value) + " ".join(str(p) for p in caught.value.problems)
    assert "hunter2" not in text


# -- hashing -----------------------------------------------------------------------------------


def test_policy_hash_ignores_layout_and_sees_content():
    text = (REPO / "examples/cas/webshop.yaml").read_text()
    reordered = yaml.safe_dump(yaml.safe_load(text), sort_keys=True, default_flow_style=True)
    assert policy_hash(text) == policy_hash(reordered) == policy_hash(yaml.safe_load(text))
    assert policy_hash(text) == load_policy(text).hash
    assert len(policy_hash(text)) == 64
    changed = text.replace("validity_days: 90", "validity_days: 91")
    assert policy_hash(changed) != policy_hash(text)


def test_predecessor_chain():
    first = load_policy(base())
    second = load_policy(base(predecessor=first.hash, description="v2"))
    assert second.predecessor == first.hash != second.hash


# -- access --------------------------------------------------------------------------------------


def test_access_rules_by_public_key_and_certificate():
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    policy = load_policy(
        base(
            access={
                "owners": [{"name": "alice", "public_key": pem}],
                "readers": [{"name": "audit", "client_certificate_sha256": CERT}],
            }
        )
    )
    alice, auditor = public_key_id(pem), f"cert:sha256:{CERT}"
    assert [p.id for p in policy.access.owners] == [alice]
    for action in ("read", "update", "delete"):
        assert policy.access.allows(action, alice)
    assert policy.access.allows("read", auditor)
    assert not policy.access.allows("update", auditor)
    assert not policy.access.allows("delete", auditor)
    assert not policy.access.allows("read", "key:sha256:" + "00" * 32)


def test_unreadable_public_key_is_a_field_error():
    owners = [
        {
            "name": "alice",
            "public_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----",
        }
    ]
    assert "access.owners[0].public_key" in problems_of(base(access={"owners": owners}))


# -- placeholders --------------------------------------------------------------------------------


def test_placeholder_rendering():
    values = {("a", None): "AAA", ("b", "hex"): "0b"}
    text = "x={{secret:a}} y={{ secret:b:hex }}!"
    assert [p.secret for p in find_placeholders(text)] == ["a", "b"]
    assert substitute(text, lambda name, fmt: values[(name, fmt)]) == "x=AAA y=0b!"
    assert render_file("{{secret:k:raw}}", lambda name, fmt: b"\x00\xff") == b"\x00\xff"


def test_service_lookup():
    policy = load_policy(base())
    assert policy.service("web").name == "web"
    with pytest.raises(PolicyError, match="no service 'db'"):
        policy.service("db")


def test_public_api_is_exactly_all():
    public = {
        name
        for name, value in vars(policy_api).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(policy_api.__all__) == public


def test_reference_documents_every_schema_field():
    reference = (REPO / "docs/cas/policy-reference.md").read_text()
    schema = policy_schema()
    names: set[str] = set(schema["properties"])
    for definition in schema["$defs"].values():
        names |= set(definition.get("properties", {}))
        for branch in definition.get("oneOf", []) + definition.get("allOf", []):
            names |= set(branch.get("properties", {}))
            names |= set(branch.get("then", {}).get("properties", {}))
    missing = sorted(name for name in names if f"`{name}`" not in reference)
    assert not missing, f"undocumented policy fields: {missing}"
