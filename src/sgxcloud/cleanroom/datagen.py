"""Synthetic data for three providers, with a real campaign effect.

A pool of people; each provider knows some of them, writes their
identifiers its own way (e-mail case, Gmail dots and ``+tags``, national or
international phone formats) and holds its own attributes:

* bank ``customers``: customer_id, email, phone, premium_card, income_band;
* telecom ``subscribers``: phone, region, device;
* retailer ``customers``: email, phone, baby_buyer, loyalty_tier;
  ``exposures``: email, phone, group (test/control), exposed_at;
  ``purchases``: email, phone, amount, purchased_at.

Exposed people in the test arm convert ``1 + lift`` times as often as in
the control arm, so the lift is measurable; some purchases fall before the
first exposure or after the attribution window, so the window matters.  A
small share of identifiers is invalid on purpose.

Deterministic for a given ``seed`` and ``chunk_people``; generated and
written one chunk of people at a time, so 10 million rows never sit in
memory together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

REGIONS = ("north", "south", "east", "west", "central")
DEVICES = ("android", "ios", "other")
INCOME_BANDS = ("low", "middle", "high")
LOYALTY_TIERS = ("none", "silver", "gold")
DOMAINS = ("gmail.com", "example.org", "mail.test", "post.example")
FIRST = ("anna", "ben", "chloe", "dan", "emma", "finn", "grace", "harry", "isla", "jack")
LAST = ("smith", "jones", "taylor", "brown", "wilson", "evans", "thomas", "roberts")
TS = pa.timestamp("us", tz="UTC")

SCHEMAS = {
    "bank/customers": pa.schema(
        [
            ("customer_id", pa.string()),
            ("email", pa.string()),
            ("phone", pa.string()),
            ("premium_card", pa.bool_()),
            ("income_band", pa.string()),
        ]
    ),
    "telecom/subscribers": pa.schema(
        [("phone", pa.string()), ("region", pa.string()), ("device", pa.string())]
    ),
    "retailer/customers": pa.schema(
        [
            ("email", pa.string()),
            ("phone", pa.string()),
            ("baby_buyer", pa.bool_()),
            ("loyalty_tier", pa.string()),
        ]
    ),
    "retailer/exposures": pa.schema(
        [("email", pa.string()), ("phone", pa.string()), ("group", pa.string()), ("exposed_at", TS)]
    ),
    "retailer/purchases": pa.schema(
        [
            ("email", pa.string()),
            ("phone", pa.string()),
            ("amount", pa.float64()),
            ("purchased_at", TS),
        ]
    ),
}


@dataclass(frozen=True)
class GenerationSettings:
    people: int = 10_000
    seed: int = 7
    chunk_people: int = 100_000
    bank_share: float = 0.6
    telecom_share: float = 0.7
    retailer_share: float = 0.5
    exposed_share: float = 0.6  # of retailer customers
    test_share: float = 0.5
    base_conversion: float = 0.08
    baby_conversion_bonus: float = 0.08
    lift: float = 0.3  # relative conversion lift of the test arm
    invalid_rate: float = 0.002
    campaign_start: datetime = datetime(2026, 3, 2, tzinfo=UTC)
    campaign_days: int = 14
    window_days: int = 28


@dataclass
class GeneratedData:
    outdir: Path
    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    settings: GenerationSettings = field(default_factory=GenerationSettings)


class _Writer:
    def __init__(self, path: Path, schema: pa.Schema, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            self._writer: pq.ParquetWriter | pacsv.CSVWriter = pq.ParquetWriter(path, schema)
        else:
            self._writer = pacsv.CSVWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()


def generate(
    outdir: str | Path,
    *,
    people: int = 10_000,
    seed: int = 7,
    fmt: str = "parquet",
    chunk_people: int = 100_000,
    progress: Callable[[int, int], None] | None = None,
    **overrides: object,
) -> GeneratedData:
    """Write the five files under ``outdir/<provider>/<dataset>.<fmt>``."""
    if fmt not in ("parquet", "csv"):
        raise ValueError("fmt must be parquet or csv")
    if people < 1 or chunk_people < 1:
        raise ValueError("people and chunk_people must be positive")
    settings = GenerationSettings(people=people, seed=seed, chunk_people=chunk_people, **overrides)  # type: ignore[arg-type]
    out = GeneratedData(Path(outdir), settings=settings)
    writers = {
        name: _Writer(out.outdir / f"{name}.{fmt}", schema, fmt) for name, schema in SCHEMAS.items()
    }
    try:
        for chunk, start in enumerate(range(0, people, chunk_people)):
            stop = min(start + chunk_people, people)
            rng = np.random.default_rng([seed, chunk])
            for name, table in _chunk(rng, np.arange(start, stop), settings).items():
                writers[name].write(table)
            if progress:
                progress(stop, people)
    finally:
        for writer in writers.values():
            writer.close()
    for name, writer in writers.items():
        out.files[name.replace("/", ".")] = writer.path
        out.rows[name.replace("/", ".")] = writer.rows
    return out


# -- one chunk of people ---------------------------------------------------------------


def _emails(rng: np.random.Generator, ids: np.ndarray) -> tuple[list[str], list[str]]:
    """The same mailbox as the bank writes it and as the retailer writes it."""
    first = np.array(FIRST)[ids % len(FIRST)]
    last = np.array(LAST)[(ids // len(FIRST)) % len(LAST)]
    domain = np.array(DOMAINS)[rng.integers(0, len(DOMAINS), ids.size)]
    bank, shop = [], []
    for f, la, i, d in zip(first, last, ids, domain, strict=True):
        bank.append(f"{f.capitalize()}.{la.capitalize()}{i}@{d.upper() if i % 7 == 0 else d}")
        shop.append(f" {f}{la}{i}+shop@{d} " if d == "gmail.com" else f"{f}.{la}{i}@{d}")
    return bank, shop


def _phones(rng: np.random.Generator, ids: np.ndarray) -> list[str]:
    """UK mobile numbers (+44 74xx…, a valid range) in mixed national/international styles."""
    digits = [f"{400000000 + int(i):09d}" for i in ids]  # 7 + these 9 digits
    style = rng.integers(0, 3, ids.size)
    return [
        f"+44 7{d[:3]} {d[3:]}" if s == 0 else (f"07{d[:3]} {d[3:]}" if s == 1 else f"+447{d}")
        for d, s in zip(digits, style, strict=True)
    ]


def _spoil(
    rng: np.random.Generator, values: list[str | None], rate: float, bad: str
) -> list[str | None]:
    hit = rng.random(len(values)) < rate
    return [bad if h and v is not None else v for v, h in zip(values, hit, strict=True)]


def _maybe(rng: np.random.Generator, values: list[str], share: float) -> list[str | None]:
    keep = rng.random(len(values)) < share
    return [v if k else None for v, k in zip(values, keep, strict=True)]


def _chunk(rng: np.random.Generator, ids: np.ndarray, s: GenerationSettings) -> dict[str, pa.Table]:
    n = ids.size
    bank_email, shop_email = _emails(rng, ids)
    phones = _phones(rng, ids)
    income = rng.choice(len(INCOME_BANDS), n, p=[0.4, 0.4, 0.2])
    premium = rng.random(n) < np.where(income == 2, 0.5, 0.12)
    region = rng.integers(0, len(REGIONS), n)
    device = rng.choice(len(DEVICES), n, p=[0.55, 0.4, 0.05])
    baby = rng.random(n) < 0.15
    loyalty = rng.choice(len(LOYALTY_TIERS), n, p=[0.6, 0.3, 0.1])
    in_bank = rng.random(n) < s.bank_share
    in_telecom = rng.random(n) < s.telecom_share
    in_retail = rng.random(n) < s.retailer_share
    tables: dict[str, pa.Table] = {}

    b = np.flatnonzero(in_bank)
    tables["bank/customers"] = pa.table(
        {
            "customer_id": [f"C{int(i):09d}" for i in ids[b]],
            "email": _spoil(
                rng, _maybe(rng, [bank_email[i] for i in b], 0.9), s.invalid_rate, "not-an-email"
            ),
            "phone": _spoil(rng, _maybe(rng, [phones[i] for i in b], 0.8), s.invalid_rate, "12345"),
            "premium_card": premium[b],
            "income_band": np.array(INCOME_BANDS)[income[b]],
        },
        schema=SCHEMAS["bank/customers"],
    )

    t = np.flatnonzero(in_telecom)
    tables["telecom/subscribers"] = pa.table(
        {
            "phone": _spoil(rng, [phones[i] for i in t], s.invalid_rate, "+44 12"),
            "region": np.array(REGIONS)[region[t]],
            "device": np.array(DEVICES)[device[t]],
        },
        schema=SCHEMAS["telecom/subscribers"],
    )

    r = np.flatnonzero(in_retail)
    has_email = rng.random(r.size) < 0.85
    has_phone = (rng.random(r.size) < 0.6) | ~has_email
    r_email = [shop_email[i] if e else None for i, e in zip(r, has_email, strict=True)]
    r_phone = [phones[i] if p else None for i, p in zip(r, has_phone, strict=True)]
    tables["retailer/customers"] = pa.table(
        {
            "email": _spoil(rng, r_email, s.invalid_rate, "@@"),
            "phone": r_phone,
            "baby_buyer": baby[r],
            "loyalty_tier": np.array(LOYALTY_TIERS)[loyalty[r]],
        },
        schema=SCHEMAS["retailer/customers"],
    )

    tables.update(_campaign(rng, r, r_email, r_phone, baby, s))
    return tables


def _campaign(
    rng: np.random.Generator,
    r: np.ndarray,
    r_email: list[str | None],
    r_phone: list[str | None],
    baby: np.ndarray,
    s: GenerationSettings,
) -> dict[str, pa.Table]:
    start_us = int(s.campaign_start.timestamp() * 1_000_000)
    day_us = 86_400 * 1_000_000
    exposed = rng.random(r.size) < s.exposed_share
    test = rng.random(r.size) < s.test_share
    first = start_us + rng.integers(0, s.campaign_days * day_us, r.size)
    exp_email, exp_phone, exp_group, exp_at = [], [], [], []
    for j in np.flatnonzero(exposed):
        for extra in range(int(rng.integers(1, 4))):  # 1-3 impressions, same arm
            exp_email.append(r_email[j])
            exp_phone.append(r_phone[j] if r_email[j] is None else None)
            exp_group.append("test" if test[j] else "control")
            exp_at.append(first[j] + extra * int(rng.integers(0, 3 * day_us)))
    p_convert = (s.base_conversion + s.baby_conversion_bonus * baby[r]) * np.where(
        test, 1 + s.lift, 1.0
    )
    converts = exposed & (rng.random(r.size) < p_convert)
    pur_email, pur_phone, amount, pur_at = [], [], [], []
    window_us = s.window_days * day_us

    def buy(j: int, at: int) -> None:
        pur_email.append(r_email[j])
        pur_phone.append(r_phone[j])
        amount.append(round(float(rng.lognormal(3.4, 0.6)), 2))
        pur_at.append(at)

    for j in range(r.size):
        if converts[j]:
            for _ in range(1 + int(rng.poisson(0.7))):
                buy(j, first[j] + int(rng.integers(0, window_us)))
        if rng.random() < 0.08:  # outside any window: before exposure or long after
            before = rng.random() < 0.5
            offset = int(rng.integers(day_us, 20 * day_us))
            buy(j, first[j] - offset if before else first[j] + window_us + offset)
    return {
        "retailer/exposures": pa.table(
            {
                "email": exp_email,
                "phone": exp_phone,
                "group": exp_group,
                "exposed_at": pa.array(exp_at, pa.int64()).cast(TS),
            },
            schema=SCHEMAS["retailer/exposures"],
        ),
        "retailer/purchases": pa.table(
            {
                "email": pur_email,
                "phone": pur_phone,
                "amount": amount,
                "purchased_at": pa.array(pur_at, pa.int64()).cast(TS),
            },
            schema=SCHEMAS["retailer/purchases"],
        ),
    }
