"""Exact repeats of a log line are thinned out, then counted (red team rt8 finding 4)."""

from __future__ import annotations

import io
import logging
import logging.config

from sgxcloud.cas.service.server import log_config
from sgxcloud.web.logs import RepeatsThinned


def _record(
    message: str, *args: object, name: str = "uvicorn.error", level: int = logging.WARNING
) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_a_repeated_line_passes_once_per_window_then_says_how_many_were_dropped() -> None:
    now = [100.0]
    thinned = RepeatsThinned(window_s=10, clock=lambda: now[0])
    passed = [
        r
        for r in (_record("Exceeded concurrency limit.") for _ in range(1000))
        if thinned.filter(r)
    ]
    assert len(passed) == 1 and passed[0].getMessage() == "Exceeded concurrency limit."
    now[0] += 10
    again = _record("Exceeded concurrency limit.")
    assert thinned.filter(again)
    assert again.getMessage() == (
        "Exceeded concurrency limit. (and 999 more like it in the last 10 s)"
    )
    now[0] += 10
    quiet = _record("Exceeded concurrency limit.")
    assert thinned.filter(quiet) and "more like it" not in quiet.getMessage()


def test_different_lines_loggers_and_levels_are_not_thinned() -> None:
    thinned = RepeatsThinned(window_s=10, clock=lambda: 0.0)
    records = [
        _record("attestation accepted for %s (ref %s)", "shop/web", ref) for ref in ("a", "b", "c")
    ]
    records += [
        _record("same", name="sgxcloud.cas"),
        _record("same", name="uvicorn.error"),
        _record("same", level=logging.ERROR),
    ]
    assert all(thinned.filter(r) for r in records)


def test_cas_serve_logging_thins_repeats() -> None:
    logging.config.dictConfig(log_config("info"))  # tests/conftest.py puts the loggers back
    handler = logging.getLogger("uvicorn").handlers[0]
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    for _ in range(500):
        logging.getLogger("uvicorn.error").warning("Exceeded concurrency limit.")
    assert stream.getvalue().count("Exceeded concurrency limit.") == 1
