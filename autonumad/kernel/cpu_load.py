"""How idle each CPU is, from two reads of /proc/stat: part of the I/O layer.

`/proc/stat` has one `cpuN` line per online CPU with the time it spent in each state
since boot (user nice system idle iowait irq softirq steal guest guest_nice, in
USER_HZ ticks; guest time is already counted in user and nice). A CPU's idle share
over an interval is (idle + iowait) / all of it, between two reads. Used by
`autonumactl advise` when the daemon is not running to answer it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from autonumad.kernel.files import KernelFiles

PROC_STAT = "proc/stat"
SAMPLE_SECONDS = 0.3


@dataclass(frozen=True)
class CpuTimes:
    idle: int   # idle + iowait ticks
    total: int  # ticks in every state (without the guest columns, counted twice otherwise)


def parse_cpu_times(text: str) -> dict[int, CpuTimes]:
    """Per-CPU times from the text of /proc/stat (the summary `cpu` line left out)."""
    times: dict[int, CpuTimes] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        ticks = [int(x) for x in rest.split()[:8]]
        if len(ticks) < 4:
            raise ValueError(f"{PROC_STAT}: short line for {name}: {line!r}")
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        times[int(name[3:])] = CpuTimes(idle=idle, total=sum(ticks))
    return times


def read_cpu_times(files: KernelFiles) -> dict[int, CpuTimes]:
    """Per-CPU times now; OSError if /proc/stat cannot be read, ValueError if it is malformed."""
    return parse_cpu_times(files.read_text(PROC_STAT))


def idle_shares(before: dict[int, CpuTimes], after: dict[int, CpuTimes]) -> dict[int, float]:
    """Each CPU's idle share (0..1) between two reads, for CPUs in both.

    A CPU whose counters did not move (no tick elapsed, as in a fixture tree) counts
    as idle: nothing ran on it that the kernel saw.
    """
    shares = {}
    for cpu, end in after.items():
        start = before.get(cpu)
        if start is None:
            continue
        total = end.total - start.total
        idle = end.idle - start.idle
        shares[cpu] = 1.0 if total <= 0 else min(1.0, max(0.0, idle / total))
    return shares


def measure_idle_shares(files: KernelFiles, seconds: float = SAMPLE_SECONDS,
                        sleep: Callable[[float], None] = time.sleep) -> dict[int, float]:
    """Each online CPU's idle share over the next `seconds`."""
    before = read_cpu_times(files)
    sleep(seconds)
    return idle_shares(before, read_cpu_times(files))
