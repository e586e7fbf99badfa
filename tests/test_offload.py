"""OffloadThreads runs blocking calls as the executor it replaces did, for less CPU.

Real threads and real event loops (asyncio's and uvloop's, the CAS's
default): results and exceptions reach the awaiting coroutine, no more calls
run at once than there are threads, a cancelled or orphaned call (its loop
closed) neither kills a thread nor is lost for the next caller.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import uvloop

from sgxcloud.web.offload import OffloadThreads

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=sorted(LOOPS))
def run(request):  # type: ignore[no-untyped-def]
    return LOOPS[request.param]


@pytest.fixture
def threads():  # type: ignore[no-untyped-def]
    threads = OffloadThreads(2, "test-offload")
    yield threads
    threads.close()


def test_results_and_exceptions_reach_the_caller(run, threads: OffloadThreads) -> None:  # type: ignore[no-untyped-def]
    def where(n: int) -> tuple[int, str]:
        return n * 2, threading.current_thread().name

    async def main() -> None:
        doubled, name = await threads.call(where, 21)
        assert doubled == 42 and name.startswith("test-offload_")
        with pytest.raises(KeyError, match="missing"):
            await threads.call({}.__getitem__, "missing")
        with pytest.raises(KeyboardInterrupt):  # BaseException too, as an executor forwards it
            await threads.call(_interrupt)

    run(main())


def _interrupt() -> None:
    raise KeyboardInterrupt


def test_no_more_calls_run_at_once_than_there_are_threads(run, threads: OffloadThreads) -> None:  # type: ignore[no-untyped-def]
    inside, most = 0, 0
    count = threading.Lock()

    def busy(n: int) -> int:
        nonlocal inside, most
        with count:
            inside += 1
            most = max(most, inside)
        time.sleep(0.02)
        with count:
            inside -= 1
        return n

    async def main() -> list[int]:
        return await asyncio.gather(*(threads.call(busy, n) for n in range(10)))

    assert run(main()) == list(range(10))
    assert most == 2
    assert sum(t.name.startswith("test-offload_") for t in threading.enumerate()) == 2


def test_a_cancelled_call_runs_to_its_end_and_the_threads_go_on(  # type: ignore[no-untyped-def]
    run, threads: OffloadThreads
) -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.1)
        finished.set()
        return "late"

    async def main() -> str:
        task = asyncio.ensure_future(threads.call(slow))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.wait(5)
        return await threads.call(str.upper, "next")

    assert run(main()) == "NEXT"


def test_a_call_whose_loop_closed_does_not_lose_its_thread(threads: OffloadThreads) -> None:
    started = threading.Event()

    def slow() -> None:
        started.set()
        time.sleep(0.2)

    async def abandon() -> None:
        task = asyncio.ensure_future(threads.call(slow))
        await asyncio.sleep(0)
        assert started.wait(5) and not task.done()

    for _ in range(2):  # both threads busy with calls whose loops are gone
        started.clear()
        asyncio.run(abandon())
    time.sleep(0.4)  # the calls end on closed loops
    alive = [t for t in threading.enumerate() if t.name.startswith("test-offload_")]
    assert len(alive) == 2  # neither thread died of the closed loop
    assert asyncio.run(asyncio.wait_for(threads.call(len, "ok"), 5)) == 2


def test_at_least_one_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OffloadThreads(0, "none")
