"""Options by which a CAS policy owner signs requests (``policy``, ``audit show``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])

DEPLOYMENT_HELP = (
    "pin the CAS deployment id your signatures name (32 hex digits, or @FILE holding it); "
    "default: the id the CAS serves at /v1/health, asked over the pinned TLS "
    "(env SGXCLOUD_CAS_DEPLOYMENT)."
)

CAS_KEY_HELP = (
    "the CAS's answer signing key (PEM, from 'sgxcloud cas signing-key') to pin: every "
    "answer must carry its signature, else the command stops (no proxy can alter "
    "answers); unset: answers are not verified (env SGXCLOUD_CAS_SIGNING_KEY)."
)


def read_deployment(value: str | None) -> str | None:
    """The deployment id an option names: the id itself, or ``@FILE`` holding it."""
    from sgxcloud.cas.service.auth import is_deployment_id
    from sgxcloud.errors import InputError

    if value is None or value == "":
        return None
    source = "--deployment"
    if value.startswith("@"):
        path = Path(value[1:])
        try:
            value = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read the deployment id file {path}") from exc
        source = str(path)
    if not is_deployment_id(value):
        raise InputError(
            f"{source} is not a CAS deployment id (32 lower-case hex digits, as "
            "GET /v1/health and 'sgxcloud cas deployment' show)"
        )
    return value


def owner_credentials(qualifier: str = "") -> Callable[[F], F]:
    """``--key``, ``--cert`` and ``--ca-file``; ``qualifier`` prefixes each help
    text (e.g. "With --url: ") where the options apply only in one mode."""
    options = (
        click.option(
            "--key",
            "key_file",
            envvar="SGXCLOUD_CAS_OWNER_KEY",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}your owner private key (PEM) that signs requests "
            "(env SGXCLOUD_CAS_OWNER_KEY).",
        ),
        click.option(
            "--cert",
            "cert_file",
            envvar="SGXCLOUD_CAS_OWNER_CERT",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}your client certificate (PEM), if the policy names you "
            "by certificate (env SGXCLOUD_CAS_OWNER_CERT).",
        ),
        click.option(
            "--deployment",
            "deployment",
            envvar="SGXCLOUD_CAS_DEPLOYMENT",
            metavar="ID|@FILE",
            help=f"{qualifier}{DEPLOYMENT_HELP}",
        ),
        click.option(
            "--ca-file",
            envvar="SGXCLOUD_CAS_CA",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}trust only this CA for the CAS's TLS certificate "
            "(env SGXCLOUD_CAS_CA).",
        ),
        click.option(
            "--cas-key",
            "cas_key",
            envvar="SGXCLOUD_CAS_SIGNING_KEY",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}{CAS_KEY_HELP}",
        ),
    )

    def apply(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return apply
