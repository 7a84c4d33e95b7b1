"""kernel.perf_event_paranoid while autonumad runs, when the config asks for it.

The write-fault sampler opens perf software events on other processes' threads.
Upstream, CAP_PERFMON allows that at any paranoia level; Debian's kernels add a
level 3 (their default) that refuses perf_event_open to every process without
CAP_SYS_ADMIN, so under the unit (which does not grant CAP_SYS_ADMIN) the sampler
gets EACCES and the daemon places by page location and thread CPU only. With
`[kernel] perf_event_paranoid = "lower"` the unit's privileged ExecStartPre helper
lowers the sysctl to 2 (the upstream default: unprivileged users may still profile
only their own user-space code) while the daemon runs and the ExecStopPost helper
puts the value it found back; like kernel.numa_balancing, the value found is
recorded in the state file before it is changed, so a crash and restart still
restore the right one.
"""

from __future__ import annotations

from autonumad.constants import PERF_EVENT_PARANOID_SYSCTL
from autonumad.kernel.files import KernelFiles
from autonumad.state_file import DaemonState

SAMPLING_LEVEL = 2
"""The highest level at which CAP_PERFMON opens events on other users' threads."""


def read_perf_event_paranoid(files: KernelFiles) -> int | None:
    """The sysctl's value, or None on a kernel without perf events."""
    if not files.exists(PERF_EVENT_PARANOID_SYSCTL):
        return None
    try:
        return int(files.read_text(PERF_EVENT_PARANOID_SYSCTL).strip())
    except ValueError:
        return None


def lower_perf_event_paranoid(files: KernelFiles, state: DaemonState, save) -> str:
    """Lower the sysctl to SAMPLING_LEVEL if it is above, recording the original first."""
    current = read_perf_event_paranoid(files)
    if current is None:
        return "kernel has no perf events"
    if current <= SAMPLING_LEVEL and state.perf_event_paranoid_original is None:
        return f"kernel.perf_event_paranoid {current}: write-fault sampling allowed, left as it is"
    if state.perf_event_paranoid_original is None:
        state.perf_event_paranoid_original = str(current)
        save(state)
    if current > SAMPLING_LEVEL:
        files.write_text(PERF_EVENT_PARANOID_SYSCTL, str(SAMPLING_LEVEL))
        return (f"kernel.perf_event_paranoid {current} -> {SAMPLING_LEVEL} for write-fault sampling "
                f"(restored on exit)")
    return (f"kernel.perf_event_paranoid already {current} "
            f"(original {state.perf_event_paranoid_original})")


def restore_perf_event_paranoid(files: KernelFiles, state: DaemonState, save) -> str:
    """Put back the recorded original value, if there is one; returns what happened."""
    original = state.perf_event_paranoid_original
    if original is None:
        return "kernel.perf_event_paranoid untouched"
    if read_perf_event_paranoid(files) is not None:
        files.write_text(PERF_EVENT_PARANOID_SYSCTL, original)
    state.perf_event_paranoid_original = None
    save(state)
    return f"kernel.perf_event_paranoid restored to {original}"
