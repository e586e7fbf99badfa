"""The coordinator's workdir is private: directories 0700, files 0600.

It holds the engine database (keyed identifiers and attributes), the audit
log, released results, staged data from the nodes and the keys.  Outside an
enclave's encrypted mount, Unix permissions are what keeps other local users
out, so:

* at start, the workdir and anything inside it with a looser mode (made by
  an older version, a copy, an editor, ``mkdir`` under umask 022) are
  restricted to the owner, with a warning that says how many and that what
  was readable may already have been copied; a workdir whose modes cannot be
  changed (another user's) is refused with one line;
* files created here by third-party code (DuckDB, SQLite) follow the process
  umask, which the ``cleanroom coordinator`` and ``node`` commands set to
  0077 (:func:`private_umask`); SQLite's journal files take the mode of their
  database, which :func:`private_file` creates 0600 beforehand.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sgxcloud.cleanroom.errors import CleanroomError

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """Make every file this process creates private; returns the previous umask.

    For the long-running commands only (a process-wide setting): a library
    caller keeps its own umask and relies on the 0700 directories.
    """
    return os.umask(PRIVATE_UMASK)


def open_to_others(path: Path) -> int | None:
    """The mode of ``path`` if group or others have any access to it, else None."""
    mode = stat.S_IMODE(path.lstat().st_mode)
    return mode if mode & 0o077 else None


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents of it inside the workdir) with mode 0700."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if open_to_others(path) is not None:
        path.chmod(DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if missing (before a library opens it)."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        if open_to_others(path) is not None:
            path.chmod(FILE_MODE)
    return path


def prepare_workdir(workdir: Path, *, refused_elsewhere: tuple[str, ...] = ()) -> None:
    """Create the workdir 0700, or restrict an existing one and everything inside.

    Files under the subdirectories named in ``refused_elsewhere`` are left
    alone: their owner refuses them when loose (a key others could read may
    already be known; tightening it would hide that).  Raises
    :class:`CleanroomError` (one line, with the fix) when the modes cannot be
    changed.
    """
    if not workdir.exists():
        private_dir(workdir)
        return
    if not workdir.is_dir():
        raise CleanroomError(f"{workdir}: not a directory")
    loose: list[tuple[Path, int]] = []
    candidates = [(workdir, DIR_MODE)]
    for root, dirs, files in os.walk(workdir):
        candidates += [(Path(root) / name, DIR_MODE) for name in dirs]
        if Path(root).relative_to(workdir).parts[:1] not in {(d,) for d in refused_elsewhere}:
            candidates += [(Path(root) / name, FILE_MODE) for name in files]
    for path, mode in candidates:
        if path.is_symlink() or open_to_others(path) is None:
            continue
        try:
            path.chmod(mode)
        except OSError as exc:
            raise CleanroomError(
                f"{path}: open to other users and cannot be restricted ({exc.strerror}); "
                f"run 'chmod -R go= {workdir}' as its owner"
            ) from exc
        loose.append((path, mode))
    if loose:
        log.warning(
            "%s: %d file(s) or directories were open to other users (keyed "
            "identifiers, results, keys; they may have been copied) and are now "
            "restricted to the owner (0600/0700)",
            workdir,
            len(loose),
        )
