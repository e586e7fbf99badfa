"""A service's log stays readable, and small, while strangers make it repeat itself.

uvicorn logs one warning per request its concurrency limit refuses; a client
pipelining requests on many connections made a CAS write 1,700 identical lines
a second (red team rt8 finding 4).  :class:`RepeatsThinned` lets each distinct
line through once per window and says, with the next one let through, how
many like it were dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

WINDOW_S = 10.0
"""How long after a line its exact repeats are dropped (then counted)."""
MAX_TRACKED = 1024
"""Distinct recent lines remembered; the oldest is forgotten first."""


class RepeatsThinned(logging.Filter):
    """At most one record per ``window_s`` with the same logger, level and message."""

    def __init__(
        self, window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        # (logger, level, message) -> [time let through, repeats dropped since]
        self._recent: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        key = (record.name, record.levelno, message)
        now = self.clock()
        with self._lock:
            seen = self._recent.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return False
            dropped = int(seen[1]) if seen is not None else 0
            self._recent[key] = [now, 0]
            self._recent.move_to_end(key)
            while len(self._recent) > MAX_TRACKED:
                self._recent.popitem(last=False)
        if dropped:
            record.msg = f"{message} (and {dropped} more like it in the last {self.window_s:g} s)"
            record.args = None
        return True
