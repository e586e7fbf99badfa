"""A web console for one party of a clean room, run next to that party's key.

``sgxcloud cleanroom console`` serves it on 127.0.0.1: the definition and
who approved it, ingestion, a query builder limited to what the definition
allows the party, results with charts, verification and export, the privacy
budget and the audit log with its hash chain checked.  It is a client: it
reaches the coordinator only through :mod:`sgxcloud.cleanroom.sdk`, signs
with the key it holds, and never hands the key to the browser.

Modules: :mod:`.session` (the key and the SDK session), :mod:`.builder` (what
the party may ask, form → query), :mod:`.charts` (SVG), :mod:`.views` and
:mod:`.exports` (shaping released data), :mod:`.security` (token, cookie,
CSRF, Host check, headers), :mod:`.app` (pages), :mod:`.server` (loopback).
"""

from sgxcloud.cleanroom.console.security import Guard
from sgxcloud.cleanroom.console.session import CoordinatorUnavailable, PartySession

__all__ = ["CoordinatorUnavailable", "Guard", "PartySession"]
