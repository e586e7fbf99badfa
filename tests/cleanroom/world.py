"""A small hand-made population for privacy tests: keyed batches for the engine
and the same people in plaintext, so a test knows exactly who each released
figure counts.

Person ``p`` has keyed phone ``p + 1`` everywhere it appears (so a person is
one component), plus a bank customer id.  ``extra_ids`` gives every bank row
one more identifier (an e-mail smaller than any other keyed identifier): the
same people, but about every bank person's key changes — what an honest
refresh that adds an identifier does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from sgxcloud.cleanroom.definition import Definition
from sgxcloud.cleanroom.identifiers import prepared_schema

START = datetime(2026, 3, 1, tzinfo=UTC)
REGIONS = ("north", "south", "east", "west", "central")
DEVICES = ("android", "ios", "other")
BANDS = ("low", "middle", "high")
TIERS = ("none", "silver", "gold")


@dataclass
class Person:
    pid: int
    bank: dict[str, Any] | None = None
    telecom: dict[str, Any] | None = None
    retailer: dict[str, Any] | None = None
    arm: str | None = None
    converted: bool = False

    @property
    def phone(self) -> int:
        return self.pid + 1


@dataclass
class World:
    people: list[Person] = field(default_factory=list)

    @classmethod
    def random(cls, n: int, seed: int, presence: float = 0.6) -> World:
        rng = random.Random(seed)
        people = []
        for pid in range(n):
            person = Person(pid)
            if rng.random() < presence:
                person.bank = {"premium_card": rng.random() < 0.3, "income_band": rng.choice(BANDS)}
            if rng.random() < presence:
                person.telecom = {"region": rng.choice(REGIONS), "device": rng.choice(DEVICES)}
            if rng.random() < presence or not (person.bank or person.telecom):
                person.retailer = {
                    "baby_buyer": rng.random() < 0.25,
                    "loyalty_tier": rng.choice(TIERS),
                }
            if person.retailer and rng.random() < 0.7:
                person.arm = rng.choice(("test", "control"))
                person.converted = rng.random() < (0.35 if person.arm == "test" else 0.25)
            people.append(person)
        return cls(people)

    # -- keyed batches -----------------------------------------------------------------

    def batches(self, definition: Definition, extra_ids: bool = False) -> dict[str, pa.Table]:
        rows: dict[str, list[dict[str, Any]]] = {ds.ref: [] for ds in definition.datasets}
        for p in self.people:
            if p.bank is not None:
                rows["bank.customers"].append(
                    {
                        "customer_id": 10**12 + p.pid,
                        "phone": p.phone,
                        "email": -(2**62) - p.pid if extra_ids else None,
                        **p.bank,
                    }
                )
            if p.telecom is not None:
                rows["telecom.subscribers"].append({"phone": p.phone, **p.telecom})
            if p.retailer is not None:
                rows["retailer.customers"].append({"phone": p.phone, "email": None, **p.retailer})
            if p.arm is not None:
                exposed = START + timedelta(days=p.pid % 20)
                rows["retailer.exposures"].append(
                    {"phone": p.phone, "email": None, "group": p.arm, "exposed_at": exposed}
                )
                if p.converted:
                    rows["retailer.purchases"].append(
                        {
                            "phone": p.phone,
                            "email": None,
                            "amount": 20.0 + p.pid % 7,
                            "purchased_at": exposed + timedelta(days=1),
                        }
                    )
        out = {}
        for ds in definition.datasets:
            schema = prepared_schema(ds, definition.columns_needed(ds.ref))
            out[ds.ref] = pa.Table.from_pylist(
                [{f.name: r.get(f.name) for f in schema} for r in rows[ds.ref]], schema=schema
            )
        return out

    def ingest(
        self, engine: Any, extra_ids: bool = False, only: tuple[str, ...] | None = None
    ) -> None:
        for ref, table in self.batches(engine.definition, extra_ids).items():
            if only is None or ref in only:
                engine.ingest(*ref.split("."), table)

    # -- plaintext -----------------------------------------------------------------------

    def record(self, ref: str, p: Person) -> dict[str, Any] | None:
        return {
            "bank.customers": p.bank,
            "telecom.subscribers": p.telecom,
            "retailer.customers": p.retailer,
        }[ref]

    def everyone(self) -> set[int]:
        return {p.pid for p in self.people}

    def matches(self, node: dict[str, Any] | None) -> set[int]:
        """People a JSON filter selects, evaluated on the plaintext."""
        if node is None:
            return self.everyone()
        if "and" in node:
            return set.intersection(*(self.matches(n) for n in node["and"]))
        if "or" in node:
            return set.union(*(self.matches(n) for n in node["or"]))
        if "not" in node:
            return self.everyone() - self.matches(node["not"])
        provider, dataset, column = node["attribute"].split(".")
        out = set()
        for p in self.people:
            rec = self.record(f"{provider}.{dataset}", p)
            if rec is None:
                continue
            value = rec[column]
            op, want = node["op"], node["value"]
            if (
                (op == "=" and value == want)
                or (op == "!=" and value != want)
                or (op == "in" and value in want)
            ):
                out.add(p.pid)
        return out

    def members(self, ref: str) -> set[int]:
        return {p.pid for p in self.people if self.record(ref, p) is not None}

    def segment(self, p: Person, breakdown: str | None) -> str:
        if breakdown is None:
            return "(all)"
        provider, dataset, column = breakdown.split(".")
        rec = self.record(f"{provider}.{dataset}", p)
        if rec is None:
            return "(none)"
        value = rec[column]
        return str(value).lower() if isinstance(value, bool) else value
