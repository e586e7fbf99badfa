"""Put the ``sgx_guard`` filter into a Nova api-paste.ini.

One transform for every place that needs it: the functional harness, the
kolla-ansible image build (``python -m sgxcloud.nova.api.paste SRC DEST``)
and operators editing the file by hand (docs/nova/operator-guide.md).  The
guard goes right before ``osapi_compute_app_v21`` in every compute API
pipeline, so it sees requests after authentication, as the app does.

No Nova import: it runs at image build time too.
"""

from __future__ import annotations

import argparse
import configparser
import sys

FILTER_NAME = "sgx_guard"
FILTER_FACTORY = "sgxcloud.nova.api.middleware:SGXActionGuard.factory"
APP_NAME = "osapi_compute_app_v21"
FILTER_SECTION = f"""
[filter:{FILTER_NAME}]
paste.filter_factory = {FILTER_FACTORY}
"""


class PasteError(ValueError):
    """The file is not a Nova api-paste.ini we can add the guard to."""


def with_sgx_guard(text: str) -> str:
    """``text`` (Nova's api-paste.ini) with the guard; unchanged if it has it."""
    if f"[filter:{FILTER_NAME}]" in text:
        return text
    lines = text.splitlines(keepends=True)
    changed = 0
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=")
        words = value.split()
        if sep and not line.lstrip().startswith(("#", ";")) and words[-1:] == [APP_NAME]:
            words.insert(len(words) - 1, FILTER_NAME)
            lines[index] = f"{key.rstrip()} = {' '.join(words)}\n"
            changed += 1
    if not changed:
        raise PasteError(f"no pipeline ends in {APP_NAME}: not Nova's api-paste.ini")
    result = "".join(lines)
    if not result.endswith("\n"):
        result += "\n"
    return result + FILTER_SECTION


def pipelines(text: str) -> dict[str, list[str]]:
    """Every pipeline of a paste file: section/key -> its words (for checks)."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read_string(text)
    found = {}
    for section in parser.sections():
        if section.startswith("pipeline:"):
            found[section] = parser.get(section, "pipeline").split()
        elif section.startswith("composite:") and "pipeline_factory" in parser.get(
            section, "use", fallback=""
        ):
            for key, value in parser.items(section):
                if key != "use":
                    found[f"{section}/{key}"] = value.split()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sgxcloud.nova.api.paste",
        description="Write Nova's api-paste.ini with the sgx_guard filter added.",
    )
    parser.add_argument("source", help="Nova's api-paste.ini (e.g. /etc/nova/api-paste.ini)")
    parser.add_argument("dest", help="where to write the guarded copy ('-' for stdout)")
    args = parser.parse_args(argv)
    try:
        with open(args.source, encoding="utf-8") as handle:
            guarded = with_sgx_guard(handle.read())
    except (OSError, PasteError) as exc:
        print(f"error: {args.source}: {exc}", file=sys.stderr)
        return 1
    if args.dest == "-":
        sys.stdout.write(guarded)
    else:
        with open(args.dest, "w", encoding="utf-8") as handle:
            handle.write(guarded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
