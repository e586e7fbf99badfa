"""``sgxcloud attest``: verify SGX attestation evidence, or make labelled simulated evidence.

Thin over :mod:`sgxcloud.cas.evidence`, :mod:`sgxcloud.cas.collateral` and
:mod:`sgxcloud.cas.policy`: parse options, call the library, render its report.
Exit status: 0 accepted, 1 rejected, 2 usage or input error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sgxcloud.cas.errors import PolicyError
from sgxcloud.cas.evidence import (
    SIMULATED_WARNING,
    AttestationReport,
    DefaultVerifier,
    check_evidence,
    load_evidence,
    make_simulated_evidence,
)
from sgxcloud.cli.output import safe
from sgxcloud.errors import InputError
from sgxcloud.sgx.identity import EnclaveIdentity
from sgxcloud.sgx.quote import parse_sgx_quote

HEX32 = 64


def _hex_option(value: str | None, name: str, max_bytes: int, exact: bool) -> bytes:
    text = (value or "").strip().lower().removeprefix("0x")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise click.BadParameter("must be hexadecimal", param_hint=name) from None
    if len(data) > max_bytes or (exact and len(data) != max_bytes):
        want = f"exactly {max_bytes}" if exact else f"at most {max_bytes}"
        raise click.BadParameter(f"must be {want} bytes ({len(data)} given)", param_hint=name)
    return data


@click.group(name="attest")
def attest() -> None:
    """Verify SGX attestation evidence (DCAP quotes or labelled simulated evidence)."""


@attest.command(name="verify")
@click.option(
    "--quote",
    "quote_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Evidence: a DCAP quote (binary or hex) or a simulated evidence file.",
)
@click.option(
    "--collateral",
    "collateral_path",
    type=click.Path(dir_okay=False),
    help="Collateral JSON (dcap-qvl QuoteCollateralV3 form) for offline checks.",
)
@click.option(
    "--pccs",
    "pccs_url",
    metavar="URL",
    help="Fetch collateral from this PCCS/PCS (Intel PCS v4 API) instead.",
)
@click.option(
    "--pccs-cache",
    type=click.Path(file_okay=False),
    default=str(Path.home() / ".cache" / "sgxcloud" / "pccs"),
    show_default="~/.cache/sgxcloud/pccs",
    help="Cache directory for collateral fetched with --pccs (kept within validity).",
)
@click.option(
    "--time",
    "at_time",
    type=click.IntRange(min=0),
    metavar="UNIX_SECONDS",
    help="Check validity at this time instead of now (for recorded evidence).",
)
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False),
    help="Judge the evidence by this policy (YAML); needs --service.",
)
@click.option("--service", metavar="NAME", help="The policy's service the enclave wants to run.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def verify(
    quote_path: str,
    collateral_path: str | None,
    pccs_url: str | None,
    pccs_cache: str,
    at_time: int | None,
    policy_path: str | None,
    service: str | None,
    as_json: bool,
) -> int:
    """Verify evidence; with --policy/--service, decide whether that service may start.

    Without a policy the verdict says whether the evidence is cryptographically
    valid (signature chain to Intel's root, CRLs, TCB info, QE identity); with
    one, whether the policy accepts it, with every reason if not.  Simulated
    evidence is always labelled SIMULATED and accepted only by a policy that
    allows simulation.  Exit 0 accepted, 1 rejected, 2 usage or input error.
    """
    if (policy_path is None) != (service is None):
        raise click.UsageError("--policy and --service go together")
    if collateral_path and pccs_url:
        raise click.UsageError("give --collateral or --pccs, not both")
    service_policy = _service_policy(policy_path, service) if policy_path else None
    evidence = load_evidence(quote_path)
    source = None
    if evidence.format == "dcap":
        source = _collateral_source(collateral_path, pccs_url, pccs_cache)
    now = at_time if at_time is not None else int(time.time())
    report = check_evidence(evidence, DefaultVerifier(source), now, service_policy)
    if policy_path:
        report.extra["policy"] = str(policy_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _render(report, Console(), policy_path)
    return report.exit_code


def _collateral_source(collateral_path: str | None, pccs_url: str | None, cache: str):
    from sgxcloud.cas.collateral import FileCollateral, PccsCollateral

    if collateral_path:
        return FileCollateral(collateral_path)
    if pccs_url:
        return PccsCollateral(pccs_url, cache)
    raise click.UsageError("a DCAP quote needs --collateral FILE (or --pccs URL)")


def _service_policy(policy_path: str, service: str):
    from sgxcloud.cas.policy import load_policy

    try:
        text = Path(policy_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"cannot read policy {policy_path}: {reason}") from exc
    try:
        policy = load_policy(text)
    except PolicyError as exc:
        raise PolicyError(exc.field, f"{policy_path}: {exc}", exc.problems) from exc
    if service not in policy.services:
        known = ", ".join(sorted(policy.services))
        raise InputError(f"policy {policy.name!r} has no service {service!r} (it has: {known})")
    return policy.services[service]


def _render(report: AttestationReport, console: Console, policy_path: str | None) -> None:
    if report.simulated:
        console.print(
            Panel(
                f"[bold]{SIMULATED_WARNING}[/]\nThis evidence was not produced by "
                "SGX hardware and proves nothing about the code that made it.",
                title="SIMULATED EVIDENCE",
                style="bold yellow",
            )
        )
    data = report.to_dict()
    kind = "simulated (sgxcloud-simulated-v1)" if report.simulated else "DCAP quote"
    table = Table(title="Attestation evidence", show_header=False)
    table.add_column("Field", style="bold", no_wrap=True)
    table.add_column("Value", overflow="fold")
    verified = "yes" if data["verified"] else "[red]no — claims below are unverified[/]"
    rows = [
        ("Evidence", kind),
        ("Signature/collateral verified", "n/a (SIMULATED)" if report.simulated else verified),
        # collateral and evidence are data from outside: never markup
        ("TCB status", safe(data["tcb_status"] or "—")),
        ("Advisories", safe(", ".join(data["advisory_ids"]) or "none")),
        ("MRENCLAVE", safe(data["mrenclave"] or "—")),
        ("MRSIGNER", safe(data["mrsigner"] or "—")),
        (
            "ISVPRODID / ISVSVN",
            safe(f"{data['isvprodid']} / {data['isvsvn']}")
            if data["isvprodid"] is not None
            else "—",
        ),
        ("Debug", {True: "[red]yes[/]", False: "no", None: "—"}[data["debug"]]),
        ("Report data", safe(data["report_data"] or "—")),
        ("Checked at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.checked_at))),
    ]
    if policy_path:
        rows.append(("Policy / service", safe(f"{policy_path} / {report.service}")))
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    label = " [yellow](SIMULATED)[/]" if report.simulated else ""
    if report.accepted:
        what = "accepted by the policy" if policy_path else "cryptographically valid"
        console.print(f"[bold green]✔ {what}[/]{label}")
    else:
        console.print(f"[bold red]✘ rejected[/]{label}")
        for reason in report.reasons:
            console.print(f"  • {safe(reason)}")


@attest.command(name="simulate")
@click.option("--mrenclave", required=True, metavar="HEX", help="MRENCLAVE (64 hex digits).")
@click.option(
    "--mrsigner",
    metavar="HEX",
    default="00" * 32,
    show_default="64 zeros",
    help="MRSIGNER (64 hex digits).",
)
@click.option("--isvprodid", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--isvsvn", type=click.IntRange(0, 0xFFFF), default=0, show_default=True)
@click.option("--debug", is_flag=True, help="Claim a debug enclave.")
@click.option(
    "--report-data",
    metavar="HEX",
    default="",
    help="REPORTDATA, at most 64 bytes in hex (zero-padded).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write the evidence here ('-' for standard output).",
)
def simulate(
    mrenclave: str,
    mrsigner: str,
    isvprodid: int,
    isvsvn: int,
    debug: bool,
    report_data: str,
    output: str,
) -> int:
    """Make SIMULATED evidence for machines without SGX (clearly labelled; proves nothing)."""
    identity = EnclaveIdentity(
        mrenclave=_hex_option(mrenclave, "--mrenclave", 32, exact=True).hex(),
        mrsigner=_hex_option(mrsigner, "--mrsigner", 32, exact=True).hex(),
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        debug=debug,
    )
    evidence = make_simulated_evidence(
        identity, _hex_option(report_data, "--report-data", 64, exact=False)
    )
    if output == "-":
        sys.stdout.write(evidence.raw.decode())
        return 0
    try:
        Path(output).write_bytes(evidence.raw)
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    Console(stderr=True).print(
        f"[bold yellow]SIMULATED[/] evidence written to {safe(output)} — {SIMULATED_WARNING}"
    )
    return 0


@attest.command(name="show")
@click.option(
    "--quote",
    "quote_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="A DCAP quote file (binary or hex).",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(quote_path: str, as_json: bool) -> int:
    """Show what an SGX quote claims, WITHOUT verifying it (parse only)."""
    evidence = load_evidence(quote_path)
    if evidence.format != "dcap":
        raise InputError("'attest show' reads DCAP quotes; use 'attest verify' for simulated")
    parsed = parse_sgx_quote(evidence.raw)
    data = {
        "verified": False,
        "quote_version": parsed.header.version,
        "tee": parsed.header.tee,
        "mrenclave": parsed.identity.mrenclave,
        "mrsigner": parsed.identity.mrsigner,
        "isvprodid": parsed.identity.isvprodid,
        "isvsvn": parsed.identity.isvsvn,
        "debug": parsed.identity.debug,
        "attributes": parsed.identity.attributes,
        "report_data": parsed.report_data.hex(),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return 0
    table = Table(title="Quote claims — UNVERIFIED (use 'attest verify')", show_header=False)
    table.add_column("Field", style="bold")
    table.add_column("Value", overflow="fold")
    for key, value in data.items():
        table.add_row(key, safe(value))
    Console().print(table)
    return 0
