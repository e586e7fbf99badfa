"""k-anonymity, DP budget (persisted, concurrent), released-answer cache, differencing."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sgxcloud.cleanroom.errors import QueryRefused
from sgxcloud.cleanroom.privacy import PrivacyLedger, complementary_suppression

K = 30
CATEGORIES = {
    "bank.customers.income_band": ["low", "middle", "high"],
    "telecom.subscribers.region": ["north", "south", "east", "west", "central"],
    "telecom.subscribers.device": ["android", "ios", "other"],
    "retailer.customers.loyalty_tier": ["none", "silver", "gold"],
}
BOOLEANS = ["bank.customers.premium_card", "retailer.customers.baby_buyer"]


def _comparisons():
    category = st.sampled_from(sorted(CATEGORIES)).flatmap(
        lambda a: st.one_of(
            st.builds(
                lambda v, op: {"attribute": a, "op": op, "value": v},
                st.sampled_from(CATEGORIES[a]),
                st.sampled_from(["=", "!="]),
            ),
            st.builds(
                lambda vs: {"attribute": a, "op": "in", "value": vs},
                st.lists(st.sampled_from(CATEGORIES[a]), min_size=1, max_size=3, unique=True),
            ),
        )
    )
    boolean = st.builds(
        lambda a, v: {"attribute": a, "op": "=", "value": v},
        st.sampled_from(BOOLEANS),
        st.booleans(),
    )
    return st.one_of(category, boolean)


FILTERS = st.recursive(
    _comparisons(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"and": xs}, st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda xs: {"or": xs}, st.lists(inner, min_size=2, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=5,
)


def _assert_cells_cover_k(result, plain_lift=None):
    for cell in result.cells:
        if cell.suppressed:
            assert cell.value is None
        elif cell.metric in ("people", "converters"):
            assert cell.value >= K, (cell.metric, cell.dims)


_OPS = {
    "=": lambda col, v: col == v,
    "!=": lambda col, v: col != v,
    "in": lambda col, v: col.isin(v),
}


def _plain_audience(plain, node) -> set:
    """The filter evaluated independently on the plaintext reference."""
    if "and" in node:
        return set.intersection(*(_plain_audience(plain, n) for n in node["and"]))
    if "or" in node:
        return set.union(*(_plain_audience(plain, n) for n in node["or"]))
    if "not" in node:
        return plain.everyone - _plain_audience(plain, node["not"])
    provider, dataset, column = node["attribute"].split(".")
    op = _OPS[node["op"]]
    return plain.people(f"{provider}.{dataset}", lambda f: op(f[column], node["value"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flt=FILTERS)
def test_no_released_audience_below_k(k_engine, plain, flt):
    truth = len(_plain_audience(plain, flt))
    try:
        result = k_engine.run(
            {"template": "audience_size", "analysis": "audience", "filter": flt}, "brand"
        )
    except QueryRefused as exc:
        assert exc.reason == "suppressed"
        assert truth < K
        event("suppressed")
        return
    event("released")
    _assert_cells_cover_k(result)
    assert result.value("people") == truth >= K


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    breakdown=st.sampled_from(["telecom.subscribers.region", "bank.customers.premium_card", None]),
    flt=st.one_of(
        st.none(),
        st.sampled_from(
            [
                "retailer.customers.baby_buyer = true",
                "bank.customers.income_band = 'high'",
                "NOT bank.customers.income_band IN ('low')",
            ]
        ),
    ),
)
def test_no_released_lift_cell_below_k_and_no_small_remainder(k_engine, breakdown, flt):
    query = {"template": "campaign_lift", "analysis": "lift", "breakdown": breakdown}
    if flt:
        query["filter"] = flt
    try:
        result = k_engine.run(query, "brand")
    except QueryRefused as exc:
        assert exc.reason == "suppressed"
        event("suppressed")
        return
    event(
        "released with some suppressed cells"
        if any(c.suppressed for c in result.cells)
        else "released in full"
    )
    _assert_cells_cover_k(result)
    if breakdown is None:
        return
    for arm, metric in itertools.product(("test", "control"), ("people", "converters")):
        total = result.cell(metric, segment="(all)", arm=arm)
        parts = [
            c
            for c in result.cells
            if c.metric == metric and c.dims.get("arm") == arm and c.dims["segment"] != "(all)"
        ]
        if not total.suppressed:
            # total minus the released parts is the hidden parts together: 0 or ≥ k
            rest = total.value - sum(c.value for c in parts if not c.suppressed)
            assert rest == 0 or rest >= K, (arm, metric, rest)


def test_small_audience_is_refused_as_suppressed(k_engine):
    with pytest.raises(QueryRefused) as err:
        k_engine.run(
            {
                "template": "audience_size",
                "analysis": "audience",
                "filter": "bank.customers.income_band = 'high' AND "
                "retailer.customers.loyalty_tier = 'gold' AND "
                "telecom.subscribers.device = 'other'",
            },
            "brand",
        )
    assert err.value.reason == "suppressed"


def test_complementary_suppression_rule():
    assert complementary_suppression({"a": 3, "b": 50, "c": 40}, {"a"}) == {"a", "c"}
    # two tiny hidden parts: total minus the others would reveal 7 people together
    assert complementary_suppression({"a": 3, "b": 4, "c": 40, "d": 50}, {"a", "b"}, k=20) == {
        "a",
        "b",
        "c",
    }
    assert complementary_suppression({"a": 3, "b": 4, "c": 40}, {"a", "b"}, k=5) == {"a", "b"}
    # empty parts hidden alone reveal nothing (0 people)
    assert complementary_suppression({"a": 0, "b": 40}, {"a"}, k=20) == {"a"}
    assert complementary_suppression({"a": 0, "b": 3, "c": 40, "d": 41}, {"a", "b"}, k=20) == {
        "a",
        "b",
        "c",
    }
    assert complementary_suppression({"a": 50, "b": 60}, set()) == set()


# -- differential privacy budget --------------------------------------------------------


def _dp_definition(make_definition, budget=2.0, eps=1.0, **extra):
    return make_definition(
        dp={"enabled": True, "epsilon_per_query": eps, "budget_per_analyst": budget},
        differencing_check=False,
        **extra,
    )


AUDIENCES = [
    f"telecom.subscribers.region = '{r}'" for r in CATEGORIES["telecom.subscribers.region"]
]


def _audience(flt):
    return {"template": "audience_size", "analysis": "audience", "filter": flt}


def test_budget_cannot_be_exceeded_and_survives_restart(make_definition, make_engine, tmp_path):
    definition = _dp_definition(make_definition)
    engine = make_engine(definition, tmp_path / "w")
    first = engine.run(_audience(AUDIENCES[0]), "brand")
    engine.run(_audience(AUDIENCES[1]), "brand")
    assert engine.budget("brand").remaining == pytest.approx(0.0)
    with pytest.raises(QueryRefused) as err:
        engine.run(_audience(AUDIENCES[2]), "brand")
    assert err.value.reason == "budget"
    engine.close()

    restarted = make_engine(definition, tmp_path / "w", ingest=False)
    assert restarted.budget("brand").spent == pytest.approx(2.0)
    with pytest.raises(QueryRefused) as err:
        restarted.run(_audience(AUDIENCES[3]), "brand")
    assert err.value.reason == "budget"
    # the identical earlier query is answered from the released cache, for free
    again = restarted.run(_audience(AUDIENCES[0]), "brand")
    assert again.result_id == first.result_id
    assert again.cells == first.cells


def test_concurrent_queries_cannot_overspend(make_definition, make_engine):
    engine = make_engine(_dp_definition(make_definition, budget=3.0))
    outcomes: list[str] = []
    lock = threading.Lock()

    def ask(flt):
        try:
            engine.run(_audience(flt), "brand")
            outcome = "ok"
        except QueryRefused as exc:
            outcome = exc.reason
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=ask, args=(f,)) for f in AUDIENCES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["budget", "budget", "ok", "ok", "ok"]
    assert engine.budget("brand").spent == pytest.approx(3.0)


def test_ledger_spend_is_atomic_across_connections(tmp_path):
    """Separate ledgers on one file behave like separate coordinator processes."""
    path = tmp_path / "ledger.sqlite"
    ledgers = [PrivacyLedger(path) for _ in range(8)]
    granted: list[int] = []
    barrier = threading.Barrier(len(ledgers))

    def spend(i):
        barrier.wait()
        try:
            ledgers[i].spend("collab", "brand", f"q{i}", 0.5, budget=2.0)
            granted.append(i)
        except QueryRefused:
            pass

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(len(ledgers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 4
    assert PrivacyLedger(path).spent("brand") == pytest.approx(2.0)


def test_dp_adds_noise_and_repeats_the_same_answer(make_definition, make_engine, plain):
    engine = make_engine(_dp_definition(make_definition, budget=10.0, eps=0.5))
    queries = [_audience(f) for f in AUDIENCES]
    results = [engine.run(q, "brand") for q in queries]
    exact = [
        len(plain.people("telecom.subscribers", lambda f, r=r: f.region == r))
        for r in CATEGORIES["telecom.subscribers.region"]
    ]
    noisy = [r.value("people") for r in results]
    assert noisy != exact  # P(all five Laplace draws are 0) is about 0.2**5 (scale 2)
    assert all(abs(n - e) < 60 for n, e in zip(noisy, exact, strict=True))
    assert all(r.cells[0].noisy for r in results)
    assert results[0].privacy["differential_privacy"]["epsilon"] == 0.5
    spent = engine.budget("brand").spent
    # same question, written differently (IN list order) -> same canonical query
    in_query = {
        "template": "audience_size",
        "analysis": "audience",
        "filter": {
            "attribute": "telecom.subscribers.region",
            "op": "in",
            "value": ["west", "north"],
        },
    }
    first = engine.run(in_query, "brand")
    in_query["filter"]["value"] = ["north", "west", "north"]
    assert engine.run(in_query, "brand").to_dict() == first.to_dict()
    assert engine.budget("brand").spent == pytest.approx(spent + 0.5)


def test_dp_lift_releases_noisy_consistent_figures(make_definition, make_engine):
    engine = make_engine(_dp_definition(make_definition, budget=10.0, eps=2.0))
    result = engine.run(
        {
            "template": "campaign_lift",
            "analysis": "lift",
            "breakdown": "bank.customers.premium_card",
        },
        "brand",
    )
    dp = result.privacy["differential_privacy"]
    assert dp["epsilon_per_measure"] == pytest.approx(0.4)
    for arm in ("test", "control"):
        parts = [
            c.value
            for c in result.cells
            if c.metric == "people" and c.dims.get("arm") == arm and c.dims["segment"] != "(all)"
        ]
        if all(v is not None for v in parts):
            assert result.value("people", segment="(all)", arm=arm) == sum(parts)
    assert all(c.noisy for c in result.cells if not c.suppressed)


def test_gaussian_mechanism(make_definition, make_engine):
    definition = make_definition(
        dp={
            "enabled": True,
            "mechanism": "gaussian",
            "delta": 1e-6,
            "epsilon_per_query": 1.0,
            "budget_per_analyst": 2.0,
        }
    )
    engine = make_engine(definition)
    result = engine.run(_audience(AUDIENCES[0]), "brand")
    assert result.privacy["differential_privacy"]["mechanism"] == "gaussian"
    assert result.value("people") > 0


# -- differencing ------------------------------------------------------------------------


def test_differencing_attempt_is_refused(make_definition, make_engine, plain):
    k = 20
    engine = make_engine(make_definition(min_group_size=k))
    base = plain.people("retailer.customers", lambda f: f.baby_buyer)
    # find a slice of the baby buyers smaller than k: "everyone but them" is a differencing attack
    for region, device in itertools.product(
        CATEGORIES["telecom.subscribers.region"], CATEGORIES["telecom.subscribers.device"]
    ):
        removed = base & plain.people(
            "telecom.subscribers", lambda f, r=region, d=device: (f.region == r) & (f.device == d)
        )
        if 0 < len(removed) < k:
            break
    else:
        pytest.fail("the generated data has no small slice to test with")
    first = engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true",
        },
        "brand",
    )
    assert first.value("people") == len(base)
    attack = (
        "retailer.customers.baby_buyer = true AND NOT (telecom.subscribers.region = "
        f"'{region}' AND telecom.subscribers.device = '{device}')"
    )
    with pytest.raises(QueryRefused) as err:
        engine.run({"template": "audience_size", "analysis": "audience", "filter": attack}, "brand")
    assert err.value.reason == "differencing"
    assert "differs from an earlier released one" in str(err.value)
    # a cohort that differs by k or more is fine
    engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "retailer.customers.baby_buyer = true AND "
            "telecom.subscribers.region != 'north'",
        },
        "brand",
    )
    refusals = [e for e in engine.audit.entries() if e.event == "refusal"]
    assert refusals[-1].data["reason"] == "differencing"


def test_differencing_state_survives_restart(make_definition, make_engine, tmp_path, plain):
    definition = make_definition(min_group_size=20)
    engine = make_engine(definition, tmp_path / "d")
    engine.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "bank.customers.income_band IN ('low', 'middle')",
        },
        "brand",
    )
    engine.close()
    restarted = make_engine(definition, tmp_path / "d", ingest=False)
    # identical cohort via an equivalent but different filter: difference 0, allowed
    result = restarted.run(
        {
            "template": "audience_size",
            "analysis": "audience",
            "filter": "bank.customers.income_band != 'high'",
        },
        "brand",
    )
    expected = plain.people("bank.customers", lambda f: f.income_band != "high")
    assert result.value("people") == len(expected)


def test_dp_overlap_cells_come_from_noisy_disjoint_regions(make_definition, make_engine):
    engine = make_engine(_dp_definition(make_definition, budget=5.0, eps=1.0))
    result = engine.run(
        {
            "template": "overlap",
            "analysis": "reach",
            "datasets": ["bank.customers", "telecom.subscribers"],
        },
        "brand",
    )
    a = result.value("people", datasets="bank.customers")
    b = result.value("people", datasets="telecom.subscribers")
    both = result.value("people", datasets="bank.customers+telecom.subscribers")
    assert both <= min(a, b)  # consistent: every cell is a sum of the same noisy regions
    assert result.privacy["differential_privacy"]["epsilon_per_measure"] == 1.0
    assert engine.budget("brand").spent == pytest.approx(1.0)


def test_lift_differencing_is_refused(make_definition, make_engine, plain):
    k = 20
    engine = make_engine(make_definition(min_group_size=k))
    table = plain.lift_table()
    banked = table[table.index.isin(plain.people("bank.customers"))]
    base = "bank.customers.income_band IN ('low', 'middle', 'high')"
    for band, baby in itertools.product(("high", "middle", "low"), (True, False)):
        removed = plain.people(
            "bank.customers", lambda f, b=band: f.income_band == b
        ) & plain.people("retailer.customers", lambda f, y=baby: f.baby_buyer == y)
        arm_diffs = [len(set(banked[banked.arm == a].index) & removed) for a in ("test", "control")]
        if any(0 < d < k for d in arm_diffs):
            break
    else:
        pytest.fail("the generated data has no small slice to test with")
    engine.run({"template": "campaign_lift", "analysis": "lift", "filter": base}, "brand")
    attack = (
        f"{base} AND NOT (bank.customers.income_band = '{band}' AND "
        f"retailer.customers.baby_buyer = {str(baby).lower()})"
    )
    with pytest.raises(QueryRefused) as err:
        engine.run({"template": "campaign_lift", "analysis": "lift", "filter": attack}, "brand")
    assert err.value.reason == "differencing"
