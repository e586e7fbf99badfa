"""Fixtures for every pytest test."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# The loggers a process's main configures: `cas serve` (sgxcloud.cas.service.server
# .log_config) and uvicorn's own start-up.
_PROCESS_LOGGERS = ("sgxcloud", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _process_logging_put_back() -> Iterator[None]:
    """Tests that run ``sgxcloud cas serve`` in this process (the CLI's refusals)
    configure logging as that command's process should: handlers on the service's
    loggers, bound to the stderr of that moment, not propagating.  Put back after
    each test, or later tests would log into a closed capture stream and their
    ``caplog`` would see nothing of sgxcloud's loggers."""
    loggers = [logging.getLogger(name) for name in _PROCESS_LOGGERS]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
        lg.disabled = disabled
