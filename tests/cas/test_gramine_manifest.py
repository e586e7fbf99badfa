"""deploy/gramine's manifest template, rendered the way ``gramine-manifest`` renders it.

Gramine's renderer (python/graminelibos/gen_jinja_env.py) is a jinja2
Environment with StrictUndefined and keep_trailing_newline, globals
``gramine`` (libos, pkglibdir, runtimedir()), ``python`` (stdlib,
platstdlib, purelib, distlib, ext_suffix, get_sys_path...), ``env`` (the
environment) and ``ldd``; ``-Dkey=value`` become template variables.  The
result must be TOML.  Gramine itself is not installed here, so its paths are
a stand-in prefix; everything else is the real renderer's behaviour.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import tomllib
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy/gramine/python.manifest.template"
EXAMPLE_POLICY = ROOT / "deploy/gramine/example/policy.yaml"
PKGLIBDIR = Path("/usr/lib/x86_64-linux-gnu/gramine")  # Debian/Ubuntu packages' location


class _Runtimedir:
    """Gramine's ``gramine.runtimedir``: callable, printable and joinable."""

    def __call__(self, libc: str = "glibc") -> Path:
        return PKGLIBDIR / "runtime" / libc

    def __str__(self) -> str:
        return str(self())

    def __truediv__(self, other: str) -> Path:
        return self() / other


def gramine_environment() -> jinja2.Environment:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.globals["gramine"] = {
        "libos": PKGLIBDIR / "libsysdb.so",
        "pkglibdir": PKGLIBDIR,
        "runtimedir": _Runtimedir(),
    }
    paths = sysconfig.get_paths()
    env.globals["python"] = {
        "stdlib": Path(paths["stdlib"]),
        "platstdlib": Path(paths["platstdlib"]),
        "purelib": Path(paths["purelib"]),
        "distlib": Path(
            sysconfig.get_path("stdlib", vars={"py_version_short": sys.version_info[0]})
        )
        / "dist-packages",
        "get_config_var": sysconfig.get_config_var,
        "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "implementation": sys.implementation,
    }
    env.globals["env"] = os.environ
    env.globals["ldd"] = lambda *args: []
    return env


DEFINES = {
    "log_level": "error",
    "arch_libdir": "/lib/x86_64-linux-gnu",
    "entrypoint": "/usr/bin/python3.11",
    "app_dir": "/srv/notes/app",
    "data_dir": "/srv/notes/data",
    "cas_url": "https://cas.example:8443",
    "cas_policy": "notes",
    "cas_service": "web",
    "cas_policy_owners": "key:sha256:" + "ab" * 32,
}


def render(**defines: str) -> dict:
    text = gramine_environment().from_string(TEMPLATE.read_text()).render(**defines)
    return tomllib.loads(text)


def test_renders_to_toml_with_the_launcher_and_pinned_settings() -> None:
    manifest = render(**DEFINES)
    assert manifest["loader"]["argv"] == ["python3", "-m", "sgxcloud.cas.client", "launch"]
    assert manifest["libos"]["entrypoint"] == DEFINES["entrypoint"]
    env = manifest["loader"]["env"]
    assert env["SGXCLOUD_CAS_URL"] == "https://cas.example:8443"
    assert (env["SGXCLOUD_CAS_POLICY"], env["SGXCLOUD_CAS_SERVICE"]) == ("notes", "web")
    # Who must own the policy is measured too (a squatted name is refused).
    assert env["SGXCLOUD_CAS_POLICY_OWNERS"] == DEFINES["cas_policy_owners"]
    # The pinned CA is under /app, which is a trusted (measured) directory.
    assert env["SGXCLOUD_CAS_CA"].startswith("/app/")
    assert "file:/srv/notes/app/" in manifest["sgx"]["trusted_files"]
    assert env["PYTHONPATH"].split(":")[0] == "/app/site-packages"
    assert manifest["sgx"]["remote_attestation"] == "dcap"
    assert manifest["sgx"]["debug"] is False
    assert f"file:{sysconfig.get_paths()['stdlib']}/" in manifest["sgx"]["trusted_files"]
    assert (
        "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc/" in manifest["sgx"]["trusted_files"]
    )
    # Nothing the host controls reaches the enclave: no argv or environment passthrough.
    assert "insecure__use_cmdline_argv" not in manifest["loader"]
    assert "insecure__use_host_env" not in manifest["loader"]


def test_every_file_the_example_policy_delivers_lands_in_enclave_memory_or_a_mount_key() -> None:
    manifest = render(**DEFINES)
    mounts = manifest["fs"]["mounts"]
    tmpfs = [m["path"] for m in mounts if m.get("type") == "tmpfs"]
    keys = {m["key_name"] for m in mounts if m.get("type") == "encrypted"}
    policy = yaml.safe_load(EXAMPLE_POLICY.read_text())
    for name, service in policy["services"].items():
        for path in service["files"]:
            if path.startswith("/dev/attestation/keys/"):
                assert path.rsplit("/", 1)[1] in keys, f"{name}: {path} names no encrypted mount"
            else:
                assert any(path.startswith(t + "/") for t in tmpfs), f"{name}: {path} not on tmpfs"


def test_edmm_follows_the_environment_like_gramine(monkeypatch: pytest.MonkeyPatch) -> None:
    assert render(**DEFINES)["sgx"]["edmm_enable"] is False
    monkeypatch.setenv("EDMM", "1")
    assert render(**DEFINES)["sgx"]["edmm_enable"] is True


def test_a_missing_define_fails_like_gramine_manifest() -> None:
    partial = {k: v for k, v in DEFINES.items() if k != "cas_url"}
    with pytest.raises(jinja2.UndefinedError, match="cas_url"):
        render(**partial)
