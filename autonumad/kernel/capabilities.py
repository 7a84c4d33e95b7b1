"""The daemon's own effective capabilities, from /proc/self/status (CapEff)."""

from __future__ import annotations

from autonumad.kernel.files import KernelFiles

CAP_SYS_PTRACE = 19
CAP_SYS_NICE = 23
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
NAMES = {CAP_SYS_PTRACE: "CAP_SYS_PTRACE", CAP_SYS_NICE: "CAP_SYS_NICE", CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
         CAP_PERFMON: "CAP_PERFMON"}


def effective_capabilities(files: KernelFiles) -> int:
    for line in files.read_text("proc/self/status").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing(mask: int, wanted: list[int]) -> list[str]:
    return [NAMES[c] for c in wanted if not mask >> c & 1]
