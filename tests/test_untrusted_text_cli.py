"""Text from outside is shown as written by every CLI output: never as Rich markup, never
as terminal control.

Red team rt9 finding F2: one keyless request put ``[/x]`` into an audit entry and every
``sgxcloud audit show`` of that page exited 70 (rich MarkupError); ANSI escapes in stored
text recoloured the owner's terminal. Siblings: ``policy validate`` echoing unknown field
names, a CAS's error message, the clean room's result categories (the providers' data),
datasets' reasons and audit trail, the Nova host checks' findings, attestation reasons.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from sgxcloud.cas import audit
from sgxcloud.cas.evidence.report import AttestationReport
from sgxcloud.cas.store.db import make_engine
from sgxcloud.cas.store.repository import Database
from sgxcloud.cli import attest as attest_cli
from sgxcloud.cli import cleanroom as cleanroom_cli
from sgxcloud.cli import host as host_cli
from sgxcloud.cli.main import main
from sgxcloud.cli.output import code
from sgxcloud.errors import SgxcloudError
from sgxcloud.nova.checks.model import Finding, Report, Status
from tests.cas import postgres as pg

HOSTILE = (
    "[/x] [bold]big[/bold] [link=https://evil.example]l[/link] \x1b[31mred\x1b[0m \x07\x08\u202e"
)
SHOWN = ["[/x]", "[bold]big[/bold]", "[link=https://evil.example]l[/link]", "\\x1b[31mred"]


def _shown_literally(output: str) -> None:
    for part in SHOWN:
        assert part in output, (part, output)
    for raw in ("\x1b[31m", "\x07", "\x08", "\u202e"):
        assert raw not in output, (raw, output)


def _recorded(render) -> str:  # type: ignore[no-untyped-def]
    buffer = io.StringIO()
    render(Console(file=buffer, width=1_000, color_system=None, soft_wrap=True))
    return buffer.getvalue()


def test_audit_show_prints_entries_an_earlier_release_stored_unbounded(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'cas.db'}"
    pg.make_service(url).stop()  # a migrated database
    database = Database(make_engine(url))

    def work(repo):  # type: ignore[no-untyped-def]
        head = repo.lock_audit_head()
        fields = {
            "seq": head.seq + 1,
            "at": pg.CLOCK,
            "kind": "attestation",
            "subject": "shop/web",
            "actor": "enclave-key:0000000000000000",
            "outcome": "rejected",
            "detail": audit.canonical_json({"reasons": [f"unexpected ['{HOSTILE}']"]}),
            "prev_hash": head.entry_hash,
        }
        repo.add_audit_entry({**fields, "entry_hash": audit.entry_hash(**fields)})

    database.run(work)
    database.close()
    for wide in ([], ["--wide"]):
        assert main(["audit", "show", "--database-url", url, *wide]) == 0  # was 70: MarkupError
        _shown_literally(capsys.readouterr().out)


def test_policy_validate_shows_unknown_field_names_as_written(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    policy = tmp_path / "p.yaml"
    policy.write_text('"[/x] [bold]big[/bold] \\x1b[31mred": 1\n')
    # invalid, and said so (exit 1), not an internal error (70)
    assert main(["policy", "validate", str(policy)]) == 1
    assert "unknown field(s): [/x] [bold]big[/bold] \\x1b[31mred" in capsys.readouterr().err


def test_documents_are_shown_as_text() -> None:
    document = f"name: shop\ndescription: '{HOSTILE}'\n"
    for wide in (True, False):
        output = _recorded(lambda c, w=wide: c.print(code(document, "yaml", w)))
        _shown_literally(output)
        assert "name: shop\n" in output  # lines kept


def test_a_services_error_message_is_shown_escaped(capsys) -> None:  # type: ignore[no-untyped-def]
    import click

    @click.command()
    def failing() -> None:
        raise SgxcloudError(f"CAS answered 400: {HOSTILE}")

    import sgxcloud.cli.main as cli_main

    original = cli_main.cli
    cli_main.cli = failing
    try:
        assert main([]) != 70
    finally:
        cli_main.cli = original
    _shown_literally(capsys.readouterr().err)


def test_attestation_reasons_and_claims() -> None:
    report = AttestationReport(
        verdict="rejected",
        reasons=[HOSTILE],
        codes=["policy"],
        evidence_format="dcap",
        checked_at=pg.CLOCK,
        service=HOSTILE,
    )
    _shown_literally(_recorded(lambda c: attest_cli._render(report, c, HOSTILE)))


def test_nova_check_findings() -> None:
    report = Report(
        "sgxcloud host vm-epc",
        "/",
        [Finding(HOSTILE, Status.WARNING, HOSTILE, HOSTILE)],
        {
            "vms": [
                {"pid": 1, "domain": HOSTILE, "requested_kib": 1, "mapped_kib": 1, "status": "ok"}
            ]
        },
    )
    output = _recorded(
        lambda c: (c.print(host_cli.findings_table(report)), c.print(host_cli._vm_table(report)))
    )
    _shown_literally(output)


def test_clean_room_results_datasets_and_audit(capsys) -> None:  # type: ignore[no-untyped-def]
    cell = SimpleNamespace(
        dims={"segment": HOSTILE}, metric=HOSTILE, value=3, suppressed=False, noisy=False
    )
    result = SimpleNamespace(
        template="t", analysis=HOSTILE, result_id="r" * 16, cells=[cell], privacy={}
    )
    cleanroom_cli.render_result(SimpleNamespace(result=result, simulated=False))
    cleanroom_cli._render_datasets(
        [{"dataset": HOSTILE, "state": "rejected", "rows": None, "reason": HOSTILE}], HOSTILE
    )
    output = capsys.readouterr().out
    _shown_literally(output)
    assert cleanroom_cli._audit_summary({"event": "ingest", "data": {"dataset": HOSTILE}})
