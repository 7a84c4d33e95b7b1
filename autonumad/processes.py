"""Process discovery: the snapshot of which user processes exist and which are to be balanced.

Part of the snapshot layer: it reads /proc only through `autonumad.kernel.procfs`
(PIDs from psutil on the live system) and hands the statistics boxes a list of
`ProcessInfo`, each named by a `ProcessKey` = (pid, start time): a PID the kernel
gave to a new process after the old one exited is a different key, so statistics
of the old process never leak into the new one.

Skipped always: kernel threads (PF_KTHREAD in stat's flags), zombies (no memory
left), the daemon itself. A process that exits while it is being read is left out
with a debug line, never an error.

Filters (`ProcessFilter`, built from [processes] and [policy] of the config): a
process is admitted when it matches no exclude rule, matches at least one include
rule or every include list is empty, and passes min_rss_mb and min_cpu_percent.
Command names are matched against comm and, where comm is cut to 15 characters, also
the basename of argv[0]; patterns are shell globs or "re:REGEX" matched in full.
Cgroup patterns match the process's cgroup v2 path (`procfs.cgroup_path`). CPU use
is over the interval since the previous discovery, or over the process's lifetime
when it is seen for the first time. A process already admitted stays admitted
while it keeps at least half of the RSS and CPU thresholds (so it does not flap in
and out of the daemon's care at the edge of a threshold).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone, UnexpectedSymlink

log = logging.getLogger(__name__)

COMM_LEN = 15  # TASK_COMM_LEN - 1: comm is cut to this many characters
KTHREAD_RECHECK_S = 30.0
KTHREAD_RECHECK_MAX_S = 300.0
"""Kernel threads are read again every KTHREAD_RECHECK_S (a PID freed and reused between two
passes), unless /proc/loadavg's last PID shows the kernel's PID counter has not wrapped
since the last pass (PIDs are handed out in turn: none can have been reused); then every
KTHREAD_RECHECK_MAX_S all the same (more PIDs than pid_max handed out between two passes)."""
NAMES_RECHECK_S = 30.0
KERNEL_THREAD = "kernel thread"
HYSTERESIS = 0.5  # an admitted process stays while above this fraction of the thresholds
NEW_REREAD_S = 5.0
"""NewProcessWatch reads the new PIDs it found too small at least this often (one may grow
without a PID being handed out)."""
IDLE_RECHECK_S = 5.0
"""A process too idle to balance at a pass is read again at the first pass this long
after: while the daemon passes often (something is misplaced), the idle processes of the
system cost one read each in this time instead of one a pass. Only while /proc/loadavg's
last PID shows that no PID was reused since the last pass (as for kernel threads)."""
YOUNG_S = 120
"""A process started less than this long ago, turned away for its RSS alone, may be a job
setting up: the pause between passes watches it grow (ProcessDiscovery.young_small_pids)."""


@dataclass(frozen=True, order=True)
class ProcessKey:
    """A process's identity: its PID and its start time (clock ticks after boot)."""

    pid: int
    start_time: int


@dataclass(frozen=True)
class ProcessInfo:
    key: ProcessKey
    comm: str
    exe_name: str          # basename of argv[0]; comm when argv is empty
    uid: int
    user: str
    rss_kb: int            # VmRSS + HugetlbPages: all the memory that has a node
    num_threads: int
    cpu_ticks: int         # utime + stime, cumulative
    cpu_percent: float     # percent of one CPU, see the module docstring
    cgroup: str
    ppid: int = 0          # the parent's PID (0: not known)

    @property
    def pid(self) -> int:
        return self.key.pid

    @property
    def rss_pages(self) -> int:
        return self.rss_kb // procfs.BASE_PAGE_KB


def compile_pattern(text: str) -> Callable[[str], bool]:
    """A matcher for a glob or "re:REGEX" pattern (matched in full); ValueError if bad."""
    if text.startswith("re:"):
        try:
            regex = re.compile(text[3:])
        except re.error as exc:
            raise ValueError(f"bad regular expression {text!r}: {exc}") from None
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, text)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@dataclass(frozen=True)
class ProcessFilter:
    """Which processes are balanced; see the module docstring for the rules."""

    min_rss_mb: float = 0.0
    min_cpu_percent: float = 0.0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_pids: frozenset[int] = frozenset()
    exclude_pids: frozenset[int] = frozenset()
    include_cgroups: tuple[str, ...] = ()
    exclude_cgroups: tuple[str, ...] = ()
    include_users: tuple[str | int, ...] = ()
    exclude_users: tuple[str | int, ...] = ()
    _matchers: dict[str, list[Callable[[str], bool]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matchers", {
            name: [compile_pattern(p) for p in getattr(self, name)]
            for name in ("include", "exclude", "include_cgroups", "exclude_cgroups")})

    @classmethod
    def from_config(cls, config: Any) -> ProcessFilter:
        """From an `autonumad.config.Config` ([processes] rules, [policy] thresholds)."""
        p = config.processes
        return cls(min_rss_mb=config.policy.min_rss_mb, min_cpu_percent=config.policy.min_cpu_percent,
                   include=tuple(p.include), exclude=tuple(p.exclude),
                   include_pids=frozenset(p.include_pids), exclude_pids=frozenset(p.exclude_pids),
                   include_cgroups=tuple(p.include_cgroups), exclude_cgroups=tuple(p.exclude_cgroups),
                   include_users=tuple(p.include_users), exclude_users=tuple(p.exclude_users))

    def _names_match(self, rule: str, info: ProcessInfo) -> bool:
        names = {info.comm, info.exe_name} if len(info.comm) >= COMM_LEN else {info.comm}
        return any(m(n) for m in self._matchers[rule] for n in names)

    def _cgroup_matches(self, rule: str, info: ProcessInfo) -> bool:
        return any(m(info.cgroup) for m in self._matchers[rule])

    @staticmethod
    def _user_matches(users: tuple[str | int, ...], info: ProcessInfo) -> bool:
        return any(u == info.uid if isinstance(u, int) else u == info.user for u in users)

    def rejection(self, info: ProcessInfo, admitted_before: bool = False, any_rss: bool = False) -> str | None:
        """Why `info` is not to be balanced, or None when it is (`any_rss`: whatever its RSS)."""
        if info.pid in self.exclude_pids:
            return "PID excluded"
        if self._names_match("exclude", info):
            return "command name excluded"
        if self._cgroup_matches("exclude_cgroups", info):
            return f"cgroup {info.cgroup} excluded"
        if self._user_matches(self.exclude_users, info):
            return f"user {info.user} excluded"
        has_includes = any((self.include, self.include_pids, self.include_cgroups, self.include_users))
        if has_includes and not (info.pid in self.include_pids
                                 or self._names_match("include", info)
                                 or self._cgroup_matches("include_cgroups", info)
                                 or self._user_matches(self.include_users, info)):
            return "matches no include rule"
        scale = HYSTERESIS if admitted_before else 1.0
        if info.rss_kb < self.min_rss_mb * 1024 * scale and not any_rss:
            return f"RSS {info.rss_kb // 1024} MiB below {self.min_rss_mb * scale:g} MiB"
        if info.cpu_percent < self.min_cpu_percent * scale:
            return f"CPU {info.cpu_percent:.1f}% below {self.min_cpu_percent * scale:g}%"
        return None


@dataclass(frozen=True)
class Discovery:
    """One discovery pass: the admitted processes, and how the admitted set changed."""

    processes: list[ProcessInfo]
    new: list[ProcessKey]        # admitted now, not last time
    left: list[ProcessKey]       # admitted last time, not now (exited, PID reused or filtered out)


@dataclass(frozen=True)
class _Idle:
    """A process discovery rejected on its stat file alone (below min_cpu_percent)."""

    key: ProcessKey
    comm: str
    cpu_ticks: int
    reason: str


@dataclass
class _History:
    cpu_ticks: int
    seen_at: float


class ProcessDiscovery:
    """Finds the user processes to balance, pass after pass (keeps CPU-use history)."""

    def __init__(self, files: KernelFiles, process_filter: ProcessFilter,
                 clock: Callable[[], float] = time.monotonic, own_pid: int | None = None):
        self.files = files
        self.filter = process_filter
        self.clock = clock
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self._history: dict[ProcessKey, _History] = {}
        self._admitted: set[ProcessKey] = set()
        self._users: dict[int, str] = {}
        self._names: dict[ProcessKey, tuple[str, str, str, float, int, int]] = {}
        """Per busy process: (comm, executable name, cgroup, when read, uid, hugetlb KiB). The
        executable name (from cmdline, when comm is cut short) is read again when comm changes
        (an exec), the cgroup every NAMES_RECHECK_S, and so are the uid and hugetlb memory (from
        status) of a process with no hugetlb memory that is older than YOUNG_S or admitted
        already (at every pass otherwise: one setting up may change its uid, hugetlb memory
        may grow unseen by stat, and either may let it in);
        the RSS in between comes from stat: up to three reads fewer per busy process and pass."""
        self._idle_read_at: dict[int, float] = {}
        """PIDs found too idle to balance at their last read, and when: read again only
        IDLE_RECHECK_S later (most processes of a system, idle, cost no read at most passes)."""
        self.kernel_thread_pids: frozenset[int] = frozenset()
        """PIDs found to be kernel threads: not read again until they leave /proc, or the
        recheck (KTHREAD_RECHECK_MAX_S: a PID freed and reused between two passes)."""
        self._kthreads_checked_at = clock()
        self._last_pid: int | None = None   # procfs.last_pid at the last discovery
        self.seen_pids: set[int] = set()
        self.young_small_pids: frozenset[int] = frozenset()
        """Busy processes started less than YOUNG_S ago that only their RSS kept out (a job
        still allocating at the pass): NewProcessWatch looks at them as at new ones."""

    def discover(self) -> Discovery:
        now = self.clock()
        uptime_ticks = procfs.read_uptime(self.files) * procfs.CLOCK_TICKS
        seen: dict[ProcessKey, _History] = {}
        known_pids = {key.pid: key for key in self._history}
        admitted: list[ProcessInfo] = []
        last_pid = procfs.last_pid(self.files)
        # no PID handed out since the last discovery can be one freed since (PIDs go in turn)
        unwrapped = last_pid is not None and self._last_pid is not None and last_pid >= self._last_pid
        if last_pid is None or self._last_pid is None:
            recheck = now - self._kthreads_checked_at >= KTHREAD_RECHECK_S
        else:
            recheck = not unwrapped or now - self._kthreads_checked_at >= KTHREAD_RECHECK_MAX_S
        self._last_pid = last_pid
        if recheck:
            self.kernel_thread_pids, self._kthreads_checked_at = frozenset(), now
        kthreads: set[int] = set()
        young_small: set[int] = set()
        idle_read_at: dict[int, float] = {}
        for pid in procfs.list_pids(self.files):
            if pid == self.own_pid:
                continue
            if pid in self.kernel_thread_pids:
                kthreads.add(pid)
                continue
            read_at = self._idle_read_at.get(pid)
            if read_at is not None and now - read_at < IDLE_RECHECK_S and unwrapped:
                key = known_pids[pid]
                seen[key] = self._history[key]  # its CPU use is measured from that read on
                idle_read_at[pid] = read_at
                continue
            try:
                info = self._read_process(pid, now, uptime_ticks)
            except ProcessGone:
                log.debug("pid %d went away while being read; skipped", pid)
                continue
            except UnexpectedSymlink as exc:
                log.warning("pid %d: %s; skipped", pid, exc)
                continue
            except AccessDenied as exc:
                log.debug("pid %d: access denied (%s); skipped", pid, exc)
                continue
            if isinstance(info, str):  # KERNEL_THREAD
                kthreads.add(pid)
                continue
            if info is None:
                continue
            if isinstance(info, _Idle):
                seen[info.key] = _History(info.cpu_ticks, now)
                idle_read_at[pid] = now
                if info.key in self._admitted:
                    log.debug("pid %d (%s) no longer balanced: %s", pid, info.comm, info.reason)
                continue
            old_key = known_pids.get(pid)
            if old_key is not None and old_key != info.key:
                log.debug("pid %d was reused: start time %d -> %d", pid, old_key.start_time,
                          info.key.start_time)
            seen[info.key] = _History(info.cpu_ticks, now)
            reason = self.filter.rejection(info, admitted_before=info.key in self._admitted)
            if reason is None:
                admitted.append(info)
            elif info.key in self._admitted:
                log.debug("pid %d (%s) no longer balanced: %s", pid, info.comm, reason)
            elif uptime_ticks - info.key.start_time < YOUNG_S * procfs.CLOCK_TICKS \
                    and self.filter.rejection(info, any_rss=True) is None:
                young_small.add(pid)
        self._history = seen
        self._idle_read_at = idle_read_at
        self._names = {k: v for k, v in self._names.items() if k in seen}
        self.kernel_thread_pids = frozenset(kthreads)
        self.seen_pids = {key.pid for key in seen}
        self.young_small_pids = frozenset(young_small)
        keys = {info.key for info in admitted}
        new = sorted(keys - self._admitted)
        left = sorted(self._admitted - keys)
        self._admitted = keys
        return Discovery(admitted, new, left)

    def _read_process(self, pid: int, now: float, uptime_ticks: float) -> ProcessInfo | _Idle | str | None:
        """The process's details; only its stat file when that shows it too idle to balance
        (no rule admits a process below min_cpu_percent: most processes cost one read)."""
        stat = procfs.read_stat(self.files, pid)
        if stat.is_kernel_thread:
            return KERNEL_THREAD
        if stat.state in ("Z", "X"):
            return None
        key = ProcessKey(pid, stat.start_time_ticks)
        previous = self._history.get(key)
        if previous is not None and now > previous.seen_at:
            ticks = stat.cpu_ticks - previous.cpu_ticks
            seconds = now - previous.seen_at
        else:
            ticks = stat.cpu_ticks
            seconds = max(uptime_ticks - stat.start_time_ticks, 1) / procfs.CLOCK_TICKS
        cpu_percent = 100.0 * ticks / procfs.CLOCK_TICKS / seconds
        floor = self.filter.min_cpu_percent * (HYSTERESIS if key in self._admitted else 1.0)
        if cpu_percent < floor:
            return _Idle(key, stat.comm, stat.cpu_ticks, f"CPU {cpu_percent:.1f}% below {floor:g}%")
        names = self._names.get(key)
        young = uptime_ticks - stat.start_time_ticks < YOUNG_S * procfs.CLOCK_TICKS
        if names is None or names[0] != stat.comm or now - names[3] >= NAMES_RECHECK_S:
            status = procfs.read_status(self.files, pid)
            exe_name = stat.comm
            if len(stat.comm) >= COMM_LEN:
                argv = procfs.read_cmdline(self.files, pid)
                if argv:
                    exe_name = os.path.basename(argv[0])
            names = (stat.comm, exe_name, procfs.cgroup_path(procfs.read_cgroup(self.files, pid)), now,
                     status.uids[0], status.hugetlb_kb)
            rss_kb = status.vm_rss_kb + status.hugetlb_kb
        elif young and key not in self._admitted or names[5]:  # setting up (setuid, hugetlb), not yet
            # admitted, or hugetlb in use: status each pass (an admitted job's is read every NAMES_RECHECK_S)
            status = procfs.read_status(self.files, pid)
            names = names[:4] + (status.uids[0], status.hugetlb_kb)
            rss_kb = status.vm_rss_kb + status.hugetlb_kb
        else:
            rss_kb = stat.rss_pages * procfs.BASE_PAGE_KB + names[5]  # VmRSS is stat's rss
        self._names[key] = names
        uid = names[4]
        if uid not in self._users:
            self._users[uid] = _user_name(uid)
        return ProcessInfo(
            key=key, comm=stat.comm, exe_name=names[1], uid=uid, user=self._users[uid],
            rss_kb=rss_kb, num_threads=stat.num_threads,
            cpu_ticks=stat.cpu_ticks, cpu_percent=cpu_percent, cgroup=names[2], ppid=stat.ppid)


def find_processes(files: KernelFiles, wanted: str, own_pid: int | None = None) -> list[ProcessInfo]:
    """Processes named by `wanted`: a PID, or a command-name pattern (glob or "re:REGEX"),
    the way `autonumactl show PID|NAME` takes them. No thresholds apply."""
    if wanted.isdigit():
        process_filter = ProcessFilter(include_pids=frozenset({int(wanted)}))
    else:
        process_filter = ProcessFilter(include=(wanted,))
    return ProcessDiscovery(files, process_filter, own_pid=own_pid).discover().processes


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
RSS_SETTLED = 0.02
"""A new process's RSS that changed by at most this share between two calls has settled:
the job has placed its memory (a pass while it is still first-touching it would look at
threads and pages about to change, and spend the CPU ceiling's allowance on them)."""


class NewProcessWatch:
    """Between passes: has a process the last pass did not see grown big enough to balance?

    The daemon sleeps up to `scan_sleep_pass_millisecs` once the system has settled;
    a job that starts meanwhile would wait out that sleep before its first look. Every
    half second of the sleep while a new PID grows (daemon.WATCH_TICK_S; every second
    otherwise) the daemon calls `check`, which lists /proc when a PID was handed out
    and reads the stat file of PIDs the last pass did not see (at most `max_reads` a
    call, so process churn costs little), and answers the first one whose RSS reached
    `min_rss_kb` and has settled (changed by at most RSS_SETTLED since the previous
    call); the daemon then starts its next pass at once. Kernel threads, zombies and
    processes it may not read are not read again; small new ones are read again on
    later calls (NEW_REREAD_S), since a job grows while it starts.
    """

    def __init__(self, files: KernelFiles, min_rss_kb: int, own_pid: int | None = None,
                 max_reads: int = 64) -> None:
        self.files = files
        self.min_rss_kb = min_rss_kb
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.max_reads = max_reads
        self._known: set[int] = set()
        self._ignored: set[int] = set()
        self._rss_kb: dict[int, int] = {}  # new PIDs' RSS at the previous call
        self._growing: dict[int, int | None] = {}  # PIDs growing at the last pass: RSS at the previous look
        self._answered: set[int] = set()           # of them, those `settled` answered already
        self._last_pid: int | None = None          # procfs.last_pid at the previous check
        self._reread_at = float("-inf")            # when check last read every new PID it knows
        self._growing_new: set[int] = set()        # new PIDs growing (or just seen) at their last read

    def reset(self, known_pids: set[int], growing: Iterable[int] = ()) -> None:
        """After a pass: the PIDs it saw, and those of them still growing, whose memory gets
        no votes until it holds steady (`settled`)."""
        self._known = set(known_pids)
        self._ignored.clear()
        self._rss_kb.clear()
        self._growing_new.clear()
        growing = set(growing)
        self._answered &= growing  # a process answered once and still growing waits for the passes
        self._growing = {pid: None for pid in growing - self._answered}
        self._last_pid = None

    def watching(self) -> bool:
        """Whether a PID is being watched grow (a new one, or one growing at the last pass)."""
        return bool(self._growing or self._growing_new)

    def settled(self) -> int | None:
        """A PID of those growing at the last pass whose RSS has held steady (changed by at
        most RSS_SETTLED) between two looks, or None: a job done setting up is looked at
        now, not a whole pause later. Each is answered once while it keeps growing from
        pass to pass (one that grows slowly and steadily is looked at by the passes)."""
        for pid, before in list(self._growing.items()):
            try:
                stat = procfs.read_stat(self.files, pid)
            except (ProcessGone, AccessDenied, ValueError):
                del self._growing[pid]
                continue
            if stat.state in ("Z", "X"):
                del self._growing[pid]
                continue
            rss_kb = stat.rss_pages * PAGE_KB
            if before is not None and abs(rss_kb - before) <= rss_kb * RSS_SETTLED:
                del self._growing[pid]
                self._answered.add(pid)
                return pid
            self._growing[pid] = rss_kb
        return None

    def check(self) -> int | None:
        """A new PID big enough to balance now, or None. /proc is listed only when a PID was
        handed out since the last listing (at every call where /proc/loadavg cannot say); in
        between, only the new PIDs still growing at their last read are read again, and every
        NEW_REREAD_S all the new ones it knows (most calls read nothing)."""
        last = procfs.last_pid(self.files)
        now = time.monotonic()
        if last is not None and last == self._last_pid:
            if now - self._reread_at < NEW_REREAD_S:
                return self._look_at(sorted(self._growing_new))
            self._reread_at = now
            return self._look_at(sorted(p for p in self._rss_kb if p not in self._ignored)[:self.max_reads])
        self._last_pid = last
        new = []
        for pid in procfs.list_pids(self.files):
            if pid in self._known or pid in self._ignored or pid in self._rss_kb or pid == self.own_pid:
                continue   # (the new PIDs read before: those growing are read below, the rest in turn)
            if len(new) >= self.max_reads:
                self._last_pid = None  # the rest next time, whether or not a PID comes meanwhile
                break
            new.append(pid)
        return self._look_at(new + sorted(self._growing_new))

    def _look_at(self, pids: list[int]) -> int | None:
        """Read the stat files of new `pids`: the first whose RSS reached min_rss_kb and held
        steady since its previous read, or None."""
        for pid in pids:
            try:
                stat = procfs.read_stat(self.files, pid)
            except (ProcessGone, AccessDenied, ValueError):
                self._ignored.add(pid)
                self._growing_new.discard(pid)
                continue
            if stat.is_kernel_thread or stat.state in ("Z", "X"):
                self._ignored.add(pid)
                self._growing_new.discard(pid)
                continue
            rss_kb = stat.rss_pages * PAGE_KB
            before, self._rss_kb[pid] = self._rss_kb.get(pid), rss_kb
            steady = before is not None and abs(rss_kb - before) <= rss_kb * RSS_SETTLED
            if rss_kb >= self.min_rss_kb and steady:
                self._growing_new.discard(pid)
                return pid
            if steady:
                self._growing_new.discard(pid)   # small and steady: looked at again at a listing
            else:
                self._growing_new.add(pid)       # still growing (or just seen): look again
        return None
