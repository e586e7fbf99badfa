"""Settings of the CAS service: a YAML file, overridden by the environment.

Every setting can come from the file (``database_url: ...``) or from
``SGXCLOUD_CAS_<NAME>`` (``SGXCLOUD_CAS_DATABASE_URL=...``); the environment
wins.  Everything is validated at start-up, so a typo stops the service with
one line naming the setting instead of failing on the first request.

The master key itself is never a setting: the file names where it is
(``master_key_file``), or the operator puts it in ``SGXCLOUD_CAS_MASTER_KEY``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from sgxcloud.cas import secrets
from sgxcloud.cas.errors import ConfigError as ConfigError

if TYPE_CHECKING:
    from sgxcloud.web.limits import RequestLimits

ENV_PREFIX = "SGXCLOUD_CAS_"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - compared with, not bound
PRINCIPAL_ID_PATTERN = r"^(key|cert):sha256:[0-9a-f]{64}$"


class Settings(BaseModel):
    """Validated service settings (see docs/cas/operator-guide.md for each one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8443, ge=1, le=65535)
    # Prometheus metrics over plain HTTP on a listener of their own, never the
    # API's port; off unless metrics_port is set (0: any free port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(None, ge=0, le=65535)
    database_url: str = "sqlite:///cas.db"
    master_key_file: Path | None = None
    retired_master_key_files: tuple[Path, ...] = ()
    # Ed25519 key signing every answer to a signed owner request (made by
    # 'cas init' beside the master key; replicas share it; owners pin its
    # public key).  Unset: answers are unsigned (owners who pin refuse them).
    answer_signing_key_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    owner_ca_file: Path | None = None
    # CRLs (PEM or DER) of the owner CA: a revoked owner certificate
    # authenticates no one; an out-of-date CRL stops certificate owners.
    owner_crl_files: tuple[Path, ...] = ()
    # The origins owners reach the service at (https://cas.example:8443);
    # owners' signatures are bound to one of them.  Unset: derived from
    # host and port (see audiences()).
    public_urls: tuple[str, ...] = ()
    collateral: Literal["pccs", "file", "none"] = "none"
    pccs_url: str | None = None
    # The PCCS's TLS CA (a private PCCS); unset: the system trust store.
    pccs_ca_file: Path | None = None
    # Where Intel's root CA CRL comes from; unset: the PCCS's v4 rootcacrl path.
    pccs_root_ca_crl_url: str | None = None
    pccs_timeout_seconds: float = Field(10.0, gt=0, le=120)
    collateral_cache_dir: Path = Path("collateral-cache")
    collateral_file: Path | None = None
    nonce_ttl_seconds: int = Field(120, ge=5, le=3600)
    # Attestations worked on at once (the rest queue): see core.ATTEST_CONCURRENCY.
    # Per worker process, as are max_connections and the database pool.
    attest_concurrency: int = Field(4, ge=1, le=64)
    # Rejected attestations naming one policy recorded one by one, per worker
    # process: this many at once, then rejections_per_second (see
    # core.REJECTIONS_BURST); past it, what can only be rejected gets 429.
    rejections_burst: int = Field(100, ge=1, le=1_000_000)
    rejections_per_second: float = Field(1.0, gt=0, le=10_000)
    # Worker processes of one 'cas serve', sharing its listening socket: one
    # Python process uses about one core (the GIL), so up to the number of
    # cores (see docs/cas/operator-guide.md, "Workers").
    workers: int = Field(1, ge=1, le=64)
    request_max_skew_seconds: int = Field(300, ge=10, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Request limits, enforced before a request is parsed or authenticated
    # (sgxcloud.web.limits): an unsigned caller can make the service hold no more.
    # Evidence is at most 64 KiB of base64 (schemas.MAX_EVIDENCE_CHARS); up to
    # 2 MiB (the old default) still loads, but buys nothing.
    max_attest_body_bytes: int = Field(96 << 10, ge=16 << 10, le=2 << 20)
    max_policy_body_bytes: int = Field(2 << 20, ge=64 << 10, le=64 << 20)
    # The largest policy text (UTF-8 bytes) applied, checked before it is parsed;
    # stored ones above it still load (document.MAX_POLICY_BYTES is the ceiling).
    max_policy_bytes: int = Field(256 << 10, ge=4 << 10, le=1 << 20)
    max_body_bytes: int = Field(16 << 10, ge=0, le=1 << 20)
    max_header_bytes: int = Field(16 << 10, ge=4 << 10, le=1 << 20)
    # Connections held at once, counted from accept (TLS handshakes too), and
    # by one client address (IPv6: /64); 0 turns the per-client limit off
    # (behind a proxy or load balancer that hides client addresses).
    max_connections: int = Field(256, ge=1, le=100_000)
    max_connections_per_client: int = Field(64, ge=0, le=100_000)
    header_timeout_seconds: float = Field(10.0, gt=0, le=300)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    keep_alive_seconds: int = Field(5, ge=1, le=300)
    # A client that leaves its answers unread this long loses the connection.
    response_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    # Principal ids (key:sha256:<hex> / cert:sha256:<hex>) allowed to create
    # policies; unset: any authenticated caller may.
    policy_creators: (
        tuple[Annotated[str, StringConstraints(pattern=PRINCIPAL_ID_PATTERN)], ...] | None
    ) = None

    @field_validator("public_urls")
    @classmethod
    def _origins(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        from sgxcloud.cas.service.auth import origin_of

        for url in urls:
            origin_of(url)  # ValueError names the bad URL
        return urls

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.collateral == "pccs" and not self.pccs_url:
            raise ValueError("collateral 'pccs' needs pccs_url")
        if self.collateral == "file" and self.collateral_file is None:
            raise ValueError("collateral 'file' needs collateral_file")
        return self

    def audiences(self) -> tuple[str, ...]:
        """The origins owners' signatures may name (``public_urls``, or host and port).

        Without ``public_urls``: ``https://<host>:<port>``, plus the loopback
        names for a loopback host, plus this machine's names for a wildcard
        host.  Behind a proxy or under another DNS name, set ``public_urls``.
        """
        from sgxcloud.cas.service.auth import origin_of

        if self.public_urls:
            return tuple(dict.fromkeys(origin_of(u) for u in self.public_urls))
        wildcard = self.host in _WILDCARD_HOSTS
        hosts = [] if wildcard else [self.host]
        if wildcard or self.host in {"127.0.0.1", "::1", "localhost"}:
            hosts += ["localhost", "127.0.0.1", "::1"]
        if wildcard:
            hosts += [socket.gethostname(), socket.getfqdn()]
        urls = [
            f"https://[{h}]:{self.port}" if ":" in h else f"https://{h}:{self.port}" for h in hosts
        ]
        return tuple(dict.fromkeys(origin_of(u) for u in urls))

    def request_limits(self) -> RequestLimits:
        """The limits every route shares (route body limits are separate settings)."""
        from sgxcloud.web.limits import RequestLimits  # the server's dependencies only

        return RequestLimits(
            max_body_bytes=self.max_body_bytes,
            body_timeout_s=self.body_timeout_seconds,
            header_timeout_s=self.header_timeout_seconds,
            max_header_bytes=self.max_header_bytes,
            max_connections=self.max_connections,
            max_connections_per_client=self.max_connections_per_client,
            keep_alive_s=self.keep_alive_seconds,
            response_timeout_s=self.response_timeout_seconds,
        )

    def master_key_beside_database(self) -> bool:
        """Whether an existing master key file sits in the SQLite database's directory.

        Then one copy of that directory (a backup, a snapshot) holds both the
        sealed secrets and the key that opens them.
        """
        prefix = "sqlite:///"
        url = self.database_url
        key = self.master_key_file
        if key is None or not key.exists() or not url.startswith(prefix) or ":memory:" in url:
            return False
        database = Path(url[len(prefix) :])
        return key.resolve().parent == database.resolve().parent

    def keyring(self, environ: Mapping[str, str] | None = None) -> secrets.Keyring:
        """The master keys, from the environment or the key files named here."""
        environ = os.environ if environ is None else environ
        text = environ.get(ENV_PREFIX + "MASTER_KEY")
        if text:
            current = secrets.decode_master_key(text, origin=ENV_PREFIX + "MASTER_KEY")
        elif self.master_key_file is not None:
            current = secrets.load_master_key(self.master_key_file)
        else:
            raise ConfigError(
                f"no master key: set master_key_file or {ENV_PREFIX}MASTER_KEY "
                "(create one with 'sgxcloud cas init')"
            )
        retired = tuple(secrets.load_master_key(p) for p in self.retired_master_key_files)
        return secrets.Keyring(current, retired)

    def collateral_source(self) -> Any:
        """The collateral source chosen here (None: only simulated evidence verifies)."""
        from sgxcloud.cas.collateral import FileCollateral, PccsCollateral

        if self.collateral == "pccs":
            assert self.pccs_url is not None
            # Threads waiting on the PCCS stay below attest_concurrency (when it
            # is above 1), so attestations that need no fetch find a free slot.
            fetches = max(1, self.attest_concurrency // 2)
            return PccsCollateral(
                self.pccs_url,
                self.collateral_cache_dir,
                self._pccs_http_client(),
                root_ca_crl_url=self.pccs_root_ca_crl_url,
                max_fetches=fetches,
                max_waiting=max(0, self.attest_concurrency - fetches - 1),
            )
        if self.collateral == "file":
            assert self.collateral_file is not None
            return FileCollateral(self.collateral_file)
        return None

    def _pccs_http_client(self) -> Any:
        """An HTTP client for the PCCS, trusting ``pccs_ca_file`` when it is set."""
        import ssl

        import httpx

        verify: Any = True
        if self.pccs_ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(self.pccs_ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"invalid setting pccs_ca_file: cannot load {self.pccs_ca_file}"
                ) from exc
        return httpx.Client(timeout=self.pccs_timeout_seconds, verify=verify)


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in Settings.model_fields:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if name in {"retired_master_key_files", "owner_crl_files"}:
            values[name] = raw.split(os.pathsep)
        elif name in {"policy_creators", "public_urls"}:
            values[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            values[name] = raw
    return values


def check_settings_file(path: Path) -> None:
    """Refuse settings that group or others may change (the file or its directory).

    Whoever can edit cas.yaml, or replace it in its directory, chooses the
    database and master key the service trusts.
    """
    try:
        for target in (path, path.resolve().parent):
            mode = target.stat().st_mode
            sticky_dir = target.is_dir() and mode & 0o1000
            if mode & 0o022 and not sticky_dir:
                kind = "directory" if target.is_dir() else "settings file"
                raise ConfigError(
                    f"{kind} {target} is writable by group or others (mode "
                    f"{mode & 0o777:04o}); run: chmod go-w {target}"
                )
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from ``path`` (optional), then the environment, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            document = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML") from exc
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ConfigError(f"{path} must be a mapping of setting: value")
        values.update(document)
        base = path.parent
    values.update(_from_environment(environ))
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    return _resolve_paths(settings, base)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    """Relative paths in a file are relative to that file, as operators expect."""

    def resolve(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    updates: dict[str, Any] = {
        name: resolve(getattr(settings, name))
        for name in (
            "master_key_file",
            "answer_signing_key_file",
            "tls_cert",
            "tls_key",
            "owner_ca_file",
            "collateral_file",
            "pccs_ca_file",
        )
        if getattr(settings, name) is not None and not getattr(settings, name).is_absolute()
    }
    if not settings.collateral_cache_dir.is_absolute():
        updates["collateral_cache_dir"] = base / settings.collateral_cache_dir
    for listed in ("retired_master_key_files", "owner_crl_files"):
        updates[listed] = tuple(
            p if p.is_absolute() else base / p for p in getattr(settings, listed)
        )
    url = settings.database_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        updates["database_url"] = prefix + str(base / url[len(prefix) :])
    return settings.model_copy(update=updates)
