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
    for command in (
        "init",
        "keygen",
        "approve",
        "node",
        "coordinator",
        "query",
        "verify-result",
        "status",
        "audit",
        "budget",
        "local",
        "refresh",
        "match-rate",
        "public-key",
    ):
        assert command in out


def test_init_prepares_a_collaboration(capsys, tmp_path):
    code, out, err = run(
        capsys, "init", tmp_path / "c", "--people", 200, "--format", "csv", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    # init signs every provider's approval of the example: its budgets are 1 per
    # analyst and 1 together (red team cr7 finding 1), nothing to warn about, and
    # it says what they permit
    assert doc["warnings"] == [] and "WARNING" not in err
    assert doc["privacy"] == (
        "differential privacy: ε 0.25 per new question, 1 per analyst, 1 for every "
        "analyst together: a yes/no fact about one person can be told right at most "
        "73 % of the time by one analyst and 73 % by analysts pooling their answers "
        "(a coin: 50 %)"
    )
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

    code, out, _ = run(
        capsys,
        "approve",
        "--definition",
        example.definition,
        "--party",
        "bank",
        "--key",
        example.workdir / "keys" / "bank.pem",
        "--out",
        tmp_path / "a.json",
        "--json",
    )
    assert code == 0
    approval = Approval.from_dict(json.loads((tmp_path / "a.json").read_text()))
    assert "bank" in verify_approvals(load_definition(example.definition), [approval]).valid
    # Someone else's key: refused in one line.
    code, _, err = run(
        capsys,
        "approve",
        "--definition",
        example.definition,
        "--party",
        "bank",
        "--key",
        tmp_path / "k.pem",
        "--out",
        tmp_path / "b.json",
    )
    assert code == 3 and "does not match" in err and "Traceback" not in err
    assert err.count("\n") == 1  # no warning before the refusal: nothing was approved


def _privacy_variant(example, tmp_path, name: str, **dp) -> Path:
    """The example definition with its differential_privacy settings changed."""
    import yaml

    doc = yaml.safe_load(Path(example.definition).read_text())
    doc["privacy"]["differential_privacy"].update(dp)
    for key in [k for k, v in dp.items() if v is None]:  # None: leave the key out
        del doc["privacy"]["differential_privacy"][key]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _approve(capsys, tmp_path, example, definition: Path):
    return run(
        capsys,
        "approve",
        "--definition",
        definition,
        "--party",
        "bank",
        "--key",
        example.workdir / "keys" / "bank.pem",
        "--out",
        tmp_path / f"{definition.stem}.json",
        "--json",
    )


def test_approving_a_definition_with_dp_off_warns_loudly(capsys, tmp_path, example):
    """DP off protects counts of people only (red-team attack 13: two lift windows
    gave one purchase's amount); approving such a definition says so on stderr
    (--json output stays clean and carries it too).  DP on with a budget of 1: silent."""
    strong = _privacy_variant(example, tmp_path, "dp-on", budget_per_analyst=1.0)
    code, out, err = _approve(capsys, tmp_path, example, strong)
    assert code == 0 and "WARNING" not in err and json.loads(out)["warnings"] == []
    off = _privacy_variant(example, tmp_path, "dp-off", enabled=False)
    code, out, err = _approve(capsys, tmp_path, example, off)
    assert code == 0
    assert "WARNING: differential privacy is OFF" in err
    assert "sums of purchases and revenue are not compared" in err
    assert json.loads(out)["warnings"] == [err.split("WARNING: ", 1)[1].strip()]


@pytest.mark.parametrize(
    "budget, alone, two",
    [(10.0, "99.995 %", "~100 %"), (2.0, "88 %", "98 %"), (1.5, "82 %", "95 %")],
)
def test_approving_a_large_dp_budget_says_what_it_permits(
    capsys, tmp_path, example, budget, alone, two
):
    """Red team cr7 finding 1: at ε=10 one analyst learnt one person's hidden attribute
    83 % of the time with allowed queries.  Approving a budget above 1 says, in one
    line on stderr and in --json, how often a yes/no fact about one person can be told
    (e^B/(1+e^B)), and that analysts pooling their answers add their budgets."""
    path = _privacy_variant(
        example,
        tmp_path,
        f"b{budget:g}",
        budget_per_analyst=budget,
        budget_per_collaboration=None,  # per analyst only: pooling analysts add up
    )
    code, out, err = _approve(capsys, tmp_path, example, path)
    assert code == 0
    line = err.split("WARNING: ", 1)[1].strip()
    assert "\n" not in line and err.count("WARNING") == 1
    assert f"budget_per_analyst is {budget:g}, above 1" in line
    assert f"correctly with probability up to {alone} " in line
    assert f"two: {two}; budget_per_collaboration caps them)" in line and "per analyst" in line
    assert "docs/cleanroom/privacy-model.md, 'What a budget permits'" in line
    assert json.loads(out)["warnings"] == [line]


def test_approving_a_large_budget_says_the_collaboration_budget_caps_pooling(
    capsys, tmp_path, example
):
    """With budget_per_collaboration set, the line gives its bound for analysts who
    pool their answers instead of the sum of their budgets."""
    path = _privacy_variant(example, tmp_path, "b2c1", budget_per_analyst=2.0)
    code, out, _ = _approve(capsys, tmp_path, example, path)
    assert code == 0
    (line,) = json.loads(out)["warnings"]
    assert "correctly with probability up to 88 % " in line
    assert "analysts who pool their answers are held together to " in line
    assert "budget_per_collaboration=1 (up to 73 %)" in line and "two:" not in line


@pytest.mark.parametrize(
    "dp",
    [
        {"budget_per_analyst": 1.0},
        {"budget_per_analyst": 0.5, "epsilon_per_query": 0.1, "budget_per_collaboration": 0.5},
    ],
)
def test_approving_a_budget_of_at_most_1_is_silent(capsys, tmp_path, example, dp):
    path = _privacy_variant(example, tmp_path, "small", **dp)
    code, out, err = _approve(capsys, tmp_path, example, path)
    assert code == 0 and "WARNING" not in err and json.loads(out)["warnings"] == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["node", "--provider", "bank", "--dataset", "nope=x.csv"], "not declared"),
        (["node", "--provider", "bank", "--dataset", "customers"], "NAME=SOURCE"),
        (["node", "--provider", "bank", "--dataset", "customers=x.xlsx"], "unsupported"),
        (["node", "--provider", "brand", "--dataset", "customers=x.csv"], "not a data provider"),
    ],
)
def test_node_bad_arguments_are_one_line(capsys, example, args, message):
    code, _, err = run(
        capsys, *args[:1], "--definition", example.definition, "--simulate", *args[1:]
    )
    assert code == 2 and message in err and err.count("\n") == 1


def test_verify_result_rejects_garbage(capsys, tmp_path, example):
    (tmp_path / "x.json").write_text("{}")
    code, out, _ = run(
        capsys, "verify-result", tmp_path / "x.json", "--definition", example.definition, "--json"
    )
    assert code == 1 and json.loads(out)["valid"] is False


def test_query_unreachable_coordinator(capsys, example):
    code, _, err = run(
        capsys,
        "query",
        "--url",
        "https://127.0.0.1:9",
        "--definition",
        example.definition,
        "--party",
        "brand",
        "--key",
        example.workdir / "keys" / "brand.pem",
        "--template",
        "audience_size",
        "--analysis",
        "audience",
    )
    assert code == 3 and "cannot reach" in err and err.count("\n") == 1


def test_analyst_recipient_flow_against_running_collaboration(capsys, tmp_path, example):
    try:
        from test_trust import assert_absent, identifier_strings
    except ImportError:  # tests/cleanroom became a package
        from tests.cleanroom.test_trust import assert_absent, identifier_strings

    printed = []
    with example:
        common = [
            "--url",
            example.url,
            "--definition",
            example.definition,
            "--party",
            "brand",
            "--key",
            example.workdir / "keys" / "brand.pem",
        ]
        code, out, _ = run(capsys, "status", *common)
        printed.append(out)
        code, out, _ = run(capsys, "status", *common, "--json")
        assert code == 0 and json.loads(out)["approvals"]["complete"]
        # the attested signer, which a node's --coordinator pins
        assert json.loads(out)["coordinator"].startswith("ed25519:")
        assert json.loads(out)["coordinator"] in printed[0]
        code, out, err = run(
            capsys,
            "query",
            *common,
            "--template",
            "campaign_lift",
            "--analysis",
            "lift",
            "--breakdown",
            "telecom.subscribers.region",
            "--out",
            tmp_path / "lift.json",
            "--html",
            tmp_path / "lift.html",
        )
        assert code == 0, err
        assert "conversion_lift_rel" in out and "SIMULATED" in out
        printed.append(out)
        assert "data:image/png;base64," in (tmp_path / "lift.html").read_text()
        code, out, _ = run(
            capsys,
            "query",
            *common,
            "--template",
            "audience_size",
            "--analysis",
            "audience",
            "--filter",
            "telecom.subscribers.device = 'other' AND "
            "bank.customers.income_band = 'high' AND "
            "retailer.customers.loyalty_tier = 'gold'",
        )
        assert code == 4  # refused: suppressed
        code, out, _ = run(capsys, "audit", *common)
        printed.append(out)
        code, out, _ = run(capsys, "audit", *common, "--json")
        printed.append(out)
        audit_doc = json.loads(out)
        assert code == 0 and any(e["event"] == "refusal" for e in audit_doc["entries"])
        assert audit_doc["chain"]["verified"] and len(audit_doc["chain"]["head"]) == 64
        code, out, _ = run(capsys, "budget", *common, "--json")
        assert code == 0 and "remaining" in json.loads(out)
        # two new questions at 0.25 (the lift, the suppressed one): the collaboration's
        # budget (every analyst together) is shown by budget and status
        doc = json.loads(out)
        assert doc["collaboration"] == {"total": 1.0, "spent": 0.5, "remaining": 0.5}
        assert (doc["spent"], doc["available"]) == (0.5, 0.5)
        code, out, _ = run(capsys, "budget", *common)
        flat = " ".join(out.split())
        assert "collaboration (every analyst together): ε spent 0.5 of 1; 0.5 remaining" in flat
        code, out, _ = run(capsys, "status", *common)
        flat = " ".join(out.split())
        assert "DP budget of the collaboration (every analyst together): ε spent 0.5 of 1" in flat
        code, out, _ = run(capsys, "status", *common, "--json")
        assert json.loads(out)["dp_budget"] == {"total": 1.0, "spent": 0.5, "remaining": 0.5}
    code, out, _ = run(
        capsys, "verify-result", tmp_path / "lift.json", "--definition", example.definition
    )
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


def test_provider_and_analyst_everyday_commands(capsys, tmp_path, monkeypatch):
    """refresh then query; a rejected refresh keeps the previous data and says so;
    --url from the environment; query --json is a bundle verify-result accepts;
    the audit chain is verified; budget and status are readable; public-key;
    match rates; errors that say what to fix."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    # exact figures (DP off) so that a refresh's effect can be compared exactly
    collab = prepare_example(tmp_path / "ex", people=1500, min_group_size=20, dp=False)
    keys = collab.workdir / "keys"
    subscribers = Path(collab.nodes["telecom"]["subscribers"])
    original = pq.read_table(subscribers)
    with collab:
        monkeypatch.setenv("SGXCLOUD_CLEANROOM_URL", collab.url)
        brand = ["--definition", collab.definition, "--party", "brand", "--key", keys / "brand.pem"]
        telecom = [
            "--definition",
            collab.definition,
            "--party",
            "telecom",
            "--key",
            keys / "telecom.pem",
        ]
        code, out, _ = run(
            capsys,
            "query",
            *brand,
            "--template",
            "overlap",
            "--analysis",
            "reach",
            "--datasets",
            "bank.customers,telecom.subscribers",
            "--json",
        )
        assert code == 0
        (tmp_path / "reach.json").write_text(out)
        bundle = json.loads(out)
        assert set(bundle) == {"result", "signer_statement"}
        everyone = next(
            c["value"]
            for c in bundle["result"]["cells"]
            if c["dims"] == {"datasets": "telecom.subscribers"}
        )
        code, out, _ = run(
            capsys, "verify-result", tmp_path / "reach.json", "--definition", collab.definition
        )
        assert code == 0 and "signature verified" in out
        code, out, _ = run(
            capsys,
            "match-rate",
            *brand,
            "--analysis",
            "reach",
            "--datasets",
            "bank.customers,telecom.subscribers",
            "--json",
        )
        rates = json.loads(out)["rates"]
        assert code == 0 and {r["of"] for r in rates} == {"bank.customers", "telecom.subscribers"}
        assert all(r["rate"] is None or 0 < r["rate"] <= 1 for r in rates)
        north = run(
            capsys,
            "query",
            *brand,
            "--template",
            "audience_size",
            "--analysis",
            "audience",
            "--filter",
            "telecom.subscribers.region = 'north'",
            "--json",
        )
        before = json.loads(north[1])["result"]["cells"][0]["value"]
        assert before < everyone

        # the provider moves everyone to the north and refreshes from the CLI
        pq.write_table(
            original.set_column(
                original.schema.get_field_index("region"),
                "region",
                pc.if_else(pc.is_valid(original["region"]), "north", original["region"]),
            ),
            subscribers,
        )
        code, out, _ = run(capsys, "refresh", *telecom, "--json")
        (state,) = json.loads(out)["datasets"]
        assert code == 0 and state["state"] == "ingested" and state["rows"] > 1000
        in_use = state["rows"]
        code, out, _ = run(
            capsys,
            "query",
            *brand,
            "--template",
            "audience_size",
            "--analysis",
            "audience",
            "--filter",
            "telecom.subscribers.region IN ('north')",
            "--json",
        )
        assert code == 0 and json.loads(out)["result"]["cells"][0]["value"] == everyone

        # a broken refresh: rejected, the previous rows stay in use, exit 1
        subscribers.write_bytes(b"not parquet at all")
        code, out, _ = run(capsys, "refresh", *telecom, "--dataset", "subscribers", "--json")
        (state,) = json.loads(out)["datasets"]
        assert code == 1 and state["state"] == "rejected"
        assert state["rows"] == in_use
        assert "not a Parquet file" in state["reason"]
        assert f"queries keep using the {in_use} rows" in state["reason"]
        code, _, err = run(capsys, "refresh", *telecom, "--dataset", "subscriber")
        assert code == 2 and "no dataset subscriber" in err and "its datasets: subscribers" in err

        code, out, _ = run(capsys, "status", *brand)
        assert code == 0 and "approvals: complete (bank, retailer, telecom)" in out
        assert "{" not in out
        code, out, _ = run(capsys, "budget", *brand)
        assert code == 0 and "differential privacy is off" in out and "{" not in out
        code, out, _ = run(capsys, "audit", *brand)
        assert code == 0 and "hash chain verified" in out and "\\u" not in out
        assert "audience_size audience; filter" in out

        # errors that say what to fix, once
        code, _, err = run(
            capsys,
            "query",
            *brand,
            "--template",
            "audience_size",
            "--analysis",
            "audience",
            "--filter",
            "telecom.subscribers.region == 'north'",
        )
        assert code == 2 and err.count("query:") == 1 and "write = to compare, not ==" in err
        code, _, err = run(
            capsys,
            "query",
            *brand,
            "--template",
            "audience_size",
            "--analysis",
            "audience",
            "--filter",
            'telecom.subscribers.region = "north"',
        )
        assert code == 2 and "single quotes" in err
        code, _, err = run(
            capsys,
            "query",
            *brand,
            "--template",
            "overlap",
            "--analysis",
            "reach",
            "--datasets",
            "bank.customers,telecom.subscriber",
        )
        assert code == 2 and "unknown dataset telecom.subscriber" in err
    code, out, _ = run(
        capsys, "public-key", "--key", keys / "brand.pem", "--definition", collab.definition
    )
    assert code == 0 and out.startswith("ed25519:") and "party brand" in out
    monkeypatch.delenv("SGXCLOUD_CLEANROOM_URL")
    code, _, err = run(capsys, "status", *brand)
    assert code == 2 and "give --url" in err and "SGXCLOUD_CLEANROOM_URL" in err
    code, out, _ = run(capsys, "status", "--help")
    assert "[required]" not in out.split("--definition")[0]
    # a result checked against another collaboration's definition says so
    other = prepare_example(tmp_path / "other", people=50)
    code, out, _ = run(
        capsys, "verify-result", tmp_path / "reach.json", "--definition", other.definition
    )
    assert code == 1 and "answers definition" in out and "check the --definition file" in out
    assert "nonce" not in out


@pytest.mark.parametrize(
    "pooled, warned",
    [(None, True), (1.0, False)],
)
def test_approving_two_analysts_without_a_collaboration_budget_warns(
    capsys, tmp_path, example, pooled, warned
):
    """Red team cr8 F2: a DP section without budget_per_collaboration has no pooled
    cap; two analysts at 1 each spend ε=2 together (88 %).  Approving it said nothing
    (``warnings: []``); it now says what pooled analysts can spend.  Capped at 1: silent."""
    import yaml

    path = _privacy_variant(
        example, tmp_path, f"two-{pooled}", budget_per_analyst=1.0, budget_per_collaboration=pooled
    )
    doc = yaml.safe_load(path.read_text())
    for party in doc["parties"]:
        if party["name"] == "agency":
            party["roles"] = ["analyst", "result_recipient"]
    for analysis in doc["analyses"]:
        analysis["analysts"] = ["brand", "agency"]
    path.write_text(yaml.safe_dump(doc))
    code, out, err = _approve(capsys, tmp_path, example, path)
    assert code == 0
    if not warned:
        assert json.loads(out)["warnings"] == [] and "WARNING" not in err
        return
    (line,) = json.loads(out)["warnings"]
    assert line == err.split("WARNING: ", 1)[1].strip()
    assert "sets no budget_per_collaboration: the 2 analysts hold 1 each" in line
    assert "spend ε=2 together" in line and "probability up to 88 % " in line
