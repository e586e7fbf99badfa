"""Run Prometheus's own ``promtool`` (Debian package ``prometheus``) on our output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def promtool() -> str:
    path = shutil.which("promtool")
    # scripts/bootstrap installs it; a missing promtool is a broken setup, not a skip.
    assert path, "promtool not found: install the Debian package 'prometheus' (scripts/bootstrap)"
    return path


def check_metrics(exposition: bytes | str) -> None:
    """``promtool check metrics``: format and naming (units, _total, help) lint."""
    data = exposition.encode() if isinstance(exposition, str) else exposition
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=data, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout.decode() + done.stderr.decode()
    )


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` parsed by prometheus_client's parser."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def names(exposition: bytes | str) -> set[str]:
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}
