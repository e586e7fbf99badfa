"""Shared fixtures for the clean room core tests.

``plain`` is the independent reference: it reads the generated plaintext
files with pandas, links people with its own union-find and computes every
figure without DuckDB or the engine's SQL — the engine must agree with it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.approvals import encode_public_key
from sgxcloud.cleanroom.datagen import GeneratedData, generate
from sgxcloud.cleanroom.definition import Definition, definition_from_dict
from sgxcloud.cleanroom.engine import Engine
from sgxcloud.cleanroom.identifiers import normalise, prepare_batch

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cleanroom" / "collaboration.yaml"
PEOPLE = 3000
SEED = 11
KEY = bytes(range(32))  # a fixed re-keying key: tests search outputs for its hashes


@pytest.fixture(scope="session")
def rekey_key() -> bytes:
    """The re-keying key the ``prepared`` batches were made with."""
    return KEY


@pytest.fixture(scope="session")
def party_keys() -> dict[str, Ed25519PrivateKey]:
    return {
        name: Ed25519PrivateKey.generate()
        for name in ("bank", "telecom", "retailer", "brand", "agency")
    }


@pytest.fixture(scope="session")
def base_doc(party_keys: dict[str, Ed25519PrivateKey]) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    for party in doc["parties"]:
        party["public_key"] = encode_public_key(party_keys[party["name"]])
    doc["privacy"]["min_group_size"] = 20
    # exact answers, so that they can be compared with the plaintext reference; the
    # shipped example has DP on, and the DP tests turn it on again
    doc["privacy"]["differential_privacy"]["enabled"] = False
    # tests that turn DP on give the budget they need as budget_per_analyst; the
    # collaboration-wide budget is tested where it is set (test_privacy_budget_pooled)
    doc["privacy"]["differential_privacy"].pop("budget_per_collaboration", None)
    return doc


@pytest.fixture
def make_definition(base_doc: dict[str, Any]) -> Callable[..., Definition]:
    """A definition from the example, with ``privacy`` keys overridden."""

    def make(dp: dict[str, Any] | None = None, **privacy: Any) -> Definition:
        doc = copy.deepcopy(base_doc)
        doc["privacy"].update(privacy)
        if dp is not None:
            doc["privacy"]["differential_privacy"].update(dp)
        return definition_from_dict(doc)

    return make


@pytest.fixture(scope="session")
def generated(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    return generate(tmp_path_factory.mktemp("gen"), people=PEOPLE, seed=SEED, chunk_people=1000)


@pytest.fixture(scope="session")
def prepared(generated: GeneratedData, base_doc: dict[str, Any]) -> dict[str, Any]:
    """Node-side preparation, done once: ref -> prepared Arrow batch."""
    definition = definition_from_dict(base_doc)
    out = {}
    for ref, path in generated.files.items():
        ds = definition.dataset(ref)
        batch, _ = prepare_batch(ds, pq.read_table(path), KEY, definition.columns_needed(ref))
        out[ref] = batch
    return out


@pytest.fixture
def make_engine(tmp_path: Path, prepared: dict[str, Any]) -> Callable[..., Engine]:
    engines: list[Engine] = []

    def make(
        definition: Definition, workdir: Path | None = None, ingest: bool = True, **kwargs: Any
    ) -> Engine:
        engine = Engine(definition, workdir or tmp_path / "engine", **kwargs)
        engines.append(engine)
        if ingest:
            for ref, batch in prepared.items():
                provider, name = ref.split(".")
                engine.ingest(provider, name, batch)
        return engine

    yield make
    for engine in engines:
        with contextlib.suppress(Exception):  # already closed by the test
            engine.close()


@pytest.fixture(scope="module")
def k_engine(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    base_doc: dict[str, Any],
    prepared: dict[str, Any],
) -> Iterator[Engine]:
    """One engine per test module with that module's ``K`` as minimum group size and
    the differencing check off (the module tests suppression, not differencing)."""
    doc = copy.deepcopy(base_doc)
    doc["privacy"].update(min_group_size=request.module.K, differencing_check=False)
    engine = Engine(definition_from_dict(doc), tmp_path_factory.mktemp("k"))
    for ref, batch in prepared.items():
        engine.ingest(*ref.split("."), batch)
    yield engine
    engine.close()


# -- the independent plaintext reference ------------------------------------------------


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Plain:
    """Plaintext figures computed with pandas and statsmodels, nothing else."""

    IDS: ClassVar[dict[str, dict[str, str]]] = {
        "bank.customers": {"customer_id": "customer_id", "email": "email", "phone": "phone"},
        "telecom.subscribers": {"phone": "phone"},
        "retailer.customers": {"email": "email", "phone": "phone"},
        "retailer.exposures": {"email": "email", "phone": "phone"},
        "retailer.purchases": {"email": "email", "phone": "phone"},
    }

    def __init__(self, generated: GeneratedData) -> None:
        self.raw = {ref: pq.read_table(path).to_pandas() for ref, path in generated.files.items()}
        uf = _UnionFind()
        keyed: dict[str, list[list[tuple[str, str]]]] = {}
        for ref, frame in self.raw.items():
            rows = []
            for record in frame.to_dict("records"):
                ids = [
                    (kind, normalise(kind, record[col], "GB"))
                    for col, kind in self.IDS[ref].items()
                ]
                ids = [i for i in ids if i[1] is not None]
                for other in ids[1:]:
                    uf.union(ids[0], other)
                rows.append(ids)
            keyed[ref] = rows
        self.data: dict[str, pd.DataFrame] = {}
        for ref, frame in self.raw.items():
            people = [uf.find(ids[0]) if ids else None for ids in keyed[ref]]
            frame = frame.assign(person=people)
            self.data[ref] = frame[frame.person.notna()].reset_index(drop=True)
        self.everyone = set().union(*(set(f.person) for f in self.data.values()))

    def people(self, ref: str, mask: Callable[[pd.DataFrame], pd.Series] | None = None) -> set:
        frame = self.data[ref]
        return set(frame[mask(frame)].person) if mask else set(frame.person)

    def lift_table(
        self,
        window_days: int = 28,
        restrict: Iterable | None = None,
        segment: tuple[str, str] | None = None,
    ) -> pd.DataFrame:
        """One row per exposed person: arm, segment, attributed purchases and revenue."""
        exp = self.data["retailer.exposures"]
        per = exp.groupby("person").agg(
            first=("exposed_at", "min"), arms=("group", "nunique"), arm=("group", "first")
        )
        per = per[per.arms == 1].drop(columns="arms")
        if restrict is not None:
            per = per[per.index.isin(set(restrict))]
        pur = self.data["retailer.purchases"].merge(per, left_on="person", right_index=True)
        window = pd.Timedelta(days=window_days)
        pur = pur[(pur.purchased_at >= pur["first"]) & (pur.purchased_at < pur["first"] + window)]
        agg = pur.groupby("person").agg(purchases=("amount", "size"), revenue=("amount", "sum"))
        per = per.join(agg).fillna({"purchases": 0, "revenue": 0.0})
        if segment:
            ref, col = segment
            seg = self.data[ref].groupby("person")[col].min().astype(str)
            if seg.dtype == object:
                seg = seg.str.lower()
            per["segment"] = per.index.map(seg).fillna("(none)")
        return per


@pytest.fixture(scope="session")
def plain(generated: GeneratedData) -> Plain:
    return Plain(generated)
