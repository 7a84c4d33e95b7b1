"""The daemon loop: observe, decide, act, pass after pass; and what it tells the world.

One pass: read the topology afresh (CPUs taken offline or brought back are
followed from the next pass on; a node left without online CPUs holds memory only
and gets no thread), discover the processes to balance, look at their threads (task
statistics), scan their memory (mm statistics, paced by the scan budget), poll the
write-fault sampler, build the policy's snapshot, ask the policy for a plan, and
hand the plan to the actuator (or, with --dry-run, print it). Between passes it
sleeps `scan_sleep_pass_millisecs`, or a fifth of that (at least 1 s) while the
last pass found something to do, the way AutoNUMA's scan interval shortens while
pages are misplaced, and twice as long at each quiet pass once the system has
settled, up to `scan_sleep_pass_max_millisecs` (the kernel's scan period backs off
so); until a write-fault window is due (or its writers stop faulting) when the next
pass awaits one, half a second for a second vote on moving page groups.

The control socket's handlers run on the server's thread. They read the status the
last pass published and make changes under `lock`, which the loop holds only
while it applies actions and swaps configuration, never while it sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from autonumad import __version__
from autonumad.actuator import Actuator, MigrationRateLimit, page_status_counts
from autonumad.config import Config, ConfigError, load_config
from autonumad.control_protocol import ProtocolError
from autonumad.control_server import ControlServer
from autonumad.kernel.files import KernelFiles, ProcessGone
from autonumad.kernel.live_ops import LiveKernelOps
from autonumad.kernel import cpu_load, procfs, sched
from autonumad.log_setup import set_level
from autonumad.mm_stats import MmStatsTable
from autonumad.nodelist import format_list
from autonumad.numa_balancing_sysctl import disable_numa_balancing, read_numa_balancing, restore_numa_balancing
from autonumad.perf_event_paranoid_sysctl import (lower_perf_event_paranoid, read_perf_event_paranoid,
                                                  restore_perf_event_paranoid)
from autonumad.off_switch import noautonuma_on_cmdline, off_reason
from autonumad.placement_advice import advise
from autonumad.plan import ExchangeTasks, MigratePages, MoveTask, Plan, PolicyState, task_moves
from autonumad.policy import PolicyConfig, Snapshot, plan_pass
from autonumad.policy_snapshot import (GroupRange, SnapshotBuilder, locality_bound, node_mb, own_mempolicy,
                                      process_locality)
from autonumad.processes import NewProcessWatch, ProcessDiscovery, ProcessFilter, ProcessInfo, ProcessKey
from autonumad.scan_pacing import ScanBudget
from autonumad.state_file import DaemonState, StateFile, ThreadKey
from autonumad.systemd_notify import Notifier
from autonumad.task_stats import SATURATION_CHECK_S, TaskStatsTable, WriteFaultSampler
from autonumad.topology import Topology, describe_cpu_changes, read_topology, refresh_topology

log = logging.getLogger("autonumad")

ACTIVE_PASS_FRACTION = 5
MIN_ACTIVE_PASS_S = 1.0
MIN_WINDOW_PASS_S = 0.1
"""The shortest pause after a pass that left write-fault windows open: it lasts until they
are all due (WriteFaultSampler.window_s from each one's arming, the kernel's
numa_balancing_scan_period_min_ms) and ends sooner when their writers stop faulting
(WriteFaultSampler.window_ready, looked at every SATURATION_CHECK_S)."""
VOTE_PASS_S = 0.5
"""The pause after a pass in which page groups asked to move for the first time: the next
pass, with threads and pages looked at afresh, is the second vote AutoNUMA's last_nid
filter waits for."""
WATCH_TICK_S = 0.5
"""How often the pause between passes looks at new processes growing (NewProcessWatch)."""
IDLE_WATCH_TICK_S = 1.0
"""How often it looks for a new process while none is growing (a look costs a few
milliseconds under TCG: most pauses are spent waiting for nothing)."""
MOVED_GROUP_SHARE = 0.9
"""A page group counts as moved when this share of its pages did (busy pages stay behind)."""
MOVER_NICE = -5
"""The nice of a thread while it moves pages (_mover_priority)."""
TOPOLOGY_FULL_READ_PASSES = 20
"""Every so many passes the topology is read in full; in between, only what changes
(online CPUs and nodes, free memory: topology.refresh_topology)."""
REARM_AFTER_S = 30.0
"""How often a process spread over nodes gets a pair of write-fault windows while things
move; once settled, every two pauses between passes (_pass_interval_ms); less often while
its pairs find nothing to move (WriteFaultSampler._rearm_after)."""
AT_BOUND_MARGIN = 0.05
"""A process below the locality target counts as settled, not misplaced, when its locality
is within this of its bound (policy_snapshot.locality_bound: its busy threads spread over
nodes, as one bigger than a node must be): no placement of its memory does better, so its
passes back off from the full interval, as a settled system's do."""
MIGRATE_WAIT_S = 1.0
"""How long a pass may wait in all for migration tokens before deferring the rest."""
IDLE_WAIT_S = 60.0
"""The longest wait of a daemon that is not balancing (one node, disabled): nothing it
looks at changes on its own; a signal, a reload or 'autonumactl enable' wakes it at once,
and it wakes as often as the systemd watchdog needs (half its WatchdogSec)."""
SLEEP_TICK_S = 1.0
"""How often the pause between passes checks whether balancing was turned off."""
WAKE_MIN_RSS_MB = 16
"""A process new since the last pass ends the sleep between passes once its RSS reaches
the larger of this and [policy] min_rss_mb (NewProcessWatch)."""
STUCK_GROUP_RETRY_S = 120.0
"""A page group none or few of whose pages would move is not tried again for this long."""
STUCK_MOVED_SHARE = 0.5
"""A page group of which fewer than this share of the pages tried moved counts as stuck."""
STUCK_SOURCE_MIN_TRIED = 64
"""A run of moves of one process from one node that tried this many pages or more, and
moved fewer than STUCK_MOVED_SHARE of them, sets that node's groups of the process aside
(stuck_sources): what is left there is mostly pages it shares (since a fork), and other
groups sampled there later would be mostly the same."""
CPU_CREDIT_WINDOW_S = 30.0
"""The CPU ceiling holds over this window: a quiet daemon may spend its credit at once
(the ceiling's share of it), so that a new misplacement is acted on without delay; over
any stretch of T seconds the daemon spends about the ceiling's share of T + this at most."""
SAMPLED_PROCESSES = 4
"""Processes whose write-fault windows may be open at once (WriteFaultSampler.max_armed):
the windows of processes spread over nodes at one pass run side by side, and the passes
that read them serve them all, rather than a pair of windows and its passes each in turn."""
OFF_NODE_SAMPLES = 1024
"""The scan of a process keeps up to this many of its sampled pages found off the nodes its
busy threads run on: where in each mapping they lie narrows what the mover walks
(policy_snapshot.mapping_groups; with more, the whole mapping is walked), and whether they
are its own or still shared since fork (MmSnapshot.off_node_shared) tells what is its own
to move (ProcessView.own_pages)."""
MAX_PIN_ANCESTORS = 8
"""How far up its parents a process's narrowed affinity is traced to a pin of ours it inherited."""


@contextlib.contextmanager
def _mover_on(cpus: Iterable[int]):
    """Run the calling thread on `cpus` (the destination node's CPUs, those of them it may
    use) while it moves pages there, then on the CPUs it had; yields whether it could.
    As the kernel's balancing migrates a page in the context of the thread that faulted
    on it, on the node it runs on: the copy writes local memory, and a busy thread of the
    process on that CPU is switched out while the mover runs, so unmapping a page needs
    no TLB shootdown there (a 4 KiB page moved to a busy thread's node costs about a
    quarter of the CPU it costs from another node, 4-node TCG VM). There the mover keeps
    the daemon's own nice and shares the CPU with that thread: at MOVER_NICE a long run of
    moves would starve it, and the next pass would take its node for idle."""
    restore, on_node = None, False
    try:
        allowed = sched.get_affinity(0)
        wanted = frozenset(cpus) & allowed
        if wanted and wanted != allowed:
            sched.set_affinity(0, wanted)
            restore = allowed
        on_node = bool(wanted)   # pinned there, or allowed no other CPUs (taskset, a cpuset)
    except OSError as exc:
        log.debug("page moves from the CPUs the daemon has (%s)", exc.strerror or exc)
    try:
        yield on_node
    finally:
        if restore is not None:
            try:
                sched.set_affinity(0, restore)
            except OSError as exc:  # never fail a pass for it
                log.warning("could not give thread %d back its CPUs %s (%s)", threading.get_native_id(),
                            format_list(sorted(restore)), exc.strerror or exc)


@contextlib.contextmanager
def _mover_priority():
    """Run the calling thread at MOVER_NICE while it moves pages from wherever it may run
    (when it cannot run on the destination node's CPUs: _mover_on), then back (Linux's
    setpriority on PRIO_PROCESS 0 sets the calling thread's nice only). A page is migrated
    in the mover's context, as the kernel's balancing migrates it in the context of the
    thread that faulted on it, and that thread waits until it is done: at the default
    nice the mover shares a CPU with a busy thread of the workload and a run of moves
    takes twice as long. Without CAP_SYS_NICE, or started at a lower nice, it moves
    at the nice it has."""
    before = sched.own_nice()
    try:
        if before <= MOVER_NICE:
            before = None
        else:
            sched.set_own_nice(MOVER_NICE)
    except OSError as exc:
        log.debug("page moves at the daemon's own priority (%s)", exc.strerror or exc)
        before = None
    try:
        yield
    finally:
        if before is not None:
            try:
                sched.set_own_nice(before)
            except OSError as exc:  # raising nice back needs no privilege; log, never fail
                log.warning("could not set the nice of thread %d back to %d (%s)",
                            threading.get_native_id(), before, exc.strerror or exc)


class _Interrupted(Exception):
    """The pass was cut short: stop, reload or disable was asked for."""


@dataclass
class _RunMoves:
    """What the mover did for one run: per group pages tried and moved, and how far it got."""
    result: str
    tried: list[int]
    moved: list[int]
    next_range: int   # the groups before this one were gone through completely


def policy_config(config: Config) -> PolicyConfig:
    return PolicyConfig(
        settle_seconds=float(config.policy.settle_seconds),
        node_reserve_mb=float(config.migrate.node_reserve_mb),
        node_reserve_percent=float(config.migrate.node_reserve_percent),
        cpu_follows_memory=config.policy.cpu_follows_memory,
        memory_follows_cpu=config.policy.memory_follows_cpu,
        pages_to_migrate=config.migrate.pages_to_migrate,
    )


@dataclass
class PassReport:
    at: float | None = None
    duration_s: float = 0.0
    actions: int = 0
    processes: int = 0
    new_processes: int = 0
    lines: list[str] = field(default_factory=list)
    windows_open: int = 0
    """Write-fault windows left open."""
    window_left_s: float = 0.0
    """Seconds until the first of them is due."""
    first_votes: int = 0
    """Page groups that asked to move for the first time."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds by part: the pause before the pass (watching for new processes, control
    requests), then the pass's own (discover, threads, memory, sampler, snapshot, plan, act,
    publish)."""

    def cpu_summary(self) -> str:
        parts = ", ".join(f"{part} {seconds:.2f}" for part, seconds in self.cpu_s.items() if part != "pause")
        pause = f"; pause before {self.cpu_s['pause']:.2f}" if "pause" in self.cpu_s else ""
        return f"{sum(v for k, v in self.cpu_s.items() if k != 'pause'):.2f} CPU s ({parts}{pause})"


def _decision_line(action, result: str) -> str:
    """One decision as the log and the pass report give it: what, and how it went."""
    return f"{action.describe()} [{result}]"


class _PartClock:
    """CPU seconds between marks, by the part of a pass just finished."""

    def __init__(self, pause_from: float | None) -> None:
        self._last = time.process_time()
        self.parts: dict[str, float] = {} if pause_from is None else {"pause": self._last - pause_from}

    def mark(self, part: str) -> None:
        now = time.process_time()
        self.parts[part] = self.parts.get(part, 0.0) + now - self._last
        self._last = now


class Daemon:
    def __init__(self, config: Config, config_path: str, files: KernelFiles, dry_run: bool = False,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.files = files
        self.dry_run = dry_run
        self.notifier = notifier or Notifier()
        self.lock = threading.RLock()
        self.stop_event = threading.Event()
        self._stop_requested = False  # set by SIGTERM/SIGINT; the loop turns it into stop_event
        # A byte on this socket pair ends any pause of the main loop: written by signal
        # handlers (a plain send, no lock a handler could wait for on the thread it interrupted)
        # and by control-socket handlers that change what the loop should do.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.reload_requested = False
        self.runtime_enabled = True
        self.started_at = time.time()
        self.counters: Counter = Counter()
        self.last_pass = PassReport()
        self._pass_cpu_end: float | None = None  # process CPU time when the last pass ended
        self._growing: set[int] = set()  # PIDs of the processes growing at the last pass
        self._quiet_passes = 0  # passes in a row that did nothing and left nothing awaited
        self._settled_passes = 0  # of them, in a row with every process placed
        self.published: dict[str, Any] = {"managed_processes": [], "managed_threads": {}}
        self.noautonuma = noautonuma_on_cmdline(files)
        self.topology: Topology = read_topology(files)
        self._cpu_times: dict[int, cpu_load.CpuTimes] | None = None
        self.migrate_wait_s = MIGRATE_WAIT_S
        self.state_file = StateFile(config.daemon.state_file)
        self.state = self._load_state()
        self.actuator = Actuator(LiveKernelOps(files), self._node_cpus, self.state,
                                 None if dry_run else self.state_file,
                                 MigrationRateLimit(config.migrate.pages_to_migrate,
                                                    config.migrate.migrate_sleep_millisecs),
                                 boot_ticks=self._boot_ticks)
        self.discovery = ProcessDiscovery(files, ProcessFilter.from_config(config))
        self.new_processes = NewProcessWatch(files, self._wake_rss_kb())
        self._between_passes = False
        self.mm = MmStatsTable.from_config(files, config, n_nodes=len(self.topology.has_memory))
        self.tasks = TaskStatsTable(self.topology.cpu_nodes)
        self.sampler = WriteFaultSampler(files, self.tasks, enabled=config.scan.fault_sampling,
                                         max_armed=SAMPLED_PROCESSES)
        self.budget = ScanBudget.from_config(config.scan, sleep=self._sleep, credit_window_s=CPU_CREDIT_WINDOW_S)
        self.builder = SnapshotBuilder()
        self.policy_state = PolicyState()
        self.policy_config = policy_config(config)
        self.groups: dict[tuple[int, int], dict[int, GroupRange]] = {}
        self.rng = random.Random()
        self.server: ControlServer | None = None
        self.managed_keys: list[ProcessKey] = []
        self.stuck_groups: dict[tuple[int, int, int], float] = {}
        self._quiet: set[ProcessKey] = set()
        """Processes quiet at the last pass (_quiet_after)."""
        self.stuck_sources: dict[tuple[int, int, int], float] = {}
        """(pid, start time, node) -> until when its groups on that node are left alone."""
        self._not_inherited: dict[ThreadKey, frozenset[int]] = {}
        """Threads whose narrowed affinity was traced last pass and is no pin of ours."""
        self._not_inherited_next: dict[ThreadKey, frozenset[int]] = {}

    # ------------------------------------------------------------------ set-up and tear-down
    def _load_state(self) -> DaemonState:
        try:
            return self.state_file.load()
        except ValueError as exc:
            aside = self.state_file.path + ".corrupt"
            log.error("%s; kept as %s, starting with an empty record", exc, aside)
            try:
                os.replace(self.state_file.path, aside)
            except OSError:
                pass
            return DaemonState()

    def _save_state(self, state: DaemonState) -> None:
        if not self.dry_run:
            self.state_file.save(state)

    def _node_cpus(self, node: int) -> frozenset[int]:
        n = self.topology.nodes.get(node)
        return frozenset(n.cpus) if n else frozenset()

    def off_reason(self) -> str | None:
        return off_reason(noautonuma=self.noautonuma, nodes_with_memory=len(self.topology.has_memory),
                          config_enabled=self.config.daemon.enabled, runtime_enabled=self.runtime_enabled,
                          config_path=self.config_path)

    def balancing(self) -> bool:
        return self.off_reason() is None

    def start_control_socket(self) -> None:
        handlers = {
            "status": self.handle_status, "stats": self.handle_stats, "show": self.handle_show,
            "get": self.handle_get, "set": self.handle_set, "config": self.handle_config,
            "enable": self.handle_enable, "disable": self.handle_disable, "reload": self.handle_reload,
            "advise": self.handle_advise,
        }
        self.server = ControlServer(self.config.daemon.control_socket, handlers,
                                    self.config.daemon.control_group or None, files=self.files)
        self.server.start()

    def take_kernel_balancing(self) -> None:
        if not self.balancing():
            return
        if self.config.kernel.numa_balancing == "disable":
            try:
                log.info(disable_numa_balancing(self.files, self.state, self._save_state))
            except OSError as exc:
                log.warning("cannot turn kernel.numa_balancing off (%s): it may fight autonumad; "
                            "the service's ExecStartPre helper does this with CAP_SYS_ADMIN",
                            exc.strerror or exc)
        if self.config.kernel.perf_event_paranoid == "lower" and self.config.scan.fault_sampling:
            try:
                log.info(lower_perf_event_paranoid(self.files, self.state, self._save_state))
            except OSError as exc:
                log.info("kernel.perf_event_paranoid left for the service's ExecStartPre helper (%s)",
                         exc.strerror or exc)

    def give_back(self) -> None:
        """Undo what autonumad changed: affinities it set, kernel.numa_balancing."""
        with self.lock:
            restored = 0 if self.dry_run else self.actuator.restore()
            if restored:
                log.info("restored the original affinity of %d threads", restored)
            try:
                log.info(restore_numa_balancing(self.files, self.state, self._save_state))
            except OSError as exc:
                log.info("kernel.numa_balancing left for the service's ExecStopPost helper (%s)",
                         exc.strerror or exc)
            try:
                log.info(restore_perf_event_paranoid(self.files, self.state, self._save_state))
            except OSError as exc:
                log.info("kernel.perf_event_paranoid left for the service's ExecStopPost helper (%s)",
                         exc.strerror or exc)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._signal_stop())
        signal.signal(signal.SIGINT, lambda *_: self._signal_stop())
        signal.signal(signal.SIGHUP, lambda *_: self._request_reload())
        self.take_kernel_balancing()
        self.start_control_socket()
        reason = self.off_reason()
        log.info("autonumad %s started%s: %d nodes; %s", __version__, " (dry run)" if self.dry_run else "",
                 len(self.topology.node_ids), reason or "balancing")
        self.notifier.ready(self.status_line())
        self.budget.restart_window()
        try:
            while not self._stopping():
                if self.reload_requested:
                    self.reload()
                if not self.balancing():
                    self.notifier.status(self.status_line())
                    self._idle()
                    continue
                try:
                    self.run_pass()
                    self.notifier.status(self.status_line())
                    self.budget.scan_sleep_pass_millisecs = self._pass_interval_ms()
                    log.debug("pass %d: %.2f s, %s, %d processes, %d actions; next in %.1f s or more (CPU ceiling)",
                              self.counters["passes"], self.last_pass.duration_s, self.last_pass.cpu_summary(),
                              self.last_pass.processes, self.last_pass.actions,
                              self.budget.scan_sleep_pass_millisecs / 1000)
                    self.new_processes.reset((self.discovery.seen_pids - self.discovery.young_small_pids)
                                             | self.discovery.kernel_thread_pids, self._growing)
                    self.new_processes.min_rss_kb = self._wake_rss_kb()
                    self._between_passes = True
                    self.budget.end_pass()
                except _Interrupted:
                    continue
                finally:
                    self._between_passes = False
        finally:
            self.notifier.stopping()
            log.info("stopping after %d passes: %.2f CPU s since start, %.2f s of it moving pages",
                     self.counters["passes"], time.process_time(), self.budget.counters.excluded_cpu_s)
            if self.server:
                self.server.stop()
            self.sampler.close()
            self.give_back()
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the socket pair goes: nothing to poke
            for sock in (self._wake_r, self._wake_w):
                sock.close()
        return 0

    def _pass_interval_ms(self) -> int:
        """Short while something is new or just moved, shortest while a sampling window or a
        second vote is awaited. While something stays misplaced with nothing to do about it
        (a process bigger than one node, a full node), the short interval doubles with each
        such pass, on past the full one up to scan_sleep_pass_max_millisecs; once settled,
        the full interval doubles with each quiet pass up to the same (as the kernel's NUMA scan period
        grows while its scans change nothing). Write-fault windows of processes spread over
        nodes come no more often than every two pauses of the moment (at least every
        REARM_AFTER_S)."""
        base = self.config.scan.scan_sleep_pass_millisecs
        longest = max(base, self.config.scan.scan_sleep_pass_max_millisecs)
        last = self.last_pass
        busy = last.first_votes or last.actions or last.new_processes  # a window alone is routine sampling
        self._quiet_passes = 0 if busy else self._quiet_passes + 1
        if last.windows_open:  # neither settles nor unsettles
            return min(base, int(max(MIN_WINDOW_PASS_S, last.window_left_s) * 1000))
        settled, self._settled_passes = self._settled_passes, 0
        self.sampler.rearm_after_s = REARM_AFTER_S
        if last.first_votes:
            return min(base, int(VOTE_PASS_S * 1000))
        active = min(base, max(int(MIN_ACTIVE_PASS_S * 1000), base // ACTIVE_PASS_FRACTION))
        if busy:
            return active
        target = self.config.policy.locality_target
        misplaced = [p for p in self.published["managed_processes"]
                     if p["locality"] is not None and p["locality"] < target
                     and p["locality"] < (p.get("locality_bound") or 1.0) - AT_BOUND_MARGIN]
        if misplaced and log.isEnabledFor(logging.DEBUG):
            log.debug("misplaced: %s", ", ".join(f"pid {p.get('pid')} locality {p['locality']} (bound "
                                                 f"{p.get('locality_bound')})" for p in misplaced))
        if misplaced:  # as settled as it can be: from the short interval up to the longest
            interval = min(longest, active << min(self._quiet_passes - 1, 16))  # 1, 2, 4... times
            if interval > base:
                self.sampler.rearm_after_s = max(REARM_AFTER_S, 2 * interval / 1000)
            return interval
        self._settled_passes = settled + 1
        interval = min(longest, base << min(settled, 16))  # 1, 2, 4... times
        self.sampler.rearm_after_s = max(REARM_AFTER_S, 2 * interval / 1000)
        return interval

    def stop(self) -> None:
        """Stop the loop (from any thread; signal handlers use _signal_stop)."""
        self._stop_requested = True
        self.stop_event.set()
        self._poke()

    def _signal_stop(self) -> None:
        self._stop_requested = True  # plain flags only: the handler runs on the main thread,
        self._poke()                 # which may be holding any lock when it is interrupted

    def _stopping(self) -> bool:
        if self._stop_requested and not self.stop_event.is_set():
            self.stop_event.set()  # for the mover threads
        return self.stop_event.is_set()

    def _request_reload(self) -> None:
        self.reload_requested = True
        self._poke()

    def _poke(self) -> None:
        """End the main loop's pause under way, or the next one (safe in a signal handler)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: a wake-up is already pending; closed: stopping anyway
            pass

    def _wait(self, seconds: float) -> bool:
        """Pause up to `seconds`; True when woken (a stop or a reload pending, or a poke)."""
        if self._stop_requested or self.reload_requested:
            return True
        try:
            ready, _, _ = select.select([self._wake_r], [], [], max(0.0, seconds))
        except OSError:
            return False
        if not ready:
            return self._stop_requested or self.reload_requested
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError)
            pass
        return True

    def _idle(self) -> None:
        """Wait while not balancing: until woken, or the watchdog's next ping is due."""
        self.notifier.watchdog()
        due = self.notifier.next_ping_s()
        self._wait(IDLE_WAIT_S if due is None else min(IDLE_WAIT_S, max(due, 0.01)))

    def _wake_rss_kb(self) -> int:
        return max(WAKE_MIN_RSS_MB, self.config.policy.min_rss_mb) * 1024

    def _sleep(self, seconds: float) -> None:
        """Sleep, pinging the watchdog, and wake early when asked to stop, reload or pause;
        between passes (unless the pause is stretched for the CPU ceiling), also when a new
        process grew big enough to balance, or an open write-fault window's writers
        stopped faulting."""
        deadline = time.monotonic() + seconds
        next_watch = time.monotonic() + WATCH_TICK_S
        while True:
            self.notifier.watchdog()
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            watching = self._between_passes and not self.budget.throttled
            window = watching and self.sampler.windows_open()
            # up to the next look for new processes (every WATCH_TICK_S or IDLE_WATCH_TICK_S),
            # more often while a window is open: each wake-up costs a few ms under TCG
            tick = min(SATURATION_CHECK_S if window else SLEEP_TICK_S, max(0.0, next_watch - now)) \
                if watching else SLEEP_TICK_S
            if self._wait(min(left, tick)) or not self.balancing():
                raise _Interrupted()
            now = time.monotonic()
            if now >= deadline or not watching:
                continue
            if window and self.sampler.window_ready():
                log.debug("the write-fault windows open can be read (writers stopped faulting): next pass now")
                self.counters["windows_read_early"] += 1
                self.budget.cut_pause_short(deadline - now)
                raise _Interrupted()
            if now >= next_watch:
                for look, why in ((self.new_processes.settled, "stopped growing"),
                                  (self.new_processes.check, "is new and big enough to balance")):
                    pid = look()
                    if pid is not None:
                        log.debug("pid %d %s: next pass now", pid, why)
                        if look == self.new_processes.settled:
                            self.builder.forget_rss(pid)  # judged from its steady size on
                        self.counters["early_passes"] += 1
                        self.budget.cut_pause_short(deadline - time.monotonic())
                        raise _Interrupted()
                next_watch = now + (WATCH_TICK_S if self.new_processes.watching() else IDLE_WATCH_TICK_S)

    def run_pass(self) -> PassReport:
        started = time.monotonic()
        cpu = _PartClock(self._pass_cpu_end)
        full = self.counters["passes"] % TOPOLOGY_FULL_READ_PASSES == 0  # CPUs hot-added offline, say
        self._follow_topology(read_topology(self.files) if full else refresh_topology(self.files, self.topology))
        found = self.discovery.discover()
        self._forget(found.left)
        self.actuator.prune_lineage()
        self.managed_keys = [info.key for info in found.processes]
        cpu.mark("discover")
        observed = []
        spread: set[ProcessKey] = set()
        for info in found.processes:
            self.notifier.watchdog()
            looked = self.tasks.look(self.files, info.key)
            cpu.mark("threads")
            if not looked:
                continue
            busy_nodes = self.tasks.busy_thread_nodes(info.key)
            if len(busy_nodes) > 1:
                spread.add(info.key)
            mm = self.mm.observe(info, self.budget, busy_nodes, OFF_NODE_SAMPLES if busy_nodes else 0,
                                 quiet=info.key in self._quiet)
            cpu.mark("memory")
            if mm is None:
                continue
            observed.append((info, mm, self.tasks.threads(info.key)))
            self.sampler.poll((info.key,))  # drains the armed samplers; may arm this one process
            cpu.mark("sampler")
        self.sampler.poll(())  # a window of a process this pass could not observe is read all the same
        cpu.mark("sampler")
        with self.lock:
            now = time.monotonic()
            self.stuck_groups = {k: until for k, until in self.stuck_groups.items() if until > now}
            self.stuck_sources = {k: until for k, until in self.stuck_sources.items() if until > now}
            snapshot, self.groups = self.builder.build(
                now, procfs.read_uptime(self.files), self.topology, observed, self._affinity,
                self._owned_affinity, self.config.respect.user_affinity, self.config.respect.user_mempolicy,
                skip_groups=self.stuck_groups.keys(), skip_sources=self.stuck_sources.keys(),
                # a process whose busy threads came together on one node is seen through its
                # mappings (the scan: all of its memory) at once, not through the regions a
                # window saw it write while it was spread (a part of a sweep and the
                # interpreter's pages, which then read as a tenth of its memory elsewhere)
                regions={k: v for k, v in self.sampler.regions.items() if k in spread},
                region_versions=self.sampler.versions,
                node_busy=self._node_busy(), inherited_pin=self._inherited_pin)
            self._not_inherited, self._not_inherited_next = self._not_inherited_next, {}
            cpu.mark("snapshot")
            policy_config = self._pass_policy_config()
            plan = plan_pass(snapshot, self.policy_state, policy_config)
            snapshot, plan = self._plan_with_policies(snapshot, plan, policy_config,
                                                      {info.key: info for info in found.processes})
            cpu.mark("plan")
            if log.isEnabledFor(logging.DEBUG) and any(isinstance(a, (MoveTask, ExchangeTasks))
                                                       for a in plan.actions):
                log.debug("placed from: %s", "; ".join(
                    f"pid {v.pid} " + " ".join(f"{t.tid}@{t.cpu_node}({t.runnable_weight:.2f})" for t in v.tasks)
                    + f" MB {node_mb(v.node_pages)}" for v in snapshot.processes))
            new_votes = [(key, node) for key, node in plan.state.group_target.items()
                         if self.policy_state.group_target.get(key) != node]
            first_votes = len(new_votes)
            if new_votes and log.isEnabledFor(logging.DEBUG):
                pages = {(v.pid, v.start_time, g.id): (g.node, g.pages) for v in snapshot.processes
                         for g in v.page_groups}
                log.debug("first votes: %s", ", ".join(
                    f"pid {key[0]} {pages.get(key, ('?', '?'))[1]} pages {pages.get(key, ('?', '?'))[0]}->{node}"
                    for key, node in sorted(new_votes)[:12]) + (" ..." if len(new_votes) > 12 else ""))
            voted = {key[:2] for key in plan.state.group_target}
            self.sampler.confirm((ProcessKey(*key) for key in voted),  # a window's second, or none
                                 self._weighed_for_memory(snapshot, plan))
            self.policy_state = plan.state
            self._quiet = self._quiet_after(snapshot, plan)
            results = self._act(plan)
            self.sampler.arm_spread(self._spread_by(snapshot, plan, results, self.policy_config.runnable_threshold))
            lines = [_decision_line(action, result) for action, result in zip(plan.actions, results)]
            self.policy_state = self._deferred_stay_agreed(plan, results)
        cpu.mark("act")
        self.mm.end_pass()
        self.tasks.end_pass()
        self.counters["passes"] += 1
        self._publish(snapshot, plan.shared_memory)
        self._growing = {view.pid for view in snapshot.processes if view.growing}
        cpu.mark("publish")
        self.last_pass = PassReport(time.time(), time.monotonic() - started, len(plan.actions), len(observed),
                                    len(found.new), lines, self.sampler.windows_open(),
                                    self.sampler.window_left() or 0.0, first_votes, cpu.parts)
        self._pass_cpu_end = time.process_time()
        return self.last_pass

    def _plan_with_policies(self, snapshot: Snapshot, plan: Plan, config: PolicyConfig,
                            infos: Mapping[ProcessKey, ProcessInfo]) -> tuple[Snapshot, Plan]:
        """The snapshot and plan of this pass, planned again once the memory policies of the
        processes whose page groups' votes agreed, and that were never read, are read
        (numa_maps: a walk of all their pages, worth it only once pages are about to move,
        not at every vote a second window may undo). Unchanged when there are none, or
        none could be read (gone, refused: their votes stand for the next pass)."""
        waiting = {key[:2] for key in plan.state.group_agreed}
        views, read = [], False
        for view in snapshot.processes:
            key = ProcessKey(view.pid, view.start_time)
            if view.mempolicy_known or (view.pid, view.start_time) not in waiting or key not in infos:
                views.append(view)
                continue
            self.mm.want_policies(key)
            mm = self.mm.observe(infos[key], self.budget, self.tasks.busy_thread_nodes(key))
            if mm is None or not mm.policies_read:
                views.append(view)
                continue
            views.append(replace(view, mempolicy_known=True,
                                 own_mempolicy=own_mempolicy(mm, self.config.respect.user_mempolicy)))
            read = True
        if not read:
            return snapshot, plan
        snapshot = replace(snapshot, processes=tuple(views))
        return snapshot, plan_pass(snapshot, self.policy_state, config)

    @staticmethod
    def _weighed_for_memory(snapshot: Snapshot, plan: Plan) -> set[ProcessKey]:
        """The processes whose memory the plan weighed moving: neither growing, nor with a
        memory policy of their own, nor with threads it moves to another node."""
        moved = {(m.pid, m.start_time) for action in plan.actions for m in task_moves(action)
                 if m.from_node != m.to_node}
        return {ProcessKey(v.pid, v.start_time) for v in snapshot.processes
                if not v.growing and not v.own_mempolicy and (v.pid, v.start_time) not in moved}

    @staticmethod
    def _spread_by(snapshot: Snapshot, plan: Plan, results: list[str], threshold: float) -> list[ProcessKey]:
        """The processes whose busy threads (runnable_weight of `threshold` or more) ran on
        one node at this pass's look and that the plan's moves, done, put on several."""
        moved: dict[tuple[int, int, int], int] = {}
        for action, result in zip(plan.actions, results):
            if result.startswith("done"):
                for m in task_moves(action):
                    moved[(m.pid, m.start_time, m.tid)] = m.to_node
        spread = []
        for view in snapshot.processes:
            busy = [t for t in view.tasks if t.runnable_weight >= threshold]
            before = {t.cpu_node for t in busy}
            after = {moved.get((view.pid, view.start_time, t.tid), t.cpu_node) for t in busy}
            if len(before) < 2 <= len(after):
                spread.append(ProcessKey(view.pid, view.start_time))
        return spread

    @staticmethod
    def _quiet_after(snapshot: Snapshot, plan: Plan) -> set[ProcessKey]:
        """The processes nothing was voted, planned or done for at this pass, none of them
        growing: at the next pass one whose threads have stayed put may keep its memory's
        last scan (MmStatsTable.observe, quiet)."""
        busy = {key[:2] for key in plan.state.group_target} | {key[:2] for key in plan.state.group_agreed}
        for action in plan.actions:
            for one in (action.moves if isinstance(action, ExchangeTasks) else (action,)):
                busy.add((one.pid, one.start_time))
        return {ProcessKey(v.pid, v.start_time) for v in snapshot.processes
                if not v.growing and (v.pid, v.start_time) not in busy}

    def _deferred_stay_agreed(self, plan: Plan, results: list[str]) -> PolicyState:
        """The policy's state for the next pass, with the page groups the rate limit deferred
        neither settled nor in need of new votes: the next pass moves them if it still wants."""
        deferred = [a for a, result in zip(plan.actions, results)
                    if isinstance(a, MigratePages) and result.startswith("deferred")]
        if not deferred:
            return plan.state
        keys = {(a.pid, a.start_time, a.group_id): a.to_node for a in deferred}
        state = plan.state
        return replace(state, group_migrated_at={k: t for k, t in state.group_migrated_at.items() if k not in keys},
                       group_agreed={**state.group_agreed, **keys})

    def _pass_policy_config(self) -> PolicyConfig:
        """The policy's knobs for this pass: its migration budget is what the rate limit
        (pages_to_migrate per migrate_sleep_millisecs) grants until the next pass."""
        m = self.config.migrate
        periods = max(1, self.budget.scan_sleep_pass_millisecs // max(1, m.migrate_sleep_millisecs))
        return replace(self.policy_config, pages_to_migrate=m.pages_to_migrate * periods)

    def _node_busy(self) -> dict[int, float] | None:
        """Busy CPUs per node since the previous pass, from /proc/stat; None the first time."""
        try:
            times = cpu_load.read_cpu_times(self.files)
        except (OSError, ValueError) as exc:
            log.debug("cannot read CPU times (%s): unmanaged load not counted", exc)
            times = None
        before, self._cpu_times = self._cpu_times, times
        if not before or not times:
            return None
        idle = cpu_load.idle_shares(before, times)
        return {n.id: sum(1.0 - idle[c] for c in n.cpus if c in idle)
                for n in (self.topology.nodes[i] for i in self.topology.node_ids)}

    def _follow_topology(self, topology: Topology) -> None:
        """Take this pass's topology: log CPUs that went offline or came back, and drop the
        affinities the kernel reset because all their CPUs went offline."""
        for line in describe_cpu_changes(self.topology, topology):
            log.info(line)
        with self.lock:
            self.topology = topology
            self.tasks.cpu_nodes = topology.cpu_nodes
            if self.dry_run:
                return
            for key, record, now in self.actuator.forget_broken_affinities():
                log.info("pid %d (%s) tid %d: its CPUs %s went offline and the kernel reset its affinity "
                         "to CPUs %s; autonumad no longer counts that affinity as its own",
                         key.pid, record.comm, key.tid, format_list(sorted(record.applied)),
                         format_list(sorted(now)))

    def _forget(self, keys: list[ProcessKey]) -> None:
        if not keys:
            return
        self.mm.forget(keys)
        self.tasks.forget(keys)
        self.sampler.forget(keys)
        with self.lock:
            for key in keys:
                if not self.dry_run and self.actuator.restore_process(key.pid, key.start_time):
                    log.info("pid %d left autonumad's care: its original affinity is restored", key.pid)

    def _affinity(self, tid: int) -> frozenset[int] | None:
        try:
            return sched.get_affinity(tid)
        except OSError:
            return None

    def _boot_ticks(self) -> int:
        try:
            return int(procfs.read_uptime(self.files) * procfs.CLOCK_TICKS)
        except (OSError, ValueError):
            return 0

    def _owned_affinity(self, key: ProcessKey, tid: int) -> frozenset[int] | None:
        record = self.actuator.owned_affinity(key.pid, key.start_time, tid)
        return record.applied if record else None

    def _inherited_pin(self, info: ProcessInfo, tid: int, affinity: frozenset[int],
                       started: int) -> frozenset[int] | None:
        """The pin thread `tid` (started at `started`, ticks since boot) inherited from a thread
        this daemon pinned (of its own process, or of an ancestor it was forked from), now
        recorded as ours; None if it is no pin of ours."""
        if self.dry_run or not self.actuator.lineage:
            return None
        key = ThreadKey(info.pid, info.key.start_time, tid)
        if self._not_inherited.get(key) == affinity:
            self._not_inherited_next[key] = affinity
            return None
        found = self.actuator.adopt_inherited(key, affinity, info.comm, self._pin_sources(info, affinity), started)
        if found is None:
            self._not_inherited_next[key] = affinity
            return None
        source, record = found
        if source == info.pid:
            log.debug("pid %d (%s) tid %d inherited autonumad's pin to CPUs %s from the thread that "
                      "created it: autonumad balances it and restores it", info.pid, info.comm, tid,
                      format_list(sorted(record.applied)))
        else:
            log.info("pid %d (%s) tid %d inherited autonumad's pin to CPUs %s from pid %d, which it was "
                     "forked from: autonumad balances it and restores it to CPUs %s", info.pid, info.comm,
                     tid, format_list(sorted(record.applied)), source, format_list(sorted(record.original)))
        return record.applied

    def _pin_sources(self, info: ProcessInfo, affinity: frozenset[int]) -> list[tuple[int, int]]:
        """The process, then its ancestors as far as they show the same affinity (the one that
        does not may have passed it on from a thread other than its main one), as (pid, start time)."""
        sources = [(info.pid, info.key.start_time)]
        pid = info.ppid
        for _ in range(MAX_PIN_ANCESTORS):
            if pid <= 1:
                break
            try:
                stat = procfs.read_stat(self.files, pid)
            except (OSError, ValueError):
                break
            sources.append((pid, stat.start_time_ticks))
            if self._affinity(pid) != affinity:
                break
            pid = stat.ppid
        return sources

    # ------------------------------------------------------------------ acting
    def apply(self, plan: Plan) -> list[str]:
        """Carry out the plan (or, dry, only say it); one line per action: what, and its result."""
        return [_decision_line(action, result) for action, result in zip(plan.actions, self._act(plan))]

    def _act(self, plan: Plan) -> list[str]:
        """The result of each of the plan's actions, in order, each logged as a decision."""
        results = []
        migrations = {} if self.dry_run else self._migrate_all(plan.actions)
        for action in plan.actions:
            if self.dry_run:
                result = "planned (dry run)"
            elif isinstance(action, MoveTask):
                result = self._move(action)
            elif isinstance(action, ExchangeTasks):
                result = self._exchange(action)
            else:
                result = migrations[action]
            results.append(result)
            self._log_decision(action, result, _decision_line(action, result))
        return results

    def _move(self, m: MoveTask) -> str:
        return self.actuator.move_task(m.pid, m.start_time, m.tid, m.to_node, m.comm,
                                       respect_pins=self.config.respect.user_affinity)

    def _exchange(self, x: ExchangeTasks) -> str:
        done: list[MoveTask] = []
        for m in x.moves:
            result = self._move(m)
            if result != "done":
                for d in done:
                    self.actuator.move_task(d.pid, d.start_time, d.tid, d.from_node, d.comm)
                return f"abandoned: {result}"
            done.append(m)
        self.counters["exchanges"] += 1
        return "done"

    def _migrate_all(self, actions) -> dict[MigratePages, str]:
        """Carry out the plan's page migrations, each result by action. The groups of one
        process between the same two nodes go to the mover together (one PID-reuse check
        pair per call, the pages found and moved in C); runs to different nodes go at once,
        one mover thread per destination node (AutoNUMA's knuma_migrated per node), so that
        memory that must swap nodes is not moved one direction after the other."""
        results: dict[MigratePages, str] = {}
        ranges: dict[tuple[int, int, int, int], list[tuple[MigratePages, GroupRange]]] = {}
        for m in actions:   # by (pid, start time, from node, to node), each run in plan order
            if not isinstance(m, MigratePages):
                continue
            group = self.groups.get((m.pid, m.start_time), {}).get(m.group_id)
            if group is None:
                results[m] = "skipped: page group unknown"
            else:
                ranges.setdefault((m.pid, m.start_time, m.from_node, m.to_node), []).append((m, group))
        by_node: dict[int, list[tuple[int, int, int, int]]] = {}
        for key in ranges:
            by_node.setdefault(key[3], []).append(key)
        done: dict[tuple[int, int, int, int], _RunMoves] = {}

        def mover(keys: list[tuple[int, int, int, int]]) -> None:
            node = self.topology.nodes.get(keys[0][3]) if keys else None
            with _mover_on(node.cpus if node is not None else ()) as on_node:
                if on_node:
                    move(keys)
                else:
                    with _mover_priority():
                        move(keys)

        def move(keys: list[tuple[int, int, int, int]]) -> None:
            for key in keys:
                try:
                    done[key] = self._migrate_paced(key, [(g.start, g.end) for _, g in ranges[key]])
                except Exception as exc:  # a bug must not take the daemon down, nor the other movers
                    log.exception("pid %d: page moves to node %d failed", key[0], key[3])
                    done[key] = _RunMoves(f"failed: {exc}", [0] * len(ranges[key]), [0] * len(ranges[key]), 0)

        jobs = [keys for _, keys in sorted(by_node.items())]
        cpu_before = time.process_time()
        movers = [threading.Thread(target=mover, args=(keys,), name="autonumad-mover", daemon=True)
                  for keys in jobs[1:]]
        for thread in movers:
            thread.start()
        mover(jobs[0] if jobs else [])
        for thread in movers:
            thread.join()
        # page moves are paced by the migration rate limit, not by the scan's CPU ceiling
        # (AutoNUMA's knuma_migrated beside knuma_scand): their CPU is not the scanner's
        self.budget.exclude_cpu(time.process_time() - cpu_before)
        for key, members in ranges.items():
            results.update(self._book_run(members, done[key]))
        return results

    def _migrate_paced(self, key: tuple[int, int, int, int], ranges: list[tuple[int, int]]) -> _RunMoves:
        """Move the pages of `ranges` on the run's source node, pages_to_migrate at a time, as
        the rate limit grants them (AutoNUMA's knuma_migrated: pages_to_migrate, then
        migrate_sleep_millisecs), waiting for it at most self.migrate_wait_s in all; what is
        left is deferred to a later pass."""
        pid, start_time, from_node, to_node = key
        limit = self.config.migrate.pages_to_migrate
        period_s = self.config.migrate.migrate_sleep_millisecs / 1000.0
        run = _RunMoves("deferred: migration rate limit", [0] * len(ranges), [0] * len(ranges), 0)
        resume, waited = (0, 0), 0.0
        while resume[0] < len(ranges):
            step, moves = self.actuator.migrate_ranges(pid, start_time, ranges, from_node, to_node, resume, limit)
            if step.startswith("deferred"):
                wait = min(period_s, self.migrate_wait_s - waited)
                if wait <= 0 or self._stop_requested or self.stop_event.wait(wait):
                    break
                waited += wait
                continue
            if moves is None:
                if not run.result.startswith("done"):
                    run.result = step
                break
            run.result = "done"
            run.tried = [a + b for a, b in zip(run.tried, moves.tried)]
            run.moved = [a + b for a, b in zip(run.moved, moves.moved)]
            resume = moves.resume
        run.next_range = resume[0]
        return run

    def _book_run(self, members: list[tuple[MigratePages, GroupRange]], run: _RunMoves) -> dict[MigratePages, str]:
        """Each group's result in a run; groups that moved have their sampled writes follow,
        groups whose pages mostly would not move are set aside for a while."""
        results = {}
        followed = 0
        for k, (m, group) in enumerate(members):
            moved, tried, complete = run.moved[k], run.tried[k], k < run.next_range
            if not run.result.startswith("done"):
                group_result = run.result
            elif not complete and tried == 0:
                group_result = "deferred: migration rate limit"
            else:
                group_result = "done"
            if group_result == "done" and complete and moved >= MOVED_GROUP_SHARE * tried:
                # the group moved (a few busy pages aside): its sampled writes now sit on the new
                # node; or none of it was left on that node: they sit on none that we know
                followed += self.sampler.note_moved(ProcessKey(m.pid, m.start_time), group.start, group.end,
                                                    m.from_node, m.to_node if tried else None)
            if not group_result.startswith("deferred") and (moved == 0 or moved < STUCK_MOVED_SHARE * tried):
                # shared (EACCES), busy or already gone (the scan's decayed counts lag behind),
                # all or most of it: leave this group alone for a while (retrying it would keep
                # the daemon scanning at its active pace for pages that do not move)
                self.stuck_groups[(m.pid, m.start_time, m.group_id)] = time.monotonic() + STUCK_GROUP_RETRY_S
            results[m] = f"{group_result}, {moved} pages moved"
        first = members[0][0]
        tried, moved = sum(run.tried), sum(run.moved)
        if run.result.startswith("done") and tried >= STUCK_SOURCE_MIN_TRIED and moved < STUCK_MOVED_SHARE * tried:
            log.debug("pid %d: %d of %d pages tried on node %d moved: its groups there are left alone for "
                      "%.0f s", first.pid, moved, tried, first.from_node, STUCK_GROUP_RETRY_S)
            self.stuck_sources[(first.pid, first.start_time, first.from_node)] = \
                time.monotonic() + STUCK_GROUP_RETRY_S
        log.debug("pid %d: %d sampled regions now counted on node %d, after the move", first.pid, followed,
                  first.to_node)
        return results

    def _log_decision(self, action, result: str, line: str) -> None:
        if isinstance(action, ExchangeTasks):
            first = action.moves[0]
            fields = {"target_pid": first.pid, "target_comm": first.comm, "action": "exchange",
                      "from_node": first.from_node, "to_node": first.to_node}
        else:
            fields = {"target_pid": action.pid, "target_comm": action.comm,
                      "action": "move" if isinstance(action, MoveTask) else "migrate",
                      "from_node": action.from_node, "to_node": action.to_node}
        fields.update(reason=action.reason, result=result)
        log.info(line, extra=fields)

    # ------------------------------------------------------------------ status
    def _publish(self, snapshot: Snapshot, shared_memory: Collection[tuple[int, int]] = frozenset()) -> None:
        managed = []
        threads_per_node: Counter = Counter()
        for view in snapshot.processes:
            for t in view.tasks:
                threads_per_node[t.cpu_node] += 1
            locality = process_locality(view, (view.pid, view.start_time) in shared_memory)
            bound = locality_bound(view, self.policy_config.runnable_threshold)
            managed.append({
                "pid": view.pid, "comm": view.comm,
                "locality": None if locality is None else round(locality, 3),
                "locality_bound": None if bound is None else round(bound, 3),
                "memory_mb": node_mb(view.node_pages), "threads": len(view.tasks),
                "nodes": sorted({t.cpu_node for t in view.tasks}),
            })
        self.published = {"managed_processes": managed, "managed_threads": dict(threads_per_node)}

    def status_line(self) -> str:
        reason = self.off_reason()
        if reason:
            return f"idle: {reason}"
        managed = self.published["managed_processes"]
        localities = [p["locality"] for p in managed if p["locality"] is not None]
        mean = f"; locality {sum(localities) / len(localities):.2f}" if localities else ""
        c = self.actuator.counters
        return (f"balancing {len(managed)} processes{mean}; {c['task_moves']} task moves, "
                f"{c['pages_migrated']} pages migrated")

    def all_counters(self) -> dict[str, int]:
        merged = Counter(self.counters)
        merged.update({k: v for k, v in self.actuator.counters.items() if not k.startswith("page_status_")})
        merged["move_cpu_ms"] = round(self.budget.counters.excluded_cpu_s * 1000)  # the kernel's copying included
        return dict(sorted(merged.items()))

    def handle_status(self, args: dict) -> dict:
        with self.lock:
            nodes = {
                str(n.id): {"cpus": list(n.cpus), "offline_cpus": list(n.offline_cpus),
                            "memory_only": not n.cpus, "size_mb": n.size_mb, "free_mb": n.free_mb,
                            "managed_threads": self.published["managed_threads"].get(n.id, 0)}
                for n in (self.topology.nodes[i] for i in self.topology.node_ids)}
            return {
                "version": __version__, "pid": os.getpid(), "uptime_s": round(time.time() - self.started_at, 1),
                "balancing": self.balancing(), "off_reason": self.off_reason(),
                "config_path": self.config_path, "dry_run": self.dry_run, "nodes": nodes,
                "cpus_offline": list(self.topology.cpus_offline),
                "managed_processes": self.published["managed_processes"],
                "counters": self.all_counters(), "page_status": page_status_counts(self.actuator.counters),
                "knobs": self.config.knobs(),
                "migration_rate_mb_s": round(self.actuator.rate_limit.mb_per_second(), 1),
                "kernel_numa_balancing": {"current": read_numa_balancing(self.files),
                                          "original": self.state.numa_balancing_original},
                "fault_sampling": self.sampler.state(),
                "kernel_perf_event_paranoid": {"current": read_perf_event_paranoid(self.files),
                                               "original": self.state.perf_event_paranoid_original},
                "last_pass": {"at": self.last_pass.at, "duration_s": round(self.last_pass.duration_s, 3),
                              "actions": self.last_pass.actions, "processes": self.last_pass.processes,
                              "cpu_s": round(sum(v for k, v in self.last_pass.cpu_s.items() if k != "pause"), 3)},
            }

    def handle_stats(self, args: dict) -> dict:
        with self.lock:
            pacing, mmc = self.budget.counters, self.mm.counters
            return {
                "scanner": {"pages_scanned": pacing.pages_scanned, "full_scans": pacing.full_scans,
                            "scan_cpu_s": round(mmc.scan_cpu_s, 3), "processes_scanned": mmc.processes_scanned,
                            "exact_reads": mmc.exact_reads, "gone_mid_scan": mmc.gone_mid_scan,
                            "quiet_carried": mmc.quiet_carried, "coarse_scans": mmc.coarse_scans,
                            "passes": self.counters["passes"], "throttled_s": round(pacing.throttled_s, 3),
                            "cpu_s": round(time.process_time(), 3), "move_cpu_s": round(pacing.excluded_cpu_s, 3)},
                "migrated": {"pages_migrated": self.actuator.counters["pages_migrated"],
                             "task_moves": self.actuator.counters["task_moves"],
                             "page_status": page_status_counts(self.actuator.counters)},
                "fault_sampler": vars(self.sampler.counters).copy(),
                "knobs": self.config.knobs(),
            }

    def handle_show(self, args: dict) -> dict:
        pid = args.get("pid")
        with self.lock:
            found = [p for p in self.published["managed_processes"] if pid is None or p["pid"] == pid]
        return {"processes": found}

    def handle_get(self, args: dict) -> dict:
        knobs = self.config.knobs()
        name = args.get("knob")
        if name is not None:
            if name not in knobs:
                raise ProtocolError("bad_request", f"unknown knob {name!r}; knobs: {', '.join(sorted(knobs))}")
            knobs = {name: knobs[name]}
        return {"knobs": knobs}

    def handle_set(self, args: dict) -> dict:
        name, value = args.get("knob"), args.get("value")
        with self.lock:
            try:
                new = self.config.with_knob(name, value)
            except (ConfigError, KeyError, ValueError) as exc:
                raise ProtocolError("bad_request", str(exc)) from None
            previous = self.config.knob(name)
            self._apply_config(new)
            log.info("knob %s set to %s (was %s) until the next reload", name, new.knob(name), previous)
            self._poke()  # the next pass comes now, under the new value
            return {"knob": name, "value": new.knob(name), "previous": previous}

    def handle_config(self, args: dict) -> dict:
        return {"config_path": self.config_path, "config": self.config.as_dict()}

    def handle_enable(self, args: dict) -> dict:
        with self.lock:
            self.runtime_enabled = True
            self._poke()
            log.info("enabled at runtime")
            self.take_kernel_balancing()
            return {"balancing": self.balancing(), "off_reason": self.off_reason(), "restored_affinities": 0}

    def handle_disable(self, args: dict) -> dict:
        with self.lock:
            self.runtime_enabled = False
            self._poke()
            restored = self.disable_and_forget()
            log.info("disabled at runtime: %d affinities restored", restored)
            return {"balancing": False, "off_reason": self.off_reason(), "restored_affinities": restored}

    def disable_and_forget(self) -> int:
        """Stop balancing: drop per-process state and give back what we changed."""
        restored = 0 if self.dry_run else self.actuator.restore()
        keys = self.managed_keys
        self.managed_keys = []
        self.mm.forget(keys)
        self.tasks.forget(keys)
        self.sampler.forget(keys)
        self.discovery = ProcessDiscovery(self.files, ProcessFilter.from_config(self.config))
        self.policy_state = PolicyState()
        self.published = {"managed_processes": [], "managed_threads": {}}
        for restore in (restore_numa_balancing, restore_perf_event_paranoid):
            try:
                restore(self.files, self.state, self._save_state)
            except OSError:
                pass
        return restored

    def handle_reload(self, args: dict) -> dict:
        with self.lock:
            changed = self.reload()
            if changed is None:
                raise ProtocolError("bad_request", self.last_reload_error)
            self._poke()  # a config that turns balancing on (or off) takes effect now
            return {"config_path": self.config_path, "changed": changed}

    def handle_advise(self, args: dict) -> dict:
        with self.lock:
            topology = read_topology(self.files)
            idle = {n: max(0.0, len(topology.nodes[n].cpus) - self.published["managed_threads"].get(n, 0))
                    for n in topology.node_ids}
            return advise(topology, float(args["cpus"]), int(args.get("memory_mb") or 0), idle,
                          self.config.migrate.node_reserve_mb).to_json()

    # ------------------------------------------------------------------ configuration
    last_reload_error = ""

    def reload(self) -> list[str] | None:
        """Re-read the config file; a bad one is refused and the running config stays."""
        self.reload_requested = False
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            self.last_reload_error = str(exc)
            log.error("reload refused, the running configuration stays: %s", exc)
            self.notifier.reloaded()
            return None
        with self.lock:
            old = self.config.as_dict()
            self._apply_config(new)
            changed = sorted(f"{s}.{k}" for s, keys in new.as_dict().items() for k, v in keys.items()
                             if old.get(s, {}).get(k) != v)
        for key in ("daemon.state_file", "daemon.control_socket"):
            if key in changed:
                log.warning("%s changed: takes effect at the next restart", key)
        log.info("configuration reloaded from %s; changed: %s", self.config_path, ", ".join(changed) or "nothing")
        self.notifier.reloaded()
        return changed

    def _apply_config(self, new: Config) -> None:
        was_enabled = self.config.daemon.enabled
        self.config = new
        set_level(new.daemon.log_level)
        self.discovery.filter = ProcessFilter.from_config(new)
        self.mm.pages_to_scan = new.scan.pages_to_scan
        self.mm.sample_stride_pages = new.scan.sample_stride_pages
        b = self.budget
        b.pages_to_scan, b.scan_sleep_millisecs = new.scan.pages_to_scan, new.scan.scan_sleep_millisecs
        b.scan_sleep_pass_millisecs, b.cpu_ceiling_percent = (new.scan.scan_sleep_pass_millisecs,
                                                              new.scan.cpu_ceiling_percent)
        self.sampler.enabled = new.scan.fault_sampling
        self.actuator.rate_limit.configure(new.migrate.pages_to_migrate, new.migrate.migrate_sleep_millisecs)
        self.policy_config = policy_config(new)
        if self.server:
            self.server.set_group(new.daemon.control_group or None)
        if was_enabled and not new.daemon.enabled:
            self.disable_and_forget()
