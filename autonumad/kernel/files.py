"""The file half of the I/O layer: every read and write of /proc and /sys goes through here.

`KernelFiles(root)` resolves kernel paths (given without a leading slash, e.g.
"proc/1/numa_maps") under `root`, so tests point it at a fixture tree. In dry-run
mode writes are recorded in `writes` instead of made (the damo model): that is the
test seam and `autonumad --dry-run`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field


class ProcessGone(OSError):
    """The process or thread went away (ENOENT/ESRCH on its /proc entry or a syscall)."""


class AccessDenied(OSError):
    """The kernel refused access (EPERM/EACCES)."""


def map_os_error(exc: OSError) -> OSError:
    """The one error mapping: ENOENT/ESRCH -> ProcessGone, EPERM/EACCES -> AccessDenied."""
    if isinstance(exc, (ProcessGone, AccessDenied)):
        return exc
    if exc.errno in (errno.ENOENT, errno.ESRCH):
        return ProcessGone(exc.errno, exc.strerror, exc.filename)
    if exc.errno in (errno.EPERM, errno.EACCES):
        return AccessDenied(exc.errno, exc.strerror, exc.filename)
    return exc


@dataclass
class KernelFiles:
    root: str = "/"
    dry_run: bool = False
    writes: list[tuple[str, str]] = field(default_factory=list)

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel.lstrip("/"))

    def read_text(self, rel: str) -> str:
        try:
            with open(self.path(rel), encoding="ascii", errors="replace") as f:
                return f.read()
        except OSError as exc:
            raise map_os_error(exc) from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read()
        except OSError as exc:
            raise map_os_error(exc) from None

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError as exc:
            raise map_os_error(exc) from None

    def write_text(self, rel: str, value: str) -> None:
        """Write `value` to a kernel file, or only record it in dry-run mode."""
        self.writes.append((rel, value))
        if self.dry_run:
            return
        try:
            with open(self.path(rel), "w", encoding="ascii") as f:
                f.write(value)
        except OSError as exc:
            raise map_os_error(exc) from None
