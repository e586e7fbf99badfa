"""The end-to-end demonstration behind ``sgxcloud demo``.

Each layer contributes one section (``run(console, workdir, ...) -> dict``):
the Nova cloud and its EPC usage, the attestation service, the clean room.
Sections that need the in-process cloud run while it is up.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

SECTIONS = ("nova", "usage", "cas", "cleanroom")


def run_demo(
    console: Console, workdir: Path, sections: Iterable[str] = SECTIONS, people: int | None = None
) -> dict[str, Any]:
    """Run the chosen sections in order; returns each section's summary."""
    sections = [s for s in SECTIONS if s in set(sections)]
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    timings: dict[str, float] = {}
    if {"nova", "usage"} & set(sections):
        _import_http_stack_before_eventlet()
        with _quiet_nova_imports():
            from sgxcloud.nova.testing.cloud import InProcessCloud
        # The Nova section plays a week on a simulated clock; services must
        # not look dead after its jumps (the scheduler reads this at start).
        with InProcessCloud(service_down_time=10 * 365 * 24 * 3600) as cloud:
            if "nova" in sections:
                summary["nova"] = _timed(timings, "nova", _nova, console, workdir, cloud)
            if "usage" in sections:
                summary["usage"] = _timed(timings, "usage", _usage, console, workdir, cloud)
        _plain_logging()
    if "cas" in sections:
        from sgxcloud.demo import cas

        summary["cas"] = _timed(timings, "cas", cas.run, console, workdir)
    if "cleanroom" in sections:
        from sgxcloud.demo import cleanroom

        kwargs = {"people": people} if people else {}
        summary["cleanroom"] = _timed(
            timings, "cleanroom", cleanroom.run, console, workdir, **kwargs
        )
    summary["seconds"] = timings
    return summary


def _nova(console: Console, workdir: Path, cloud: Any) -> dict[str, Any]:
    from sgxcloud.demo import nova

    return nova.run(console, workdir, cloud)


def _usage(console: Console, workdir: Path, cloud: Any) -> dict[str, Any]:
    from sgxcloud.demo import usage

    return usage.run(console, workdir, cloud)


def _timed(timings: dict[str, float], name: str, function, *args, **kwargs):
    started = time.monotonic()
    try:
        return function(*args, **kwargs)
    finally:
        timings[name] = round(time.monotonic() - started, 1)


def _plain_logging() -> None:
    """Nova's harness leaves oslo.log's DEBUG handlers behind; the rest of the
    demo speaks through its screens, with warnings (SIMULATED!) still shown."""
    logging.basicConfig(
        level=logging.WARNING, force=True, format="%(levelname)s %(name)s: %(message)s"
    )


def _import_http_stack_before_eventlet() -> None:
    """Import httpx's transport now, before Nova's harness monkey-patches.

    httpcore imports trio whenever it is installed (selenium brings it), and
    trio cannot be imported once eventlet has replaced ``socket.socket``
    (``GreenSocket`` has no ``sendmsg``); the CAS and clean-room sections
    that follow the cloud talk HTTPS through httpx.
    """
    with contextlib.suppress(ImportError):
        import httpcore  # noqa: F401


@contextlib.contextmanager
def _quiet_nova_imports():
    """Nova's harness warns about eventlet on import; not news to a demo viewer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(io.StringIO()):
            yield
