"""Keep a long-running service's start-up objects out of the garbage collector's walks.

CPython's full (generation 2) collection walks every object it tracks.  A
started service holds well over 100,000 of them (its modules, FastAPI's and
pydantic's models, SQLAlchemy, cryptography), all alive until the process
ends, so each full collection took 30-75 ms of one core on this project's
benchmark machine, and one or two fell under load: every request of that
process waited.  :func:`freeze_startup_objects` collects once and freezes
what remains (:func:`gc.freeze`), so later collections walk only what
requests made since.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect, then freeze what survives; returns how many objects were frozen.

    Call once, when start-up is done and before serving.  Frozen objects are
    never collected: anything start-up made that later becomes cyclic garbage
    is not reclaimed, which is why the collection comes first.
    """
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d start-up objects out of the garbage collector's walks", frozen)
    return frozen
