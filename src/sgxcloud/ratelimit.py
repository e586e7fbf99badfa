"""A per-key budget of recorded refusals: a token bucket that counts what it refuses.

Up to ``burst`` refusals about one key are recorded one by one, then ``per_second``;
past it a refusal is not recorded, only counted, and the count goes into the next
recorded entry about that key (``unrecorded``), so the log says how many it left out.
The CAS keeps rejected attestations so (``cas.service.core._Rejections``: one budget
per live policy name, one shared by all names no policy has, red team rt10 F2), and
the clean room's coordinator refused queries, one budget per party (red team cr8 F3).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

KEYS_KEPT = 4096
"""Keys whose budget is kept (least recently used go; a key dropped starts again full)."""


class RecordBudget:
    """Per key, a token bucket of refusals recorded one by one (thread safe)."""

    def __init__(
        self,
        burst: int,
        per_second: float,
        *,
        keys_kept: int = KEYS_KEPT,
        on_first_unrecorded: Callable[[str], None] | None = None,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self.keys_kept = keys_kept
        self._on_first_unrecorded = on_first_unrecorded
        self._lock = threading.Lock()
        # key -> (tokens, at (monotonic), refused since the last recorded one)
        self._keys: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def take(self, key: str) -> int | None:
        """Record one more refusal about ``key``: the number left unrecorded since the
        last recorded one (the entry says it), or None if the budget is spent (counted)."""
        at = time.monotonic()
        with self._lock:
            tokens, then, refused = self._keys.pop(key, (float(self.burst), at, 0))
            tokens = min(float(self.burst), tokens + (at - then) * self.per_second)
            if tokens < 1:
                self._keys[key] = (tokens, at, refused + 1)
                first = refused == 0
                result = None
            else:
                self._keys[key] = (tokens - 1, at, 0)
                first = False
                result = refused
            while len(self._keys) > self.keys_kept:
                self._keys.popitem(last=False)
        if first and self._on_first_unrecorded is not None:
            self._on_first_unrecorded(key)
        return result

    def drain(self, key: str) -> int:
        """The number left unrecorded about ``key`` since its last recorded entry, now
        reset, without taking from its budget: for an entry written whatever the
        budget says (one that must always be recorded) to carry the count."""
        with self._lock:
            state = self._keys.get(key)
            if state is None or not state[2]:
                return 0
            self._keys[key] = (state[0], state[1], 0)
            return state[2]

    def pending(self) -> dict[str, int]:
        """Every key with refusals left unrecorded since its last recorded entry."""
        with self._lock:
            return {key: refused for key, (_t, _a, refused) in self._keys.items() if refused}
