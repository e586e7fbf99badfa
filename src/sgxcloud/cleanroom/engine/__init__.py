"""The analysis engine: DuckDB in-process over Arrow, with privacy controls.

Runs inside the coordinator enclave.  Public surface: :class:`Engine`, the
query types and their parsers.
"""

from sgxcloud.cleanroom.engine.core import BudgetStatus, Engine, IngestReport
from sgxcloud.cleanroom.engine.query import And as FilterAnd
from sgxcloud.cleanroom.engine.query import (
    AudienceSizeQuery,
    CampaignLiftQuery,
    Comparison,
    Filter,
    OverlapQuery,
    Query,
    canonical_query,
    check_query,
    parse_filter,
    parse_filter_text,
    parse_query,
    query_key,
)
from sgxcloud.cleanroom.engine.query import Not as FilterNot
from sgxcloud.cleanroom.engine.query import Or as FilterOr

__all__ = [
    "AudienceSizeQuery",
    "BudgetStatus",
    "CampaignLiftQuery",
    "Comparison",
    "Engine",
    "Filter",
    "FilterAnd",
    "FilterNot",
    "FilterOr",
    "IngestReport",
    "OverlapQuery",
    "Query",
    "canonical_query",
    "check_query",
    "parse_filter",
    "parse_filter_text",
    "parse_query",
    "query_key",
]
