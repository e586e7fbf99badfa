"""The OSC plugin protocol (``openstack.cli.extension`` entry point ``sgx``).

OpenStackClient loads this module, registers ``client_manager.sgx`` through
:func:`make_client` and finds the commands in the ``openstack.sgx.v1``
entry-point group.  The "client" is the openstacksdk connection OSC already
built: the commands only need Nova and Placement through openstacksdk.
"""

from __future__ import annotations

import argparse
from typing import Any

from osc_lib import utils

API_NAME = "sgx"
API_VERSION_OPTION = "os_sgx_api_version"
DEFAULT_API_VERSION = "1"
API_VERSIONS = ("1",)


def make_client(instance: Any) -> Any:
    """The openstacksdk ``Connection`` of OSC's client manager."""
    return instance.sdk_connection


def build_option_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--os-sgx-api-version",
        metavar="<sgx-api-version>",
        default=utils.env("OS_SGX_API_VERSION", default=DEFAULT_API_VERSION),
        help=(
            f"sgxcloud plugin API version, default={DEFAULT_API_VERSION} (Env: OS_SGX_API_VERSION)"
        ),
    )
    return parser
