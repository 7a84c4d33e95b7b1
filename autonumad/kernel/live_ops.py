"""The actuator's door to the live kernel: affinity, CPUs online, page moves, process identity."""

from __future__ import annotations

from collections.abc import Sequence

from autonumad.constants import SYSFS_CPU_DIR
from autonumad.kernel import numa_calls, procfs, sched
from autonumad.kernel.files import KernelFiles, ProcessGone
from autonumad.nodelist import parse_list

SYSFS_CPU_ONLINE = f"{SYSFS_CPU_DIR}/online"
SYSFS_CPU_POSSIBLE = f"{SYSFS_CPU_DIR}/possible"


class LiveKernelOps:
    def __init__(self, files: KernelFiles) -> None:
        self.files = files

    def get_affinity(self, tid: int) -> frozenset[int]:
        return sched.get_affinity(tid)

    def set_affinity(self, tid: int, cpus: frozenset[int]) -> None:
        sched.set_affinity(tid, cpus)

    def online_cpus(self) -> frozenset[int]:
        """The CPUs online at this moment (read afresh: CPUs go offline and come back)."""
        return frozenset(parse_list(self.files.read_text(SYSFS_CPU_ONLINE)))

    def possible_cpus(self) -> frozenset[int]:
        """Every CPU the kernel could ever bring online: the affinity of a thread nobody restricted."""
        return frozenset(parse_list(self.files.read_text(SYSFS_CPU_POSSIBLE)))

    def move_pages(self, pid: int, addrs: Sequence[int], node: int) -> list[int]:
        return numa_calls.move_pages(pid, addrs, node)

    def start_time(self, pid: int) -> int | None:
        """The process's start time (clock ticks since boot), or None when it is gone."""
        try:
            return procfs.read_stat(self.files, pid).start_time_ticks
        except (ProcessGone, ValueError):
            return None

    def move_ranges(self, pid: int, ranges: Sequence[tuple[int, int]], from_node: int, to_node: int,
                    limit: int, resume: tuple[int, int]) -> numa_calls.RangeMoves:
        """Move up to `limit` pages of `ranges` that sit on `from_node` to `to_node`, from `resume` on."""
        return numa_calls.move_ranges(pid, ranges, from_node, to_node, limit, resume)
