"""``sgxcloud cleanroom`` for every role: human and --json output, one-line
errors with the right exit status, and a real collaboration driven by it."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from sgxcloud.cleanroom.approvals import Approval, verify_approvals
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cli.main import main


def run(capsys, *args):
    code = main(["cleanroom", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return prepare_example(tmp_path_factory.mktemp("cli"), people=1500, min_group_size=20)


def test_help_lists_every_role(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("init", "keygen", "approve", "node", "coordinator", "query", "verify-result",
                    "status", "audit", "budget", "local"):
        assert command in out


def test_init_prepares_a_collaboration(capsys, tmp_path):
    code, out, _ = run(capsys, "init", tmp_path / "c", "--people", 200, "--format", "csv",
                       "--json")
    assert code == 0
    doc = json.loads(out)
    assert len(doc["approvals"]) == 3
    assert all(p.endswith(".csv") for ds in doc["datasets"].values() for p in ds.values())
    assert (tmp_path / "c" / "local.json").exists()
    code, _, err = run(capsys, "init", tmp_path / "c")
    assert code == 2 and "not empty" in err


def test_keygen_and_approve(capsys, tmp_path, example):
    code, out, _ = run(capsys, "keygen", "--out", tmp_path / "k.pem", "--json")
    assert code == 0 and json.loads(out)["public_key"].startswith("ed25519:")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    code, _, err = run(capsys, "keygen", "--out", tmp_path / "k.pem")
    assert code == 2 and err.count("\n") == 1 and "refusing to overwrite" in err

    code, out, _ = run(capsys, "approve", "--definition", example.definition, "--party", "bank",
                       "--key", example.workdir / "keys" / "bank.pem",
                       "--out", tmp_path / "a.json", "--json")
    assert code == 0
    approval = Approval.from_dict(json.loads((tmp_path / "a.json").read_text()))
    assert "bank" in verify_approvals(load_definition(example.definition), [approval]).valid
    # Someone else's key: refused in one line.
    code, _, err = run(capsys, "approve", "--definition", example.definition, "--party", "bank",
                       "--key", tmp_path / "k.pem", "--out", tmp_path / "b.json")
    assert code == 3 and "does not match" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["node", "--provider", "bank", "--dataset", "nope=x.csv"], "not declared"),
    (["node", "--provider", "bank", "--dataset", "customers"], "NAME=SOURCE"),
    (["node", "--provider", "bank", "--dataset", "customers=x.xlsx"], "unsupported"),
    (["node", "--provider", "brand", "--dataset", "customers=x.csv"], "not a data provider"),
])
def test_node_bad_arguments_are_one_line(capsys, example, args, message):
    code, _, err = run(capsys, *args[:1], "--definition", example.definition, "--simulate",
                       *args[1:])
    assert code == 2 and message in err and err.count("\n") == 1


def test_verify_result_rejects_garbage(capsys, tmp_path, example):
    (tmp_path / "x.json").write_text("{}")
    code, out, _ = run(capsys, "verify-result", tmp_path / "x.json", "--definition",
                       example.definition, "--json")
    assert code == 1 and json.loads(out)["valid"] is False


def test_query_unreachable_coordinator(capsys, example):
    code, _, err = run(capsys, "query", "--url", "https://127.0.0.1:9", "--definition",
                       example.definition, "--party", "brand", "--key",
                       example.workdir / "keys" / "brand.pem", "--template", "audience_size",
                       "--analysis", "audience")
    assert code == 3 and "cannot reach" in err and err.count("\n") == 1


def test_analyst_recipient_flow_against_running_collaboration(capsys, tmp_path, example):
    try:
        from test_trust import assert_absent, identifier_strings
    except ImportError:  # tests/cleanroom became a package
        from tests.cleanroom.test_trust import assert_absent, identifier_strings

    printed = []
    with example:
        common = ["--url", example.url, "--definition", example.definition,
                  "--party", "brand", "--key", example.workdir / "keys" / "brand.pem"]
        code, out, _ = run(capsys, "status", *common)
        printed.append(out)
        code, out, _ = run(capsys, "status", *common, "--json")
        assert code == 0 and json.loads(out)["approvals"]["complete"]
        code, out, _ = run(capsys, "query", *common, "--template", "campaign_lift",
                           "--analysis", "lift", "--breakdown", "telecom.subscribers.region",
                           "--out", tmp_path / "lift.json", "--html", tmp_path / "lift.html")
        assert code == 0
        assert "conversion_lift_rel" in out and "SIMULATED" in out
        printed.append(out)
        assert "data:image/png;base64," in (tmp_path / "lift.html").read_text()
        code, out, _ = run(capsys, "query", *common, "--template", "audience_size",
                           "--analysis", "audience", "--filter",
                           "telecom.subscribers.device = 'other' AND "
                           "bank.customers.income_band = 'high' AND "
                           "retailer.customers.loyalty_tier = 'gold'")
        assert code == 4  # refused: suppressed
        code, out, _ = run(capsys, "audit", *common)
        printed.append(out)
        code, out, _ = run(capsys, "audit", *common, "--json")
        printed.append(out)
        assert code == 0 and any(e["event"] == "refusal" for e in json.loads(out))
        code, out, _ = run(capsys, "budget", *common, "--json")
        assert code == 0 and "remaining" in json.loads(out)
    code, out, _ = run(capsys, "verify-result", tmp_path / "lift.json", "--definition",
                       example.definition)
    assert code == 0 and "signature verified" in out
    printed += [out, (tmp_path / "lift.html").read_text(), (tmp_path / "lift.json").read_text()]
    identifiers = identifier_strings(example)
    for text in printed:
        assert_absent(identifiers, text)


def test_verify_result_on_a_binary_file_is_one_clear_error(tmp_path, capsys):
    from sgxcloud.cli.main import main

    bundle = tmp_path / "result.bin"
    bundle.write_bytes(b"\xff\xfe\x00not text")
    definition = Path(__file__).resolve().parents[2] / "examples/cleanroom/collaboration.yaml"
    code = main(["cleanroom", "verify-result", str(bundle), "--definition", str(definition)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().startswith("error: cannot read result bundle")
    assert "Traceback" not in err
