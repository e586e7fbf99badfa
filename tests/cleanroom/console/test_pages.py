"""Pages other roles see, over HTTP against real console processes: a result
recipient finds and verifies what an analyst released, and asks nothing."""

from __future__ import annotations

import re
from contextlib import closing

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)


def _client(console) -> httpx.Client:
    client = httpx.Client(base_url=console.base, timeout=120)
    assert client.get(console.url).status_code == 303  # token -> cookie
    return client


def test_a_recipient_finds_verifies_and_exports_what_the_analyst_released(collab):
    with closing(_client(collab.console("brand"))) as brand:
        form = brand.get("/query/lift").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        # The browser tests' question too: asked again, it is answered from the
        # store (no budget, no differencing against itself).
        ran = brand.post(
            "/query/lift", data={"csrf": csrf, "breakdown": "telecom.subscribers.region"}
        )
        assert ran.status_code == 303, re.sub(r"<[^>]+>", " ", ran.text)[-600:]
        result_id = ran.headers["location"].rsplit("/", 1)[1]

    with closing(_client(collab.console("agency"))) as agency:
        assert "names you as an analyst of no analysis" in agency.get("/query").text
        assert agency.get("/query/lift").status_code == 404
        listing = agency.get("/results").text
        assert f'href="/results/{result_id}"' in listing  # read from the audit log
        page = agency.get(f"/results/{result_id}").text
        assert "Signature verified" in page and "telecom.subscribers.region" in page
        bundle = agency.get(f"/results/{result_id}/export.json")
        assert bundle.headers["content-disposition"].startswith("attachment;")
        assert bundle.json()["result"]["result_id"] == result_id
        assert agency.get("/budget").status_code == 200


def test_a_provider_approving_in_the_console_is_told_what_the_budget_permits(collab):
    """The approval form and the definition page carry Privacy.warnings(): the
    console's definition has a budget of 20 per analyst (red team cr7 finding 1)."""
    with closing(_client(collab.console("bank"))) as bank:
        overview = bank.get("/").text
        form = overview[overview.index('id="approve-form"') : overview.index("</form>")]
        assert "privacy-warning" in form
        assert "budget_per_analyst is 20, above 1" in form and "yes/no fact" in form
        definition = bank.get("/definition").text
        assert "budget_per_analyst is 20, above 1" in definition


def test_the_budget_page_shows_the_collaborations_budget(collab):
    """Every analyst together is held to budget_per_collaboration (20 in the console's
    definition, like its per-analyst budget): the budget page and the overview say
    how much of it is spent, and the definition page states it."""
    with closing(_client(collab.console("brand"))) as brand:
        page = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", brand.get("/budget").text))
        assert "The collaboration's budget" in page
        spent = re.search(r"Every analyst together has spent (\S+) of ε = 20\.00; (\S+) left", page)
        assert spent is not None
        assert float(spent.group(1)) + float(spent.group(2)) == pytest.approx(20.0)
        assert 'id="collaboration-budget-meter"' in brand.get("/budget").text
        overview = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", brand.get("/").text))
        assert "The collaboration (every analyst together):" in overview
        definition = brand.get("/definition").text
        assert "20.0 for every analyst together" in definition
