"""Run every benchmark and gather their figures into docs/benchmarks.md.

Each benchmark compares against a baseline measured in the same run and
writes its own section to docs/benchmarks/<area>.md; this script runs them
one after another (never in parallel: the machine has 2 shared cores) and
concatenates the sections.  Usage::

    .venv/bin/python benchmarks/run_all.py [--only scheduler cas cleanroom]
        [--skip-run] [--cleanroom-rows N]

``--skip-run`` only re-assembles docs/benchmarks.md from the sections.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {
    "scheduler": ("bench_scheduler.py", "scheduler.md"),
    "cas": ("bench_cas.py", "cas.md"),
    "cleanroom": ("bench_cleanroom.py", "cleanroom.md"),
}
HEADER = """# Benchmarks

Figures from `benchmarks/` (one command: `.venv/bin/python benchmarks/run_all.py`).
Every benchmark measures its baseline in the same run, on the same machine,
and reports ratios: these machines are 2 shared, noisy cores, so absolute
numbers vary from run to run while ratios hold better.  Each section says
when and on what it was measured.  None of this is SGX hardware.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument(
        "--skip-run",
        action="store_true",
        help="Only rebuild docs/benchmarks.md from existing sections.",
    )
    parser.add_argument(
        "--cleanroom-rows",
        type=int,
        default=None,
        help="Rows per provider for the clean-room benchmark.",
    )
    args = parser.parse_args()
    if not args.skip_run:
        for name in args.only:
            script, _ = SECTIONS[name]
            argv = [sys.executable, str(ROOT / "benchmarks" / script)]
            if name == "cleanroom" and args.cleanroom_rows:
                argv += ["--rows", str(args.cleanroom_rows)]
            print(f"== {name}: {' '.join(argv[1:])}", flush=True)
            if subprocess.run(argv, cwd=ROOT, check=False).returncode != 0:
                print(f"benchmark {name} failed", file=sys.stderr)
                return 1
    parts = [HEADER]
    for name, (_, section) in SECTIONS.items():
        path = ROOT / "docs" / "benchmarks" / section
        parts.append(
            path.read_text().strip() if path.exists() else f"## {name}\n\nNot measured yet."
        )
    (ROOT / "docs" / "benchmarks.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
