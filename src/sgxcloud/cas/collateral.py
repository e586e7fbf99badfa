"""Collateral for DCAP quote verification: from a file, or from a PCCS with a cache.

Collateral (TCB info, QE identity, PCK CRL, root CA CRL, their issuer chains
and signatures) is what dcap-qvl needs besides the quote.  Each piece is signed
by Intel and valid for a window (``issueDate``/``nextUpdate``, CRL
``lastUpdate``/``nextUpdate``).  The verifier refuses collateral outside its
window; the PCCS cache serves a piece only while it is valid and refetches it
at its ``nextUpdate``, so a stale cache can never widen that window.  It also
asks the PCCS again once a piece is ``max_age`` old (a day by default, as
Intel's PCCS refreshes): a newer CRL or TCB info published before the cached
one's ``nextUpdate`` (a PCK certificate revoked mid-cycle) is used within a day,
not up to a month later; if the PCCS cannot answer then, the cached piece,
still valid, keeps serving (red team rt9 F8's sibling: the older collateral
decided while a newer one existed).

The PCCS client speaks the Intel PCS v4 API shape that both Intel's PCS and a
PCCS serve::

    GET {base}/sgx/certification/v4/tcb?fmspc=...     (tdx/... for TDX quotes)
    GET {base}/sgx/certification/v4/qe/identity       (tdx/... for TDX quotes)
    GET {base}/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der
    GET {base}/sgx/certification/v4/rootcacrl          (PCCS; or root_ca_crl_url)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sgxcloud.cas.collateral_check import check_piece
from sgxcloud.cas.errors import CollateralError, EvidenceError
from sgxcloud.cas.pck import PckCheckError, precheck

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 86_400
"""Seconds after which a cached PCCS piece is asked for again, though still valid."""

_CACHE_MAX = 256  # entries per cache; keys are verified platforms, so few in practice


def _trim(cache: dict, limit: int) -> None:
    """Drop the oldest entries (insertion order) beyond ``limit``."""
    while len(cache) > limit:
        del cache[next(iter(cache))]


COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
"""Keys of dcap-qvl's ``QuoteCollateralV3`` JSON form (CRLs and signatures hex)."""


def _qvl() -> Any:
    """dcap-qvl, imported when first needed so policy code never loads it."""
    import dcap_qvl

    return dcap_qvl


@runtime_checkable
class CollateralSource(Protocol):
    """Where the verifier gets collateral for a quote at time ``now``.

    Returns a ``dcap_qvl.QuoteCollateralV3``; raises ``CollateralError`` when
    none can be had.
    """

    def get(self, quote: bytes, now: int) -> Any: ...


@dataclass(frozen=True)
class ValidityWindow:
    """Unix seconds in which a piece of collateral may be used: [not_before, not_after)."""

    not_before: int
    not_after: int

    def contains(self, now: int) -> bool:
        return self.not_before <= now < self.not_after

    def intersect(self, other: ValidityWindow) -> ValidityWindow:
        return ValidityWindow(
            max(self.not_before, other.not_before), min(self.not_after, other.not_after)
        )


def _iso_seconds(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def signed_json_window(text: str, what: str) -> ValidityWindow:
    """Window of a TCB info or QE identity body (``issueDate``/``nextUpdate``)."""
    try:
        body = json.loads(text)
        return ValidityWindow(_iso_seconds(body["issueDate"]), _iso_seconds(body["nextUpdate"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CollateralError(f"{what} has no readable issueDate/nextUpdate") from exc


def crl_window(der: bytes, what: str) -> ValidityWindow:
    """Window of a DER CRL (``thisUpdate``/``nextUpdate``)."""
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError as exc:
        raise CollateralError(f"{what} is not a DER certificate revocation list") from exc
    if crl.next_update_utc is None:
        raise CollateralError(f"{what} has no nextUpdate")
    return ValidityWindow(
        int(crl.last_update_utc.timestamp()), int(crl.next_update_utc.timestamp())
    )


_WINDOW_CACHE: OrderedDict[int, tuple[Any, ValidityWindow]] = OrderedDict()
_WINDOW_LOCK = threading.Lock()


def collateral_window(collateral: Any) -> ValidityWindow:
    """The window in which every piece of ``collateral`` is valid.

    Remembered per collateral object (holding a reference, so ids are not
    reused), since sources hand out the same object while it is valid.
    """
    key = id(collateral)
    with _WINDOW_LOCK:
        hit = _WINDOW_CACHE.get(key)
        if hit is not None and hit[0] is collateral:
            _WINDOW_CACHE.move_to_end(key)
            return hit[1]
    window = (
        signed_json_window(collateral.tcb_info, "TCB info")
        .intersect(signed_json_window(collateral.qe_identity, "QE identity"))
        .intersect(crl_window(bytes(collateral.pck_crl), "PCK CRL"))
        .intersect(crl_window(bytes(collateral.root_ca_crl), "root CA CRL"))
    )
    with _WINDOW_LOCK:
        _WINDOW_CACHE[key] = (collateral, window)
        while len(_WINDOW_CACHE) > 64:
            _WINDOW_CACHE.popitem(last=False)
    return window


@dataclass(frozen=True)
class CollateralFacts:
    """What the verdict cache needs to know about one collateral object.

    ``fingerprint`` is SHA-256 of dcap-qvl's own serialisation of every field
    it verifies with (``to_json``: the nine fields, and a PCK certificate
    chain when the collateral carries one), so equal contents give equal
    fingerprints whatever object holds them.  ``certificate_windows`` names
    the validity of every certificate in the collateral's chains, inclusive
    as X.509 validity is; ``None`` when a chain cannot be read here (then no
    verdict about this collateral is reused).
    """

    fingerprint: bytes
    certificate_windows: tuple[tuple[str, ValidityWindow], ...] | None


_CHAIN_FIELDS = (
    "tcb_info_issuer_chain",
    "qe_identity_issuer_chain",
    "pck_crl_issuer_chain",
    "pck_certificate_chain",
)
_FACTS_CACHE: OrderedDict[int, tuple[Any, CollateralFacts]] = OrderedDict()


def collateral_facts(collateral: Any) -> CollateralFacts:
    """Fingerprint and certificate windows of ``collateral`` (see ``CollateralFacts``).

    Serialising costs about 60 µs, so the facts are remembered per object,
    holding a reference (ids are not reused while it lives): dcap-qvl's
    collateral objects have no setters, so an object's contents never change
    (``tests/cas/test_verdict_cache.py`` holds dcap-qvl to that).
    """
    key = id(collateral)
    with _WINDOW_LOCK:
        hit = _FACTS_CACHE.get(key)
        if hit is not None and hit[0] is collateral:
            _FACTS_CACHE.move_to_end(key)
            return hit[1]
    text = collateral.to_json()
    document = json.loads(text)
    windows: list[tuple[str, ValidityWindow]] | None = []
    for field in _CHAIN_FIELDS:
        pem = document.get(field)
        if pem is None and field == "pck_certificate_chain":
            continue  # optional: the quote's own chain is used (``pck.CheckedQuote``)
        try:
            certificates = x509.load_pem_x509_certificates(str(pem).encode())
        except ValueError:
            windows = None
            break
        for index, certificate in enumerate(certificates):
            windows.append(
                (
                    f"{field}[{index}]",
                    ValidityWindow(
                        int(certificate.not_valid_before_utc.timestamp()),
                        int(certificate.not_valid_after_utc.timestamp()),
                    ),
                )
            )
    facts = CollateralFacts(
        hashlib.sha256(text.encode()).digest(), None if windows is None else tuple(windows)
    )
    with _WINDOW_LOCK:
        _FACTS_CACHE[key] = (collateral, facts)
        while len(_FACTS_CACHE) > 64:
            _FACTS_CACHE.popitem(last=False)
    return facts


def collateral_from_json(text: str, origin: str) -> Any:
    """A ``dcap_qvl.QuoteCollateralV3`` from its JSON form, or one clear error."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise CollateralError(f"{origin}: not JSON") from exc
    if not isinstance(document, dict):
        raise CollateralError(f"{origin}: expected a JSON object of collateral fields")
    missing = [name for name in COLLATERAL_FIELDS if not isinstance(document.get(name), str)]
    if missing:
        raise CollateralError(f"{origin}: missing collateral fields {', '.join(missing)}")
    try:
        collateral = _qvl().QuoteCollateralV3.from_json(text)
    except ValueError as exc:
        raise CollateralError(f"{origin}: not dcap-qvl QuoteCollateralV3 collateral") from exc
    collateral_window(collateral)  # unreadable validity dates fail here, not mid-verify
    return collateral


class FileCollateral:
    """Offline collateral from one JSON file (dcap-qvl ``QuoteCollateralV3`` form).

    The file is read once; the same collateral serves every quote of its
    platform (the verifier still checks FMSPC and validity time).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise CollateralError(f"cannot read collateral file {self.path}: {reason}") from exc
        self._collateral = collateral_from_json(text, str(self.path))

    def get(self, quote: bytes, now: int) -> Any:
        return self._collateral

    def __repr__(self) -> str:
        return f"FileCollateral({str(self.path)!r})"


# ---------------------------------------------------------------------------
# PCCS / Intel PCS v4


def raw_member(body: str, key: str) -> str:
    """Exact source text of top-level member ``key`` of a JSON object.

    Intel signs the bytes of ``tcbInfo``/``enclaveIdentity`` as served;
    re-serialising a parsed copy could change them, so they are cut out as is.
    """
    decoder = json.JSONDecoder()
    index = _skip_ws(body, 0)
    if not body.startswith("{", index):
        raise ValueError("not a JSON object")
    index = _skip_ws(body, index + 1)
    while index < len(body) and body[index] != "}":
        name, index = decoder.raw_decode(body, index)
        index = _skip_ws(body, index)
        if not body.startswith(":", index):
            raise ValueError("expected ':'")
        start = _skip_ws(body, index + 1)
        _, end = decoder.raw_decode(body, start)
        if name == key:
            return body[start:end]
        index = _skip_ws(body, end)
        if body.startswith(",", index):
            index = _skip_ws(body, index + 1)
    raise KeyError(key)


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in " \t\r\n":
        index += 1
    return index


def _crl_der(body: bytes) -> bytes:
    """A CRL as DER from any encoding a PCS/PCCS serves (DER, PEM or hex)."""
    stripped = body.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_crl(stripped).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise CollateralError("PCCS served an unreadable PEM CRL") from exc
    try:
        return bytes.fromhex(stripped.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return bytes(body)


@dataclass(frozen=True)
class _Piece:
    """One cached piece of collateral with its validity window."""

    fields: dict[str, str]
    window: ValidityWindow
    fetched_at: int = 0  # unix seconds of the attestation that fetched it (0: unknown)

    def to_json(self) -> str:
        return json.dumps(
            {
                "fields": self.fields,
                "not_before": self.window.not_before,
                "not_after": self.window.not_after,
                "fetched_at": self.fetched_at,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Piece:
        data = json.loads(text)
        fields, start, end = data["fields"], data["not_before"], data["not_after"]
        if not (
            isinstance(fields, dict)
            and fields
            and all(isinstance(v, str) for v in fields.values())
            and type(start) is int
            and type(end) is int
        ):
            raise ValueError("not a cached collateral piece")
        fetched_at = data.get("fetched_at", 0)  # absent in files of earlier releases
        fetched_at = fetched_at if type(fetched_at) is int else 0
        return cls(dict(fields), ValidityWindow(start, end), fetched_at)


class _FetchesBusy(CollateralError):
    """Every fetch slot is taken: says nothing about the key, so it is not remembered."""


class _Flight:
    """One fetch of one piece in progress; requests for the same piece wait for it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.piece: _Piece | None = None
        self.error: str | None = None


class PccsCollateral:
    """Collateral fetched from a PCCS (or Intel's PCS) and cached by validity.

    ``base_url`` is the server root (``https://pccs.example:8081``); the v4
    paths are added here.  Each piece is cached in memory and in ``cache_dir``
    (so restarts keep it) and served while ``now`` is inside its window; at or
    after its ``nextUpdate`` it is fetched again.  If the server itself only
    has expired collateral, ``CollateralError`` says so.  FMSPC and PCK CA type
    come from the quote's PCK certificate once its chain to Intel's pinned
    root and the quote's signatures have verified (``sgxcloud.cas.pck``):
    nobody can make this source fetch for a platform Intel did not certify.

    Concurrency (red team: collateral DoS): cache hits take no lock that a
    fetch holds; a piece is fetched by one request at a time while the others
    asking for it wait for that result (single flight, at most
    ``wait_seconds``); a failed fetch is remembered for ``failure_ttl``
    seconds, during which that piece fails at once without a request; at most
    ``max_fetches`` fetches run at once and at most ``max_waiting`` requests
    wait for one, beyond that a request fails at once (``CollateralError``).
    So at most ``max_fetches + max_waiting`` threads ever wait on the PCCS:
    keep that below the service's ``attest_concurrency`` (the settings do)
    and attestations with cached collateral, or simulated ones, always find
    a free slot.

    ``http_client`` is an ``httpx.Client`` (e.g. one trusting the PCCS's own
    CA); by default a client with certificate verification and a 10 s timeout.
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: str | os.PathLike,
        http_client: Any = None,
        *,
        root_ca_crl_url: str | None = None,
        failure_ttl: float = 15.0,
        max_fetches: int = 2,
        max_waiting: int = 1,
        wait_seconds: float = 15.0,
        clock: Any = time.monotonic,
        max_age: int = DEFAULT_MAX_AGE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_age = max_age
        self.root_ca_crl_url = root_ca_crl_url or f"{self.base_url}/sgx/certification/v4/rootcacrl"
        self.cache_dir = Path(cache_dir)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CollateralError(f"cannot create collateral cache {self.cache_dir}") from exc
        if http_client is None:
            import httpx

            http_client = httpx.Client(timeout=10.0)
        self._http = http_client
        self.failure_ttl = failure_ttl
        self.wait_seconds = wait_seconds
        self._clock = clock
        self._pieces: dict[str, _Piece] = {}
        # (tee, fmspc, ca) -> (collateral, window, asked again from): see get()
        self._assembled: dict[tuple[str, ...], tuple[Any, ValidityWindow, int]] = {}
        self._flights: dict[str, _Flight] = {}
        self._failures: dict[str, tuple[float, str]] = {}  # piece -> (retry after, message)
        self._fetch_slots = threading.BoundedSemaphore(max_fetches)
        self._max_fetches = max_fetches
        self._max_waiting = max_waiting
        self._waiting = 0
        # Guards the dictionaries above for a few operations at a time; never
        # held across file or network I/O.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PccsCollateral({self.base_url!r})"

    def get(self, quote: bytes, now: int) -> Any:
        tee, fmspc, ca = self._platform_of(quote, now)
        key = (tee, fmspc, ca)
        hit = self._assembled.get(key)
        if hit is not None and hit[1].contains(now) and now < hit[2]:
            return hit[0]
        fetchers = {
            f"tcb-{tee}-{fmspc}": lambda: self._fetch_tcb(tee, fmspc),
            f"qe-{tee}": lambda: self._fetch_qe(tee),
            f"pckcrl-{ca}": lambda: self._fetch_pck_crl(ca),
            "rootcacrl": self._fetch_root_crl,
        }
        pieces = [self._piece(name, now, fetch) for name, fetch in fetchers.items()]
        fields: dict[str, str] = {}
        window = ValidityWindow(0, 2**63)
        # Reassembled when its oldest piece is due to be asked again; while the
        # PCCS cannot refresh it (a still-valid old piece serves), once a minute.
        refresh = min(piece.fetched_at for piece in pieces) + self.max_age
        refresh = refresh if refresh > now else now + 60
        for piece in pieces:
            fields.update(piece.fields)
            window = window.intersect(piece.window)
        try:
            collateral = collateral_from_json(json.dumps(fields), f"PCCS {self.base_url}")
        except CollateralError:
            # Each piece passed its checks, yet dcap-qvl cannot read them
            # together: keep none of them (they are fetched again after
            # failure_ttl) rather than refuse this platform until they expire.
            self._forget(fetchers, "the PCCS's collateral cannot be read together")
            raise
        with self._lock:
            self._assembled[key] = (collateral, window, refresh)
            _trim(self._assembled, _CACHE_MAX)
        return collateral

    # -- cache ------------------------------------------------------------

    def _young(self, piece: _Piece, now: int) -> bool:
        """Whether ``piece`` was fetched less than ``max_age`` ago (not asked again yet)."""
        return now - piece.fetched_at < self.max_age

    def _piece(self, name: str, now: int, fetch: Any) -> _Piece:
        piece = self._pieces.get(name)
        if piece is not None and piece.window.contains(now) and self._young(piece, now):
            return piece
        try:
            return self._refreshed(name, now, fetch)
        except CollateralError as exc:
            # A piece due to be asked again, but still valid (in memory, or read
            # from disk by the failed refresh), serves while the PCCS cannot answer.
            old = self._pieces.get(name)
            if old is None or not old.window.contains(now):
                raise
            log.warning("%s; the cached %s, valid until its nextUpdate, still serves", exc, name)
            return old

    def _refreshed(self, name: str, now: int, fetch: Any) -> _Piece:
        with self._lock:
            failed = self._failures.get(name)
            if failed is not None and self._clock() < failed[0]:
                raise CollateralError(failed[1])
            self._failures.pop(name, None)
            flight = self._flights.get(name)
            leader = flight is None
            if flight is None:
                flight = self._flights[name] = _Flight()
            elif self._waiting >= self._max_waiting:
                raise _FetchesBusy(
                    f"{name} collateral is being fetched from PCCS {self.base_url}; try again"
                )
            else:
                self._waiting += 1
        if not leader:
            try:
                finished = flight.done.wait(self.wait_seconds)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not finished:
                raise CollateralError(
                    f"{name} collateral is still being fetched from PCCS {self.base_url}"
                )
            if flight.piece is not None and flight.piece.window.contains(now):
                return flight.piece
            raise CollateralError(flight.error or f"PCCS {self.base_url} has no usable {name}")
        try:
            piece = self._load_or_fetch(name, now, fetch)
            flight.piece = piece
            return piece
        except CollateralError as exc:
            flight.error = str(exc)
            if not isinstance(exc, _FetchesBusy) and self.failure_ttl > 0:
                with self._lock:  # one bad key costs one fetch per failure_ttl, not one a request
                    self._failures[name] = (self._clock() + self.failure_ttl, str(exc))
                    _trim(self._failures, _CACHE_MAX)
            raise
        except BaseException:
            flight.error = f"fetching {name} collateral from PCCS {self.base_url} failed"
            raise
        finally:
            with self._lock:
                self._flights.pop(name, None)
            flight.done.set()

    def _load_or_fetch(self, name: str, now: int, fetch: Any) -> _Piece:
        piece = self._load_cached(name)
        if piece is None or not piece.window.contains(now) or not self._young(piece, now):
            if piece is not None and piece.window.contains(now) and name not in self._pieces:
                with self._lock:  # valid on disk, only due to be asked again: a fallback
                    self._pieces[name] = piece
                    _trim(self._pieces, _CACHE_MAX)
            if not self._fetch_slots.acquire(blocking=False):
                raise _FetchesBusy(
                    f"PCCS {self.base_url}: {self._max_fetches} collateral fetches already "
                    "in flight; try again"
                )
            try:
                piece = dataclasses.replace(fetch(), fetched_at=now)
            finally:
                self._fetch_slots.release()
            # Before it is kept (memory and disk, until the date it states):
            # an unchecked answer once blocked a platform type until 2099.
            check_piece(name, piece.fields, f"PCCS {self.base_url} {name}")
            if now >= piece.window.not_after:
                raise CollateralError(
                    f"PCCS {self.base_url} serves {name} collateral that expired at "
                    f"{datetime.fromtimestamp(piece.window.not_after, UTC):%Y-%m-%dT%H:%M:%SZ}"
                )
            if now < piece.window.not_before:
                # Not kept, and (as a failure) not fetched again for failure_ttl:
                # a host clock behind the PCS's otherwise refetched per attestation.
                raise CollateralError(
                    f"PCCS {self.base_url} serves {name} collateral valid only from "
                    f"{datetime.fromtimestamp(piece.window.not_before, UTC):%Y-%m-%dT%H:%M:%SZ}"
                    "; check this host's clock"
                )
            self._store_cached(name, piece)
        with self._lock:
            self._pieces[name] = piece
            _trim(self._pieces, _CACHE_MAX)
        return piece

    def _forget(self, names: Any, reason: str) -> None:
        """Drop pieces from memory and disk; fetch them again only after ``failure_ttl``."""
        with self._lock:
            for name in names:
                self._pieces.pop(name, None)
                self._failures[name] = (self._clock() + self.failure_ttl, reason)
        for name in names:
            with contextlib.suppress(OSError):
                self._cache_path(name).unlink()

    def _cache_path(self, name: str) -> Path:
        return self.cache_dir / f"{name}.json"

    def _load_cached(self, name: str) -> _Piece | None:
        try:
            piece = _Piece.from_json(self._cache_path(name).read_text(encoding="utf-8"))
            # Checked again: the file may predate the check, or have been altered.
            check_piece(name, piece.fields, f"cached {name}")
        except CollateralError as exc:
            log.warning("%s; fetching it again", exc)
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent or damaged cache entry: fetch afresh
        return piece

    def _store_cached(self, name: str, piece: _Piece) -> None:
        path = self._cache_path(name)
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower
            fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{name}.")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(piece.to_json())
            os.replace(tmp, path)

    # -- fetching -----------------------------------------------------------

    @staticmethod
    def _platform_of(quote: bytes, now: int) -> tuple[str, str, str]:
        """TEE, FMSPC and CA of a quote whose PCK chain and signatures verify.

        The verifier has already checked (this is a cache hit then); callers
        that use the source directly get the same protection.
        """
        try:
            platform = precheck(quote, now)
        except (PckCheckError, EvidenceError) as exc:
            raise CollateralError(
                "cannot tell which platform the quote comes from: its PCK certificate chain "
                "or signatures do not verify"
            ) from exc
        return platform.tee, platform.fmspc, platform.ca

    def _get(self, url: str, params: dict[str, str] | None = None) -> Any:
        import httpx

        try:
            response = self._http.get(url, params=params)
        except httpx.HTTPError as exc:
            raise CollateralError(f"PCCS unreachable at {url}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise CollateralError(f"PCCS answered {response.status_code} for {url}")
        return response

    @staticmethod
    def _header(response: Any, *names: str) -> str:
        for name in names:
            value = response.headers.get(name)
            if value:
                return unquote(value)
        raise CollateralError(f"PCCS response for {response.url} lacks the {names[0]} header")

    def _signed_json(
        self,
        url: str,
        params: dict[str, str] | None,
        member: str,
        chain_headers: tuple[str, ...],
        prefix: str,
        what: str,
    ) -> _Piece:
        response = self._get(url, params)
        body = response.text
        try:
            inner = raw_member(body, member)
            signature = json.loads(body)["signature"]
            bytes.fromhex(signature)
        except (ValueError, KeyError, TypeError) as exc:
            raise CollateralError(f"PCCS {what} at {url} is not signed {member} JSON") from exc
        fields = {
            prefix: inner,
            f"{prefix}_signature": signature,
            f"{prefix}_issuer_chain": self._header(response, *chain_headers),
        }
        return _Piece(fields, signed_json_window(inner, what))

    def _fetch_tcb(self, tee: str, fmspc: str) -> _Piece:
        return self._signed_json(
            f"{self.base_url}/{tee}/certification/v4/tcb",
            {"fmspc": fmspc},
            "tcbInfo",
            ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"),
            "tcb_info",
            "TCB info",
        )

    def _fetch_qe(self, tee: str) -> _Piece:
        return self._signed_json(
            f"{self.base_url}/{tee}/certification/v4/qe/identity",
            None,
            "enclaveIdentity",
            ("SGX-Enclave-Identity-Issuer-Chain",),
            "qe_identity",
            "QE identity",
        )

    def _fetch_pck_crl(self, ca: str) -> _Piece:
        url = f"{self.base_url}/sgx/certification/v4/pckcrl"
        response = self._get(url, {"ca": ca, "encoding": "der"})
        der = _crl_der(response.content)
        return _Piece(
            {
                "pck_crl": der.hex(),
                "pck_crl_issuer_chain": self._header(response, "SGX-PCK-CRL-Issuer-Chain"),
            },
            crl_window(der, "PCK CRL"),
        )

    def _fetch_root_crl(self) -> _Piece:
        der = _crl_der(self._get(self.root_ca_crl_url).content)
        return _Piece({"root_ca_crl": der.hex()}, crl_window(der, "root CA CRL"))
