"""Task statistics: per thread, where it runs and what it writes, per node.

The statistics box for threads (AutoNUMA's per-task counters), two kinds of
per-node figures per thread, both halved at the end of every pass the way AutoNUMA
halves its per-thread counters, so a thread's figures weigh the last passes most:

- run time: at each look (`TaskStatsTable.look`, at least once per process per
  pass) the run time a thread accumulated since the previous look (schedstat's
  first field, ns) is credited to the node of the CPU it last ran on (stat field
  39); when that node changed since the previous look the time is split evenly
  between the old and the new node. A thread's first look is a baseline only: its
  run-time figures need a second look (`ThreadStats.looks`).
- accesses: the userspace stand-in for AutoNUMA's hinting faults. For a process
  whose threads run on more than one node, `WriteFaultSampler` opens a perf
  page-fault sampler on its threads, then writes "4" to /proc/PID/clear_refs
  (soft-dirty clear: every page is write-protected again, so the first write to
  each takes a fault) and after `window_s` reads the (tid, address, cpu) samples;
  each sampled page's node (numa_calls.page_nodes) counts one access for that
  thread on that node. Only writes are seen. Windows come in pairs: the second is
  armed as soon as the plan made from the first votes to move some of the process's
  pages (`confirm`; a first window that moves nothing ends its pair), so that a page
  group's move is voted for by two windows, not twice by one (a soft-dirty window
  sees only each page's first writer: where two threads sweep the same memory, one
  window shows each region as written by whichever came first). Each process's
  written regions accumulate over windows, older windows' counts halved at each new
  one (as AutoNUMA halves its per-task counters), so memory two threads share shows
  as shared. Arming is paced (at most `max_armed` processes armed at once, a pair at
  most every `rearm_after_s`, less often while pairs find nothing to move) because it
  costs the target one minor fault per page it writes; `fault_sampling = false` in
  [scan] turns it off.

Preferred node of a thread: where most of its sampled accesses went (given at least
MIN_ACCESS_SAMPLES of them), else where it ran most, else where it runs now.

Threads that appear are added at their first look; threads that exit are dropped
at the next look; a thread is named by (tid, start time), so a reused TID starts
afresh.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autonumad.constants import PAGE_SIZE
from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.kernel.procfs import ThreadSnapshot
from autonumad.perf_event_paranoid_sysctl import read_perf_event_paranoid
from autonumad.processes import ProcessKey

log = logging.getLogger(__name__)

MIN_ACCESS_SAMPLES = 8
IDLE_PAIRS_MAX = 3
"""A process whose windows keep finding nothing to move is sampled at most 2**this times
less often than rearm_after_s (WriteFaultSampler._rearm_after), as AutoNUMA's scan period
grows while its scans change nothing."""
MULTI_NODE_SHARE = 0.1   # a process runs "on" a node where it spent at least this share of its time


@dataclass
class ThreadStats:
    tid: int
    start_time: int
    comm: str
    cpu: int
    current_node: int | None             # None: its CPU is in no known node
    last_run_ns: int                     # cumulative run time at the last look
    looks: int = 1
    run_ns: dict[int, float] = field(default_factory=dict)     # decayed run time per node
    accesses: dict[int, float] = field(default_factory=dict)   # decayed sampled writes per node of the page
    access_windows: int = 0   # write-fault windows that saw it write (add_accesses calls crediting it)
    state: str = "R"          # its state at the last look (R: running or runnable)

    def preferred_node(self) -> int | None:
        if sum(self.accesses.values()) >= MIN_ACCESS_SAMPLES:
            return _argmax(self.accesses)
        if self.run_ns:
            return _argmax(self.run_ns)
        return self.current_node

    def run_share(self) -> dict[int, float]:
        return _shares(self.run_ns)

    def access_share(self) -> dict[int, float]:
        return _shares(self.accesses)


def _argmax(values: Mapping[int, float]) -> int:
    return max(sorted(values), key=lambda node: values[node])


def _shares(values: Mapping[int, float]) -> dict[int, float]:
    total = sum(values.values())
    return {n: v / total for n, v in sorted(values.items())} if total else {}


def _add(counts: dict[int, float], node: int, amount: float) -> None:
    counts[node] = counts.get(node, 0.0) + amount


class TaskStatsTable:
    """Per-thread statistics of every observed process, keyed by ProcessKey then TID."""

    def __init__(self, cpu_nodes: Mapping[int, int]):
        self.cpu_nodes = dict(cpu_nodes)
        self._processes: dict[ProcessKey, dict[int, ThreadStats]] = {}

    def look(self, files: KernelFiles, key: ProcessKey) -> bool:
        """Read every thread of `key` and observe them; False (and forgotten) if it is gone."""
        try:
            threads = procfs.read_threads(files, key.pid)
        except ProcessGone:
            log.debug("pid %d went away before its threads were read", key.pid)
            self._processes.pop(key, None)
            return False
        self.observe(key, threads)
        return True

    def observe(self, key: ProcessKey, threads: Sequence[ThreadSnapshot]) -> None:
        """One look at the threads of a process (see the module docstring)."""
        old = self._processes.get(key, {})
        current: dict[int, ThreadStats] = {}
        for snap in threads:
            node = self.cpu_nodes.get(snap.processor)
            stats = old.get(snap.tid)
            if stats is None or stats.start_time != snap.start_time_ticks:
                current[snap.tid] = ThreadStats(snap.tid, snap.start_time_ticks, snap.comm, snap.processor,
                                                node, snap.run_ns, state=snap.state)
                continue
            ran = snap.run_ns - stats.last_run_ns
            if ran > 0:
                if stats.current_node is not None and node is not None and stats.current_node != node:
                    _add(stats.run_ns, stats.current_node, ran / 2)
                    _add(stats.run_ns, node, ran / 2)
                elif node is not None:
                    _add(stats.run_ns, node, ran)
            stats.comm, stats.cpu, stats.current_node, stats.state = snap.comm, snap.processor, node, snap.state
            stats.last_run_ns = snap.run_ns
            stats.looks += 1
            current[snap.tid] = stats
        self._processes[key] = current

    def add_accesses(self, key: ProcessKey, samples: Sequence[tuple[int, int, int]],
                     nodes: Sequence[int]) -> int:
        """Count sampled writes of one window: samples[i] = (tid, address, cpu), nodes[i] =
        the node of that page (negative: not present). Returns how many were credited to a
        thread."""
        threads = self._processes.get(key, {})
        credited = 0
        seen: set[int] = set()
        for (tid, _addr, _cpu), node in zip(samples, nodes):
            stats = threads.get(tid)
            if stats is None or node < 0:
                continue
            _add(stats.accesses, node, 1.0)
            seen.add(tid)
            credited += 1
        for tid in seen:
            threads[tid].access_windows += 1
        return credited

    def end_pass(self) -> None:
        """Halve every thread's figures (AutoNUMA's per-pass decay)."""
        for threads in self._processes.values():
            for stats in threads.values():
                for counts in (stats.run_ns, stats.accesses):
                    for node in counts:
                        counts[node] /= 2

    def forget(self, keys: Iterable[ProcessKey]) -> None:
        for key in keys:
            self._processes.pop(key, None)

    def threads(self, key: ProcessKey) -> list[ThreadStats]:
        return [self._processes[key][tid] for tid in sorted(self._processes.get(key, {}))]

    def process_run_ns(self, key: ProcessKey) -> dict[int, float]:
        total: dict[int, float] = {}
        for stats in self._processes.get(key, {}).values():
            for node, ns in stats.run_ns.items():
                _add(total, node, ns)
        return dict(sorted(total.items()))

    def nodes_run_on(self, key: ProcessKey, min_share: float = MULTI_NODE_SHARE) -> set[int]:
        """Nodes where the process's threads spent at least `min_share` of their run time
        (an idle thread parked on another node does not count); before any run time is
        measured between two looks, the nodes they sit on now, each weighed by its
        threads' run time so far (a starting process's idle main thread beside a busy
        one does not count either)."""
        run = self.process_run_ns(key)
        if not run:  # nothing measured between looks yet: run time so far, where the threads sit now
            threads = [s for s in self._processes.get(key, {}).values() if s.current_node is not None]
            ran = sum(s.last_run_ns for s in threads) > 0
            for s in threads:
                _add(run, s.current_node, float(s.last_run_ns) if ran else 1.0)
        return {n for n, share in _shares(run).items() if share >= min_share}

    def busy_thread_nodes(self, key: ProcessKey, min_share: float = MULTI_NODE_SHARE) -> set[int]:
        """The nodes its busy threads run on: for each thread that ran at least `min_share`
        as much as its busiest thread, the node it ran on most (before run time is measured
        between two looks: its run time so far, and the node it sits on). One busy
        thread that the scheduler moved between nodes counts once: it has no other
        thread to share its memory with. Before run time is measured, a thread asleep at the
        look does not count while another one runs: a job's main thread that first touched its
        memory (seconds of run time so far) and now waits for its workers is no busy thread,
        and would make a job of one worker look spread over two nodes at its first look."""
        threads = [s for s in self._processes.get(key, {}).values() if s.current_node is not None]
        measured = any(s.run_ns for s in threads)
        if not measured and any(s.state == "R" for s in threads):
            threads = [s for s in threads if s.state == "R"]
        run = {s.tid: (sum(s.run_ns.values()) if measured else float(s.last_run_ns)) for s in threads}
        most = max(run.values(), default=0.0)
        if not most:
            return set()
        nodes = set()
        for s in threads:
            if run[s.tid] >= min_share * most:
                nodes.add(_argmax(s.run_ns) if measured and s.run_ns else s.current_node)
        return nodes


REGION_BYTES = 2 << 20
"""Write samples are also kept per 2 MiB region, so that memory follows the threads that
write it even inside one mapping (numa02: one buffer, a slice per thread)."""


@dataclass
class RegionTouches:
    """One region's sampled writes: by thread, and by the node the written page was on."""

    tids: dict[int, float] = field(default_factory=dict)
    nodes: dict[int, float] = field(default_factory=dict)
    window: int = 0
    """The last of its process's sampling windows that saw it written (1, 2, ...)."""


REGION_DECAY = 0.5
"""At each new window, the counts of the earlier ones are multiplied by this."""
REGION_MIN_COUNT = 0.25
"""A decayed count below this is dropped (after three windows without a new write)."""


def merge_regions(old: Mapping[int, RegionTouches], new: Mapping[int, RegionTouches], window: int,
                  decay: float = REGION_DECAY) -> dict[int, RegionTouches]:
    """The regions of the windows so far (`old`, decayed) with those written in the new
    window, number `window`, added."""
    def scaled(counts: Mapping[int, float]) -> dict[int, float]:
        return {k: v * decay for k, v in counts.items() if v * decay >= REGION_MIN_COUNT}

    out: dict[int, RegionTouches] = {}
    for start, touches in old.items():
        tids, nodes = scaled(touches.tids), scaled(touches.nodes)
        if tids and nodes:
            out[start] = RegionTouches(tids, nodes, touches.window)
    for start, touches in new.items():
        merged = out.setdefault(start, RegionTouches())
        merged.window = window
        for tid, count in touches.tids.items():
            merged.tids[tid] = merged.tids.get(tid, 0) + count
        for node, count in touches.nodes.items():
            merged.nodes[node] = merged.nodes.get(node, 0) + count
    return out


def region_touches(samples: Sequence[tuple[int, int, int]], nodes: Sequence[int]) -> dict[int, RegionTouches]:
    regions: dict[int, RegionTouches] = {}
    for (tid, addr, _cpu), node in zip(samples, nodes):
        if node < 0:
            continue
        r = regions.setdefault(addr & ~(REGION_BYTES - 1), RegionTouches())
        r.tids[tid] = r.tids.get(tid, 0) + 1
        r.nodes[node] = r.nodes.get(node, 0) + 1
    return regions


@dataclass
class FaultSamplerCounters:
    armed: int = 0
    samples: int = 0
    credited: int = 0
    failures: int = 0
    lost: int = 0


@dataclass
class _Armed:
    key: ProcessKey
    handle: Any
    armed_at: float
    samples: list[tuple[int, int, int]] = field(default_factory=list)
    period: int = 1
    threads: int = 1
    checked: tuple[float, int] = (0.0, 0)  # (when, samples + lost then) at the last `window_ready` look
    quiet_looks: int = 0                   # looks in a row that found no new fault (to speak of)
    saturated: bool = False                # its writers stopped faulting: readable before window_s


MAX_SAMPLED_THREADS = 64
"""Threads of one process watched at once (one perf event, one descriptor and a 36 KiB
ring each): the busiest ones, so a process of thousands of threads costs no more."""
RING_SAMPLES = 1024
"""Samples one thread's ring holds (8 data pages), drained at each poll."""
MIN_WINDOW_S = 0.25
SATURATION_CHECK_S = 0.1
SATURATION_SHARE = 0.02
SATURATION_LOOKS = 2
"""A window is read before window_s once it has been open MIN_WINDOW_S, holds at least
MIN_ACCESS_SAMPLES per thread watched, and its samples grew by no more than SATURATION_SHARE
at each of SATURATION_LOOKS looks in a row SATURATION_CHECK_S apart (window_ready): a slow
writer's window, with a quiet tenth of a second now and then, waits for window_s."""


def next_sample_period(period: int, samples: int, lost: int, threads: int) -> int:
    """The sample period for a process's next window. Every write fault is sampled
    (period 1) until a window loses samples to full rings (drained only between scan
    batches): then one fault in so many that the last window's faults would have
    filled about half of each thread's ring, so that the samples spread over every
    region written instead of covering the first pages written and losing the rest.
    (Measured in the TCG VM: numa02's writers fault ~600 times a second each on
    random pages of their slices, so period 1 sees every 2 MiB region in a 1 s
    window, and any larger period would only lose regions.)"""
    faults = (samples + lost) * period
    if lost == 0:
        return max(1, min(period, faults // (RING_SAMPLES // 2 * max(1, threads)) or 1))
    return max(1, -(-faults // (RING_SAMPLES // 2 * max(1, threads))))


def _perf_event_paranoid(files: KernelFiles) -> int | None:
    try:
        return read_perf_event_paranoid(files)
    except (OSError, ProcessGone, AccessDenied):
        return None


class WriteFaultSampler:
    """Arms and reads write-fault sampling, paced, for processes spread over nodes.

    The daemon calls `poll(keys)` often (e.g. between scan batches) with the keys of
    the processes it balances, and `close()` on exit. `calls` is the numa_calls module
    (open_fault_sampler, read_fault_samples, close_fault_sampler, page_nodes).
    """

    def __init__(self, files: KernelFiles, tasks: TaskStatsTable, calls: Any = None, enabled: bool = True,
                 window_s: float = 1.0, rearm_after_s: float = 30.0, max_armed: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        if calls is None and enabled:
            from autonumad.kernel import numa_calls as calls
        self.files = files
        self.tasks = tasks
        self.calls = calls
        self.enabled = enabled
        self.window_s = window_s
        self.rearm_after_s = rearm_after_s
        self.max_armed = max_armed
        self.clock = clock
        self.counters = FaultSamplerCounters()
        self._armed: dict[ProcessKey, _Armed] = {}
        self.regions: dict[ProcessKey, dict[int, RegionTouches]] = {}
        """Per process, the sampled writes per REGION_BYTES region, over its windows (decayed)."""
        self.windows: dict[ProcessKey, int] = {}
        """Per process, how many windows were read (the number of the last one)."""
        self.versions: dict[ProcessKey, int] = {}
        """Per process, bumped at every change to its regions (a window read, a move noted)."""
        self._pair_open: set[ProcessKey] = set()   # first window of a pair read: a second may follow
        self._confirm: set[ProcessKey] = set()     # of them, those a plan voted to move pages of (confirm)
        self._second: set[ProcessKey] = set()      # the window armed is the second of its pair
        self._last_armed: dict[ProcessKey, float] = {}
        self._period: dict[ProcessKey, int] = {}
        self._idle_pairs: dict[ProcessKey, tuple[int, frozenset[int]]] = {}
        """Per process, how many pairs in a row ended with nothing to move (a first window the
        plan voted nothing for), and the nodes its busy threads ran on then: each such pair
        doubles the wait for the next, up to IDLE_PAIRS_MAX times, until those nodes change."""
        self.unavailable: str | None = None
        """Why sampling fails for every process (a kernel setting), or None."""

    def state(self) -> str:
        """"on", "off (config)" or "unavailable: why", for status."""
        if self.unavailable:
            return f"unavailable: {self.unavailable}"
        return "on" if self.enabled else "off (config)"

    def poll(self, keys: Iterable[ProcessKey]) -> None:
        """Drain the armed samplers (their rings hold ~1024 samples per thread), count the
        samples of those whose window has passed, then arm at most one more process of
        `keys`. The daemon calls it after each process it observes, with that process alone:
        a pass costs one look per process, not one per process seen so far."""
        now = self.clock()
        for armed in list(self._armed.values()):
            self._drain(armed)
            if armed.saturated or now - armed.armed_at >= self.window_s:
                self._collect(armed)
        if not self.enabled:
            return
        for key in keys:
            spread = len(self.tasks.busy_thread_nodes(key)) > 1
            if not spread and key in self.regions and key not in self._armed \
                    and now - self._last_armed.get(key, now) >= self.rearm_after_s:
                # its threads came together on one node and no window is due: its memory is
                # seen through the scan again (mapping groups), not through writes long past
                self._drop_regions(key)
            if len(self._armed) >= self.max_armed:
                break
            if key in self._pair_open and key not in self._confirm:
                continue  # its first window is read: the second waits for what the plan makes of it
            if key in self._armed or (key not in self._pair_open and not self._pair_due(key, now)):
                continue
            if spread:
                self._arm(key, now)
                break

    def arm_spread(self, keys: Iterable[ProcessKey]) -> None:
        """Arm now, as far as max_armed allows, the processes of `keys` (the daemon's: those
        whose threads it has just spread over nodes) that poll would arm at the next pass
        once it sees them spread: their first window then runs beside those armed at this
        pass, and one pass reads them all (window_ready)."""
        if not self.enabled:
            return
        now = self.clock()
        for key in keys:
            if len(self._armed) >= self.max_armed:
                break
            if key in self._armed or key in self._pair_open or not self._pair_due(key, now):
                continue
            self._arm(key, now)

    def confirm(self, voted: Iterable[ProcessKey], planned: Iterable[ProcessKey]) -> None:
        """After the plan of a pass: of the processes whose first window of a pair was read,
        those it voted to move pages of (`voted`) get the pair's second window now, so the
        move's second vote rests on writes seen afresh; for the others it weighed (`planned`:
        not growing, not having threads moved...) the pair ends here, as a window that moves
        nothing needs no second look (the next pair comes rearm_after_s after this one, and
        twice as late after each such pair in a row: _rearm_after). A pair of a process the
        plan left aside waits for a later plan's verdict."""
        voted, planned = set(voted), set(planned)
        if not self.enabled:
            self._pair_open.clear()
            self._confirm.clear()
            return
        now = self.clock()
        for key in sorted(self._pair_open):
            if key not in voted and key not in planned:
                continue
            busy = frozenset(self.tasks.busy_thread_nodes(key))
            if key not in voted or len(busy) < 2:
                self._pair_open.discard(key)
                self._confirm.discard(key)
                if key not in voted:
                    idle, nodes = self._idle_pairs.get(key, (0, busy))
                    self._idle_pairs[key] = (min(idle + 1 if nodes == busy else 1, IDLE_PAIRS_MAX), busy)
                continue
            self._idle_pairs.pop(key, None)
            self._confirm.add(key)
            if key not in self._armed and len(self._armed) < self.max_armed:
                self._arm(key, now)  # (one left over is armed by a later poll)

    def _pair_due(self, key: ProcessKey, now: float) -> bool:
        """Whether a new pair of windows may start for `key`: never armed, or armed
        _rearm_after ago."""
        return key not in self._last_armed or now - self._last_armed[key] >= self._rearm_after(key)

    def _rearm_after(self, key: ProcessKey) -> float:
        """How long after its last window a process spread over nodes gets its next pair."""
        idle, nodes = self._idle_pairs.get(key, (0, frozenset()))
        if idle and frozenset(self.tasks.busy_thread_nodes(key)) != nodes:
            self._idle_pairs.pop(key)  # its threads moved: what it writes where is news again
            idle = 0
        return self.rearm_after_s * (1 << idle)

    def windows_open(self) -> int:
        """Processes armed whose window has not been read yet."""
        return len(self._armed)

    def window_left(self) -> float | None:
        """Seconds until every open window is due to be read; None when none is open. (The
        windows of processes armed in one pass, one after another as the pass looks at each,
        are read by one pass, and their second windows by the next, rather than each by a
        pass of its own: under TCG a pass that reads windows costs a few tenths of a CPU
        second.)"""
        if not self._armed:
            return None
        return max(0.0, max(a.armed_at for a in self._armed.values()) + self.window_s - self.clock())

    def window_ready(self) -> bool:
        """Drain the open windows; True when all of them can be read now (window_left):
        each one's window_s is up, or its writers stopped faulting (a soft-dirty window
        sees each page's first write
        only, so writers that sweep their memory, or write it in huge pages, have shown
        every page they write long before window_s: S2's numa02 threads fault on all 128
        huge pages of their slices within a sweep of ~0.15 s under TCG). The daemon asks
        every SATURATION_CHECK_S during the pause after a pass that left a window open."""
        now = self.clock()
        ready = bool(self._armed)
        for armed in self._armed.values():
            self._drain(armed)
            when, before = armed.checked
            count = len(armed.samples) + getattr(armed.handle, "lost", 0)  # full rings are not quiet ones
            if now - when >= SATURATION_CHECK_S / 2:  # the ticks are this far apart, give or take
                quiet = when > armed.armed_at and count - before <= SATURATION_SHARE * count
                armed.quiet_looks = armed.quiet_looks + 1 if quiet else 0
                armed.saturated = armed.saturated or (
                    now - armed.armed_at >= MIN_WINDOW_S and count >= MIN_ACCESS_SAMPLES * armed.threads
                    and armed.quiet_looks >= SATURATION_LOOKS)
                armed.checked = (now, count)
            ready = ready and (armed.saturated or now - armed.armed_at >= self.window_s)
        return ready

    def note_moved(self, key: ProcessKey, start: int, end: int, from_node: int, to_node: int | None) -> int:
        """The daemon moved every page of [start, end) on `from_node` to `to_node`: the
        writes sampled in those regions now count on the new node, so the next plan
        sees the region where it is rather than moving it again (`to_node` None: it
        found none of them left on `from_node`, and they count on no node until the
        next window). Returns how many regions."""
        regions = self.regions.get(key)
        if not regions:
            return 0
        self.versions[key] = self.versions.get(key, 0) + 1
        updated = 0
        for region in range(start & ~(REGION_BYTES - 1), end, REGION_BYTES):
            touches = regions.get(region)
            if touches and from_node in touches.nodes:
                count = touches.nodes.pop(from_node)
                if to_node is not None:
                    touches.nodes[to_node] = touches.nodes.get(to_node, 0) + count
                updated += 1
        return updated

    def forget(self, keys: Iterable[ProcessKey]) -> None:
        for key in keys:
            self._drop_regions(key)
            self.versions.pop(key, None)
            armed = self._armed.pop(key, None)
            if armed is not None:
                self.calls.close_fault_sampler(armed.handle)
            self._last_armed.pop(key, None)
            self._period.pop(key, None)
            self._idle_pairs.pop(key, None)

    def _drop_regions(self, key: ProcessKey) -> None:
        self.regions.pop(key, None)
        self.versions[key] = self.versions.get(key, 0) + 1
        self.windows.pop(key, None)
        self._pair_open.discard(key)
        self._confirm.discard(key)
        self._second.discard(key)

    def close(self) -> None:
        self.forget(list(self._armed))

    def _arm(self, key: ProcessKey, now: float) -> None:
        self._last_armed[key] = now
        busiest = sorted(self.tasks.threads(key), key=lambda t: (-sum(t.run_ns.values()), t.tid))
        tids = sorted(t.tid for t in busiest[:MAX_SAMPLED_THREADS])
        try:
            period = self._period.get(key, 1)
            handle = self.calls.open_fault_sampler(tids, period=period)
        except ProcessGone:
            log.debug("pid %d went away before write-fault sampling", key.pid)
            return
        except AccessDenied as exc:
            self.counters.failures += 1
            paranoid = _perf_event_paranoid(self.files)
            if paranoid is not None and paranoid > 2:
                reason = (f"kernel.perf_event_paranoid = {paranoid} refuses perf_event_open without "
                          f"CAP_SYS_ADMIN; placing by page location and thread CPU only "
                          f"([kernel] perf_event_paranoid = \"lower\" lets the service lower it to 2 "
                          f"while it runs)")
                if self.unavailable != reason:
                    log.warning("write-fault sampling refused: %s", reason)
                self.unavailable = reason
            else:
                log.debug("pid %d: write-fault sampling refused (%s)", key.pid, exc)
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                # out of descriptors or locked memory for this process's rings: skip it only
                log.warning("pid %d: write-fault sampling skipped (%s)", key.pid, exc)
                self.counters.failures += 1
                return
            log.warning("write-fault sampling unavailable (%s); placing by page location and "
                        "thread CPU only", exc)
            self.counters.failures += 1
            self.enabled = False
            self.unavailable = f"{exc}; placing by page location and thread CPU only"
            return
        self.unavailable = None
        try:
            procfs.clear_soft_dirty(self.files, key.pid)
        except (ProcessGone, AccessDenied) as exc:
            log.debug("pid %d: cannot clear soft-dirty bits (%s)", key.pid, exc)
            self.calls.close_fault_sampler(handle)
            return
        self._armed[key] = _Armed(key, handle, now, period=period, threads=len(tids))
        if key in self._pair_open:
            self._pair_open.discard(key)
            self._confirm.discard(key)
            self._second.add(key)
        else:
            self._second.discard(key)
        self.counters.armed += 1
        log.debug("pid %d: write-fault sampling armed on %d threads", key.pid, len(tids))

    def _drain(self, armed: _Armed) -> None:
        armed.samples.extend(self.calls.read_fault_samples(armed.handle))

    def _collect(self, armed: _Armed) -> None:
        del self._armed[armed.key]
        self.calls.close_fault_sampler(armed.handle)
        samples = armed.samples
        lost = getattr(armed.handle, "lost", 0)
        self.counters.lost += lost
        self._period[armed.key] = next_sample_period(armed.period, len(samples), lost, armed.threads)
        if not samples:
            return
        pages = sorted({addr & ~(PAGE_SIZE - 1) for _, addr, _ in samples})
        try:
            page_node = dict(zip(pages, self.calls.page_nodes(armed.key.pid, pages)))
        except (ProcessGone, AccessDenied) as exc:
            log.debug("pid %d: sampled pages' nodes unreadable (%s)", armed.key.pid, exc)
            return
        nodes = [page_node[addr & ~(PAGE_SIZE - 1)] for _, addr, _ in samples]
        self.counters.samples += len(samples)
        self.counters.credited += self.tasks.add_accesses(armed.key, samples, nodes)
        key = armed.key
        self.windows[key] = self.windows.get(key, 0) + 1
        self.versions[key] = self.versions.get(key, 0) + 1
        self.regions[key] = merge_regions(self.regions.get(key, {}), region_touches(samples, nodes),
                                          self.windows[key])
        if key in self._second:
            self._second.discard(key)
        else:
            self._pair_open.add(key)
