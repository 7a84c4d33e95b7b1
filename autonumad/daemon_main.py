"""`autonumad`: start the daemon (in the foreground; systemd's Type=notify unit runs it so).

    autonumad [--config PATH] [--dry-run] [--once] [--journal]
    autonumad --setup-kernel | --restore-kernel      (the unit's privileged helpers)
    autonumad --check-config [--config PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys

from autonumad import __version__
from autonumad.actuator import Actuator, MigrationRateLimit
from autonumad.config import ConfigError, load_config
from autonumad.constants import CONFIG_PATH
from autonumad.kernel.capabilities import CAP_PERFMON, CAP_SYS_NICE, CAP_SYS_PTRACE, effective_capabilities, missing
from autonumad.kernel.files import KernelFiles
from autonumad.kernel.live_ops import LiveKernelOps
from autonumad.log_setup import setup_logging
from autonumad.numa_balancing_sysctl import disable_numa_balancing, restore_numa_balancing
from autonumad.off_switch import noautonuma_on_cmdline
from autonumad.perf_event_paranoid_sysctl import lower_perf_event_paranoid, restore_perf_event_paranoid
from autonumad.state_file import StateFile
from autonumad.topology import TopologyError, read_topology

log = logging.getLogger("autonumad")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="autonumad", description=(
        "Userspace NUMA balancing daemon: moves threads to their memory and memory to its threads. "
        "Runs in the foreground (under systemd, or by hand); autonumactl talks to it."))
    p.add_argument("--config", default=CONFIG_PATH, help=f"config file (default {CONFIG_PATH})")
    p.add_argument("--foreground", action="store_true",
                   help="run in the foreground (the default; kept for scripts and the unit file)")
    p.add_argument("--dry-run", action="store_true", help="log the plan of each pass, change nothing")
    p.add_argument("--once", action="store_true", help="run one pass, print its plan and exit")
    p.add_argument("--journal", action="store_true", help="log to the systemd journal with structured fields")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="override the config's log_level")
    p.add_argument("--check-config", action="store_true", help="validate the config file and exit")
    p.add_argument("--setup-kernel", action="store_true",
                   help="turn kernel.numa_balancing off as the config says, recording the original (ExecStartPre)")
    p.add_argument("--restore-kernel", action="store_true",
                   help="restore kernel.numa_balancing and affinities from the state file (ExecStopPost)")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"autonumad {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = KernelFiles(args.root, dry_run=args.dry_run or args.once)
    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"autonumad: {exc}", file=sys.stderr)
        return 1 if not args.restore_kernel else restore_kernel(files, None)
    if args.check_config:
        print(f"{args.config}: OK")
        return 0
    setup_logging(args.log_level or config.daemon.log_level, args.journal)
    if args.restore_kernel:
        return restore_kernel(files, config.daemon.state_file)
    if noautonuma_on_cmdline(files):
        print("autonumad: 'noautonuma' is on the kernel command line: not starting, nothing set up.",
              file=sys.stderr)
        return 0
    if args.setup_kernel:
        return setup_kernel(files, config)
    if not (args.dry_run or args.once):
        lacking = missing(effective_capabilities(files), [CAP_SYS_PTRACE, CAP_SYS_NICE])
        if lacking:
            print(f"autonumad: missing capabilities {', '.join(lacking)}: it could not read or move other "
                  "users' processes. Run it as root or through the systemd unit (or use --dry-run).",
                  file=sys.stderr)
            return 1
        if config.scan.fault_sampling and missing(effective_capabilities(files), [CAP_PERFMON]):
            log.warning("no CAP_PERFMON: write-fault sampling may be refused for other users' processes")
    from autonumad.daemon import Daemon
    try:
        daemon = Daemon(config, args.config, files, dry_run=args.dry_run or args.once)
    except TopologyError as exc:
        print(f"autonumad: {exc}", file=sys.stderr)
        return 1
    if args.once:
        report = daemon.run_pass()
        print(f"pass: {report.processes} processes, {report.actions} actions, {report.duration_s:.2f} s")
        for line in report.lines:
            print(line)
        return 0
    return daemon.run()


def setup_kernel(files: KernelFiles, config) -> int:
    """The unit's privileged ExecStartPre helper: the sysctls the config asks to change."""
    balancing = config.kernel.numa_balancing == "disable"
    paranoid = config.kernel.perf_event_paranoid == "lower" and config.scan.fault_sampling
    if not (balancing or paranoid) or not config.daemon.enabled:
        return 0
    if len(read_topology(files).has_memory) <= 1:
        return 0
    state_file = StateFile(config.daemon.state_file)
    try:
        state = state_file.load()
    except ValueError as exc:
        print(f"autonumad: {exc}", file=sys.stderr)
        return 1
    if balancing:
        print(disable_numa_balancing(files, state, state_file.save))
    if paranoid:
        print(lower_perf_event_paranoid(files, state, state_file.save))
    return 0


def restore_kernel(files: KernelFiles, state_path: str | None) -> int:
    """Give back what the daemon (perhaps crashed) changed, from its state file."""
    from autonumad.constants import STATE_FILE_PATH
    state_file = StateFile(state_path or STATE_FILE_PATH)
    try:
        state = state_file.load()
    except ValueError as exc:
        print(f"autonumad: {exc}", file=sys.stderr)
        return 1
    topology = read_topology(files)
    actuator = Actuator(LiveKernelOps(files), lambda n: frozenset(topology.nodes[n].cpus), state, state_file,
                        MigrationRateLimit(1, 1000))
    restored = actuator.restore()
    print(f"restored the original affinity of {restored} threads")
    print(restore_numa_balancing(files, state, state_file.save))
    print(restore_perf_event_paranoid(files, state, state_file.save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
