"""Each area's errors live in its ``errors.py``, under the area's root; the
modules that used to define them still export them; what users see of each
(exit status, message, InputError or not) is what it was before the move."""

from __future__ import annotations

import ast
import builtins
import importlib
from pathlib import Path

import pytest

from sgxcloud.errors import InputError, SgxcloudError

SRC = Path(__file__).resolve().parents[1] / "src" / "sgxcloud"

# Longest prefix first: (directory under src/sgxcloud, errors module, root class).
AREAS = [
    ("cas/store", "sgxcloud.cas.store.errors", "sgxcloud.cas.errors:CasError"),
    ("cas/client", "sgxcloud.cas.client.errors", "sgxcloud.cas.errors:CasError"),
    ("cas", "sgxcloud.cas.errors", "sgxcloud.cas.errors:CasError"),
    (
        "cleanroom/transport",
        "sgxcloud.cleanroom.transport.errors",
        "sgxcloud.cleanroom.transport.errors:TransportError",
    ),
    ("cleanroom", "sgxcloud.cleanroom.errors", "sgxcloud.cleanroom.errors:CleanroomError"),
    ("nova", "sgxcloud.nova.errors", "sgxcloud.nova.errors:NovaLayerError"),
]

# Exception classes deliberately defined outside an errors.py, and why.
ELSEWHERE = {
    # Internal ValueErrors, translated into a verdict where they are caught.
    "cas/pck.py:PckCheckError": "dcap-qvl's wording, mapped by evidence.dcap's verdict table",
    "cas/policy/access.py:OwnerKeyError": "a ValueError, turned into PolicyError/AccessDenied",
    "cas/policy/placeholders.py:PlaceholderSyntaxError": "a ValueError, turned into PolicyError",
    "nova/api/paste.py:PasteError": "a ValueError of the paste.ini editor, caught beside it",
    # Private to its module (and under the area's root).
    "cas/collateral.py:_FetchesBusy": "private flow control inside the collateral cache",
    "cas/service/core.py:_Unparsed": "private flow control: a transaction rolled back to parse "
    "a policy text outside it",
    # Not errors of the area: a warning issued (never raised), a socket-level timeout.
    "cas/answers.py:UnverifiedAnswers": "a UserWarning (warnings.warn), never raised",
    "cas/client/connection.py:DeadlinePassed": "a TimeoutError inside the enclave client's "
    "socket reader, turned into ServiceUnavailable where it is caught",
    # Shared helpers of no single area: their root is sgxcloud's own.
    "sgx/quote.py:QuoteFormatError": "read by the CAS, the clean room and the node checks",
    "web/limits.py:BodyTooLarge": "the HTTP limits of both services",
}


def _load(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def _exception_classes() -> dict[str, str]:
    """``{"path/module.py:Class": dotted module}`` of every exception class in the source,
    found by reading it (importing every module would pull in Nova)."""
    classes: list[tuple[str, str, list[str]]] = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [
                    b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                    for b in node.bases
                ]
                classes.append((rel, node.name, bases))
    known = {
        n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
    }
    found: dict[str, str] = {}
    grew = True
    while grew:
        grew = False
        for rel, name, bases in classes:
            key = f"{rel}:{name}"
            if key not in found and set(bases) & known:
                module = "sgxcloud." + rel.removesuffix(".py").replace("/", ".")
                found[key] = module.removesuffix(".__init__")
                known.add(name)
                grew = True
    return found


SURVEY = _exception_classes()


def test_the_survey_sees_every_kind_of_error_class() -> None:
    names = {key.split(":")[1] for key in SURVEY}
    assert {
        "SgxcloudError",
        "CasError",
        "StoreError",
        "DuplicateRow",
        "SecretsError",
        "RequestRejected",
        "TreeReadError",
        "MalformedAttestation",
        "PlaceholderSyntaxError",
        "UsageError",
    } <= names
    assert set(ELSEWHERE) <= set(SURVEY)


@pytest.mark.parametrize("key", sorted(SURVEY))
def test_every_error_class_lives_in_its_areas_errors_module_under_its_root(key: str) -> None:
    rel, name = key.split(":")
    cls = getattr(importlib.import_module(SURVEY[key]), name)
    area = next(((d, m, r) for d, m, r in AREAS if rel.startswith(d + "/")), None)
    if key in ELSEWHERE:
        if area and name.startswith("_"):
            assert issubclass(cls, _load(area[2]))
        return
    if area is None:
        assert rel == "errors.py", f"{key}: an error class outside every area"
        return
    _, module, root = area
    assert SURVEY[key] == module, f"{key} belongs in {module}"
    assert issubclass(cls, _load(root)), f"{name} is not under {root}"


# Every moved class, named where it used to be defined (those imports keep
# working), with what a user sees of it: the CLI prints ``error: <message>``
# and exits with ``exit_code`` (sgxcloud.cli.main); InputError is what the
# clean room coordinator answers 400 for and what ``--root`` checks raise.
MOVED = [
    # (old module, class, new module, exit status, an InputError?)
    ("sgxcloud.cas.secrets", "SecretsError", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.secrets", "MasterKeyError", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.protocol", "ProtocolError", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.protocol", "NonceRejected", "sgxcloud.cas.errors", 1, False),
    ("sgxcloud.cas.protocol", "BindingError", "sgxcloud.cas.errors", 1, False),
    ("sgxcloud.cas.tls", "TlsSetupError", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.config", "ConfigError", "sgxcloud.cas.errors", 2, True),
    ("sgxcloud.cas.service.auth", "AuthenticationError", "sgxcloud.cas.errors", 1, False),
    ("sgxcloud.cas.service.core", "NotReady", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.service.core", "Busy", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.service.core", "NotFound", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.service.core", "MalformedAttestation", "sgxcloud.cas.errors", 2, False),
    ("sgxcloud.cas.service.core", "AttestationRejected", "sgxcloud.cas.errors", 1, False),
    ("sgxcloud.cas.store", "StoreError", "sgxcloud.cas.store.errors", 2, False),
    ("sgxcloud.cas.store", "DuplicateRow", "sgxcloud.cas.store.errors", 2, False),
    ("sgxcloud.cas.store.repository", "DuplicateRow", "sgxcloud.cas.store.errors", 2, False),
    ("sgxcloud.cas.backup", "BackupError", "sgxcloud.cas.store.errors", 2, False),
    (
        "sgxcloud.cleanroom.transport.request_auth",
        "RequestRejected",
        "sgxcloud.cleanroom.transport.errors",
        4,
        False,
    ),
    (
        "sgxcloud.cleanroom.transport.request_auth",
        "NonceStoreError",
        "sgxcloud.cleanroom.transport.errors",
        3,
        False,
    ),
    ("sgxcloud.cleanroom.local", "LocalProcessError", "sgxcloud.cleanroom.errors", 3, False),
    (
        "sgxcloud.cleanroom.console.session",
        "CoordinatorUnavailable",
        "sgxcloud.cleanroom.errors",
        2,
        False,
    ),
    ("sgxcloud.cleanroom.console", "CoordinatorUnavailable", "sgxcloud.cleanroom.errors", 2, False),
    ("sgxcloud.nova.compat", "UnsupportedRelease", "sgxcloud.nova.errors", 2, False),
    ("sgxcloud.nova.capabilities", "SGXCapabilitiesError", "sgxcloud.nova.errors", 2, True),
    ("sgxcloud.nova.checks.tree", "TreeReadError", "sgxcloud.nova.errors", 2, True),
    ("sgxcloud.nova.checks.tree", "MissingFile", "sgxcloud.nova.errors", 2, True),
]


def _instance(cls: type) -> tuple[SgxcloudError, str]:
    """(an instance, the message ``sgxcloud`` prints for it)."""
    if cls.__name__ == "AttestationRejected":
        return cls(["why"]), "attestation rejected: why"
    if cls.__name__ == "MalformedAttestation":
        return cls("why", audit_seq=1), "why"
    if cls.__name__ in ("TreeReadError", "MissingFile"):
        return cls("/p", "why"), "/p: why"
    return cls("why"), "why"


@pytest.mark.parametrize(
    ("old", "name", "exit_code", "is_input"),
    [(o, n, e, i) for o, n, _, e, i in MOVED],
    ids=[f"{o}.{n}" for o, n, *_ in MOVED],
)
def test_moved_errors_keep_their_exit_status_and_kind(
    old: str, name: str, exit_code: int, is_input: bool
) -> None:
    """Passes before and after the move: what ``sgxcloud`` does with each."""
    cls = getattr(importlib.import_module(old), name)
    error, message = _instance(cls)
    assert error.exit_code == exit_code
    assert isinstance(error, InputError) is is_input
    assert str(error) == message


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [(o, n, w) for o, n, w, *_ in MOVED],
    ids=[f"{o}.{n}" for o, n, *_ in MOVED],
)
def test_old_homes_export_the_very_class(old: str, name: str, new: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(new), name
    )


def test_the_cli_reports_moved_cas_errors_as_before(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """StoreError, ConfigError, MasterKeyError through ``sgxcloud``: one line, exit 2."""
    from sgxcloud.cas import secrets
    from sgxcloud.cli.main import main

    monkeypatch.delenv("SGXCLOUD_CAS_DATABASE_URL", raising=False)
    monkeypatch.delenv(secrets.MASTER_KEY_ENV, raising=False)
    key = tmp_path / "master.key"
    secrets.write_master_key(key, secrets.MasterKey.generate())
    base = f"database_url: sqlite:///{tmp_path / 'none.db'}\nmaster_key_file: {key}\n"
    (tmp_path / "a.yaml").write_text(base)
    (tmp_path / "b.yaml").write_text(base + "workers: many\n")
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    (tmp_path / "c.yaml").write_text(base.replace(str(key), str(loose)))
    for config, line in [
        ("a.yaml", f"error: no database file {tmp_path / 'none.db'}: check database_url"),
        ("b.yaml", "error: invalid setting workers: "),
        ("c.yaml", f"error: master key file {loose} must not be readable by group or others"),
    ]:
        command = "rewrap" if config == "c.yaml" else "deployment"
        assert main(["cas", command, "--config", str(tmp_path / config)]) == 2, config
        err = capsys.readouterr().err
        assert err.startswith(line) and "Traceback" not in err, err
