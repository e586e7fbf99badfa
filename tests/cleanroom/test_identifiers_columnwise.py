"""Column-wise normalisation and batch re-keying agree with the per-value rules."""

from __future__ import annotations

import phonenumbers
import pyarrow as pa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from sgxcloud.cleanroom.identifiers import Rekeyer, keyed_hash, new_key, normalise, normalise_array

from .test_identifiers_fast_phone import example_numbers

KINDS = ("email", "phone", "customer_id")
REGIONS = [None, "GB", "US", "DE", "FR", "IN", "JP", "CH", "BR", "AU"]


def per_value(kind: str, values: list, region: str | None) -> tuple[list, int]:
    missing = sum(v is None or (isinstance(v, str) and not v.strip()) for v in values)
    out = [
        None if v is None or (isinstance(v, str) and not v.strip()) else normalise(kind, v, region)
        for v in values
    ]
    return out, missing


def agree(kind: str, values: list, region: str | None) -> None:
    got, got_missing = normalise_array(kind, pa.array(values, pa.string()), region)
    want, want_missing = per_value(kind, values, region)
    assert got.to_pylist() == want, (kind, region)
    assert got_missing == want_missing


def test_every_example_number_of_every_region_in_every_format():
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        texts = []
        for text in example_numbers(region):
            # the number, a digit changed, one too many, and in odd dress
            texts += [
                text,
                text[:-1] + str((int(text[-1]) + 1) % 10),
                text + "1",
                f" ({text}) ",
                text.replace(" ", "-"),
            ]
        agree("phone", texts, region)  # also compiles every region's patterns under RE2


def test_generated_shapes_and_spoilt_values():
    emails = [
        "  Anna.Jones7450@mail.test",
        " jackjones26499+shop@gmail.com ",
        "B.o.B@GoogleMail.com",
        "+tag@gmail.com",
        "..@gmail.com",
        "a@b",
        "a@@b.org",
        "a b@c.org",
        "a@b.c.",
        "@b.org",
        "x" * 250 + "@b.org",
        "ünï@x.de",
        "Ｆull@width.org",
        "a@b.org\x1c",
        "\x1fa@b.org",
        "a\x0b@b.org",
        None,
        "",
        "   ",
        "\t",
    ]
    phones = [
        "+44 7400 007450",
        "07400 100067",
        "+447400118810",
        "12345",
        "+44 12",
        None,
        "0044 7400 007450",
        "+1 650 253 0000",
        "(07400) 100-067",
        "07400 1000670" * 4,
        "074OO 100067",
        "+44 (0) 7400 100067",
        "٠٧٤٠٠١٠٠٠٦٧",
        "07400\u00a0100067",
        "",
    ]
    ids = ["C000001209", " c2 ", "a\x07b", "x" * 128, "x" * 129, None, "é", "a\u00a0", "  "]
    for region in REGIONS:
        agree("phone", phones, region)
    agree("email", emails, None)
    agree("customer_id", ids, None)


TEXT = st.text(
    alphabet=st.sampled_from(list("aZ09.+@-() _\t\n\x0b\x1c\x1f\u00a0éＦİ٣")), max_size=24
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    region=st.sampled_from(REGIONS),
    values=st.lists(st.one_of(st.none(), TEXT), max_size=12),
)
def test_any_text_gets_the_per_value_verdict(kind, region, values):
    agree(kind, values, region)


@settings(max_examples=200, deadline=None)
@given(
    region=st.sampled_from(REGIONS[1:]),
    values=st.lists(st.from_regex(r"\A[+0(]?[0-9 ().-]{3,18}\Z"), max_size=12),
)
def test_phone_like_text_gets_the_per_value_verdict(region, values):
    agree("phone", values, region)


def test_non_string_columns_take_the_per_value_path():
    got, missing = normalise_array("customer_id", pa.array([12, None, 7]))
    assert got.to_pylist() == ["12", None, "7"] and missing == 1


def test_rekeyer_is_aes_cmac_truncated_to_64_bits():
    key = new_key()
    # every length around the block boundaries, empty, non-ASCII, and very long
    values = ["x" * n for n in range(0, 70)] + ["ü" * 100, "y" * 1000, "anna@example.org"]
    got = Rekeyer(key).hash_many("email", pa.array(values))
    for value, mine in zip(values, got, strict=True):
        mac = CMAC(algorithms.AES(key))
        mac.update(b"email\x00" + value.encode())
        assert int(mine) == int.from_bytes(mac.finalize()[:8], "big", signed=True), len(value)
        assert keyed_hash(key, "email", value) == int(mine)
    assert keyed_hash(key, "phone", "+447400000001") != keyed_hash(key, "email", "+447400000001")


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.text(max_size=80), max_size=40))
def test_rekeyer_matches_cmac_on_any_text(values):
    key = b"k" * 32
    got = Rekeyer(key).hash_many("customer_id", pa.array(values, pa.string()))
    for value, mine in zip(values, got, strict=True):
        mac = CMAC(algorithms.AES(key))
        mac.update(b"customer_id\x00" + value.encode())
        assert int(mine) == int.from_bytes(mac.finalize()[:8], "big", signed=True)
