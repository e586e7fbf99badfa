"""Read a machine's files under a root directory, failing in words, not tracebacks.

Every check runs against ``/`` on a live machine or against a recorded copy of
the relevant files (``--root DIR``), so paths are always given as they appear
on the machine (``/proc/cpuinfo``) and resolved under the root here.  A file
that is missing, unreadable, a directory, or gone because its process exited
becomes a :class:`TreeReadError` whose message names the path and the reason,
ready to be shown in a finding.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sgxcloud.errors import InputError
from sgxcloud.nova.errors import MissingFile as MissingFile
from sgxcloud.nova.errors import TreeReadError as TreeReadError

MAX_READ = 4 * 1024 * 1024  # smaps of a big QEMU is ~1 MiB; refuse runaway files
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class NodeInfo:
    """What ``stat`` says about a device node or file, in the terms ``ls -l`` uses."""

    path: str
    is_char_device: bool
    mode: int  # permission bits only, e.g. 0o660
    uid: int
    gid: int
    rdev: tuple[int, int] | None

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}"


class HostTree:
    """A machine's file system seen from ``root`` (``/`` for the live machine)."""

    def __init__(self, root: str | os.PathLike[str] = "/") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"--root {self.root}: not a directory")

    @property
    def is_live(self) -> bool:
        """True when looking at the running machine, where commands may be run."""
        return self.root.resolve() == Path("/")

    def path(self, machine_path: str) -> Path:
        return self.root / machine_path.lstrip("/")

    def exists(self, machine_path: str) -> bool:
        return os.path.lexists(self.path(machine_path))

    def read_text(self, machine_path: str) -> str:
        """The file's text; raise :class:`TreeReadError` with a readable reason."""
        return self.read_bytes(machine_path).decode("utf-8", errors="replace")

    def read_bytes(self, machine_path: str) -> bytes:
        target = self.path(machine_path)
        try:
            with open(target, "rb") as handle:
                data = _read_limited(handle)
        except FileNotFoundError:
            raise MissingFile(machine_path, "does not exist") from None
        except ProcessLookupError:
            raise MissingFile(machine_path, "its process has exited") from None
        except IsADirectoryError:
            raise TreeReadError(machine_path, "is a directory, expected a file") from None
        except PermissionError:
            raise TreeReadError(machine_path, "permission denied (run as root?)") from None
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise MissingFile(machine_path, "its process has exited") from None
            raise TreeReadError(machine_path, exc.strerror or type(exc).__name__) from None
        if len(data) > MAX_READ:
            raise TreeReadError(machine_path, f"larger than {MAX_READ} bytes")
        return data

    def read_int(self, machine_path: str) -> int:
        """A sysfs-style file holding one decimal integer."""
        text = self.read_text(machine_path).strip()
        try:
            value = int(text, 10)
        except ValueError:
            shown = text[:40].encode("unicode_escape").decode()
            raise TreeReadError(machine_path, f"not an integer: {shown!r}") from None
        if value < 0:
            raise TreeReadError(machine_path, f"negative value {value}")
        return value

    def stat_node(self, machine_path: str) -> NodeInfo:
        target = self.path(machine_path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise MissingFile(machine_path, "does not exist") from None
        except OSError as exc:
            raise TreeReadError(machine_path, exc.strerror or type(exc).__name__) from None
        is_chr = stat.S_ISCHR(st.st_mode)
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if is_chr else None
        return NodeInfo(machine_path, is_chr, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, rdev)

    def glob(self, machine_pattern: str) -> list[str]:
        """Machine paths matching a glob, sorted naturally (node2 before node10)."""
        matches = self.root.glob(machine_pattern.lstrip("/"))
        paths = ["/" + str(p.relative_to(self.root)) for p in matches]
        return sorted(paths, key=_natural_key)

    def listdir(self, machine_path: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(machine_path)), key=_natural_key)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TreeReadError(machine_path, exc.strerror or type(exc).__name__) from None

    def group_names(self) -> dict[int, str]:
        """gid -> name from the tree's ``/etc/group`` (not this machine's)."""
        return {gid: name for name, (gid, _members) in self._groups().items()}

    def group_name(self, gid: int) -> str:
        return self.group_names().get(gid, str(gid))

    def user_primary_gid(self, user: str) -> int | None:
        return self._passwd_number(user, 3)

    def user_uid(self, user: str) -> int | None:
        return self._passwd_number(user, 2)

    def user_gids(self, user: str) -> set[int]:
        """The primary group and every supplementary group of ``user``."""
        gids = {gid for name, (gid, members) in self._groups().items() if user in members}
        primary = self.user_primary_gid(user)
        return gids | ({primary} if primary is not None else set())

    def _passwd_number(self, user: str, field: int) -> int | None:
        """A numeric field of ``user``'s line in the tree's ``/etc/passwd``."""
        try:
            text = self.read_text("/etc/passwd")
        except TreeReadError:
            return None
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) > field and parts[0] == user and parts[field].isdigit():
                return int(parts[field])
        return None

    def _groups(self) -> dict[str, tuple[int, list[str]]]:
        try:
            text = self.read_text("/etc/group")
        except TreeReadError:
            return {}
        groups: dict[str, tuple[int, list[str]]] = {}
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit():
                members = [m for m in parts[3].split(",") if m]
                groups[parts[0]] = (int(parts[2]), members)
        return groups


def _read_limited(handle: BinaryIO) -> bytes:
    # Small reads: procfs sysctl files fail with ENOMEM on one multi-megabyte read.
    chunks = []
    size = 0
    while size <= MAX_READ:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
