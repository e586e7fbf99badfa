"""Reading result documents from files: bad files are typed, one-line errors."""

from __future__ import annotations

import pytest

from sgxcloud.cleanroom.errors import ResultSignatureError
from sgxcloud.cleanroom.results import Result, load_result, verify_result


def _result(make_definition, make_engine) -> tuple[Result, str]:
    engine = make_engine(make_definition(min_group_size=20))
    result = engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true",
        },
        "brand",
    )
    return result, engine.public_key


def test_result_file_round_trip(make_definition, make_engine, tmp_path):
    result, key = _result(make_definition, make_engine)
    path = tmp_path / "result.json"
    path.write_text(result.to_json(), "utf-8")
    assert verify_result(load_result(path), key) == result
    assert verify_result(path.read_bytes(), key) == result


@pytest.mark.parametrize(
    "content, words",
    [
        (b"\xff\xfe{\x00\x93secret", "not UTF-8"),
        (b"{not json", "bad JSON"),
        (b"[1, 2]", "not a clean room result document"),
        (b"[" * 100_000, "not a clean room result document"),
    ],
)
def test_bad_result_files_are_typed_errors(tmp_path, content, words):
    path = tmp_path / "result.json"
    path.write_bytes(content)
    with pytest.raises(ResultSignatureError) as err:
        load_result(path)
    assert words in str(err.value)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)


def test_missing_result_file(tmp_path):
    with pytest.raises(ResultSignatureError, match="cannot read"):
        load_result(tmp_path / "absent.json")
