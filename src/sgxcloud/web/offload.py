"""Blocking calls from the event loop, on threads of their own, with the least hand-off.

A handler that must block (the CAS's attestation: database, quote
verification) runs on a thread, and the event loop awaits the result.
``loop.run_in_executor`` with a ``ThreadPoolExecutor`` does that through a
``concurrent.futures.Future`` (a ``Condition`` and its lock per call), the
executor's idle semaphore (another ``Condition``, taken on every submit and
released after every call) and ``wrap_future``'s two chained futures: about
half of the CPU of the hand-off, paid twice per call across threads that
hold the GIL.  :class:`OffloadThreads` does the same job with one queue put
and one ``call_soon_threadsafe``: the loop's own future is resolved from the
thread, nothing else is made per call.

What it keeps of the executor: a fixed number of threads, so at most that
many calls run at once and the others wait in the queue (never on a lock in
a thread); exceptions, ``BaseException`` too, reach the awaiting coroutine;
a call whose awaiting task was cancelled still runs to its end (a thread
cannot be interrupted) and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple]


class OffloadThreads:
    """``threads`` threads named ``name_N`` running blocking calls for event loops.

    The threads start with the first call and are daemons: they hold no
    state, and the server awaits every call in flight before it returns
    (uvicorn's graceful shutdown), so nothing is cut off at exit that a
    ``ThreadPoolExecutor`` would have finished.
    """

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.threads = threads
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._started: list[threading.Thread] = []
        self._lock = threading.Lock()

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on one of the threads; its result or exception."""
        if len(self._started) < self.threads:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, function, args))
        return await future

    def close(self) -> None:
        """Stop the threads once the calls queued before have run (for tests and embedders)."""
        with self._lock:
            for _ in self._started:
                self._jobs.put(None)
            self._started, stopped = [], self._started
        for thread in stopped:
            thread.join()

    def _start(self) -> None:
        with self._lock:
            while len(self._started) < self.threads:
                thread = threading.Thread(
                    target=self._work, daemon=True, name=f"{self.name}_{len(self._started)}"
                )
                thread.start()
                self._started.append(thread)

    def _work(self) -> None:
        take = self._jobs.get
        while (job := take()) is not None:
            _run(*job)
            job = None  # hold nothing of a finished call while waiting for the next


def _run(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future,
    function: Callable[..., Any],
    args: tuple,
) -> None:
    try:
        result = function(*args)
    except BaseException as exc:  # as an executor does: the awaiting caller decides
        _hand_back(loop, _fail, future, exc)
    else:
        _hand_back(loop, _resolve, future, result)


def _hand_back(
    loop: asyncio.AbstractEventLoop, settle: Callable[..., None], future: asyncio.Future, value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody awaits it
        loop.call_soon_threadsafe(settle, future, value)


def _resolve(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # cancelled while the call ran
        future.set_result(result)


def _fail(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
