"""The committed nova.conf sample, option reference, api-paste snippet and
operator guide agree with the code they describe."""

from __future__ import annotations

import configparser
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oslo_config import cfg
from paste.deploy import loadwsgi

from sgxcloud.nova import conf as sgx_conf
from sgxcloud.nova import extra_specs, resources
from sgxcloud.nova.api.middleware import SGXActionGuard

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "gen_config_docs.py"
SAMPLE = REPO / "etc" / "nova" / "nova.conf.sgx.sample"
REFERENCE = REPO / "docs" / "nova" / "config-reference.md"
PASTE_SNIPPET = REPO / "etc" / "nova" / "api-paste.ini.sgx-snippet"
GUIDE = REPO / "docs" / "nova" / "operator-guide.md"
PIPELINES = (
    "composite:openstack_compute_api_v21",
    "composite:openstack_compute_api_v21_legacy_v2_compatible",
)


def _load_tool():
    spec = importlib.util.spec_from_file_location("gen_config_docs", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


def _sgx_opts() -> list[cfg.Opt]:
    ((group, opts),) = sgx_conf.list_opts()
    assert group.name == "sgx"
    return opts


# -- generated files are current ---------------------------------------------


def test_committed_sample_is_what_the_generator_writes(tool):
    assert SAMPLE.read_text() == tool.render_sample(), (
        "etc/nova/nova.conf.sgx.sample is stale: run python tools/gen_config_docs.py"
    )


def test_committed_reference_is_current(tool):
    assert REFERENCE.read_text() == tool.render_reference(), (
        "docs/nova/config-reference.md is stale: run python tools/gen_config_docs.py"
    )


def test_check_mode_flags_a_stale_copy_and_write_mode_fixes_it(tmp_path):
    sample, reference = tmp_path / "sample.conf", tmp_path / "reference.md"
    shutil.copy(SAMPLE, sample)
    shutil.copy(REFERENCE, reference)
    argv = [sys.executable, str(TOOL), "--sample", str(sample), "--reference", str(reference)]

    ok = subprocess.run([*argv, "--check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr

    reference.write_text(reference.read_text().replace("`pack`", "`packed`"))
    stale = subprocess.run([*argv, "--check"], capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1
    assert f"out of date: {reference}" in stale.stderr
    assert str(sample) not in stale.stderr

    rewrite = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert rewrite.returncode == 0, rewrite.stderr
    assert reference.read_text() == REFERENCE.read_text()


# -- what the files say -------------------------------------------------------


def test_sample_uncommented_is_a_valid_config_meaning_the_defaults(tmp_path):
    # Every option appears as "#name = default"; uncommenting them all must
    # give a file oslo.config accepts and that changes nothing.
    text = re.sub(r"^#(\w+ = .*)$", r"\1", SAMPLE.read_text(), flags=re.MULTILINE)
    path = tmp_path / "nova.conf"
    path.write_text(text)
    conf = cfg.ConfigOpts()
    sgx_conf.register_opts(conf)
    conf([], project="nova", default_config_files=[str(path)], default_config_dirs=[])
    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert set(parsed["sgx"]) == {opt.dest for opt in _sgx_opts()}
    for opt in _sgx_opts():
        assert conf.sgx[opt.dest] == opt.default, opt.dest


def test_reference_documents_every_option_with_type_default_and_choices():
    text = REFERENCE.read_text()
    for opt in _sgx_opts():
        section = text.split(f"### `{opt.name}`", 1)[1].split("\n### ", 1)[0]
        assert f"- **Default:** `{opt.default}`" in section, opt.name
        assert f"- **Type:** {opt.type.type_name.removesuffix(' value')}" in section
        for value in getattr(opt.type, "choices", None) or {}:
            assert f"| `{value}` |" in section, (opt.name, value)
        if getattr(opt.type, "min", None) is not None:
            assert f"- **Minimum:** `{opt.type.min}`" in section, opt.name


# -- api-paste.ini snippet ----------------------------------------------------


def _documented_sed_command() -> list[str]:
    (line,) = [
        line
        for line in PASTE_SNIPPET.read_text().splitlines()
        if line.lstrip("# ").startswith("sed -i ")
    ]
    match = re.fullmatch(r"#\s+sed -i '(?P<expr>[^']+)' /etc/nova/api-paste.ini", line)
    assert match, line
    return ["sed", "-i", match["expr"]]


@pytest.fixture
def edited_paste_ini(tmp_path) -> Path:
    """Nova's installed api-paste.ini edited exactly as the snippet says."""
    installed = Path(sys.prefix) / "etc" / "nova" / "api-paste.ini"
    if not installed.is_file():
        pytest.fail(f"Nova's api-paste.ini is not installed at {installed}")
    path = tmp_path / "api-paste.ini"
    path.write_text(installed.read_text() + "\n" + PASTE_SNIPPET.read_text())
    subprocess.run([*_documented_sed_command(), str(path)], check=True, timeout=30)
    return path


def test_snippet_puts_guard_after_auth_and_before_the_app(edited_paste_ini):
    parsed = configparser.ConfigParser()
    parsed.read(edited_paste_ini)
    for section in PIPELINES:
        for key in ("keystone", "noauth2"):
            if key not in parsed[section]:
                continue
            pipeline = parsed[section][key].split()
            assert pipeline[-2:] == ["sgx_guard", "osapi_compute_app_v21"], (section, key)
            # After authentication: keystone's context, or Nova 29's noauth2.
            auth = "keystonecontext" if key == "keystone" else "noauth2"
            assert pipeline.index(auth) < pipeline.index("sgx_guard")
            assert pipeline.count("sgx_guard") == 1


def test_snippet_edit_is_idempotent(edited_paste_ini):
    once = edited_paste_ini.read_text()
    subprocess.run([*_documented_sed_command(), str(edited_paste_ini)], check=True, timeout=30)
    assert edited_paste_ini.read_text() == once


def test_snippet_shows_the_pipelines_the_edit_produces(edited_paste_ini):
    parsed = configparser.ConfigParser()
    parsed.read(edited_paste_ini)
    snippet = PASTE_SNIPPET.read_text()
    for section in PIPELINES:
        assert f"#      keystone = {parsed[section]['keystone']}\n" in snippet, section


def test_paste_deploy_resolves_the_guard_filter(edited_paste_ini):
    context = loadwsgi.loadcontext(loadwsgi.FILTER, f"config:{edited_paste_ini}", name="sgx_guard")
    assert context.object.__self__ is SGXActionGuard


# -- operator guide -----------------------------------------------------------


def test_guide_names_every_option_flavor_key_and_placement_name():
    text = GUIDE.read_text()
    for opt in _sgx_opts():
        assert f"`{opt.name}`" in text or f"{opt.name} =" in text, opt.name
    for validator in extra_specs.EXTRA_SPEC_VALIDATORS:
        assert validator.name in text, validator.name
    for name in (
        resources.EPC_RESOURCE_CLASS,
        *resources.SGX_TRAITS,
        "sgxcloud.SGXLibvirtDriver",
        "sgxcloud.nova.scheduler.SGXFilter",
        "sgxcloud.nova.scheduler.SGXWeigher",
        "sgx_weight_multiplier",
        "enable_isolated_aggregate_filtering",
        "nova.quota.UnifiedLimitsDriver",
        f"class:{resources.EPC_RESOURCE_CLASS}",
    ):
        assert name in text, name


def test_guide_quotes_the_refusal_message_the_code_sends():
    from sgxcloud.nova.requirements import EPC_CANNOT_MOVE

    assert EPC_CANNOT_MOVE.format(action="Live migration") in " ".join(GUIDE.read_text().split())


def test_guide_relative_links_resolve():
    text = GUIDE.read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#]+)(?:#[^)]*)?\)", text)
    assert links
    missing = [link for link in links if not (GUIDE.parent / link).exists()]
    assert not missing, missing


def test_tool_refuses_clearly_when_the_namespace_is_not_installed(
    tool, monkeypatch, capsys, tmp_path
):
    # oslo-config-generator itself would only log a warning and write an empty sample.
    monkeypatch.setattr(tool.metadata, "entry_points", lambda group: [])
    status = tool.main(["--sample", str(tmp_path / "s"), "--reference", str(tmp_path / "r")])
    assert status == 2
    assert "no 'oslo.config.opts' entry point named 'sgxcloud'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
