"""mm statistics: where each process's memory is, per node and per mapping.

The statistics box for memory (AutoNUMA's per-mm counters). Two sources feed the
same `MmSnapshot`:

- sampled (the pass-by-pass source): the mappings of /proc/PID/maps, minus the
  kernel's special ones ([vsyscall], [vvar], [vdso], ...) and inaccessible ones
  (`---p` guard pages and reservations hold no pages), are handed to the C
  scanner (`numa_calls.scan_ranges`), which queries the node of every stride-th
  page from a random start in each range, with a fresh seed per call. Every
  page has the same chance 1/stride of being sampled, so count x stride is an
  unbiased estimate of the resident base pages on each node, per mapping and in
  total; huge pages (THP and hugetlb) are counted at their real size because every
  4 KiB address inside one answers with the huge page's node.
  Stride (`choose_stride`): the larger of rss/TARGET_RESIDENT_SAMPLES, so that about
  4096 resident pages are sampled whatever the size (a proportion from 4096
  samples is within ~0.8 percentage points even binomially; a first look at an
  eighth of that settles the mappings all on the threads' node,
  COARSE_RESIDENT_SAMPLES), and
  mapped/pages_to_scan, so that no process costs more than one batch of
  `pages_to_scan` queries per pass, moved to the nearest stride that shares no
  prime factor with the machine's possible interleave periods (2..nodes): the
  scanner samples systematically (every stride-th page from a random start), so
  memory interleaved page by page is then counted exactly, not within binomial
  noise; a fixed `sample_stride_pages` overrides the targets (moved up to the
  next stride with no such factor).
  A process's scan is cut into chunks at stride-window boundaries as the
  `ScanBudget` grants pages.
- exact (`/proc/PID/numa_maps`): every resident page, per mapping, with each
  mapping's memory policy. The kernel walks every resident page to write it (about
  6 us a page under TCG: over a second for 800 MB), so it is read only when a
  process's memory policies matter, that is before any of its pages is migrated:
  in the pass where the policy's votes to move some of its pages first agree (the
  daemon's `want_policies`, then a second look and a second plan in that pass: votes
  that a second write-fault window undoes cost no walk; until then the snapshot says
  `policies_read` False and the policy migrates nothing of it), then every
  EXACT_EVERY_PASSES passes (policies change rarely;
  a walk costs about a third of a sample per resident page, charged to the budget
  as such); and by `autonumactl show`. A process whose threads simply move to its
  memory never pays for one. numa_maps counts hugetlb mappings in huge pages
  (kernelpagesize_kB=2048) and anonymous THP in 4 KiB pages; both are converted
  to base pages here (see autonumad.kernel.procfs).

Decay: AutoNUMA's rule, replace at the end of a pass. A process's snapshot is
replaced by each new one, because each pass samples the whole address space afresh
(new random offsets), so the newest is the best estimate of where the memory is
now; blending with older passes would hide for several passes the pages the
daemon itself just migrated and invite moving them again. Noise between passes is
small (~4096 samples). Mapping policies survive between numa_maps reads;
mappings created since the last read have an unknown (None) policy.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from autonumad.constants import LOCAL_NODES_MAX, PAGE_SIZE
from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.kernel.procfs import MapsEntry, MemPolicy, NumaMapsEntry
from autonumad.processes import ProcessInfo, ProcessKey
from autonumad.scan_pacing import ScanBudget

log = logging.getLogger(__name__)

TARGET_RESIDENT_SAMPLES = 4096
COARSE_RESIDENT_SAMPLES = 512
"""A sampled scan first queries about this many pages (a stride 8 times the full one).
A mapping whose every sampled page is on one node keeps those figures: whatever other
nodes hold of it is then under 1 % at 95 % confidence when it is most of the process
(0.99^512 < 0.01). On the node its threads run on, there is nothing of it to move; on
another, all of it is there, which is all the policy needs to know of a big one (to bring
the threads to it, or it to them: the mover then walks the whole mapping; see
_settled_vmas for the smaller ones). The other mappings (on several nodes) are
sampled again at the full stride; those too small for COARSE_MIN_SAMPLES at the coarse
stride (most of a process's mappings: libraries' data, stacks) only at the full one. A settled
process's big buffers cost an eighth of the queries they did; its small mixed mappings
(heap, stacks) little."""
COARSE_MIN_SAMPLES = 64
"""A mapping the coarse look sampled fewer times than this is sampled again in full
whatever it found (under 5 % elsewhere at 95 % confidence takes 64 samples all alike)."""
INTERLEAVE_PRIMES = (2, 3, 5, 7, 11, 13)   # interleave periods up to 16 nodes sampled evenly
NUMA_MAPS_PAGES_PER_SAMPLE = 3   # numa_maps walk ~55 ns per resident page, a sample ~180 ns
EXACT_EVERY_PASSES = 30
QUIET_CARRY_PASSES = 2
QUIET_CARRY_S = 60.0
QUIET_RSS_SHARE = 0.01
"""A quiet process (the daemon's word: nothing voted, planned or done for it at the last
pass) whose busy threads are on the nodes they were on at its last scan (one node, or
several for a process spread over them), and whose RSS changed by at most
QUIET_RSS_SHARE since, keeps that scan's snapshot
for up to QUIET_CARRY_PASSES passes in a row, and QUIET_CARRY_S: its pages do not move by
themselves (kernel balancing is off), and a settled system's passes cost little more than
the look at its threads (AutoNUMA's knuma_scand also slows down once nothing is misplaced)."""
SHARED_LOOK_OFF_SHARE = 0.1
"""A process with at most this share of its memory off its threads' nodes has its sampled
pages there looked up in pagemap (MmSnapshot.off_node_shared), even when the scan kept only
some of them: whether they are its own to move, or still its parent's since fork (a Python
process's interpreter heap of a few MB), decides whether the rest is worth moving at all."""
SPECIAL_MAPPINGS = frozenset({"[vsyscall]", "[vvar]", "[vvar_vclock]", "[vdso]", "[uprobes]"})
KINDS = ("huge", "heap", "stack", "private")   # numastat -p's rows, Total aside


class ScanResultLike(Protocol):
    node_pages: dict[int, int]
    range_node_pages: list[dict[int, int]]
    sampled: int
    absent: int
    errors: int
    off_node: int
    off_node_addrs: list[int]
    off_node_nodes: list[int]


ScanRanges = Callable[..., ScanResultLike]


@dataclass(frozen=True)
class VmaStats:
    """One mapping's pages per node, in base (4 KiB) pages: exact, or estimated."""

    start: int
    end: int
    kind: str                       # huge, heap, stack or private (numastat's rows)
    path: str
    policy: MemPolicy | None        # None: not known (numa_maps not read since it appeared)
    node_pages: dict[int, float]


@dataclass(frozen=True)
class MmSnapshot:
    """Where one process's memory was at one pass (see the module docstring)."""

    key: ProcessKey
    exact: bool
    vmas: tuple[VmaStats, ...]
    taken_at: float
    stride: int = 1
    samples: int = 0
    absent: int = 0
    errors: int = 0
    off_node_addrs: tuple[int, ...] = ()     # sampled pages off `local_nodes` (sampled scans)
    off_node_nodes: tuple[int, ...] = ()
    policies_read: bool = True
    """numa_maps was read for this process (False: every mapping's policy is unknown)."""
    chosen_policies: bool = True
    """False: no mapping's known policy is one the process chose (self_placed_share is 0)."""
    local_nodes: frozenset[int] = frozenset()
    """The nodes its busy threads run on, when the scan listed its sampled pages off them."""
    off_node_complete: bool = False
    """off_node_addrs holds every sampled page off local_nodes (none was left out for
    max_off_node): where in each mapping the pages on another node lie, as far as the
    sample tells (policy_snapshot.mapping_groups narrows a group's range to them)."""
    node_pages: dict[int, float] = field(default=None)  # type: ignore[assignment]
    """The sum over the mappings, computed when not given."""
    off_node_shared: frozenset[int] = frozenset()
    """Of off_node_addrs in private anonymous mappings, those whose page another process
    maps too (procfs.pages_exclusive): most often what a forked process still shares with
    its parent, which migration cannot move."""
    off_node_shared_share: Mapping[int, float] = field(default_factory=dict)
    """Per node off local_nodes, the share of off_node_addrs in private anonymous mappings
    on it that are in off_node_shared (the same uniform sample: an estimate for all of
    that node's pages of those mappings)."""

    def __post_init__(self) -> None:
        if self.node_pages is None:
            object.__setattr__(self, "node_pages", _sum_nodes(v.node_pages for v in self.vmas))

    @property
    def total_pages(self) -> float:
        return sum(self.node_pages.values())

    def own_node_pages(self) -> dict[int, float]:
        """Pages per node of its private anonymous mappings (what migration may move: no
        file or shared memory), less, on the nodes off its threads', the share of them it
        shares with another process (`off_node_shared_share`): what is its own to move."""
        own = _sum_nodes(v.node_pages for v in self.vmas if movable_mapping(v.path))
        return {n: p * (1.0 - self.off_node_shared_share.get(n, 0.0)) for n, p in own.items()}

    def node_share(self) -> dict[int, float]:
        """Fraction of the process's memory on each node (AutoNUMA's weight / 1000)."""
        total = self.total_pages
        return {n: p / total for n, p in sorted(self.node_pages.items())} if total else {}

    def node_mb(self) -> dict[int, float]:
        return {n: p * PAGE_SIZE / (1 << 20) for n, p in sorted(self.node_pages.items())}

    def kind_node_pages(self) -> dict[str, dict[int, float]]:
        """Pages per node for each of numastat's rows: huge, heap, stack, private."""
        rows: dict[str, dict[int, float]] = {kind: {} for kind in KINDS}
        for vma in self.vmas:
            row = rows[vma.kind]
            for node, pages in vma.node_pages.items():
                row[node] = row.get(node, 0.0) + pages
        return rows

    def self_placed_share(self) -> float:
        """Fraction of the memory (in mappings whose policy is known) under a policy the
        process chose itself (bind, interleave, prefer): such memory stays where it is."""
        if not self.chosen_policies:
            return 0.0
        known = chosen = 0.0
        for vma in self.vmas:
            if vma.policy is None:
                continue
            pages = sum(vma.node_pages.values())
            known += pages
            if vma.policy.chosen_by_process:
                chosen += pages
        return chosen / known if known else 0.0


def _sum_nodes(dicts: Iterable[dict[int, float]]) -> dict[int, float]:
    total: dict[int, float] = {}
    for d in dicts:
        for node, pages in d.items():
            total[node] = total.get(node, 0.0) + pages
    return dict(sorted(total.items()))


@functools.lru_cache(maxsize=4096)
def movable_mapping(path: str) -> bool:
    """Private anonymous memory (heap, stack, anonymous, hugetlb): what migration may move."""
    return path in ("", "[heap]", "[stack]", "[anon]") or path.startswith("[anon:") \
        or path.startswith("/anon_hugepage")


def sampled_mappings(maps: Sequence[MapsEntry]) -> list[MapsEntry]:
    """The mappings worth sampling: not the kernel's special ones, not inaccessible."""
    return [m for m in maps if m.path not in SPECIAL_MAPPINGS and m.perms[:3] != "---" and m.end > m.start]


def mapping_kind(entry: MapsEntry) -> str:
    """numastat's row for a mapping known only from maps (numa_maps, when read, says better)."""
    if entry.path == "[heap]":
        return "heap"
    if entry.path == "[stack]":
        return "stack"
    if entry.path.startswith("/anon_hugepage"):
        return "huge"
    return "private"


def choose_stride(rss_pages: int, mapped_pages: int, pages_to_scan: int, fixed: int = 0,
                  n_nodes: int = 2, samples: int = TARGET_RESIDENT_SAMPLES) -> int:
    """Sampling stride for one process (see the module docstring): a stride that shares
    no prime factor with any interleave period (2..n_nodes), so that interleaved memory
    is sampled evenly, as near as that allows to the one the sample and cost targets
    ask for (below it rather than more than twice above), never under the cost floor.
    A fixed stride is moved up to the next such stride."""
    if fixed > 0:
        floor = ideal = fixed
    else:
        floor = max(1, math.ceil(mapped_pages / pages_to_scan))
        ideal = max(floor, math.ceil(rss_pages / samples))
    primes = [p for p in INTERLEAVE_PRIMES if p <= n_nodes]

    def coprime(t: int) -> bool:
        return all(t % p for p in primes)

    above = ideal
    while not coprime(above):
        above += 1
    below = ideal
    while below > floor and not coprime(below):
        below -= 1
    if not coprime(below):
        return above
    if above <= 2 * ideal and above / ideal <= ideal / below:
        return above
    return below   # more samples than the target; still within pages_to_scan


def exact_snapshot(key: ProcessKey, numa_maps: Sequence[NumaMapsEntry], maps: Sequence[MapsEntry],
                   taken_at: float) -> MmSnapshot:
    """The exact snapshot from numa_maps; `maps` (read just before) gives mapping ends."""
    ends = {m.start: (m.end, m.path) for m in maps}
    vmas = []
    for entry in numa_maps:
        end, maps_path = ends.get(entry.start, (entry.start, ""))
        if maps_path in SPECIAL_MAPPINGS:
            continue
        vmas.append(VmaStats(entry.start, end, entry.kind, entry.path or maps_path, entry.policy,
                             {n: float(p) for n, p in sorted(entry.node_base_pages.items())}))
    return MmSnapshot(key, True, tuple(vmas), taken_at)


def _window_chunks(mappings: Sequence[MapsEntry], stride: int,
                   take: Callable[[int], int]) -> Iterable[list[tuple[int, int, int]]]:
    """Cut the mappings into chunks of (mapping index, start, end) holding at most as many
    stride windows as `take(wanted)` grants, cutting only at window boundaries."""
    window = stride * PAGE_SIZE
    pending = [(i, m.start, m.end) for i, m in enumerate(mappings)]
    pos = 0
    while pos < len(pending):
        wanted = sum(math.ceil((end - start) / window) for _, start, end in pending[pos:])
        grant = take(wanted)
        chunk = []
        while pos < len(pending) and grant > 0:
            index, start, end = pending[pos]
            windows = math.ceil((end - start) / window)
            if windows <= grant:
                chunk.append((index, start, end))
                grant -= windows
                pos += 1
            else:
                cut = start + grant * window
                chunk.append((index, start, cut))
                pending[pos] = (index, cut, end)
                grant = 0
        yield chunk


def sampled_snapshot(key: ProcessKey, mappings: Sequence[MapsEntry], stride: int, scan_ranges: ScanRanges,
                     budget: ScanBudget, rng: random.Random, taken_at: float,
                     known: dict[int, tuple[str, MemPolicy]] | None = None,
                     local_nodes: frozenset[int] = frozenset(), max_off_node: int = 0,
                     carried: Mapping[int, VmaStats] | None = None, policies_read: bool = True,
                     chosen_policies: bool = True) -> MmSnapshot:
    """Sample `mappings` of process `key.pid` at `stride`, in chunks the budget grants.

    `known`: mapping start -> (kind, policy) from the last numa_maps read.
    `carried`: mapping start -> figures kept as they are for a mapping of that start, end
    and path (not sampled).
    Raises ProcessGone / AccessDenied from the scanner.
    """
    known = known or {}
    carried = carried or {}
    kept = [carried.get(m.start) for m in mappings]
    kept = [v if v is not None and v.end == m.end and v.path == m.path else None for v, m in zip(kept, mappings)]
    scanned = [i for i, v in enumerate(kept) if v is None]
    per_vma: list[dict[int, float]] = [{} for _ in mappings]
    samples = absent = errors = 0
    off_addrs: list[int] = []
    off_nodes: list[int] = []
    complete = bool(local_nodes) and all(0 <= n < LOCAL_NODES_MAX for n in local_nodes)   # else none listed
    for chunk in _window_chunks([mappings[i] for i in scanned], stride, budget.take):
        chunk = [(scanned[index], start, end) for index, start, end in chunk]
        result = scan_ranges(key.pid, [(start, end) for _, start, end in chunk], stride,
                             rng.getrandbits(63), local_nodes, max_off_node)
        samples += result.sampled
        absent += result.absent
        errors += result.errors
        off_addrs.extend(result.off_node_addrs)
        off_nodes.extend(result.off_node_nodes)
        complete = complete and getattr(result, "off_node", 0) <= len(result.off_node_addrs)
        for (index, _, _), counts in zip(chunk, result.range_node_pages):
            vma = per_vma[index]
            for node, count in counts.items():
                if count:
                    vma[node] = vma.get(node, 0.0) + count * stride
    if len(off_addrs) > max_off_node:
        complete = False
        picked = sorted(rng.sample(range(len(off_addrs)), max_off_node))
        off_addrs = [off_addrs[i] for i in picked]
        off_nodes = [off_nodes[i] for i in picked]
    vmas = []
    totals: dict[int, float] = {}
    for m, node_pages, vma in zip(mappings, per_vma, kept):
        if vma is None:
            kind, policy = known.get(m.start) or (mapping_kind(m), None)
            vma = VmaStats(m.start, m.end, kind, m.path, policy, dict(sorted(node_pages.items())))
        vmas.append(vma)
        for node, pages in vma.node_pages.items():
            totals[node] = totals.get(node, 0.0) + pages
    return MmSnapshot(key, False, tuple(vmas), taken_at, stride, samples, absent, errors,
                      tuple(off_addrs), tuple(off_nodes), policies_read, chosen_policies,
                      local_nodes, complete, dict(sorted(totals.items())))


def _settled_vmas(coarse: MmSnapshot, carried: Mapping[int, VmaStats], local_nodes: frozenset[int],
                  min_off_pages: float) -> dict[int, VmaStats]:
    """Mapping start -> the coarse look's figures, for the mappings it found all on one node,
    kept as they are while the rest are sampled in full: one of the threads' nodes (nothing
    of it to move off them), or any one node when they are not known; on another node,
    only a mapping of `min_off_pages` or more, whose sampled pages would be too many for
    the full look's list of pages off their node (a smaller one, an interpreter's heap left
    where the process started, is sampled in full: which of its pages are its own to move
    is told from that list, MmSnapshot.off_node_shared)."""
    out = {}
    for vma in coarse.vmas:
        pages = sum(vma.node_pages.values())
        if vma.start in carried or pages < COARSE_MIN_SAMPLES * coarse.stride:
            continue
        nodes = [n for n, p in vma.node_pages.items() if p > 0]
        if len(nodes) == 1 and (not local_nodes or nodes[0] in local_nodes or pages >= min_off_pages):
            out[vma.start] = vma
    return out


def _carried(vmas: Sequence[VmaStats], mappings: Sequence[MapsEntry]
             ) -> tuple[dict[int, VmaStats], list[MapsEntry], float]:
    """What a sampled pass keeps from the snapshot before instead of sampling it: private,
    read-only file mappings (program and library text and constants: most mappings, little
    memory, never moved, never growing); shared or writable ones (shared memory, memfd, data
    files) are sampled, as they may hold much of a process's memory and grow. Returns the
    kept figures by mapping start, the mappings to sample, and the pages kept."""
    previous = {v.start: v for v in vmas if not movable_mapping(v.path)}
    kept = {}
    for m in mappings:
        v = previous.get(m.start)
        if v is not None and v.end == m.end and v.path == m.path and m.perms[1] != "w" and m.perms[3] == "p":
            kept[m.start] = v
    return kept, [m for m in mappings if m.start not in kept], sum(sum(v.node_pages.values()) for v in kept.values())


@dataclass
class MmCounters:
    processes_scanned: int = 0
    quiet_carried: int = 0
    coarse_scans: int = 0           # scans that stopped at COARSE_RESIDENT_SAMPLES: every mapping settled
    exact_reads: int = 0
    gone_mid_scan: int = 0
    access_denied: int = 0
    scan_cpu_s: float = 0.0


@dataclass
class _ProcessState:
    snapshot: MmSnapshot | None
    known: dict[int, tuple[str, MemPolicy]]
    passes_since_exact: int = 0
    policies_read: bool = True
    want_exact: bool = False
    chosen_policies: bool = False
    """Some known mapping policy is one the process chose (MmSnapshot.chosen_policies)."""
    maps_text: str = ""
    """/proc/PID/maps as last read, and its parsed sampled_mappings: most passes find it
    unchanged, and parsing a few hundred lines is a good part of a pass under TCG."""
    mappings: list[MapsEntry] = field(default_factory=list)
    carried: tuple[dict[int, VmaStats], list[MapsEntry], float] | None = None
    """For the maps above: the figures kept from the snapshot before them, numa_maps's or the
    first sampled one's (by mapping start), the mappings sampled instead, and the pages kept
    (None until the process has a snapshot: a first look samples every mapping, and the next
    one keeps what that found of the read-only file mappings)."""
    scanned_rss_pages: int = 0
    """The process's RSS when the snapshot was taken, and the passes it was kept since (quiet)."""
    quiet_passes: int = 0
    shared_share: tuple[frozenset[int], Mapping[int, float]] = (frozenset(), {})
    """The local nodes of the last scan that looked its strays up in pagemap, and the
    off_node_shared_share it found: a scan that does not look (numa_maps's, a coarse look's,
    one with too many strays) keeps it while its threads' nodes stay the same, so that what
    counts as its own (MmSnapshot.own_node_pages) does not change with the kind of scan."""


class MmStatsTable:
    """Per-process mm statistics across passes, and the scanning that feeds them.

    The daemon calls `observe(process, budget)` for each admitted process of a pass,
    `end_pass()` after the pass and `forget(discovery.left)`; policy reads `get(key)`.
    """

    def __init__(self, files: KernelFiles, pages_to_scan: int = 32768, sample_stride_pages: int = 0,
                 scan_ranges: ScanRanges | None = None, seed: int | None = None, n_nodes: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_clock: Callable[[], float] = time.process_time):
        if scan_ranges is None:
            from autonumad.kernel import numa_calls
            scan_ranges = numa_calls.scan_ranges
        self.files = files
        self.pages_to_scan = pages_to_scan
        self.sample_stride_pages = sample_stride_pages
        self.n_nodes = n_nodes
        self.scan_ranges = scan_ranges
        self.rng = random.Random(seed)
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.counters = MmCounters()
        self._state: dict[ProcessKey, _ProcessState] = {}

    @classmethod
    def from_config(cls, files: KernelFiles, config: Any, **kwargs: Any) -> MmStatsTable:
        return cls(files, config.scan.pages_to_scan, config.scan.sample_stride_pages, **kwargs)

    def get(self, key: ProcessKey) -> MmSnapshot | None:
        state = self._state.get(key)
        return state.snapshot if state else None

    def want_policies(self, key: ProcessKey) -> None:
        """Read numa_maps at the next observe of `key`, if it never was (its pages may move)."""
        state = self._state.get(key)
        if state is not None and not state.policies_read:
            state.want_exact = True

    def forget(self, keys: Iterable[ProcessKey]) -> None:
        for key in keys:
            self._state.pop(key, None)

    def end_pass(self) -> None:
        for state in self._state.values():
            state.passes_since_exact += 1

    @staticmethod
    def _kept_shared(state: _ProcessState, snapshot: MmSnapshot, local_nodes: frozenset[int]) -> MmSnapshot:
        """`snapshot` (one that did not look its strays up) with the last lookup's
        off_node_shared_share, when that was made for the same nodes (_ProcessState.shared_share)."""
        nodes, share = state.shared_share
        if not share or nodes != local_nodes:
            return snapshot
        return replace(snapshot, off_node_shared_share=share)

    def _with_shared(self, snapshot: MmSnapshot) -> MmSnapshot | None:
        """`snapshot` with off_node_shared found, when it kept every sampled page off its
        threads' node, or (threads on several nodes) off them lies at most
        SHARED_LOOK_OFF_SHARE of its memory (a process settled on its nodes, a few strays
        left elsewhere: are they its own?); None when it was not looked up."""
        if not snapshot.off_node_addrs:
            return snapshot if snapshot.off_node_complete else None   # none off them: nothing shared there
        total = sum(snapshot.node_pages.values())
        off = sum(p for n, p in snapshot.node_pages.items() if n not in snapshot.local_nodes)
        if not snapshot.off_node_complete and not (len(snapshot.local_nodes) > 1
                                                   and off <= SHARED_LOOK_OFF_SHARE * total):
            return None
        movable = sorted((v.start, v.end) for v in snapshot.vmas if movable_mapping(v.path))
        starts = [start for start, _ in movable]
        wanted, node_of = [], {}
        for addr, node in zip(snapshot.off_node_addrs, snapshot.off_node_nodes):
            i = bisect.bisect_right(starts, addr) - 1
            if i >= 0 and addr < movable[i][1]:
                wanted.append(addr)
                node_of[addr] = node
        if not wanted:
            return snapshot
        try:
            exclusive = procfs.pages_exclusive(self.files, snapshot.key.pid, wanted)
        except ProcessGone:
            raise
        except OSError as exc:  # refused, or a kernel without pagemap: the strays count as its own
            log.debug("pid %d: pagemap not read (%s)", snapshot.key.pid, exc)
            return None
        shared = frozenset(a for a, only_ours in exclusive.items() if not only_ours)
        looked: dict[int, int] = {}
        found: dict[int, int] = {}
        for addr, node in node_of.items():
            looked[node] = looked.get(node, 0) + 1
            found[node] = found.get(node, 0) + (addr in shared)
        return replace(snapshot, off_node_shared=shared,
                       off_node_shared_share={n: found[n] / c for n, c in sorted(looked.items()) if found[n]})

    def observe(self, process: ProcessInfo, budget: ScanBudget, local_nodes: Collection[int] = (),
                max_off_node: int = 0, quiet: bool = False) -> MmSnapshot | None:
        """Scan one process (numa_maps when its policies are wanted and every
        EXACT_EVERY_PASSES passes after, sampled otherwise), replace its snapshot and return
        it; None if it went away or refused access (a debug line, nothing else). A `quiet`
        process may keep its last snapshot instead (QUIET_CARRY_PASSES)."""
        key = process.key
        local_nodes = frozenset(local_nodes)
        state = self._state.get(key)
        if quiet and state is not None and state.snapshot is not None and not state.want_exact \
                and local_nodes and state.snapshot.local_nodes == local_nodes \
                and state.quiet_passes < QUIET_CARRY_PASSES \
                and self.clock() - state.snapshot.taken_at < QUIET_CARRY_S \
                and abs(process.rss_pages - state.scanned_rss_pages) <= QUIET_RSS_SHARE * state.scanned_rss_pages:
            state.quiet_passes += 1
            self.counters.quiet_carried += 1
            return state.snapshot
        cpu_before = self.cpu_clock()
        try:
            text = procfs.read_maps_text(self.files, key.pid)
            if state is None:
                state = _ProcessState(None, {}, policies_read=False)
            if state.want_exact or state.policies_read and state.passes_since_exact >= EXACT_EVERY_PASSES:
                maps = procfs.parse_maps(text)
                budget.charge(process.rss_pages // NUMA_MAPS_PAGES_PER_SAMPLE)
                entries = procfs.read_numa_maps(self.files, key.pid)
                snapshot = exact_snapshot(key, entries, maps, self.clock())
                known = {v.start: (v.kind, v.policy) for v in snapshot.vmas if v.policy is not None}
                state = _ProcessState(snapshot, known, maps_text=text, mappings=sampled_mappings(maps),
                                      chosen_policies=any(p.chosen_by_process for _, p in known.values()),
                                      shared_share=state.shared_share)
                state.snapshot = self._kept_shared(state, snapshot, local_nodes)
                self.counters.exact_reads += 1
            else:
                if text != state.maps_text:
                    state.maps_text, state.mappings = text, sampled_mappings(procfs.parse_maps(text))
                    state.carried = None
                mappings = state.mappings
                if state.carried is None and state.snapshot is not None:
                    state.carried = _carried(state.snapshot.vmas, mappings)
                carried, moving, kept_pages = state.carried or ({}, mappings, 0.0)
                rss, mapped = max(1, process.rss_pages - int(kept_pages)), sum(m.pages for m in moving)
                stride = choose_stride(rss, mapped, self.pages_to_scan, self.sample_stride_pages, self.n_nodes)
                coarse = choose_stride(rss, mapped, self.pages_to_scan, self.sample_stride_pages, self.n_nodes,
                                       COARSE_RESIDENT_SAMPLES)
                snapshot, off_local = None, False
                # the coarse look skips the mappings too small to settle by it (most of them:
                # libraries' data, stacks), which the full look samples anyway
                big = [m for m in moving if m.pages >= COARSE_MIN_SAMPLES * coarse]
                if coarse > stride and big:
                    first = sampled_snapshot(
                        key, big, coarse, self.scan_ranges, budget, self.rng, self.clock(), state.known,
                        local_nodes, 0, None, state.policies_read, state.chosen_policies)
                    settled = _settled_vmas(first, carried, local_nodes, (max_off_node + 1) * stride)
                    # a mapping settled on another node than the threads' holds sampled pages
                    # off theirs that the full look's list then lacks
                    off_local = bool(local_nodes) and any(local_nodes.isdisjoint(v.node_pages)
                                                           for v in settled.values())
                    carried = {**carried, **settled}
                    if len(carried) == len(mappings):
                        snapshot = replace(first, vmas=tuple(carried[m.start] for m in mappings),
                                           node_pages=None)   # summed anew over these vmas
                        self.counters.coarse_scans += 1
                if snapshot is None:
                    snapshot = sampled_snapshot(
                        key, mappings, stride, self.scan_ranges, budget, self.rng, self.clock(), state.known,
                        local_nodes, max_off_node, carried, state.policies_read, state.chosen_policies)
                    if off_local:
                        snapshot = replace(snapshot, off_node_complete=False)
                looked = self._with_shared(snapshot)
                if looked is not None:
                    state.snapshot, state.shared_share = looked, (local_nodes, looked.off_node_shared_share)
                else:
                    state.snapshot = self._kept_shared(state, snapshot, local_nodes)
        except ProcessGone:
            log.debug("pid %d (%s) went away during its scan", key.pid, process.comm)
            self.counters.gone_mid_scan += 1
            self._state.pop(key, None)
            return None
        except AccessDenied as exc:
            log.debug("pid %d (%s): access denied during its scan (%s)", key.pid, process.comm, exc)
            self.counters.access_denied += 1
            return None
        finally:
            self.counters.scan_cpu_s += self.cpu_clock() - cpu_before
        state.scanned_rss_pages, state.quiet_passes = process.rss_pages, 0
        self._state[key] = state
        self.counters.processes_scanned += 1
        return state.snapshot
