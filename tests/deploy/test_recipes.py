"""The deployment recipes in deploy/ name only options, filters and paste
filters that exist: Nova's and sgxcloud's own option lists (the oslo.config
entry points oslo-config-generator reads), Nova's scheduler filters, and
Nova's installed api-paste.ini.  A kolla compute node configured by the
recipe passes ``sgxcloud host check``."""

from __future__ import annotations

import configparser
import importlib
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from sgxcloud.nova.api import paste
from sgxcloud.nova.checks import Status, check_host
from sgxcloud.nova.checks.host import DRIVER

ROOT = Path(__file__).resolve().parents[2]
KOLLA = ROOT / "deploy/kolla-ansible"
OSA = ROOT / "deploy/openstack-ansible/user_variables_sgxcloud.yml"
KOLLA_SNIPPETS = sorted((KOLLA / "config/nova").glob("*.conf"))


@pytest.fixture(scope="module")
def known_options() -> dict[str, dict[str, object]]:
    """group -> option name -> Opt, from Nova's and sgxcloud's oslo.config entry points."""
    known: dict[str, dict[str, object]] = {}
    for ep in metadata.entry_points(group="oslo.config.opts"):
        if ep.name not in ("nova.conf", "sgxcloud"):
            continue
        for group, opts in ep.load()():
            name = getattr(group, "name", group) or "DEFAULT"
            for opt in opts:
                known.setdefault(str(name), {})[opt.dest] = opt
                for deprecated in opt.deprecated_opts:
                    if deprecated.name:
                        known.setdefault(deprecated.group or str(name), {})[deprecated.name] = opt
    assert "sgx" in known and "filter_scheduler" in known
    return known


def ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str
    parser.read_string(path.read_text(), source=str(path))
    return parser


def osa() -> dict:
    return yaml.safe_load(OSA.read_text())


def conf_items():
    """(recipe, group, option, value) for every nova.conf setting in deploy/."""
    for path in KOLLA_SNIPPETS:
        parser = ini(path)
        for group in ["DEFAULT", *parser.sections()]:
            items = (
                parser.defaults()
                if group == "DEFAULT"
                else {k: v for k, v in parser.items(group) if k not in parser.defaults()}
            )
            for option, value in items.items():
                yield path.name, group, option, value
    for group, options in osa()["nova_nova_conf_overrides"].items():
        for option, value in options.items():
            yield OSA.name, group, option, value


def test_every_recipe_option_exists(known_options):
    items = list(conf_items())
    assert len(items) > 10
    unknown = [(r, g, o) for r, g, o, _ in items if o not in known_options.get(g, {})]
    assert not unknown, unknown


def test_every_recipe_value_is_valid_for_its_option(known_options):
    for recipe, group, option, value in conf_items():
        opt = known_options[group][option]
        values = value if isinstance(value, list) else [value]
        for one in values:
            try:
                opt.type(str(one))
            except ValueError as exc:
                pytest.fail(f"{recipe}: [{group}] {option} = {one!r}: {exc}")


def _class_exists(path: str) -> bool:
    module, _, name = path.rpartition(".")
    return hasattr(importlib.import_module(module), name)


def test_driver_filters_and_weighers_resolve():
    from nova.scheduler import filters as nova_filters

    nova_filter_names = {cls.__name__ for cls in nova_filters.all_filters()}
    for recipe, _group, option, value in conf_items():
        values = value if isinstance(value, list) else str(value).split(",")
        if option == "compute_driver":
            assert value == DRIVER
            importlib.import_module("nova.virt.sgxcloud")
        elif option in ("available_filters", "weight_classes"):
            for path in values:
                assert path.strip().endswith(("all_filters", "all_weighers")) or _class_exists(
                    path.strip()
                ), (recipe, path)
        elif option == "enabled_filters":
            assert "SGXFilter" in values
            assert set(values) - {"SGXFilter"} <= nova_filter_names, (recipe, values)
    assert "SGXFilter" in osa()["nova_scheduler_extra_filters"]


def test_osa_installs_the_nova_extra():
    (package,) = osa()["nova_user_pip_packages"]
    assert package.startswith("sgxcloud[nova]")


def installed_paste() -> str:
    return (Path(sys.prefix) / "etc/nova/api-paste.ini").read_text()


def _filters_resolve(text: str) -> None:
    parser = configparser.RawConfigParser(strict=False)
    parser.read_string(text)
    for where, words in paste.pipelines(text).items():
        *filters, app = words
        assert parser.has_section(f"app:{app}") or parser.has_section(f"composite:{app}"), where
        for name in filters:
            assert parser.has_section(f"filter:{name}"), (where, name)
    factory = parser.get(f"filter:{paste.FILTER_NAME}", "paste.filter_factory")
    module, _, attribute = factory.partition(":")
    cls_name, _, method = attribute.partition(".")
    assert callable(getattr(getattr(importlib.import_module(module), cls_name), method))


def test_kolla_image_paste_file_guards_every_compute_pipeline():
    guarded = paste.with_sgx_guard(installed_paste())
    compute = {k: v for k, v in paste.pipelines(guarded).items() if v[-1] == paste.APP_NAME}
    assert len(compute) >= 2
    assert all(words[-2] == paste.FILTER_NAME for words in compute.values())
    _filters_resolve(guarded)
    assert paste.with_sgx_guard(guarded) == guarded  # idempotent
    template = (KOLLA / "kolla-build/template-overrides.j2").read_text()
    assert "-m sgxcloud.nova.api.paste" in template and "/etc/nova/api-paste-sgx.ini" in template
    api = ini(KOLLA / "config/nova/nova-api.conf")
    assert api.get("wsgi", "api_paste_config") == "/etc/nova/api-paste-sgx.ini"


def test_osa_paste_overrides_applied_to_novas_file_guard_the_api():
    merged = configparser.RawConfigParser(strict=False)
    merged.optionxform = str
    merged.read_string(installed_paste())
    for section, values in osa()["nova_api_paste_ini_overrides"].items():
        if not merged.has_section(section):
            merged.add_section(section)
        for key, value in values.items():
            merged.set(section, key, value)
    lines = []
    for section in merged.sections():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {v}" for k, v in merged.items(section))
    text = "\n".join(lines) + "\n"
    keystone = {k: v for k, v in paste.pipelines(text).items() if k.endswith("/keystone")}
    assert keystone and all(
        v[-2:] == [paste.FILTER_NAME, paste.APP_NAME] for v in keystone.values()
    )
    # The override keeps Nova's own pipeline otherwise unchanged.
    nova = {k: v for k, v in paste.pipelines(installed_paste()).items() if k.endswith("/keystone")}
    for key, words in keystone.items():
        assert [w for w in words if w != paste.FILTER_NAME] == nova[key]
    _filters_resolve(text)


def test_kolla_compute_node_with_the_recipe_passes_host_check(tree):
    root = tree("sgx-host-2numa")
    shutil.rmtree(root / "etc/nova")
    target = root / "etc/kolla/nova-compute/nova.conf"
    target.parent.mkdir(parents=True)
    # What kolla renders: its own nova.conf, then our snippet merged over it.
    target.write_text(
        "[DEFAULT]\ncompute_driver = libvirt.LibvirtDriver\n\n"
        + (KOLLA / "config/nova/nova-compute.conf").read_text()
    )
    merged = ini(target)  # later values win, as kolla's merge_configs does
    target.write_text(
        "".join(
            f"[{s}]\n"
            + "".join(
                f"{k} = {v}\n"
                for k, v in (
                    merged.defaults()
                    if s == "DEFAULT"
                    else {k: v for k, v in merged.items(s) if k not in merged.defaults()}
                ).items()
            )
            for s in ["DEFAULT", *merged.sections()]
        )
    )
    report = check_host(root)
    nova = {f.check: f.status for f in report.findings if f.check.startswith("nova.")}
    assert nova["nova.config"] is Status.OK
    assert nova["nova.compute_driver"] is Status.OK
    assert nova["nova.sgx_options"] is Status.OK
