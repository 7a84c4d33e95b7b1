"""The actuator: applies a plan under rate limits and records what it changed.

Task moves become `sched_setaffinity` on the thread (the CPUs of its new node
that are online at that moment, read afresh: never a CPU that went offline since
the pass read the topology, and no move at all to a node left without online
CPUs); page moves become batched `move_pages` calls through the C extension, limited like
AutoNUMA's knuma_migrated to `pages_to_migrate` pages per `migrate_sleep_millisecs`.
`migrate_ranges` hands whole address ranges to the C loop (which finds the pages on
the source node and moves them, no Python object per page) and may be called from
several threads at once, one per destination node, as AutoNUMA ran one
knuma_migrated per node: the rate limit and the counters are shared under a lock.
Every affinity the actuator sets is written to the state file first (what it
found, what it set), so it can be restored when a process leaves autonumad's care,
on `autonumactl disable`, on daemon stop, and after a crash. A thread that was
free to run on every online CPU is recorded as free to run on every possible CPU:
sched_getaffinity hides offline CPUs, and restoring what it showed would keep the
thread off CPUs that come back online.

CPU hotplug: when every CPU of an affinity the actuator set goes offline, the
kernel resets the thread's affinity (at its next wake-up). `forget_broken_affinities`
finds those threads and drops their records, so the daemon neither counts the
kernel's affinity as its own nor takes it for someone else's pin. An affinity set
here whose CPUs are only partly offline is still ours: it is compared as seen
through the online CPUs.

Inherited pins: a thread created by a thread the actuator pinned, and a process
forked by one, start with that pin. Taken for someone else's pin, they would never
be balanced and never restored (not even on daemon stop): a busy launcher pinned
once would leave every job it starts afterwards on one node. So the actuator keeps
each pin it set with the original it replaced and when it set it (`lineage`, per
process, for as long as the process lives, also after the pin itself was restored;
a restarted daemon knows the pins its state file records, as set at its restart),
and `adopt_inherited` records a thread that started after such a pin was set, of
its own process or of an ancestor, and shows exactly that pin, as the actuator's,
with that original: it is then balanced and restored like the pins set here. A pin
a user gives a new thread or child that equals one of the actuator's is taken for
inherited; pins that were there before the actuator's never are.

PID reuse between decision and action is checked with the process start time
before and after each action; an action that turns out to have hit a new process
is undone (affinity put back, pages moved back) and counted. Vanished processes
and refused calls are counted, never raised.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autonumad.kernel.files import AccessDenied, ProcessGone
from autonumad.kernel.numa_calls import RangeMoves
from autonumad.state_file import AffinityRecord, DaemonState, StateFile, ThreadKey

log = logging.getLogger("autonumad.actuator")

PAGE_STATUS_NAMES = {
    -errno.EBUSY: "EBUSY",
    -errno.ENOMEM: "ENOMEM",
    -errno.EACCES: "EACCES",
    -errno.EFAULT: "EFAULT",
    -errno.ENOENT: "ENOENT",
}


class KernelOps(Protocol):
    """What the actuator needs from the I/O layer (a fake in tests)."""

    def get_affinity(self, tid: int) -> frozenset[int]: ...
    def set_affinity(self, tid: int, cpus: frozenset[int]) -> None: ...
    def online_cpus(self) -> frozenset[int]: ...
    def possible_cpus(self) -> frozenset[int]: ...
    def move_pages(self, pid: int, addrs: Sequence[int], node: int) -> list[int]: ...
    def move_ranges(self, pid: int, ranges: Sequence[tuple[int, int]], from_node: int, to_node: int,
                    limit: int, resume: tuple[int, int]) -> RangeMoves: ...
    def start_time(self, pid: int) -> int | None: ...


class MigrationRateLimit:
    """A token bucket: `pages_to_migrate` pages per `migrate_sleep_millisecs`, bursting to one period."""

    def __init__(self, pages_to_migrate: int, migrate_sleep_millisecs: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tokens = 0.0
        self.last = clock()
        self.configure(pages_to_migrate, migrate_sleep_millisecs)
        self.tokens = float(pages_to_migrate)

    def configure(self, pages_to_migrate: int, migrate_sleep_millisecs: int) -> None:
        self.capacity = float(pages_to_migrate)
        self.rate = pages_to_migrate / (migrate_sleep_millisecs / 1000.0)
        self.tokens = min(self.tokens, self.capacity)

    def mb_per_second(self, page_size: int = 4096) -> float:
        return self.rate * page_size / (1 << 20)

    def take(self, wanted: int) -> int:
        """Grant up to `wanted` pages now."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        granted = min(wanted, int(self.tokens))
        self.tokens -= granted
        return granted

    def give_back(self, unused: int) -> None:
        """Return the part of a grant that found no page to move."""
        self.tokens = min(self.capacity, self.tokens + max(0, unused))


@dataclass
class Outcome:
    """What happened to one action: `done`, or why not."""
    action: object
    result: str
    detail: str = ""


@dataclass
class Actuator:
    ops: KernelOps
    node_cpus: Callable[[int], frozenset[int]]
    state: DaemonState
    state_file: StateFile | None
    rate_limit: MigrationRateLimit
    counters: Counter = field(default_factory=Counter)
    boot_ticks: Callable[[], int] = lambda: 0
    """Clock ticks since boot now (the unit of thread start times), for `lineage`."""
    lineage: dict[tuple[int, int], dict[frozenset[int], tuple[frozenset[int], int]]] = field(default_factory=dict)
    """(pid, start time) -> {a pin set on one of its threads: (the original it replaced, when it
    was set, in ticks since boot)}."""

    def __post_init__(self) -> None:
        self._moves_lock = threading.Lock()  # the rate limit and counters, for movers running at once
        since = self.boot_ticks()  # a restarted daemon's pins: only what starts from now on inherits them
        for key, record in self.state.affinities.items():
            self.lineage.setdefault((key.pid, key.start_time), {})[record.applied] = (record.original, since)

    # ---- task moves -------------------------------------------------------------------
    def move_task(self, pid: int, start_time: int, tid: int, to_node: int, comm: str = "",
                  respect_pins: bool = False) -> str:
        """Pin thread `tid` of process (pid, start_time) to the online CPUs of `to_node`. With
        `respect_pins`, a thread someone else pinned since the pass looked at it (its affinity
        is narrower than the online CPUs and not the one we set) is left alone."""
        online = self._online_cpus()
        cpus = self.node_cpus(to_node) if online is None else self.node_cpus(to_node) & online
        if not cpus:
            self.counters["task_moves_refused_no_cpus"] += 1
            return "refused: node has no online CPUs"
        if self.ops.start_time(pid) != start_time:
            self.counters["pid_reuse_caught_before"] += 1
            return "skipped: process gone or PID reused"
        key = ThreadKey(pid, start_time, tid)
        record = self.state.affinities.get(key)
        try:
            current = self.ops.get_affinity(tid)
            if respect_pins and online is not None and (
                    current != _seen(record.applied, online) if record else not current >= online):
                self.counters["task_moves_skipped_pinned_since"] += 1
                return "skipped: someone else pinned it since the pass looked"
            original = record.original if record else self._original_affinity(current, online)
            self.state.affinities[key] = AffinityRecord(original, cpus, comm)
            self._save()
            self.ops.set_affinity(tid, cpus)
        except ProcessGone:
            self._forget(key)
            self.counters["process_gone"] += 1
            return "skipped: thread gone"
        except AccessDenied:
            self._put_back(key, record)
            self.counters["access_denied"] += 1
            return "refused: access denied"
        except OSError as exc:
            self._put_back(key, record)
            self.counters["affinity_failed"] += 1
            return f"failed: {exc.strerror or exc}"
        if self.ops.start_time(pid) != start_time:
            self._undo_affinity(key, current)
            self.counters["pid_reuse_undone"] += 1
            return "undone: PID reused during the move"
        self.counters["task_moves"] += 1
        self.lineage.setdefault((pid, start_time), {})[cpus] = (original, self.boot_ticks())
        return "done"

    # ---- inherited pins ----------------------------------------------------------------
    def adopt_inherited(self, key: ThreadKey, affinity: frozenset[int], comm: str,
                        sources: Sequence[tuple[int, int]], started: int) -> tuple[int, AffinityRecord] | None:
        """Record `affinity` of thread `key`, which started at `started` (ticks since boot), as
        ours if it is a pin we set on a thread of one of `sources` (its own process first, then
        its ancestors, as (pid, start time)) before the thread started: a thread older than the
        pin cannot have inherited it. Returns (the source's pid, the new record), or None."""
        if not affinity:
            return None
        online = self._online_cpus()
        for source in sources:
            for applied, (original, since) in self.lineage.get(source, {}).items():
                if started >= since and _seen(applied, online) == affinity:
                    record = AffinityRecord(original, applied, comm)
                    self.state.affinities[key] = record
                    self.lineage.setdefault((key.pid, key.start_time), {})[applied] = (original, started)
                    self._save()
                    self.counters["inherited_pins_adopted"] += 1
                    return source[0], record
        return None

    def prune_lineage(self) -> None:
        """Drop the pins remembered for processes that have exited."""
        for pid, start_time in list(self.lineage):
            try:
                alive = self.ops.start_time(pid) == start_time
            except OSError:
                continue
            if not alive:
                del self.lineage[(pid, start_time)]

    def _undo_affinity(self, key: ThreadKey, cpus: frozenset[int]) -> None:
        try:
            self.ops.set_affinity(key.tid, cpus)
        except OSError:
            pass
        self._forget(key)

    def _forget(self, key: ThreadKey) -> None:
        if self.state.affinities.pop(key, None) is not None:
            self._save()

    def _put_back(self, key: ThreadKey, record: AffinityRecord | None) -> None:
        """After a refused move the thread keeps the affinity it had, so the record it had stands."""
        if record is None:
            self._forget(key)
        else:
            self.state.affinities[key] = record
            self._save()

    def _online_cpus(self) -> frozenset[int] | None:
        """The CPUs online now, or None (no mask) if that cannot be read."""
        try:
            return self.ops.online_cpus()
        except OSError:
            return None

    def _original_affinity(self, current: frozenset[int], online: frozenset[int] | None) -> frozenset[int]:
        """What to restore: every possible CPU for a thread free to run on every online CPU."""
        if online is None or not current >= online:
            return current
        try:
            return self.ops.possible_cpus() | current
        except OSError:
            return current

    # ---- page moves -------------------------------------------------------------------
    def migrate_ranges(self, pid: int, start_time: int, ranges: Sequence[tuple[int, int]], from_node: int,
                       to_node: int, resume: tuple[int, int], want: int) -> tuple[str, RangeMoves | None]:
        """Move pages of `ranges` that sit on `from_node` to `to_node`, from `resume` on, up to
        the rate limit's grant of `want` pages (what finds no page is given back); returns
        (result, what the C loop did: None unless the result is "done"). Safe to call from
        several threads at once."""
        if self.ops.start_time(pid) != start_time:
            self._count("pid_reuse_caught_before")
            return "skipped: process gone or PID reused", None
        with self._moves_lock:
            granted = self.rate_limit.take(want)
        if granted == 0:
            self._count("migrations_deferred_rate_limit")
            return "deferred: migration rate limit", None
        try:
            moves = self.ops.move_ranges(pid, ranges, from_node, to_node, granted, resume)
        except (ProcessGone, AccessDenied) as exc:
            with self._moves_lock:
                self.rate_limit.give_back(granted)
            gone = isinstance(exc, ProcessGone)
            self._count("process_gone" if gone else "access_denied")
            return ("skipped: process gone" if gone else "refused: access denied"), None
        except OSError as exc:  # e.g. ENODEV: the target node has no memory (any more)
            with self._moves_lock:
                self.rate_limit.give_back(granted)
            self._count("migrations_failed")
            return f"failed: {exc.strerror or exc}", None
        with self._moves_lock:
            self.rate_limit.give_back(granted - sum(moves.tried))
            self.counters["pages_migrated"] += moves.moved_total
            for err, count in moves.failures.items():
                name = PAGE_STATUS_NAMES.get(-err, f"errno_{err}") if err else "other"
                self.counters["page_status_" + name] += count
        if self.ops.start_time(pid) != start_time:
            try:
                self.ops.move_pages(pid, moves.moved_addresses(), from_node)
            except OSError:
                pass
            self._count("pid_reuse_undone")
            return "undone: PID reused during the move", None
        return "done", moves

    def _count(self, name: str) -> None:
        with self._moves_lock:
            self.counters[name] += 1

    # ---- restoring ----------------------------------------------------------------------
    def restore(self, which: Callable[[ThreadKey], bool] = lambda key: True) -> int:
        """Put back the original affinity of the threads `which` selects; returns how many.

        A thread whose affinity someone changed after us keeps that affinity: only our
        own setting is undone (seen through the CPUs online now, as sched_getaffinity shows it).
        """
        restored = 0
        online = self._online_cpus()
        for key in sorted((k for k in self.state.affinities if which(k)), key=ThreadKey.text):
            record = self.state.affinities.pop(key)
            try:
                if self.ops.start_time(key.pid) != key.start_time:
                    continue
                if self.ops.get_affinity(key.tid) != _seen(record.applied, online):
                    self.counters["restore_skipped_changed_by_others"] += 1
                    continue
                self.ops.set_affinity(key.tid, record.original)
                restored += 1
            except OSError:
                continue
        self.counters["affinities_restored"] += restored
        self._save()
        return restored

    def restore_process(self, pid: int, start_time: int) -> int:
        return self.restore(lambda k: k.pid == pid and k.start_time == start_time)

    def forget_broken_affinities(self) -> list[tuple[ThreadKey, AffinityRecord, frozenset[int]]]:
        """Drop the records of affinities we set whose CPUs all went offline and that the
        kernel has since reset; returns them, each with the affinity the thread has now.

        Only records with no CPU online are looked at (normally none). A thread found
        with an empty affinity has not run since its CPUs went offline: the kernel resets
        it when it wakes, and until then it is still ours. The record of a thread that
        has exited is dropped too (there is nothing left to restore).
        """
        online = self._online_cpus()
        if online is None:
            return []
        broken, gone = [], []
        for key, record in sorted(self.state.affinities.items(), key=lambda kv: kv[0].text()):
            if record.applied & online:
                continue
            try:
                now = self.ops.get_affinity(key.tid)
            except ProcessGone:
                gone.append(key)
                continue
            except OSError:
                continue
            if now:
                broken.append((key, record, now))
        for key in gone + [key for key, _, _ in broken]:
            del self.state.affinities[key]
        if broken or gone:
            self.counters["affinities_reset_by_kernel"] += len(broken)
            self._save()
        return broken

    def owned_affinity(self, pid: int, start_time: int, tid: int) -> AffinityRecord | None:
        """The record of an affinity this daemon set (so not someone else's pin), if any."""
        return self.state.affinities.get(ThreadKey(pid, start_time, tid))

    def _save(self) -> None:
        if self.state_file is not None:
            self.state_file.save(self.state)


def _seen(cpus: frozenset[int], online: frozenset[int] | None) -> frozenset[int]:
    """An affinity as sched_getaffinity shows it: its online CPUs only."""
    return cpus if online is None else cpus & online


def page_status_counts(counters: Mapping[str, int]) -> dict[str, int]:
    """The per-page failure counters by errno name, for status and stats."""
    return {k[len("page_status_"):]: v for k, v in counters.items() if k.startswith("page_status_")}
