"""kernel.numa_balancing while autonumad runs: turned off so the kernel's balancer does
not fight ours, and put back as it was on exit.

The value found is recorded in the state file before it is changed, so a daemon
that crashed and restarted (or the unit's ExecStopPost helper) restores the
original, not the 0 it wrote itself.
"""

from __future__ import annotations

from autonumad.constants import NUMA_BALANCING_SYSCTL
from autonumad.kernel.files import KernelFiles
from autonumad.state_file import DaemonState


def read_numa_balancing(files: KernelFiles) -> str | None:
    """The sysctl's value, or None on a kernel without NUMA balancing."""
    if not files.exists(NUMA_BALANCING_SYSCTL):
        return None
    return files.read_text(NUMA_BALANCING_SYSCTL).strip()


def disable_numa_balancing(files: KernelFiles, state: DaemonState, save) -> str:
    """Turn kernel NUMA balancing off, recording the original first; returns what happened."""
    current = read_numa_balancing(files)
    if current is None:
        return "kernel has no NUMA balancing"
    if state.numa_balancing_original is None:
        state.numa_balancing_original = current
        save(state)
    if current != "0":
        files.write_text(NUMA_BALANCING_SYSCTL, "0")
        return f"kernel.numa_balancing {current} -> 0 (restored on exit)"
    return f"kernel.numa_balancing already 0 (original {state.numa_balancing_original})"


def restore_numa_balancing(files: KernelFiles, state: DaemonState, save) -> str:
    """Put back the recorded original value, if there is one; returns what happened."""
    original = state.numa_balancing_original
    if original is None:
        return "kernel.numa_balancing untouched"
    if read_numa_balancing(files) is not None:
        files.write_text(NUMA_BALANCING_SYSCTL, original)
    state.numa_balancing_original = None
    save(state)
    return f"kernel.numa_balancing restored to {original}"
