"""``sgxcloud attest``: exit statuses, JSON fields and one-line errors, through main()."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sgxcloud.cli.main import main
from sgxcloud.sgx import quote_layout as L

JSON_FIELDS = {
    "verdict", "reasons", "tcb_status", "advisory_ids", "mrenclave", "mrsigner",
    "isvprodid", "isvsvn", "debug", "report_data", "simulated",
}  # fmt: skip
CERT = "cd" * 32


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["attest", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


OUTPUT_SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs/cas/attest-verify.schema.json").read_text()
)


def run_json(capsys, *args: str) -> tuple[int, dict]:
    """Run with --json; every output must match the published schema."""
    code, out, _err = run(capsys, *args, "--json")
    data = json.loads(out)
    if args[0] == "verify":
        jsonschema.validate(data, OUTPUT_SCHEMA)
        assert code == (0 if data["verdict"] == "accepted" else 1)
    return code, data


@pytest.fixture
def quote_args(testdata, vectors):
    return [
        "verify", "--quote", testdata / "sgx_quote",
        "--collateral", testdata / "sgx_quote_collateral.json", "--time", vectors.sgx_now,
    ]  # fmt: skip


def write_policy(tmp_path, identities, **service_fields):
    document = {
        "name": "shop",
        "access": {"owners": [{"name": "alice", "client_certificate_sha256": CERT}]},
        "services": {"web": {"identities": identities, **service_fields}},
    }
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


# -- without a policy: is the evidence cryptographically valid? -----------------------


def test_verify_real_quote_json(capsys, quote_args, vectors):
    code, data = run_json(capsys, *quote_args)
    assert code == 0
    assert set(data) >= JSON_FIELDS
    assert data["verdict"] == "accepted" and data["reasons"] == []
    assert data["tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert data["advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert data["mrenclave"] == vectors.mrenclave
    assert data["mrsigner"] == vectors.mrsigner
    assert (data["isvprodid"], data["isvsvn"], data["debug"]) == (0, 0, False)
    assert bytes.fromhex(data["report_data"]) == vectors.report_data
    assert data["simulated"] is False and data["verified"] is True


def test_verify_real_quote_human(capsys, quote_args):
    code, out, err = run(capsys, *quote_args)
    assert code == 0 and err == ""
    assert "ConfigurationAndSWHardeningNeeded" in out
    assert "cryptographically valid" in out
    assert "SIMULATED" not in out


def test_expired_collateral_is_rejected(capsys, testdata, vectors):
    code, data = run_json(
        capsys, "verify", "--quote", testdata / "sgx_quote",
        "--collateral", testdata / "sgx_quote_collateral.json", "--time", vectors.sgx_window[1],
    )  # fmt: skip
    assert code == 1
    assert data["verdict"] == "rejected"
    assert data["reasons"][0].startswith("collateral expired")


def test_flipped_byte_is_rejected(capsys, testdata, tmp_path, vectors):
    raw = bytearray((testdata / "sgx_quote").read_bytes())
    raw[L.MRENCLAVE_OFFSET] ^= 0x01
    (tmp_path / "quote").write_bytes(raw)
    code, data = run_json(
        capsys, "verify", "--quote", tmp_path / "quote",
        "--collateral", testdata / "sgx_quote_collateral.json", "--time", vectors.sgx_now,
    )  # fmt: skip
    assert code == 1
    assert data["verdict"] == "rejected" and data["verified"] is False
    assert "signature invalid" in data["reasons"][0]
    assert data["tcb_status"] is None


def test_tdx_quote_is_reported_as_not_an_sgx_enclave(capsys, testdata, vectors):
    code, data = run_json(
        capsys, "verify", "--quote", testdata / "tdx_quote",
        "--collateral", testdata / "tdx_quote_collateral.json", "--time", vectors.tdx_now,
    )  # fmt: skip
    assert code == 1
    assert "not an SGX enclave" in data["reasons"][0]


# -- with a policy: may this service start? ------------------------------------------


def test_policy_accepts_the_real_quote(capsys, quote_args, tmp_path, vectors):
    policy = write_policy(
        tmp_path,
        [{"mrenclave": vectors.mrenclave}],
        tolerated_tcb_statuses=["ConfigurationAndSWHardeningNeeded"],
        tolerated_advisories=["INTEL-SA-00289", "INTEL-SA-00615"],
    )
    code, data = run_json(capsys, *quote_args, "--policy", policy, "--service", "web")
    assert code == 0 and data["verdict"] == "accepted" and data["service"] == "web"
    code, out, _ = run(capsys, *quote_args, "--policy", policy, "--service", "web")
    assert code == 0 and "accepted by the policy" in out


def test_policy_rejection_lists_every_reason(capsys, quote_args, tmp_path):
    policy = write_policy(tmp_path, [{"mrsigner": "11" * 32, "isvprodid": 3, "min_isvsvn": 2}])
    code, data = run_json(capsys, *quote_args, "--policy", policy, "--service", "web")
    assert code == 1
    assert data["reason_codes"] == [
        "mrsigner", "isvprodid", "isvsvn", "tcb_status", "advisory",
    ]  # fmt: skip
    code, out, _ = run(capsys, *quote_args, "--policy", policy, "--service", "web")
    assert code == 1 and "rejected" in out and "ISVSVN 0 is below the minimum 2" in out


# -- simulated evidence: always labelled ------------------------------------------------


@pytest.fixture
def simulated_file(capsys, tmp_path, vectors):
    path = tmp_path / "simulated.json"
    code, _, err = run(
        capsys, "simulate", "--mrenclave", vectors.mrenclave, "--isvsvn", "2",
        "--report-data", "48656c6c6f", "-o", path,
    )  # fmt: skip
    assert code == 0 and "SIMULATED" in err
    return path


def test_simulated_evidence_without_policy_is_rejected_and_labelled(capsys, simulated_file):
    code, data = run_json(capsys, "verify", "--quote", simulated_file)
    assert code == 1
    assert data["simulated"] is True and data["verdict"] == "rejected"
    assert data["WARNING"].startswith("SIMULATED")
    code, out, _ = run(capsys, "verify", "--quote", simulated_file)
    assert code == 1 and "SIMULATED" in out


def test_simulated_evidence_under_a_hardware_only_policy(capsys, simulated_file, tmp_path, vectors):
    policy = write_policy(tmp_path, [{"mrenclave": vectors.mrenclave}])
    code, data = run_json(
        capsys, "verify", "--quote", simulated_file, "--policy", policy, "--service", "web"
    )
    assert code == 1 and data["reason_codes"] == ["simulated"] and data["simulated"] is True


def test_simulated_evidence_accepted_when_allowed_but_still_labelled(
    capsys, simulated_file, tmp_path, vectors
):
    policy = write_policy(tmp_path, [{"mrenclave": vectors.mrenclave}], allow_simulated=True)
    args = ["verify", "--quote", simulated_file, "--policy", policy, "--service", "web"]
    code, data = run_json(capsys, *args)
    assert code == 0 and data["verdict"] == "accepted"
    assert data["simulated"] is True and data["verified"] is False
    assert data["tcb_status"] == "Simulated" and data["isvsvn"] == 2
    assert data["report_data"].startswith("48656c6c6f00")
    code, out, _ = run(capsys, *args)
    assert code == 0 and "SIMULATED" in out and "(SIMULATED)" in out


def test_simulate_to_stdout(capsys, vectors):
    code, out, _ = run(capsys, "simulate", "--mrenclave", vectors.mrenclave, "-o", "-")
    assert code == 0 and json.loads(out)["format"] == "sgxcloud-simulated-v1"


# -- parse-only ------------------------------------------------------------------------------


def test_show_cosmian_quote_claims(capsys, testdata):
    code, out, _ = run(capsys, "show", "--quote", testdata / "sgx_quote_cosmian.dat", "--json")
    data = json.loads(out)
    assert code == 0 and data["verified"] is False
    assert data["mrenclave"].startswith("e413a4ed") and (data["isvprodid"], data["isvsvn"]) == (
        1,
        10,
    )


# -- bad input: one line, exit 2 --------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        "missing-quote", "garbage-quote", "missing-collateral-option", "bad-collateral",
        "policy-without-service", "unknown-service", "bad-policy", "bad-mrenclave",
        "long-report-data", "bad-time",
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(capsys, case, testdata, tmp_path, vectors):
    quote, collateral = testdata / "sgx_quote", testdata / "sgx_quote_collateral.json"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00" * 100)
    policy = write_policy(tmp_path, [{"mrenclave": vectors.mrenclave}])
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text("name: shop\nservices: {}\n")
    args = {
        "missing-quote": ["verify", "--quote", tmp_path / "nope", "--collateral", collateral],
        "garbage-quote": ["verify", "--quote", garbage, "--collateral", collateral],
        "missing-collateral-option": ["verify", "--quote", quote],
        "bad-collateral": ["verify", "--quote", quote, "--collateral", garbage],
        "policy-without-service": ["verify", "--quote", quote, "--collateral", collateral,
                                   "--policy", policy],
        "unknown-service": ["verify", "--quote", quote, "--collateral", collateral,
                            "--policy", policy, "--service", "db"],
        "bad-policy": ["verify", "--quote", quote, "--collateral", collateral,
                       "--policy", bad_policy, "--service", "web"],
        "bad-mrenclave": ["simulate", "--mrenclave", "xyz", "-o", tmp_path / "s.json"],
        "long-report-data": ["simulate", "--mrenclave", vectors.mrenclave,
                             "--report-data", "00" * 65, "-o", tmp_path / "s.json"],
        "bad-time": ["verify", "--quote", quote, "--collateral", collateral, "--time", "soon"],
    }[case]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    message_lines = [line for line in err.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(message_lines) == 1, err


def test_help_mentions_exit_statuses(capsys):
    code, out, _ = run(capsys, "verify", "--help")
    assert code == 0 and "Exit 0 accepted, 1 rejected, 2 usage or input error" in out


def test_output_schema_names_every_reason_code():
    from sgxcloud.cas.evidence.dcap import _VERDICTS

    codes = {code for _, code, _ in _VERDICTS} | {
        "mrenclave", "mrsigner", "isvprodid", "isvsvn", "debug", "simulated", "tcb_status",
        "advisory", "collateral-expired", "collateral-not-yet-valid", "not-sgx-enclave",
        "wrong-format", "disabled", "invalid",
    }  # fmt: skip
    assert codes <= set(OUTPUT_SCHEMA["properties"]["reason_codes"]["items"]["enum"])
