"""What the CAS cost tests measure: CPU of a call, and whether a transaction is open."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sgxcloud.cas.service import core


def cpu_of(work: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds of the cheaper of two tries (the machine is shared) and the result."""
    best, result = float("inf"), None
    for _ in range(2):
        started = time.process_time()
        result = work()
        best = min(best, time.process_time() - started)
    return best, result


def track_transactions(monkeypatch: pytest.MonkeyPatch) -> Callable[[], bool]:
    """Wrap the service's ``Database.transaction``; returns ``inside()``: whether
    this thread is in one now."""
    state = threading.local()
    real_transaction = core.Database.transaction

    def transaction(self):  # type: ignore[no-untyped-def]
        manager = real_transaction(self)

        class Tracked:
            def __enter__(self_inner):  # type: ignore[no-untyped-def]
                repo = manager.__enter__()
                state.depth = getattr(state, "depth", 0) + 1
                return repo

            def __exit__(self_inner, *exc):  # type: ignore[no-untyped-def]
                state.depth -= 1
                return manager.__exit__(*exc)

        return Tracked()

    monkeypatch.setattr(core.Database, "transaction", transaction)
    return lambda: getattr(state, "depth", 0) > 0
