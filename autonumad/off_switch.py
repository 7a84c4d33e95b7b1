"""The off switch, AutoNUMA-style: why autonumad is not balancing, if it is not.

Four reasons, checked in this order: `noautonuma` on the kernel command line (the
daemon sets up nothing and exits 0), a single-node machine (it idles at no cost),
`enabled = false` in the config, and `autonumactl disable` at runtime (both keep
the daemon answering `status` while it scans nothing).
"""

from __future__ import annotations

from autonumad.constants import KERNEL_CMDLINE
from autonumad.kernel.files import KernelFiles

NOAUTONUMA = "noautonuma"


def noautonuma_on_cmdline(files: KernelFiles) -> bool:
    try:
        return NOAUTONUMA in files.read_text(KERNEL_CMDLINE).split()
    except OSError:
        return False


def off_reason(*, noautonuma: bool, nodes_with_memory: int, config_enabled: bool,
               runtime_enabled: bool, config_path: str = "the config") -> str | None:
    """A sentence saying why balancing is off, or None when it is on."""
    if noautonuma:
        return "'noautonuma' is on the kernel command line"
    if nodes_with_memory <= 1:
        return "this machine has a single NUMA node: there is nothing to balance"
    if not config_enabled:
        return f"disabled in {config_path} (enabled = false)"
    if not runtime_enabled:
        return "disabled at runtime (autonumactl disable); 'autonumactl enable' turns it back on"
    return None
