"""The file half of the I/O layer: every read and write of /proc and /sys goes through here.

`KernelFiles(root)` resolves kernel paths (given without a leading slash, e.g.
"proc/1/numa_maps") under `root`, so tests point it at a fixture tree. In dry-run
mode writes are recorded in `writes` instead of made (the damo model): that is the
test seam and `autonumad --dry-run`.

Under /proc it follows no symlink it did not expect: the file (or directory) a
path names is opened with O_NOFOLLOW, so a symlink there (/proc/PID/exe, cwd,
root, fd/N are the kernel's own; a fixture tree or a bind mount could hold more)
is refused with `UnexpectedSymlink`, which callers handle as `AccessDenied` (the
process is skipped). The path's directories are numeric PID and TID directories
and fixed names, which procfs never makes symlinks; the one expected symlink is
`proc/self` (the daemon's own status).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field


class ProcessGone(OSError):
    """The process or thread went away (ENOENT/ESRCH on its /proc entry or a syscall)."""


class AccessDenied(OSError):
    """The kernel refused access (EPERM/EACCES)."""


class UnexpectedSymlink(AccessDenied):
    """A path under /proc named a symlink, which the daemon refuses to follow."""


def map_os_error(exc: OSError) -> OSError:
    """The one error mapping: ENOENT/ESRCH -> ProcessGone, EPERM/EACCES -> AccessDenied."""
    if isinstance(exc, (ProcessGone, AccessDenied)):
        return exc
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return ProcessGone(exc.errno, exc.strerror, exc.filename)
    if exc.errno in (errno.EPERM, errno.EACCES):
        return AccessDenied(exc.errno, exc.strerror, exc.filename)
    return exc


READ_CHUNK = 1 << 16
"""Bytes asked for by each read of KernelFiles.read_bytes (a /proc stat file fits in one)."""


@dataclass
class KernelFiles:
    root: str = "/"
    dry_run: bool = False
    writes: list[tuple[str, str]] = field(default_factory=list)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def _open(self, rel: str, flags: int) -> int:
        """A descriptor for kernel path `rel`; under /proc, never through a symlink at its end."""
        path = self.path(rel)
        nofollow = _under_proc(rel)
        try:
            return os.open(path, flags | os.O_CLOEXEC | (os.O_NOFOLLOW if nofollow else 0))
        except OSError as exc:
            if nofollow and exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
                raise UnexpectedSymlink(errno.ELOOP, "refusing to follow a symlink under /proc", path) from None
            raise map_os_error(exc) from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("ascii", errors="replace")

    def read_bytes(self, rel: str) -> bytes:
        """The whole file, read straight from its descriptor: no file object (whose setup
        costs three more system calls a read, for the daemon's thousands of small
        /proc files a pass)."""
        fd = self._open(rel, os.O_RDONLY)
        try:
            chunks = []
            while True:
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        except OSError as exc:
            raise map_os_error(exc) from None
        finally:
            os.close(fd)

    def read_spans(self, rel: str, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes at each (offset, length) of kernel file `rel`, read through one
        descriptor (pread): for files read by position, such as /proc/PID/pagemap."""
        fd = self._open(rel, os.O_RDONLY)
        try:
            return [os.pread(fd, length, offset) for offset, length in spans]
        except OSError as exc:
            raise map_os_error(exc) from None
        finally:
            os.close(fd)

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        fd = self._open(rel, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        except OSError as exc:
            raise map_os_error(exc) from None
        finally:
            os.close(fd)

    def write_text(self, rel: str, value: str) -> None:
        """Write `value` to a kernel file, or only record it in dry-run mode."""
        self.writes.append((rel, value))
        if self.dry_run:
            return
        fd = self._open(rel, os.O_WRONLY | os.O_TRUNC)
        try:
            with open(fd, "w", encoding="ascii", closefd=False) as f:
                f.write(value)
        except OSError as exc:
            raise map_os_error(exc) from None
        finally:
            os.close(fd)


def _under_proc(rel: str) -> bool:
    """Whether `rel` lies under /proc, and not under the expected symlink proc/self."""
    parts = rel.lstrip("/").split("/")
    return parts[0] == "proc" and len(parts) > 1 and parts[1] not in ("self", "thread-self")
