"""The fast phone path never disagrees with libphonenumber's parser."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from sgxcloud.cleanroom.identifiers import _fast_e164, _parse_phone, normalise_phone

REGIONS = ["GB", "US", "DE", "FR", "IT", "CH", "AU", "IN", "BR", "RU", "NL", "ES", "JP", "SG"]
FORMATS = (
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.NATIONAL,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
)
TYPES = (
    phonenumbers.PhoneNumberType.FIXED_LINE,
    phonenumbers.PhoneNumberType.MOBILE,
    phonenumbers.PhoneNumberType.TOLL_FREE,
    phonenumbers.PhoneNumberType.VOIP,
)


def agree(text: str, region: str) -> None:
    assert normalise_phone(text, region) == _parse_phone(text.strip(), region), (text, region)


def example_numbers(region: str) -> list[str]:
    """libphonenumber's example number of each type for ``region``, in each format."""
    texts = []
    for number_type in TYPES:
        example = phonenumbers.example_number_for_type(region, number_type)
        if example is not None:
            texts += [phonenumbers.format_number(example, fmt) for fmt in FORMATS]
    return texts


def test_every_example_number_of_every_region_in_every_format():
    fast_hits = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for text in example_numbers(region):
            agree(text, region)
            fast_hits += _fast_e164(text, region) is not None
    assert fast_hits > 500  # the fast path really is taken for most regions


@st.composite
def phone_like(draw):
    region = draw(st.sampled_from(REGIONS))
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    example = phonenumbers.example_number_for_type(
        region, draw(st.sampled_from(TYPES))
    ) or phonenumbers.example_number(region)
    national = str(example.national_number)
    # mutate: change, drop or add digits
    digits = list(national)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "drop", "add"]))
        at = draw(st.integers(0, max(len(digits) - 1, 0)))
        digit = draw(st.sampled_from("0123456789"))
        if op == "set" and digits:
            digits[at] = digit
        elif op == "drop" and len(digits) > 1:
            del digits[at]
        else:
            digits.insert(at, digit)
    code = str(meta.country_code)
    prefix = draw(
        st.sampled_from(["+" + code, meta.national_prefix or "", "", "00" + code, "+1", "+44", "0"])
    )
    separator = draw(st.sampled_from(["", " ", "-", ".", " - "]))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(digits) - 1, 1)), max_size=3)))
    groups = ["".join(digits[a:b]) for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    return prefix + separator + separator.join(g for g in groups if g), region


@settings(max_examples=3000, deadline=None)
@given(phone_like())
def test_generated_and_mutated_numbers(case):
    agree(*case)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="+0123456789 ()-.", min_size=1, max_size=20), st.sampled_from(REGIONS))
def test_arbitrary_phone_shaped_text(text, region):
    agree(text, region)
