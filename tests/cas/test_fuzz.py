"""Property tests: random and mutated inputs get a clean typed rejection, never a crash
or an accept they should not get."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sgxcloud.cas.errors import EvidenceError, PolicyError
from sgxcloud.cas.evidence import (
    Evidence,
    SimulatedVerifier,
    load_evidence,
    make_simulated_evidence,
)
from sgxcloud.cas.policy import load_policy, policy_hash
from sgxcloud.errors import SgxcloudError
from sgxcloud.sgx.identity import EnclaveIdentity
from sgxcloud.sgx.quote import ParsedQuote, QuoteFormatError, parse_sgx_quote

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples/cas").glob("*.yaml"))
FUZZ = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


# -- quotes ---------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=6000))
def test_random_bytes_are_never_accepted(sgx_verifier, vectors, raw):
    try:
        evidence = load_evidence(raw)
        sgx_verifier.verify(evidence, vectors.sgx_now)
    except SgxcloudError:
        return
    raise AssertionError("random bytes were accepted as evidence")


@FUZZ
@given(body=st.binary(min_size=0, max_size=5000), version=st.sampled_from([3, 4]))
def test_random_quotes_with_a_plausible_header_are_rejected(sgx_verifier, vectors, body, version):
    raw = version.to_bytes(2, "little") + b"\x02\x00" + b"\x00\x00\x00\x00" + body
    try:
        sgx_verifier.verify(Evidence("dcap", raw), vectors.sgx_now)
    except EvidenceError:
        return
    raise AssertionError("a random quote was accepted")


def _mutations(raw: bytes):
    """Byte replacements, insertions, deletions and truncations of a real quote."""
    position = st.integers(0, len(raw) - 1)
    replace = st.lists(st.tuples(position, st.integers(0, 255)), min_size=1, max_size=4)
    return st.one_of(
        replace.map(lambda edits: ("replace", edits)),
        st.tuples(position, st.binary(min_size=1, max_size=8)).map(lambda e: ("insert", e)),
        st.tuples(position, st.integers(1, 64)).map(lambda e: ("delete", e)),
        position.map(lambda n: ("truncate", n)),
    )


def _apply(raw: bytes, mutation) -> bytes:
    kind, edit = mutation
    data = bytearray(raw)
    if kind == "replace":
        for index, value in edit:
            data[index] = value
    elif kind == "insert":
        data[edit[0] : edit[0]] = edit[1]
    elif kind == "delete":
        del data[edit[0] : edit[0] + edit[1]]
    else:
        del data[edit:]
    return bytes(data)


def test_mutated_real_quotes_never_attest_anything_else(sgx_verifier, sgx_quote, vectors):
    """A mutation is rejected, or — where it only touches bytes nobody authenticates,
    such as PEM line breaks or the quote's own copy of the root CA (the pinned Intel
    root is used instead) — it changes nothing about what is attested."""
    original = sgx_verifier.verify(Evidence("dcap", sgx_quote), vectors.sgx_now)

    @FUZZ
    @given(mutation=_mutations(sgx_quote))
    def check(mutation):
        mutated = _apply(sgx_quote, mutation)
        assume(mutated != sgx_quote)
        try:
            result = sgx_verifier.verify(Evidence("dcap", mutated), vectors.sgx_now)
        except EvidenceError:
            return
        assert result == original

    check()


@FUZZ
@given(raw=st.binary(max_size=1000))
def test_quote_reader_only_raises_its_own_error(raw):
    try:
        parsed = parse_sgx_quote(raw)
    except QuoteFormatError:
        return
    assert isinstance(parsed, ParsedQuote) and len(parsed.report_data) == 64


# -- simulated evidence ---------------------------------------------------------------------

SIMULATED = make_simulated_evidence(EnclaveIdentity("ab" * 32, "cd" * 32, 1, 2, False), b"x")


@FUZZ
@given(document=st.dictionaries(st.text(max_size=12), json_values, max_size=10))
def test_random_simulated_documents_are_rejected_cleanly(document):
    document["format"] = "sgxcloud-simulated-v1"
    raw = json.dumps(document).encode()
    try:
        SimulatedVerifier().verify(load_evidence(raw), 0)
    except EvidenceError:
        return
    raise AssertionError("an arbitrary document passed as simulated evidence")


@FUZZ
@given(position=st.integers(0, len(SIMULATED.raw) - 1), value=st.integers(0, 255))
def test_mutated_simulated_evidence_is_rejected_or_still_labelled(position, value):
    data = bytearray(SIMULATED.raw)
    data[position] = value
    try:
        verified = SimulatedVerifier().verify(load_evidence(bytes(data)), 0)
    except SgxcloudError:
        return
    assert verified.simulated is True and verified.tcb_status == "Simulated"


# -- policies -----------------------------------------------------------------------------


@FUZZ
@given(text=st.text(max_size=400))
def test_random_policy_text_is_rejected_cleanly(text):
    try:
        load_policy(text)
    except PolicyError:
        return
    raise AssertionError("random text loaded as a policy")


@FUZZ
@given(document=json_values)
def test_random_policy_structures_are_rejected_cleanly(document):
    try:
        load_policy(document) if isinstance(document, dict) else load_policy(json.dumps(document))
    except PolicyError:
        return
    raise AssertionError("a random structure loaded as a policy")


@FUZZ
@given(
    example=st.sampled_from(EXAMPLES),
    position=st.integers(0, 10_000),
    edit=st.sampled_from(["delete", "insert", "replace"]),
    char=st.characters(codec="utf-8"),
)
def test_mutated_example_policies_load_or_fail_cleanly(example, position, edit, char):
    text = example.read_text()
    position %= len(text)
    if edit == "delete":
        text = text[:position] + text[position + 1 :]
    elif edit == "insert":
        text = text[:position] + char + text[position:]
    else:
        text = text[:position] + char + text[position + 1 :]
    try:
        policy = load_policy(text)
    except PolicyError:
        return
    assert policy.hash == policy_hash(text)
    assert all(service.identities for service in policy.services.values())


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@FUZZ
@given(example=st.sampled_from(EXAMPLES), data=st.data())
def test_example_policies_with_a_random_value_swapped_in(example, data):
    document = yaml.safe_load(example.read_text())
    paths = [p for p in _paths(document) if p]
    path = data.draw(st.sampled_from(paths))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(json_values)
    try:
        policy = load_policy(document)
    except PolicyError as exc:
        assert exc.problems and all(isinstance(p.field, str) for p in exc.problems)
        return
    assert policy.name == document["name"]
