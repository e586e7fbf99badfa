"""The ``sgxcloud`` command: one entry point, one sub-command group per area.

Groups are imported only when used, so ``sgxcloud --help`` stays fast and a
broken optional dependency of one layer cannot break the others.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from sgxcloud import extras
from sgxcloud.bounded import printable
from sgxcloud.errors import SgxcloudError

# name -> (module, attribute, one-line help).  Adding an area is one line here.
COMMAND_GROUPS: dict[str, tuple[str, str, str]] = {
    "demo": ("sgxcloud.cli.demo", "demo", "Run the end-to-end demonstration."),
    "host": ("sgxcloud.cli.host", "host", "Check an SGX compute node and its VMs' EPC."),
    "guest": ("sgxcloud.cli.guest", "guest", "Check SGX from inside a virtual machine."),
    "attest": ("sgxcloud.cli.attest", "attest", "Verify SGX attestation evidence."),
    "cas": ("sgxcloud.cli.cas", "cas", "Run the attestation and configuration service."),
    "policy": ("sgxcloud.cli.policy", "policy", "Manage CAS policies (owners)."),
    "owner": ("sgxcloud.cli.owner", "owner", "Make and identify CAS policy owner keys."),
    "audit": ("sgxcloud.cli.audit", "audit", "Inspect and verify audit logs."),
    "cleanroom": ("sgxcloud.cli.cleanroom", "cleanroom", "Confidential data clean room."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_GROUPS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_GROUPS:
            return None
        module_name, attribute, short_help = COMMAND_GROUPS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("sgxcloud"):
                return _unavailable(name, short_help, "not available in this build")
            # An optional dependency is missing: `--help` still lists the
            # group, and running it names the extra to install.
            return _unavailable(name, short_help, extras.install_hint(exc))
        return getattr(module, attribute)


def _unavailable(name: str, short_help: str, why: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{short_help}\n\nNot available: {why}.",
        short_help=f"{short_help} (not installed)",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )
    def missing() -> None:
        raise SgxcloudError(f"'sgxcloud {name}' is not available: {why}")

    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sgxcloud")
def cli() -> None:
    """sgxcloud: SGX virtual machines in OpenStack, remote attestation, and a
    confidential data clean room."""


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; deliberate errors become one line on stderr, never a traceback."""
    try:
        result = cli.main(args=argv, prog_name="sgxcloud", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except SgxcloudError as exc:
        click.echo(f"error: {printable(str(exc))}", err=True)  # a service's words: no escapes
        return exc.exit_code
    except ModuleNotFoundError as exc:
        # A command reached for an optional dependency this install lacks.
        if exc.name and exc.name.startswith("sgxcloud"):
            raise
        click.echo(f"error: {extras.install_hint(exc)}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except Exception as exc:  # a bug: say so in one line; details on request
        if os.environ.get("SGXCLOUD_DEBUG"):
            raise
        click.echo(
            f"internal error ({type(exc).__name__}); rerun with SGXCLOUD_DEBUG=1 for details",
            err=True,
        )
        return 70
    # A command that ends with a verdict returns its exit status
    # (0 accepted/ready, 1 rejected/not ready); one returning nothing succeeded.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
