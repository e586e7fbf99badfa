"""The launcher a Gramine manifest starts: attest, install the configuration, run the command.

``python -m sgxcloud.cas.client launch`` is the manifest's fixed
``loader.argv``.  Its settings come from ``SGXCLOUD_CAS_*`` variables fixed in
the manifest (measured into MRENCLAVE, so the host cannot redirect them);
options exist for tests and for running outside Gramine.  Standard library
``argparse``, not click: the enclave carries as little as possible.
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Mapping
from pathlib import Path

from sgxcloud.cas.client.enclave import FetchedConfiguration, fetch_configuration
from sgxcloud.cas.client.errors import ClientError
from sgxcloud.cas.errors import CasError

LAUNCH_ENV = ("SGXCLOUD_CAS_URL", "SGXCLOUD_CAS_POLICY", "SGXCLOUD_CAS_SERVICE", "SGXCLOUD_CAS_CA")
# Who must have signed the policy: principal ids (key:sha256:…, cert:sha256:…),
# separated by commas or spaces.  Mandatory unless SGXCLOUD_CAS_NO_OWNER_PIN=1:
# without it, whoever creates the policy name first configures this enclave.
OWNERS_ENV = "SGXCLOUD_CAS_POLICY_OWNERS"
HASH_ENV = "SGXCLOUD_CAS_POLICY_HASH"
NO_PIN_ENV = "SGXCLOUD_CAS_NO_OWNER_PIN"
DEFAULT_ATTEMPTS = 5


def install(fetched: FetchedConfiguration, root: Path = Path("/")) -> list[Path]:
    """Write the received files (mode 0600) under ``root`` and export the environment.

    A file under ``/dev/attestation/keys/`` sets a Gramine encrypted-mount key
    (the pseudo-file exists; nothing is created there); other files should
    live on a tmpfs mount so they stay in enclave memory.  Returns the paths
    written.
    """
    written = []
    base = root.resolve()
    for path, content in fetched.configuration.files.items():
        target = root / path.lstrip("/")
        # The policy validator refuses ".." already; resolving (symlinks too)
        # and checking containment keeps a file inside --root whatever the CAS sent.
        if ".." in Path(path).parts or not target.resolve().is_relative_to(base):
            raise ClientError(f"configured file {path} is outside the file-system root")
        if not str(path).startswith("/dev/attestation/"):
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        except OSError as exc:
            raise ClientError(f"cannot write configured file {path}: {exc.strerror}") from exc
        written.append(target)
    os.environ.update(fetched.configuration.env)
    return written


def run_argv(argv: list[str]) -> int:
    """Run the configured command in this process (Python) or replace it (anything else).

    Python workloads run in the same interpreter (``runpy``), so the secrets
    never cross an ``execve`` (which Gramine implements by starting a new
    enclave process).  A Python program's ``sys.exit(n)`` becomes our status.
    """
    if not argv:
        raise ClientError("the policy gives this service no command")
    program = Path(argv[0]).name
    if program.startswith("python"):
        args = argv[1:]
        try:
            if len(args) >= 2 and args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            elif args:
                sys.argv = list(args)
                runpy.run_path(args[0], run_name="__main__")
            else:
                raise ClientError("a python command needs a script or -m MODULE")
        except SystemExit as exc:
            return _exit_status(exc.code)
        return 0
    os.execv(argv[0], argv)  # noqa: S606 - the argv comes from the attested policy
    return 0  # pragma: no cover


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def pinned_owners(environ: Mapping[str, str]) -> list[str] | None:
    """The owner pin from the settings; None only when explicitly switched off."""
    owners = environ.get(OWNERS_ENV, "").replace(",", " ").split()
    if owners:
        return owners
    if environ.get(NO_PIN_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    raise ClientError(f"missing launcher settings: {OWNERS_ENV} (or --no-owner-pin, insecure)")


def missing_settings(environ: Mapping[str, str]) -> list[str]:
    missing = [name for name in LAUNCH_ENV if not environ.get(name)]
    try:
        pinned_owners(environ)
    except ClientError:
        missing.append(f"{OWNERS_ENV} (or --no-owner-pin, insecure)")
    return missing


def launch(
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    *,
    attempts: int = DEFAULT_ATTEMPTS,
) -> int:
    """Fetch this enclave's configuration, install it, and run its command.

    Configured by ``SGXCLOUD_CAS_URL``, ``SGXCLOUD_CAS_POLICY``,
    ``SGXCLOUD_CAS_SERVICE``, ``SGXCLOUD_CAS_CA`` and
    ``SGXCLOUD_CAS_POLICY_OWNERS`` (optionally ``SGXCLOUD_CAS_POLICY_HASH``),
    fixed in the manifest.
    """
    environ = dict(os.environ if environ is None else environ)
    missing = missing_settings(environ)
    if missing:
        raise ClientError("missing launcher settings: " + ", ".join(missing))
    owners = pinned_owners(environ)
    if owners is None:
        logging.getLogger(__name__).warning(
            "policy owners are not pinned (%s): whoever controls policy %r configures this enclave",
            NO_PIN_ENV,
            environ["SGXCLOUD_CAS_POLICY"],
        )
    fetched = fetch_configuration(
        environ["SGXCLOUD_CAS_URL"],
        policy=environ["SGXCLOUD_CAS_POLICY"],
        service=environ["SGXCLOUD_CAS_SERVICE"],
        ca_file=Path(environ["SGXCLOUD_CAS_CA"]),
        root=root,
        attempts=attempts,
        policy_owners=owners,
        policy_hash=environ.get(HASH_ENV) or None,
    )
    install(fetched, root)
    logging.getLogger(__name__).info(
        "configuration installed (policy %s, audit entry %s); starting %s",
        fetched.policy_hash,
        fetched.audit_ref,
        Path(fetched.configuration.argv[0]).name if fetched.configuration.argv else "-",
    )
    return run_argv(fetched.configuration.argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sgxcloud.cas.client",
        description=(
            "The enclave side of the sgxcloud CAS. 'launch' attests this enclave to the CAS "
            "(Gramine's /dev/attestation), receives its configuration sealed to a key that "
            "never leaves the enclave, writes the configured files (mode 0600; "
            "/dev/attestation/keys/NAME sets an encrypted-mount key), exports the "
            "environment and runs the policy's command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    launch_cmd = commands.add_parser(
        "launch",
        help="attest, install the configuration, run the policy's command",
        description=(
            "Attest to the CAS, install the received files and environment, then run the "
            "command the policy names (a Python command runs in this interpreter, so secrets "
            "never cross an execve; anything else replaces this process). Settings come from "
            "the environment that the Gramine manifest fixes (and MRENCLAVE therefore "
            "measures); the options override them for tests and non-Gramine runs. Exit "
            "status: the command's own; 1 when the CAS refused or could not be reached; "
            "2 when a setting is missing."
        ),
        epilog=(
            "Environment: SGXCLOUD_CAS_URL (https://cas.example:8443), SGXCLOUD_CAS_POLICY, "
            "SGXCLOUD_CAS_SERVICE, SGXCLOUD_CAS_CA (the pinned CA certificate of the CAS's "
            "TLS; the system trust store is never used), SGXCLOUD_CAS_POLICY_OWNERS (required: "
            "principal ids, one of which must have signed the policy, comma-separated), "
            "SGXCLOUD_CAS_POLICY_HASH (optional), SGXCLOUD_CAS_NO_OWNER_PIN=1 (insecure). "
            "A refusal names only an audit "
            "entry (its ref): the policy's owners read why with 'sgxcloud audit show --ref REF'."
        ),
    )
    launch_cmd.add_argument("--url", help="CAS base URL (env SGXCLOUD_CAS_URL)")
    launch_cmd.add_argument("--policy", help="policy name (env SGXCLOUD_CAS_POLICY)")
    launch_cmd.add_argument("--service", help="service in the policy (env SGXCLOUD_CAS_SERVICE)")
    launch_cmd.add_argument("--ca-file", help="the CAS's CA certificate, PEM (env SGXCLOUD_CAS_CA)")
    launch_cmd.add_argument(
        "--policy-owner",
        action="append",
        metavar="ID",
        help="a principal id (key:sha256:… or cert:sha256:…) that must be among the policy's "
        "signed owners; repeatable, any one suffices (env SGXCLOUD_CAS_POLICY_OWNERS). "
        "Required: a policy name alone can be created by anyone",
    )
    launch_cmd.add_argument(
        "--policy-hash",
        metavar="HEX",
        help="accept only this exact policy version (env SGXCLOUD_CAS_POLICY_HASH)",
    )
    launch_cmd.add_argument(
        "--no-owner-pin",
        action="store_true",
        help="INSECURE: accept a policy whoever owns it (env SGXCLOUD_CAS_NO_OWNER_PIN=1)",
    )
    launch_cmd.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="file-system root holding dev/attestation and the configured files "
        "(default /; tests point it at a fake tree)",
    )
    launch_cmd.add_argument(
        "--attempts",
        type=int,
        default=DEFAULT_ATTEMPTS,
        help="tries while the CAS is unreachable or answers 502/503/504, with backoff "
        f"(default {DEFAULT_ATTEMPTS}); refusals are never retried",
    )
    launch_cmd.add_argument("--verbose", action="store_true", help="log each step to stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m sgxcloud.cas.client launch``: the entry point of the Gramine manifest."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return _exit_status(exc.code)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="sgxcloud-launcher: %(message)s",
    )
    overrides = {
        "SGXCLOUD_CAS_URL": args.url,
        "SGXCLOUD_CAS_POLICY": args.policy,
        "SGXCLOUD_CAS_SERVICE": args.service,
        "SGXCLOUD_CAS_CA": args.ca_file,
        OWNERS_ENV: ",".join(args.policy_owner or []),
        HASH_ENV: args.policy_hash,
        NO_PIN_ENV: "1" if args.no_owner_pin else None,
    }
    environ = {**os.environ, **{k: v for k, v in overrides.items() if v}}
    try:
        missing = missing_settings(environ)
        if missing:
            print("error: missing launcher settings: " + ", ".join(missing), file=sys.stderr)
            return 2
        return launch(environ, args.root, attempts=max(1, args.attempts))
    except CasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
