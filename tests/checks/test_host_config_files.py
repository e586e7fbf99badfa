"""``host check`` finds nova-compute's configuration where deployments keep
it (kolla-ansible), reads repeated ``--config-file`` as oslo.config does, and
stays fast: the node check never imports Nova (nor eventlet)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from sgxcloud.cli.main import main
from sgxcloud.nova.checks import Status, check_host

KOLLA_CONF = "etc/kolla/nova-compute/nova.conf"


def finding(report, check):
    return next(f for f in report.findings if f.check == check)


def kolla_shaped(root):
    """A node as kolla-ansible leaves it: no /etc/nova, the config under /etc/kolla."""
    target = root / KOLLA_CONF
    target.parent.mkdir(parents=True)
    (root / "etc/nova/nova.conf").rename(target)
    (root / "etc/nova").rmdir()
    return root


def test_kolla_node_config_is_found_without_being_named(tree):
    report = check_host(kolla_shaped(tree("sgx-host-2numa")))
    assert report.ready, [f for f in report.findings if f.status is not Status.OK]
    assert "/etc/kolla/nova-compute/nova.conf" in finding(report, "nova.config").detail
    assert finding(report, "nova.compute_driver").status is Status.OK


def test_no_config_anywhere_names_both_places(tree):
    root = tree("sgx-host-2numa")
    (root / "etc/nova/nova.conf").unlink()
    config = finding(check_host(root), "nova.config")
    assert config.status is Status.FAILURE
    assert "/etc/nova/nova.conf" in config.detail
    assert "/etc/kolla/nova-compute/nova.conf" in config.detail
    assert "--config-file" in config.fix


def test_repeated_config_files_later_ones_win(tree, tmp_path):
    root = tree("sgx-host-2numa")
    base = root / "etc/nova/nova.conf"
    override = tmp_path / "override.conf"
    override.write_text("[DEFAULT]\ncompute_driver = libvirt.LibvirtDriver\n")
    # The SGX driver, then an override without it: not ready.
    report = check_host(root, config_files=["/etc/nova/nova.conf", str(override)])
    assert finding(report, "nova.compute_driver").status is Status.FAILURE
    # The other order: the node's file wins again.
    report = check_host(root, config_files=[str(override), "/etc/nova/nova.conf"])
    assert finding(report, "nova.compute_driver").status is Status.OK
    assert base.exists()


def test_named_config_file_that_is_missing_is_one_finding(tree):
    root = tree("sgx-host-2numa")
    config = finding(check_host(root, config_files=["/etc/nova/nova-compute.conf"]), "nova.config")
    assert config.status is Status.FAILURE
    assert "/etc/nova/nova-compute.conf" in config.detail


def test_cli_takes_config_file_more_than_once(tree, capsys):
    root = kolla_shaped(tree("sgx-host-2numa"))
    code = main(
        [
            "host",
            "check",
            "--root",
            str(root),
            "--json",
            "--config-file",
            "/" + KOLLA_CONF,
            "--config-file",
            "/" + KOLLA_CONF,
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    config = next(f for f in out["findings"] if f["check"] == "nova.config")
    assert config["status"] == "ok"


def test_host_check_never_imports_nova_and_warns_nothing(tree):
    root = tree("sgx-host-2numa")
    probe = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "from sgxcloud.cli.main import main\n"
        f"code = main(['host', 'check', '--root', {str(root)!r}, '--json'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'nova', 'eventlet'})\n"
        "assert not heavy, heavy\n"
        "sys.exit(code)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr, done.stderr
    # Importing Nova alone took 3 s of CPU (10-11 s on a busy node); the check
    # itself is well under a second.  Generous for a loaded CI machine.
    assert elapsed < 8, elapsed
