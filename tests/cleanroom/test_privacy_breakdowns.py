"""Breakdowns and overlaps under the privacy controls: every released cell — and
every figure derivable from released cells by subtraction — is its own cohort
for the differencing check and must cover 0 or at least k people."""

from __future__ import annotations

import copy
import itertools

import pytest

from sgxcloud.cleanroom.definition import definition_from_dict
from sgxcloud.cleanroom.errors import QueryRefused

REGIONS = ("north", "south", "east", "west", "central")
BANDS = ("low", "middle", "high")
DEVICES = ("android", "ios", "other")


def _definition(base_doc, k, **privacy):
    doc = copy.deepcopy(base_doc)
    doc["privacy"].update(min_group_size=k, differencing_check=True, **privacy)
    lift = next(a for a in doc["analyses"] if a["name"] == "lift")
    lift["attributes"] += ["telecom.subscribers.region", "telecom.subscribers.device"]
    return definition_from_dict(doc)


def _lift(flt=None, breakdown="telecom.subscribers.region"):
    query = {"template": "campaign_lift", "analysis": "lift", "breakdown": breakdown}
    if flt:
        query["filter"] = flt
    return query


def test_breakdown_segment_differencing_is_refused(base_doc, make_engine, plain):
    """NOT(S) alone is refused, so the reviewer hid it in a breakdown: NOT(S) AND
    NOT(L) moves each arm by |S|+|L| ≥ k, but the `north` segment by |S| < k."""
    k = 20
    engine = make_engine(_definition(base_doc, k))
    table = plain.lift_table(segment=("telecom.subscribers", "region"))
    north = table[table.segment == "north"]
    big = plain.people("telecom.subscribers", lambda f: f.region == "south")
    for band, device in itertools.product(BANDS, DEVICES):
        small = plain.people("telecom.subscribers",
                             lambda f, d=device: (f.region == "north") & (f.device == d)) \
            & plain.people("bank.customers", lambda f, b=band: f.income_band == b)
        seg_diffs = [len(set(north[north.arm == a].index) & small) for a in ("test", "control")]
        arm_diffs = [len(set(table[table.arm == a].index) & (small | big))
                     for a in ("test", "control")]
        if any(0 < d < k for d in seg_diffs) and all(d >= k for d in arm_diffs):
            break
    else:
        pytest.fail("the generated data has no small slice to test with")
    s = (f"telecom.subscribers.region = 'north' AND telecom.subscribers.device = '{device}' "
         f"AND bank.customers.income_band = '{band}'")
    first = engine.run(_lift(), "brand")
    assert first.value("people", segment="north", arm="test") is not None
    with pytest.raises(QueryRefused) as err:
        engine.run(_lift(f"NOT ({s}) AND NOT (telecom.subscribers.region = 'south')"), "brand")
    assert err.value.reason == "differencing"
    # the same cohorts in other words differ by 0 everywhere: allowed, same figures
    again = engine.run(_lift("bank.customers.income_band = 'high' OR "
                             "NOT bank.customers.income_band = 'high'"), "brand")
    assert [c.value for c in again.cells] == [c.value for c in first.cells]


def test_converters_differencing_is_refused(base_doc, make_engine, plain):
    """Removing a slice with ≥ k people but fewer than k converters keeps every people
    cohort k apart, yet reveals those converters: converters are cohorts too."""
    k = 20
    engine = make_engine(_definition(base_doc, k))
    table = plain.lift_table()
    for band, baby in itertools.product(BANDS, (True, False)):
        gone = plain.people("bank.customers", lambda f, b=band: f.income_band == b) \
            & plain.people("retailer.customers", lambda f, y=baby: f.baby_buyer == y)
        part = table[table.index.isin(gone)]
        people = [len(part[part.arm == a]) for a in ("test", "control")]
        converted = [len(part[(part.arm == a) & (part.purchases > 0)]) for a in ("test", "control")]
        if any(0 < c < k for c in converted) and all(p >= k for p in people):
            break
    else:
        pytest.fail("the generated data has no slice with few converters and many people")
    engine.run(_lift(breakdown=None), "brand")
    with pytest.raises(QueryRefused) as err:
        engine.run(_lift(f"NOT (bank.customers.income_band = '{band}' AND "
                         f"retailer.customers.baby_buyer = {str(baby).lower()})",
                         breakdown=None), "brand")
    assert err.value.reason == "differencing"
