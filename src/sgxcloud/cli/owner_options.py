"""Options by which a CAS policy owner signs requests (``policy``, ``audit show``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def owner_credentials(qualifier: str = "") -> Callable[[F], F]:
    """``--key``, ``--cert`` and ``--ca-file``; ``qualifier`` prefixes each help
    text (e.g. "With --url: ") where the options apply only in one mode."""
    options = (
        click.option(
            "--key", "key_file", envvar="SGXCLOUD_CAS_OWNER_KEY",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}your owner private key (PEM) that signs requests "
                 "(env SGXCLOUD_CAS_OWNER_KEY)."),
        click.option(
            "--cert", "cert_file", envvar="SGXCLOUD_CAS_OWNER_CERT",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}your client certificate (PEM), if the policy names you "
                 "by certificate (env SGXCLOUD_CAS_OWNER_CERT)."),
        click.option(
            "--ca-file", envvar="SGXCLOUD_CAS_CA",
            type=click.Path(dir_okay=False, path_type=Path),
            help=f"{qualifier}trust only this CA for the CAS's TLS certificate "
                 "(env SGXCLOUD_CAS_CA)."),
    )

    def apply(function: F) -> F:
        for option in reversed(options):
            function = option(function)
        return function

    return apply
