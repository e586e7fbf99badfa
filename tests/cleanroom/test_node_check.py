"""``sgxcloud cleanroom node check``: the provider's dry run on broken files —
readable and --json, lines and example values shown locally, non-zero exit."""

from __future__ import annotations

import json

import pytest

from sgxcloud.cleanroom.local import prepare_example
from sgxcloud.cli.main import main


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return prepare_example(tmp_path_factory.mktemp("check"), people=300, fmt="csv")


def check(capsys, example, provider, *datasets, as_json=True):
    args = [
        "cleanroom",
        "node",
        "check",
        "--definition",
        str(example.definition),
        "--provider",
        provider,
    ]
    for spec in datasets:
        args += ["--dataset", spec]
    code = main(args + (["--json"] if as_json else []))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if as_json and out else out), err


def broken_bank(example, tmp_path):
    lines = (example.workdir / "data" / "bank" / "customers.csv").read_text().splitlines()
    lines[3] = lines[3].replace("@", " at ")  # line 4: invalid e-mail
    lines[5] = lines[5].rsplit(",", 1)[0] + ",rich"  # line 6: undeclared category
    lines[8] = lines[8].rsplit(",", 2)[0] + ",maybe," + lines[8].rsplit(",", 1)[1]  # line 9
    lines.append(lines[4])  # a duplicate of line 5
    path = tmp_path / "customers.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def test_check_reports_rows_columns_examples_and_fails(capsys, example, tmp_path):
    path, lines = broken_bank(example, tmp_path)
    code, doc, _ = check(capsys, example, "bank", f"customers={path}")
    assert code == 1 and not doc["ok"]
    (ds,) = doc["datasets"]
    assert ds["dataset"] == "bank.customers" and ds["rows"] == len(lines) - 1
    found = {(f["column"], f["message"].split(";")[0]): f for f in ds["findings"]}
    boolean = found[("premium_card", "value(s) cannot be read as boolean")]
    assert boolean["severity"] == "error" and boolean["lines"] == [9]
    assert boolean["examples"] == ["maybe"] and "yes/no" in boolean["message"]
    category = found[("income_band", "value(s) not among the declared values")]
    assert category["lines"] == [6] and category["examples"] == ["rich"]
    assert "accepted: low, middle, high" in category["message"]
    email = found[("email", "invalid e-mail addresses")]
    assert 4 in email["lines"] and any(" at " in e for e in email["examples"])
    duplicate = found[("customer_id", "1 identifier(s) appear on more than one row")]
    assert duplicate["lines"] == [5, len(lines)] and duplicate["severity"] == "warning"
    # readable output says the same, with the example values (local only)
    code, out, _ = check(capsys, example, "bank", f"customers={path}", as_json=False)
    assert code == 1 and "line 9: 'maybe'" in out and "fix the errors above" in out


def test_check_of_good_files_passes_and_reports_time_zones(capsys, example, tmp_path):
    data = example.workdir / "data" / "retailer"
    exposures = (data / "exposures.csv").read_text().splitlines()
    # what most exports write: no zone; the definition's default is UTC
    naive = [exposures[0]] + [
        line.rstrip("Z") if i % 2 else line for i, line in enumerate(exposures[1:])
    ]
    (tmp_path / "exposures.csv").write_text("\n".join(naive) + "\n")
    code, doc, _ = check(
        capsys,
        example,
        "retailer",
        f"customers={data / 'customers.csv'}",
        f"exposures={tmp_path / 'exposures.csv'}",
        f"purchases={data / 'purchases.csv'}",
    )
    assert code == 0 and doc["ok"]
    zones = [f for d in doc["datasets"] for f in d["findings"] if f["column"] == "exposed_at"]
    assert zones and "without a zone, read in UTC" in zones[0]["message"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "customer_id,email\nC1,a@example.org\n",
            "column(s) missing: an allowed analysis needs them",
        ),
        (
            "customer_id,email,phone,premium_card,income_band\nC1,a@example.org,,true,low,x\n",
            "line 2 has 6",
        ),
    ],
)
def test_check_schema_problems(capsys, example, tmp_path, content, message):
    path = tmp_path / "c.csv"
    path.write_text(content)
    code, doc, _ = check(capsys, example, "bank", f"customers={path}")
    assert code == 1
    assert any(message in f["message"] for f in doc["datasets"][0]["findings"])


def test_check_bad_arguments_are_one_line(capsys, example, tmp_path):
    code, _, err = check(capsys, example, "brand", f"customers={tmp_path / 'x.csv'}")
    assert code == 2 and "brand is not a data provider" in err and err.count("\n") == 1
    code, _, err = check(capsys, example, "bank", f"clients={tmp_path / 'x.csv'}")
    assert code == 2 and "its datasets: customers" in err
