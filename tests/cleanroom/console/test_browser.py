"""The console end to end in Debian's chromium: real coordinator and nodes
(`cleanroom local`, SIMULATED evidence), one `cleanroom console` process per
party, Selenium clicking and typing as a person would.

Scenarios: a provider approves and then sees its data ingested; an analyst
builds an audience query and a lift query, sees the chart, verifies and
exports the result; a refused query says why; the query form works from the
keyboard alone.  The screenshots of docs/cleanroom/console.md come from here.
"""

from __future__ import annotations

import csv
import json

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from sgxcloud.cleanroom.approvals import Approval, verify_approvals
from sgxcloud.cleanroom.definition import load_definition
from sgxcloud.cleanroom.sdk import verify_bundle

pytestmark = pytest.mark.timeout(240)


def _h1(driver) -> str:
    return driver.find_element(By.TAG_NAME, "h1").text


def _wait(driver, predicate, timeout: float = 60):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(predicate)


def _no_csp_violations(browser) -> None:
    errors = [e["message"] for e in browser.console_errors()]
    assert not [m for m in errors if "Content Security Policy" in m], errors


def _click(driver, element_id: str) -> None:
    """Click what loads a new page, and wait for that page (a click returns
    before the navigation it starts has finished)."""
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, element_id).click()
    _wait(driver, lambda _: _gone(old))
    _wait(driver, lambda d: d.execute_script("return document.readyState") == "complete")


def _gone(element) -> bool:
    try:
        element.is_enabled()
    except WebDriverException:  # stale; chromedriver may also say "Node ... does not belong"
        return True
    return False


def _run(driver) -> None:
    _click(driver, "run")


def test_provider_approves_then_sees_its_data_ingested(unapproved_collab, browser):
    collab = unapproved_collab
    telecom = collab.console("telecom")
    d = browser.driver
    d.get(telecom.url)  # the token URL the console printed; the token then leaves the URL
    assert "token=" not in d.current_url

    approvals = d.find_element(By.ID, "approvals")
    row = approvals.find_element(By.XPATH, ".//tr[th[contains(., '(telecom)')]]")
    assert "missing" in row.text
    ingestion = d.find_element(By.ID, "ingestion").text
    assert "unavailable" in ingestion and "ingested" not in ingestion
    assert "approvals incomplete" in ingestion  # the nodes' reason, as the coordinator saw it
    browser.screenshot("provider-before-approval", height=1400)

    d.find_element(By.ID, "reviewed").click()
    _click(d, "approve")
    assert _h1(d) == "Approval signed"
    definition = load_definition(collab.local.definition)
    assert definition.definition_hash() in d.find_element(By.ID, "approval-done").text
    saved = collab.workdir / "approvals" / "telecom.json"
    approval = Approval.from_dict(json.loads(saved.read_text()))
    assert verify_approvals(definition, [approval]).valid == ("telecom",)

    collab.restart_coordinator()  # the operator restarts it with the new approval
    d.get(telecom.base + "/")
    row = d.find_element(By.ID, "approvals").find_element(
        By.XPATH, ".//tr[th[contains(., '(telecom)')]]"
    )
    assert "approved" in row.text
    states = [
        r.find_elements(By.TAG_NAME, "td")[0].text
        for r in d.find_elements(By.CSS_SELECTOR, "#ingestion tbody tr")
    ]
    assert states == ["ingested"] * 5
    mine = d.find_element(By.ID, "identifier-report").text
    assert "telecom.subscribers" in mine and "bank.customers" not in mine
    browser.screenshot("provider-overview", height=1400)

    _click(d, "reingest")  # after fixing a file: pull it again
    assert "ingested" in d.find_element(By.ID, "reingested").text
    _no_csp_violations(browser)


def test_the_query_builder_offers_only_what_the_definition_allows(collab, browser):
    d = browser.driver
    telecom = collab.console("telecom")
    d.get(telecom.url)
    assert not d.find_elements(By.LINK_TEXT, "New query")  # a provider runs no analysis
    d.get(telecom.base + "/query/audience")
    assert _h1(d) == "No such analysis"

    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/query")
    offered = sorted(
        a.get_attribute("href").rsplit("/", 1)[1]
        for a in d.find_elements(By.CSS_SELECTOR, "ul.cards a")
    )
    assert offered == ["audience", "lift", "reach"]
    d.get(brand.base + "/query/lift")
    breakdowns = [
        o.get_attribute("value") for o in Select(d.find_element(By.ID, "breakdown")).options
    ]
    assert breakdowns == ["", "telecom.subscribers.region", "bank.customers.premium_card"]
    legends = {e.text.split(" (")[0] for e in d.find_elements(By.TAG_NAME, "legend")}
    labels = {e.text for e in d.find_elements(By.CSS_SELECTOR, ".field > label")}
    assert "bank.customers.income_band" in legends
    assert "retailer.customers.baby_buyer" in labels
    assert not any("telecom.subscribers.device" in x for x in legends | labels)


def test_analyst_audience_query(collab, browser):
    d = browser.driver
    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/query/audience")
    Select(d.find_element(By.ID, "a-bank-customers-premium_card")).select_by_value("true")
    d.find_element(By.XPATH, "//label[.='ios']").click()
    d.find_element(By.XPATH, "//label[.='android']").click()
    browser.screenshot("query-builder", height=1500)
    _run(d)
    assert "/results/" in d.current_url
    headline = d.find_element(By.ID, "headline").text
    assert headline.startswith("Audience: ≈ ")  # DP noise is said, not hidden,
    assert " ± " in headline  # with its 95% margin
    filter_text = d.find_element(By.ID, "query-filter").text
    assert "bank.customers.premium_card = true" in filter_text
    assert "telecom.subscribers.device IN ('android', 'ios')" in filter_text
    assert "Signature verified" in d.find_element(By.ID, "verify-outcome").text
    assert "epsilon" in d.find_element(By.ID, "privacy").text
    browser.screenshot("audience-result")


def test_analyst_lift_query_chart_verify_and_export(collab, browser):
    d = browser.driver
    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/query/lift")
    Select(d.find_element(By.ID, "breakdown")).select_by_value("telecom.subscribers.region")
    _run(d)
    result_id = d.current_url.rsplit("/", 1)[1]
    charts = d.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2
    assert "Relative conversion lift" in charts[0].find_element(By.TAG_NAME, "title").get_attribute(
        "textContent"
    )
    assert charts[0].find_elements(By.TAG_NAME, "circle")  # at least one released lift
    segments = [
        r.find_element(By.TAG_NAME, "th").text
        for r in d.find_elements(By.CSS_SELECTOR, "#lift-table tbody tr")
    ]
    assert segments[0] == "(all)" and {"north", "south"} <= set(segments)
    assert "[" in d.find_element(By.ID, "lift-table").text  # confidence intervals shown
    browser.screenshot("lift-result", height=2600)

    _click(d, "verify-again")
    assert "verified again" in d.find_element(By.ID, "verify-outcome").text

    for link, suffix in (
        ("export-csv", ".csv"),
        ("export-json", ".json"),
        ("export-html", ".html"),
    ):
        d.find_element(By.ID, link).click()
        browser.wait_download(suffix)
    definition = load_definition(collab.local.definition)
    bundle = browser.wait_download(".json")
    verified = verify_bundle(bundle.read_text(), definition)  # as verify-result does
    assert verified.result.result_id == result_id
    rows = list(csv.DictReader(browser.wait_download(".csv").open()))
    assert {r["metric"] for r in rows} >= {"conversion_lift_rel", "people"}
    assert all(r["result_id"] == result_id for r in rows)
    report = browser.wait_download(".html").read_text()
    assert "data:image/png;base64," in report and result_id in report

    # The exported file verifies in the console too; a tampered copy does not.
    d.get(brand.base + "/verify")
    d.find_element(By.ID, "bundle").send_keys(str(bundle))
    _click(d, "verify-file")
    assert d.find_element(By.ID, "verify-file-outcome").text.startswith("Valid.")
    doc = json.loads(bundle.read_text())
    doc["result"]["cells"][0]["value"] = 10**6
    tampered = bundle.with_name("tampered.json")
    tampered.write_text(json.dumps(doc))
    d.find_element(By.ID, "bundle").send_keys(str(tampered))
    _click(d, "verify-file")
    outcome = d.find_element(By.ID, "verify-file-outcome").text
    assert outcome.startswith("INVALID") and "signature" in outcome
    _no_csp_violations(browser)


def test_a_refused_query_says_why(collab, browser):
    d = browser.driver
    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/query/lift")
    d.find_element(By.TAG_NAME, "summary").click()
    d.find_element(By.ID, "filter_text").send_keys("telecom.subscribers.device = 'ios'")
    _run(d)
    alert = d.find_element(By.ID, "query-error")
    assert alert.get_attribute("role") == "alert"
    assert "Refused: not allowed" in alert.text
    assert "telecom.subscribers.device is not allowed in analysis lift" in alert.text
    # The form keeps what was typed, to fix and resubmit.
    assert (
        d.find_element(By.ID, "filter_text").get_attribute("value")
        == "telecom.subscribers.device = 'ios'"
    )
    browser.screenshot("refused", height=1400)

    d.get(brand.base + "/query/audience")  # a group far below k: nothing released
    for field, value in (
        ("a-bank-customers-premium_card", "true"),
        ("a-retailer-customers-baby_buyer", "true"),
    ):
        Select(d.find_element(By.ID, field)).select_by_value(value)
    for label in ("high", "north", "other", "gold"):
        d.find_element(By.XPATH, f"//label[.='{label}']").click()
    _run(d)
    alert = d.find_element(By.ID, "query-error")
    assert "Refused: suppressed" in alert.text
    assert "minimum group size" in alert.text


def test_keyboard_only(collab, browser):
    d = browser.driver
    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/query/reach")
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    assert d.switch_to.active_element.text == "Skip to content"
    d.switch_to.active_element.send_keys(Keys.ENTER)
    assert d.switch_to.active_element.get_attribute("id") == "main"
    # Every visible control has a label a screen reader announces.
    unlabelled = d.execute_script("""
        return [...document.querySelectorAll('input, select, textarea')]
          .filter(e => e.type !== 'hidden' && e.labels.length === 0).map(e => e.name);""")
    assert unlabelled == []
    # Tab to the first two dataset boxes, tick them with Space, submit with Enter.
    ticked = 0
    for _ in range(60):
        d.switch_to.active_element.send_keys(Keys.TAB)
        active = d.switch_to.active_element
        if active.get_attribute("name") == "datasets" and ticked < 2:
            active.send_keys(Keys.SPACE)
            ticked += 1
        if active.get_attribute("id") == "run":
            active.send_keys(Keys.ENTER)
            break
    _wait(d, lambda drv: drv.find_elements(By.CSS_SELECTOR, "svg.chart"))
    assert ticked == 2 and "/results/" in d.current_url
    browser.screenshot("overlap-result")
    # The focus ring is visible (not removed by the stylesheet).
    d.find_element(By.ID, "verify-again").send_keys("")
    outline = d.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_budget_and_audit_pages(collab, browser):
    d = browser.driver
    brand = collab.console("brand")
    d.get(brand.url)
    d.get(brand.base + "/budget")
    meter = d.find_element(By.ID, "budget-meter")
    assert float(meter.get_attribute("value")) > 0  # earlier tests spent some
    assert float(meter.get_attribute("max")) == pytest.approx(20.0)
    browser.screenshot("budget", height=900)
    d.get(brand.base + "/audit")
    assert d.find_element(By.ID, "chain").text.startswith("Hash chain verified")
    events = {
        r.find_elements(By.TAG_NAME, "td")[2].text
        for r in d.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
    }
    assert {"query", "release", "refusal"} <= events
    browser.screenshot("audit", height=1400)
    d.get(brand.base + "/results")
    assert d.find_elements(By.CSS_SELECTOR, "#released tbody tr")
    _no_csp_violations(browser)
