"""The console's pure parts: what the builder offers and builds, charts and
exports of hostile or suppressed data, and escaping of whatever the
coordinator sends (a stand-in client here: the real coordinator cannot be made
to send markup on demand; the browser tests use the real one)."""

from __future__ import annotations

import csv
import html
import io
import warnings

import pytest

from sgxcloud.cleanroom.approvals import encode_public_key, generate_private_key
from sgxcloud.cleanroom.console import (
    CoordinatorUnavailable,
    Guard,
    PartySession,
    builder,
    charts,
    exports,
    views,
)
from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import QueryError
from sgxcloud.cleanroom.local import example_definition
from sgxcloud.cleanroom.results import Cell, Result
from sgxcloud.cleanroom.transport import TransportError
from sgxcloud.cleanroom.transport.request_auth import RequestRejected

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


@pytest.fixture(scope="module")
def keys():
    return {p: generate_private_key() for p in ("bank", "telecom", "retailer", "brand", "agency")}


@pytest.fixture(scope="module")
def definition(keys):
    return definition_from_dict(
        example_definition({p: encode_public_key(k) for p, k in keys.items()})
    )


def test_offers_follow_the_definition(definition):
    assert [o.name for o in builder.offers(definition, "brand")] == ["audience", "reach", "lift"]
    assert builder.offers(definition, "bank") == []
    assert builder.offers(definition, "agency") == []  # a recipient asks nothing
    lift = builder.offer_for(definition, "brand", "lift")
    assert [a.ref for a in lift.attributes] == [
        "retailer.customers.baby_buyer",
        "bank.customers.income_band",
    ]
    assert lift.attributes[1].values == ("low", "middle", "high")
    assert lift.breakdowns == ("telecom.subscribers.region", "bank.customers.premium_card")
    assert builder.offer_for(definition, "bank", "lift") is None


def test_form_to_query(definition):
    audience = builder.offer_for(definition, "brand", "audience")
    form = builder.Form(
        [
            ("a-bank-customers-premium_card", "true"),
            ("a-telecom-subscribers-device", "ios"),
            ("a-bank-customers-income_band", "low"),
            ("a-bank-customers-income_band", "high"),
        ]
    )
    assert builder.build_query(audience, form) == {
        "template": "audience_size",
        "analysis": "audience",
        "filter": {
            "and": [
                {"attribute": "bank.customers.premium_card", "op": "=", "value": True},
                {"attribute": "bank.customers.income_band", "op": "in", "value": ["low", "high"]},
                {"attribute": "telecom.subscribers.device", "op": "=", "value": "ios"},
            ]
        },
    }
    # Every value of a category ticked is no condition at all.
    every = builder.Form([("a-telecom-subscribers-device", v) for v in ("android", "ios", "other")])
    assert "filter" not in builder.build_query(audience, every)
    text = builder.Form([("filter_text", "NOT telecom.subscribers.region = 'north'")])
    assert builder.build_query(audience, text)["filter"] == {
        "not": {"attribute": "telecom.subscribers.region", "op": "=", "value": "north"}
    }


@pytest.mark.parametrize(
    ("analysis", "fields", "field"),
    [
        (
            "audience",
            [("a-telecom-subscribers-device", "windows-phone")],
            "telecom.subscribers.device",
        ),
        ("audience", [("a-bank-customers-premium_card", "maybe")], "bank.customers.premium_card"),
        ("reach", [("datasets", "bank.customers")], "datasets"),
        ("reach", [("datasets", "bank.customers"), ("datasets", "retailer.purchases")], "datasets"),
        ("lift", [("breakdown", "telecom.subscribers.device")], "breakdown"),
        ("audience", [("filter_text", "bank.customers.premium_card == true")], None),
    ],
)
def test_the_builder_refuses_what_it_did_not_offer(definition, analysis, fields, field):
    offer = builder.offer_for(definition, "brand", analysis)
    with pytest.raises(QueryError) as info:
        builder.build_query(offer, builder.Form(fields))
    if field:
        assert info.value.field == field


def _lift_result(segments: list[str]) -> Result:
    cells = []
    for i, seg in enumerate(segments):
        small = i == 2
        for arm, people, conv in (("test", 400, 60), ("control", 380, 40)):
            cells += [
                Cell("people", people, {"segment": seg, "arm": arm}, noisy=True),
                Cell(
                    "converters",
                    None if small else conv,
                    {"segment": seg, "arm": arm},
                    suppressed=small,
                ),
                Cell(
                    "conversion_rate",
                    None if small else conv / people,
                    {"segment": seg, "arm": arm},
                    suppressed=small,
                ),
            ]
        for metric, value in (
            ("conversion_lift_rel", 0.42),
            ("conversion_lift_rel_ci_low", 0.05),
            ("conversion_lift_rel_ci_high", 0.9),
            ("conversion_p_value", 0.03),
        ):
            cells.append(Cell(metric, None if small else value, {"segment": seg}, suppressed=small))
    return Result(
        "r-1",
        "c",
        "0" * 64,
        "lift",
        "campaign_lift",
        {},
        "q",
        tuple(cells),
        {},
        ("brand",),
        "2026-12-03T00:00:00+00:00",
    )


def test_charts_escape_labels_and_mark_suppressed_cells():
    result = _lift_result(["(all)", HOSTILE, "tiny"])
    svg = "".join(charts.charts_for(result))
    assert "<script" not in svg and "<img" not in svg and "&lt;script&gt;" in svg
    assert " style=" not in svg  # the CSP allows no inline style
    assert svg.count("suppressed (&lt; k)") == 3  # lift row + both arms of "tiny"
    assert "+42.0%" in svg


def test_long_breakdowns_are_charted_in_part():
    result = _lift_result([f"s{i:02d}" for i in range(30)])
    lift = charts.lift_chart(result)
    assert lift.count("<circle") == charts.MAX_ROWS - 1  # row 3 is suppressed
    assert len(views.lift_rows(result)) == 30  # the table has every segment


def test_cells_say_noise_and_suppression():
    assert views.cell_text(Cell("people", 1234, noisy=True)) == "≈ 1,234"
    assert views.cell_text(Cell("people", None, suppressed=True)) == "suppressed (< k)"
    assert views.cell_text(Cell("conversion_lift_rel", 0.1234)) == "12.34%"
    assert views.cell_text(Cell("incremental_revenue_ci_low", -5.5)) == "-5.50"


def test_noised_figures_carry_their_noise_margin():
    dp = {"differential_privacy": {"mechanism": "laplace", "epsilon": 0.5, "delta": None}}
    cell = Cell("people", 1000, noisy=True)
    result = Result(
        "r-2",
        "c",
        "0" * 64,
        "audience",
        "audience_size",
        {},
        "q",
        (cell,),
        dp,
        ("brand",),
        "2026-12-03T00:00:00+00:00",
    )
    text = views.cell_text(cell, result)
    assert text.startswith("≈ 1,000 ± ")  # Laplace, sensitivity 1, ε 0.5: about ± 6
    assert 4 <= float(text.rsplit(" ", 1)[1]) <= 8


def test_csv_export_neutralises_formulas():
    result = _lift_result(['=HYPERLINK("http://x")', "(all)", "@SUM(1)"])
    rows = list(csv.reader(io.StringIO(exports.result_csv(result))))
    segments = {r[rows[0].index("segment")] for r in rows[1:]}
    assert '\'=HYPERLINK("http://x")' in segments and "'@SUM(1)" in segments
    negative = exports._cell_text("-0.5")
    assert negative == "-0.5"  # numbers stay numbers


class _StandIn:
    """What a coordinator could send if it were hostile: markup everywhere."""

    simulated = False

    def status(self):
        return {
            "simulated": False,
            "definition_hash": "x",
            "approvals": {"valid": [], "missing": ["bank"], "invalid": [], "complete": False},
            "datasets": [
                {"dataset": "bank.customers", "state": HOSTILE, "rows": 1, "reason": HOSTILE}
            ],
        }

    def budget(self):
        return {"analyst": "brand", "total": 1.0, "spent": 0.5, "remaining": 0.5}

    def audit(self):
        return [
            {
                "seq": 1,
                "at": HOSTILE,
                "event": "refusal",
                "actor": HOSTILE,
                "data": {"reason": HOSTILE, "message": HOSTILE},
                "prev": "0",
                "hash": "1",
            }
        ]

    def close(self):
        pass


def test_pages_escape_what_the_coordinator_sends(definition, keys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        from sgxcloud.cleanroom.console.app import create_app

    session = PartySession(
        "https://127.0.0.1:1", definition, "brand", keys["brand"], connector=_StandIn
    )
    guard = Guard(port=1)
    client = TestClient(create_app(session, guard), base_url="http://127.0.0.1:1")
    assert client.get(guard.url(), follow_redirects=False).status_code == 303
    client.cookies.set(guard.cookie_name, guard.session)
    for path in ("/", "/audit", "/results"):
        page = client.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
    audit = client.get("/audit").text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in audit
    assert "Hash chain BROKEN" in audit  # and the stand-in's chain does not verify


def test_a_key_that_is_not_the_partys_is_refused(definition, keys):
    with pytest.raises(Exception, match="does not match brand"):
        PartySession("https://127.0.0.1:1", definition, "brand", keys["bank"])


class _Answering(_StandIn):
    """A coordinator session whose ``status`` raises what the test gives it."""

    def __init__(self, error: Exception, log: list[str]) -> None:
        self.error, self.log = error, log

    def status(self):
        self.log.append("status")
        raise self.error

    def close(self):
        self.log.append("close")


@pytest.mark.parametrize(
    ("error", "raised", "calls", "shown"),
    [
        # The coordinator answered 401 (the SDK's RequestRejected): one call, the
        # session kept, the refusal shown as a refusal.
        (
            RequestRejected("request replayed (nonce already used)"),
            RequestRejected,
            ["connect", "status"],
            "the coordinator refused our signed request: request replayed (nonce already used)",
        ),
        # The session broke: dropped, one fresh attempt, then "unavailable".
        (
            TransportError("connection lost"),
            CoordinatorUnavailable,
            ["connect", "status", "close", "connect", "status", "close"],
            "coordinator unavailable: connection lost",
        ),
    ],
    ids=["RequestRejected", "TransportError"],
)
def test_a_refused_request_is_not_taken_for_a_broken_session(
    definition, keys, error, raised, calls, shown
):
    """Holds before and after RequestRejected moved under TransportError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

        from sgxcloud.cleanroom.console.app import create_app

    log: list[str] = []

    def connect():
        log.append("connect")
        return _Answering(error, log)

    session = PartySession(
        "https://127.0.0.1:1", definition, "brand", keys["brand"], connector=connect
    )
    with pytest.raises(raised):
        session.status()
    assert log == calls
    session.drop()
    log.clear()
    guard = Guard(port=1)
    client = TestClient(create_app(session, guard), base_url="http://127.0.0.1:1")
    client.get(guard.url(), follow_redirects=False)
    client.cookies.set(guard.cookie_name, guard.session)
    page = client.get("/")
    assert page.status_code == 200
    assert "The coordinator did not answer" in page.text and html.escape(shown) in page.text
