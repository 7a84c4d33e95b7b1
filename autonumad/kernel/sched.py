"""Thread CPU affinity and the calling thread's nice: the sched_*affinity and
[gs]etpriority door of the I/O layer."""

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



def own_nice() -> int:
    """The calling thread's nice (Linux: PRIO_PROCESS 0 is the calling thread only)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def set_own_nice(nice: int) -> None:
    """Set the calling thread's nice. Lowering it needs CAP_SYS_NICE: raises
    OSError(EACCES/EPERM) without."""
    os.setpriority(os.PRIO_PROCESS, 0, nice)
