"""Release notes follow OpenStack's reno convention and pass ``reno lint``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTES = ROOT / "releasenotes/notes"
SECTIONS = {
    "prelude",
    "features",
    "issues",
    "upgrade",
    "deprecations",
    "critical",
    "security",
    "fixes",
    "other",
}


def test_reno_lint_passes():
    reno = shutil.which("reno") or str(Path(sys.executable).with_name("reno"))
    done = subprocess.run(
        [reno, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_notes_are_reno_yaml_with_known_sections():
    notes = sorted(NOTES.glob("*.yaml"))
    assert notes
    for note in notes:
        # reno new names notes <slug>-<16 hex digits>.yaml
        assert len(note.stem.rsplit("-", 1)[-1]) == 16, note.name
        body = yaml.safe_load(note.read_text())
        assert isinstance(body, dict) and set(body) <= SECTIONS, (note.name, set(body))
        for section, entries in body.items():
            if section != "prelude":
                assert isinstance(entries, list) and all(
                    isinstance(e, str) and e.strip() for e in entries
                ), (note.name, section)


def test_every_behaviour_change_of_the_release_matrix_has_an_upgrade_note():
    upgrade = " ".join(
        entry
        for note in NOTES.glob("*.yaml")
        for entry in yaml.safe_load(note.read_text()).get("upgrade", [])
    )
    for change in ("nova>=29,<35", "admin", "init_host", "nova.config"):
        assert change in upgrade, change
