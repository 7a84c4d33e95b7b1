"""Every path and default autonumad uses, in one place (the tuned model)."""

CONFIG_PATH = "/etc/autonumad.conf"
RUNTIME_DIR = "/run/autonumad"
CONTROL_SOCKET_PATH = "/run/autonumad/control.sock"
STATE_DIR = "/var/lib/autonumad"
STATE_FILE_PATH = "/var/lib/autonumad/state.json"

SYSFS_NODE_DIR = "sys/devices/system/node"
SYSFS_CPU_DIR = "sys/devices/system/cpu"
KERNEL_CMDLINE = "proc/cmdline"
NUMA_BALANCING_SYSCTL = "proc/sys/kernel/numa_balancing"
PERF_EVENT_PARANOID_SYSCTL = "proc/sys/kernel/perf_event_paranoid"

PAGE_SIZE = 4096
LOCAL_NODES_MAX = 64
"""The scanner names the nodes a process's threads run on in a 64-bit mask (numa_calls.scan_ranges)."""
