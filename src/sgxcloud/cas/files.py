"""Files and directories created with their final mode from the first byte.

``open``/``mkdir`` filter the requested mode through the process umask, and
``chmod`` after writing leaves a window in which others can read (or, under a
permissive umask, edit) the file.  These helpers pass the mode to the
creating call and then set it exactly with ``fchmod``/``chmod``, so neither a
permissive nor a strict umask changes what the service promises.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600
PUBLIC = 0o644
PRIVATE_DIR = 0o700
PUBLIC_DIR = 0o755


def make_dir(path: Path, mode: int = PRIVATE_DIR) -> None:
    """Create ``path`` (and missing parents, with ``mode``); set ``mode`` on ``path`` itself."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for directory in reversed(missing):
        directory.mkdir(mode=mode, exist_ok=True)
        directory.chmod(mode)
    path.chmod(mode)


def write_file(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, never readable more widely meanwhile."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode & ~0o077)
    try:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_TRUNC
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd != -1:
            os.close(fd)


def new_private_file(path: Path) -> None:
    """An empty 0600 file at ``path`` (a stale one left by a crash is replaced)."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))


def writable_by_others(path: Path) -> bool:
    """Whether group or others may change ``path`` (a sticky directory's files aside)."""
    return bool(path.stat().st_mode & 0o022)
