"""Start-up objects are frozen out of the garbage collector's walks (sgxcloud.web.heap)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from sgxcloud.cas.service.server import _StopsService
from sgxcloud.web.heap import freeze_startup_objects


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _full_collection_seconds() -> float:
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


def test_a_full_collection_no_longer_walks_what_start_up_made() -> None:
    kept = [[i] for i in range(200_000)]  # a started service's long-lived objects
    before = min(_full_collection_seconds() for _ in range(3))
    frozen = freeze_startup_objects()
    assert frozen >= len(kept) and gc.get_freeze_count() == frozen
    after = min(_full_collection_seconds() for _ in range(3))
    assert after < before / 3, (before, after)


def test_garbage_made_after_start_up_is_still_collected() -> None:
    freeze_startup_objects()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


def test_cyclic_garbage_of_start_up_is_collected_before_freezing() -> None:
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    del cycle  # unreachable, but only the collector can free it
    freeze_startup_objects()
    assert gone() is None


class _Gate:
    def start_balancing(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def drain(self, timeout_s: float) -> None:
        pass


class _Service:
    def stop(self) -> None:
        pass


def test_a_worker_freezes_once_started() -> None:
    async def lifespan() -> list[dict[str, Any]]:
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
        sent: list[dict[str, Any]] = []
        frozen_at_startup: list[int] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                frozen_at_startup.append(gc.get_freeze_count())
            sent.append(message)

        app = _StopsService(lambda *_: None, _Service(), _Gate())  # type: ignore[arg-type]
        await app({"type": "lifespan"}, receive, send)
        assert frozen_at_startup and frozen_at_startup[0] > 0
        return sent

    sent = asyncio.run(lifespan())
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
