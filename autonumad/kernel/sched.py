"""Thread CPU affinity: the sched_getaffinity/sched_setaffinity door of the I/O layer."""

from __future__ import annotations

from autonumad.kernel.files import map_os_error
import os


def get_affinity(tid: int) -> frozenset[int]:
    """CPUs thread `tid` may run on. Raises ProcessGone / AccessDenied."""
    try:
        return frozenset(os.sched_getaffinity(tid))
    except OSError as exc:
        raise map_os_error(exc) from None


def set_affinity(tid: int, cpus: frozenset[int] | set[int]) -> None:
    """Restrict thread `tid` to `cpus`. Raises ProcessGone / AccessDenied / OSError(EINVAL)."""
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as exc:
        raise map_os_error(exc) from None
