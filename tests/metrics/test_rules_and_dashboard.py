"""Alert rules (promtool check/test rules) and the Grafana dashboard refer only to
metrics that sgxcloud really exports."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import pytest
import yaml

from sgxcloud.cas.service.metrics import CasMetrics
from sgxcloud.cleanroom.coordinator.metrics import CoordinatorMetrics
from sgxcloud.nova.checks import exporter
from sgxcloud.nova.checks.model import Status
from tests.metrics.promtool import names, run

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/sgxcloud-alerts.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tests/sgxcloud-alerts-test.yml"
DASHBOARD = ROOT / "deploy/grafana/sgxcloud-dashboard.json"
METRIC = re.compile(r"\b(sgxcloud_[a-z0-9_]+)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:
    """Every sample name the node exporter, the CAS and the coordinator expose."""
    from prometheus_client import generate_latest

    try:
        from tests.cas import postgres as pg
    except ImportError:  # pragma: no cover
        import postgres as pg  # type: ignore[no-redef]

    domain = exporter.DomainEpc("u", "instance-1", "p", {0: 1024})
    node = exporter.NodeState("h", {0: 4096}, 1, (domain,), Status.OK, {Status.OK: 1}, 1.0)
    found = names(exporter.render([node]))

    cas = CasMetrics()
    service = pg.make_service(f"sqlite:///{tmp_path_factory.mktemp('cas') / 'cas.db'}")
    try:
        cas.watch(service)
        cas.saw_collateral(0, 1)
        cas.attestations.labels("accepted", "none").inc()
        cas.attestation_seconds.labels("accepted").observe(0.1)
        found |= names(generate_latest(cas.registry))
    finally:
        service.stop()

    coordinator = CoordinatorMetrics()
    # The state collector reads the coordinator's definition, budgets and status.
    stand_in = types.SimpleNamespace(
        definition=types.SimpleNamespace(
            parties_with_role=lambda role: (types.SimpleNamespace(name="brand"),)
        ),
        budget=lambda analyst: {"spent": 0.5, "total": 1.0},
        status=lambda: {"a.b": {"state": "ingested", "rows": 3, "seconds": 1.0, "bytes": 9}},
    )
    coordinator.watch(stand_in)
    found |= names(generate_latest(coordinator.registry))
    return found


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    checked = run("check", "rules", RULES)
    assert checked.returncode == 0 and "SUCCESS: 4 rules found" in checked.stdout, checked
    tested = run("test", "rules", RULE_TESTS)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_rule_tests_fail_when_a_rule_is_wrong(tmp_path: Path) -> None:
    # The rule tests are not vacuous: a rule that never fires fails them.
    broken = RULES.read_text().replace("> 0.9", "> 1.9")
    (tmp_path / "sgxcloud-alerts.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    assert run("test", "rules", tmp_path / "tests" / RULE_TESTS.name).returncode != 0


def test_rules_name_only_exported_metrics_and_have_runbooks(exported: set[str]) -> None:
    runbook = (ROOT / "docs/operations/alerts.md").read_text()
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            used = set(METRIC.findall(rule["expr"]))
            assert used and used <= exported, (rule["alert"], used - exported)
            anchor = rule["annotations"]["runbook_url"].split("#")[1]
            assert f"## {rule['alert']}" in runbook and anchor == rule["alert"].lower()


def test_dashboard_names_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert len(used) >= 15
    assert used <= exported, used - exported
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
