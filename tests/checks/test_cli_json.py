"""The CLI's --json output validates against the documented schemas; exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from sgxcloud.cli.main import main

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "operations"


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def validate(output: str, schema: str) -> dict:
    document = json.loads(output)
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / schema).read_text()))
    validator.validate(document)
    return document


@pytest.mark.parametrize(
    ("name", "code"),
    [("sgx-host-2numa", 0), ("sgx-disabled-in-firmware", 1), ("old-kernel-no-vepc", 1)],
)
def test_host_check_json(tree, capsys, name, code):
    got, out = run(capsys, "host", "check", "--root", str(tree(name)), "--json")
    assert got == code
    assert validate(out, "host-check.schema.json")["ready"] is (code == 0)


def test_host_check_json_live(capsys):
    _, out = run(capsys, "host", "check", "--json")
    validate(out, "host-check.schema.json")


def test_vm_epc_json_and_table(tree, capsys):
    root = str(tree("qemu-vms"))
    code, out = run(capsys, "host", "vm-epc", "--root", root, "--json")
    assert code == 0
    assert len(validate(out, "vm-epc.schema.json")["facts"]["vms"]) == 2
    code, out = run(capsys, "host", "vm-epc", "--root", root, "4242")
    assert code == 0 and "instance-0000002a" in out and "every VM has the EPC" in out


def test_vm_epc_vanished_pid_json(tree, capsys):
    code, out = run(capsys, "host", "vm-epc", "--root", str(tree("qemu-vms")), "--json", "999")
    assert code == 1
    assert validate(out, "vm-epc.schema.json")["findings"][0]["status"] == "failure"


def test_guest_check_json(tree, capsys):
    code, out = run(capsys, "guest", "check", "--root", str(tree("guest-isgx")), "--json")
    assert code == 0
    doc = validate(out, "guest-check.schema.json")
    assert doc["facts"]["isgx"]["sgx_nr_total_epc_pages"] == {"pages": 2048, "mib": 8.0}


def test_human_output_and_bad_input(tree, capsys):
    code, out = run(capsys, "guest", "check", "--root", str(tree("guest-isgx")))
    assert code == 0 and "sgx_nr_total_epc_pages" in out and "usable" in out
    code = main(["host", "check", "--root", "/does/not/exist"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["host", "vm-epc", "--domain", "x", "12"]) == 2
