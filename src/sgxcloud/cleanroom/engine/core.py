"""Engine facade (interface published first; implementation follows)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sgxcloud.cleanroom.definition import Definition
from sgxcloud.cleanroom.engine.query import Query
from sgxcloud.cleanroom.results import Result


@dataclass(frozen=True)
class IngestReport:
    dataset: str
    rows: int
    batches: int
    replaced_rows: int = 0
    problems: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rows": self.rows, "batches": self.batches,
                "replaced_rows": self.replaced_rows}


@dataclass(frozen=True)
class BudgetStatus:
    analyst: str
    total: float
    spent: float

    @property
    def remaining(self) -> float:
        return max(0.0, self.total - self.spent)


class Engine:
    def __init__(self, definition: Definition, workdir: str | Path, *,
                 signing_key: Ed25519PrivateKey | None = None, memory_limit: str = "512MB",
                 threads: int = 2) -> None:
        raise NotImplementedError

    def ingest(self, provider: str, dataset: str,
               data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch]) -> IngestReport:
        raise NotImplementedError

    def run(self, query: Query | dict[str, Any], analyst: str) -> Result:
        raise NotImplementedError
