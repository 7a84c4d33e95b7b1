"""From the statistics to the policy's input: the arrow between `statistics` and `policy`.

`SnapshotBuilder.build` turns what the mm and task statistics hold into the
policy's `Snapshot` (nodes, processes, threads, page groups). It decides five
things the statistics do not say by themselves:

- how many CPUs of each node are busy with threads it does not manage
  (`other_busy_cpus`, from the node's measured busy time, `node_busy`), so that the
  policy does not stack managed threads on them: counted when two readings in a row
  (two passes) agree, the lesser of the two, as a burst of work elsewhere for one
  interval (a short job, a pass's worth of the daemon's own page moves) would otherwise
  send managed threads off the nodes holding their memory, their memory after them (a
  load that comes and goes at every other reading is not counted at all);
- how busy a thread is (`runnable_weight`): its run time since the previous pass
  over the wall time since then; for a thread seen for the first time, its run time
  over its lifetime, so a busy process is placed at its first pass, and at least
  FIRST_LOOK_RUNNING_WEIGHT when it is young and running or runnable at that look (a worker
  that waited while its job set up has run a small share of its life so far, and
  unseen it would leave its CPU looking free for another thread to be moved onto);
- whether someone else pinned it (`user_pinned`): its affinity is narrower than
  the online CPUs and it is not an affinity this daemon set (the state file says
  which ones are ours, seen through the online CPUs as sched_getaffinity shows
  them, so ours stays ours when some of its CPUs go offline); with
  `[respect] user_affinity = false` nothing counts as pinned; a narrowed affinity
  that is not ours is first offered to `inherited_pin`, which makes it ours if the
  thread inherited it from a thread this daemon pinned (see the actuator);
- whether its affinity holds it on the node it runs on (`held`: no CPU of
  another node in it), so the policy knows which threads the kernel may take
  elsewhere;
- the page groups memory-follows-CPU may move: each private anonymous mapping
  (heap, stack, anonymous, hugetlb) cut by the node its pages sit on, named
  (mapping start, node) so a group keeps its id from pass to pass; shared files
  and libraries are never moved. For a process whose writes were sampled (its
  threads run on several nodes), the groups are instead the 2 MiB regions its
  threads were seen writing, cut by node, each with the threads that wrote it:
  memory then follows the thread that writes it even within one mapping, and
  memory no thread was seen writing stays put. `groups` maps each group id back to the address
  range and node, for the actuator. Groups the daemon found it cannot move (pages
  shared with another process after fork answer EACCES) are left out for a while.
"""

from __future__ import annotations

import bisect

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from autonumad.kernel.procfs import CLOCK_TICKS
from autonumad.mm_stats import MmSnapshot, movable_mapping
from autonumad.policy import NodeView, PageGroup, ProcessView, Snapshot, TaskView
from autonumad.processes import ProcessInfo, ProcessKey
from autonumad.constants import PAGE_SIZE
from autonumad.task_stats import REGION_BYTES, RegionTouches, ThreadStats
from autonumad.topology import Topology

OTHER_BUSY_MIN = 0.6
"""Share of a CPU that unmanaged threads must keep busy for the policy to count it taken."""
MIN_GROUP_PAGES = 16
"""Page groups smaller than this (64 KiB) are not worth a migration."""
FIRST_LOOK_RUNNING_WEIGHT = 0.5
"""The least runnable weight of a young thread (FIRST_LOOK_YOUNG_S) running or runnable at
its first look (above the policy's runnable_threshold: it counts as busy, and holds its CPU,
until measured). An older thread's share of its life is measure enough."""
FIRST_LOOK_YOUNG_S = 60.0
NODE_BITS = 10


@dataclass(frozen=True)
class GroupRange:
    start: int
    end: int
    node: int


def group_id(start: int, node: int) -> int:
    return ((start >> 12) << NODE_BITS) | node


GROWING_SHARE = 0.02
GROWING_MIN_KB = 4096
"""A process whose resident memory grew by more than this share (and this much) since the
last pass is still placing its memory by first touch (ProcessView.growing)."""


class SnapshotBuilder:
    def __init__(self) -> None:
        self._last_run: dict[tuple[ProcessKey, int], tuple[int, float]] = {}
        self._rss_kb: dict[ProcessKey, int] = {}
        """Per process, its resident memory at the last build (growing: see ProcessView)."""
        self._from_regions: dict[ProcessKey, tuple[Any, Any]] = {}
        """Per process, (inputs, outputs) of the last region_groups and touch_locality: the
        regions change only when a window is read or the daemon moves pages (their version),
        and recounting a few hundred regions each pass is the pass's largest cost under TCG."""
        self._other_busy: dict[int, int] = {}
        """Per node, the busy CPUs of threads not shown at the last build with a reading."""

    def forget_rss(self, pid: int) -> None:
        """Drop the RSS remembered for `pid`: at the next build it is not judged growing (the
        daemon saw it hold steady since the last pass)."""
        self._rss_kb = {k: v for k, v in self._rss_kb.items() if k.pid != pid}

    def build(self, now: float, uptime_s: float, topology: Topology, processes: list[tuple[ProcessInfo, MmSnapshot,
              list[ThreadStats]]], affinity_of: Callable[[int], frozenset[int] | None],
              owned_affinity: Callable[[ProcessKey, int], frozenset[int] | None], respect_affinity: bool,
              respect_mempolicy: bool, skip_groups: Collection[tuple[int, int, int]] = (),
              skip_sources: Collection[tuple[int, int, int]] = (),
              regions: Mapping[ProcessKey, Mapping[int, RegionTouches]] | None = None,
              node_busy: Mapping[int, float] | None = None,
              region_versions: Mapping[ProcessKey, int] | None = None,
              inherited_pin: Callable[[ProcessInfo, int, frozenset[int], int], frozenset[int] | None] | None = None,
              ) -> tuple[Snapshot, dict[tuple[int, int], dict[int, GroupRange]]]:
        online = frozenset(topology.cpus_online)
        views: list[ProcessView] = []
        groups: dict[tuple[int, int], dict[int, GroupRange]] = {}
        last_run: dict[tuple[ProcessKey, int], tuple[int, float]] = {}
        rss_kb: dict[ProcessKey, int] = {}
        for info, mm, threads in processes:
            key = info.key
            rss_kb[key] = info.rss_kb
            before = self._rss_kb.get(key)
            growing = before is not None and info.rss_kb - before > max(GROWING_MIN_KB, GROWING_SHARE * before)
            tasks = []
            for t in threads:
                if t.current_node is None:
                    continue
                previous = self._last_run.get((key, t.tid))
                last_run[(key, t.tid)] = (t.last_run_ns, now)
                if previous is None or now <= previous[1]:
                    lifetime_s = uptime_s - t.start_time / CLOCK_TICKS
                    weight = min(1.0, t.last_run_ns / 1e9 / lifetime_s) if lifetime_s > 0.1 else 0.0
                    if t.state == "R" and lifetime_s < FIRST_LOOK_YOUNG_S:
                        weight = max(weight, FIRST_LOOK_RUNNING_WEIGHT)  # a worker that waited for its job
                else:
                    weight = min(1.0, (t.last_run_ns - previous[0]) / 1e9 / (now - previous[1]))
                affinity = affinity_of(t.tid)
                narrowed = affinity is not None and not affinity >= online
                owned = owned_affinity(key, t.tid)
                if narrowed and owned is None and inherited_pin is not None and affinity is not None:
                    owned = inherited_pin(info, t.tid, affinity, t.start_time)
                pinned = respect_affinity and narrowed and (owned is None or owned & online != affinity)
                held = affinity is None or affinity <= frozenset(topology.nodes[t.current_node].cpus)
                tasks.append(TaskView(
                    tid=t.tid, cpu_node=t.current_node, runnable_weight=max(0.0, weight),
                    access_pages={n: int(c) for n, c in sorted(t.accesses.items()) if c >= 1},
                    access_windows=t.access_windows,
                    user_pinned=pinned, held=held))
            skip = {gid for pid, start, gid in skip_groups if (pid, start) == (key.pid, key.start_time)}
            touched = (regions or {}).get(key)
            locality = None
            if touched:
                thread_node = {t.tid: t.cpu_node for t in tasks}
                inputs = ((region_versions or {}).get(key), id(touched), frozenset(skip),
                          tuple(sorted(thread_node.items())))
                cached = self._from_regions.get(key)
                if cached is not None and cached[0] == inputs and inputs[0] is not None:
                    process_groups, locality = cached[1]
                else:
                    process_groups = region_groups(touched, skip)
                    locality = touch_locality(touched, thread_node)
                    self._from_regions[key] = (inputs, (process_groups, locality))
            else:
                self._from_regions.pop(key, None)
                process_groups = mapping_groups(mm, threads, skip)
            away = {node for pid, start, node in skip_sources if (pid, start) == (key.pid, key.start_time)}
            if away:
                process_groups = {gid: v for gid, v in process_groups.items() if v[0].node not in away}
            page_groups = [g for g, _ in process_groups.values()]
            process_ranges = {gid: r for gid, (_, r) in process_groups.items()}
            groups[(key.pid, key.start_time)] = process_ranges
            views.append(ProcessView(
                pid=key.pid, start_time=key.start_time, comm=info.comm,
                node_pages={n: int(p) for n, p in sorted(mm.node_pages.items()) if p >= 1},
                own_pages={n: int(p) for n, p in sorted(mm.own_node_pages().items()) if p >= 1},
                tasks=tuple(tasks), page_groups=tuple(page_groups),
                own_mempolicy=own_mempolicy(mm, respect_mempolicy),
                mempolicy_known=mm.policies_read or not respect_mempolicy, growing=growing,
                user_pinned=bool(tasks) and all(t.user_pinned for t in tasks),
                touch_locality=locality))
        self._last_run = last_run
        self._rss_kb = rss_kb
        seen = {info.key for info, _, _ in processes}
        self._from_regions = {k: v for k, v in self._from_regions.items() if k in seen}
        shown: dict[int, float] = {}
        for view in views:
            for task in view.tasks:
                shown[task.cpu_node] = shown.get(task.cpu_node, 0.0) + task.runnable_weight
        other = {i: other_busy_cpus(node_busy, i, shown.get(i, 0.0)) for i in topology.node_ids}
        agreed = {i: min(c, self._other_busy.get(i, 0)) for i, c in other.items()}
        if node_busy:
            self._other_busy = other
        nodes = tuple(
            NodeView(n.id, n.cpus, n.mem_free_kb / 1024, n.mem_total_kb / 1024, dict(n.distances), agreed[n.id])
            for n in (topology.nodes[i] for i in topology.node_ids))
        return Snapshot(now, nodes, tuple(views)), groups


def own_mempolicy(mm: MmSnapshot, respect_mempolicy: bool) -> bool:
    """Whether the process placed most of its memory by a policy of its own (bind, interleave,
    preferred: MmSnapshot.self_placed_share), which `[respect] user_mempolicy` keeps."""
    return respect_mempolicy and mm.self_placed_share() > 0.5


def other_busy_cpus(node_busy: Mapping[int, float] | None, node: int, shown: float) -> int:
    """Whole CPUs of `node` busy with threads the snapshot does not show: its measured
    busy CPUs less the runnable weight of the threads shown there, counted only from
    OTHER_BUSY_MIN of a CPU up (noise, the daemon itself and a thread that changed node
    mid-interval stay below it)."""
    if not node_busy:
        return 0
    return max(0, int(node_busy.get(node, 0.0) - shown + 1.0 - OTHER_BUSY_MIN))


def mapping_groups(mm: MmSnapshot, threads: list[ThreadStats],
                   skip: Collection[int]) -> dict[int, tuple[PageGroup, GroupRange]]:
    """Groups of a process seen through its mappings: (private mapping, node)."""
    touches_by_node: dict[int, dict[int, int]] = {}
    for t in threads:
        for node, count in t.accesses.items():
            if count >= 1:
                touches_by_node.setdefault(node, {})[t.tid] = int(count)
    samples = _off_node_samples(mm)
    shared: dict[tuple[int, int], int] = {}
    if mm.off_node_shared:  # what it shares with another process cannot move: it is not its own to move
        for k, addrs in samples.items():
            own = [a for a in addrs if a not in mm.off_node_shared]
            shared[k] = len(addrs) - len(own)
            samples[k] = own
    extents = _off_node_extents({k: v for k, v in samples.items() if v}, mm.stride)
    out = {}
    for vma in mm.vmas:
        if not movable_mapping(vma.path):
            continue
        for node, pages in sorted(vma.node_pages.items()):
            gid = group_id(vma.start, node)
            pages -= mm.stride * shared.get((vma.start, node), 0)
            if pages >= MIN_GROUP_PAGES and gid not in skip:
                start, end = extents.get((vma.start, node), (vma.start, vma.end))
                out[gid] = (PageGroup(gid, node, int(pages), touches_by_node.get(node, {})),
                            GroupRange(max(vma.start, start), min(vma.end, end), node))
    return out


def _off_node_samples(mm: MmSnapshot) -> dict[tuple[int, int], list[int]]:
    """(mapping start, node) -> the sampled page addresses off its threads' nodes in that mapping
    and on that node, when the snapshot kept them all; else empty."""
    if not mm.off_node_complete or not mm.off_node_addrs:
        return {}
    starts = [v.start for v in mm.vmas]
    order = sorted(range(len(starts)), key=starts.__getitem__)
    sorted_starts = [starts[i] for i in order]
    out: dict[tuple[int, int], list[int]] = {}
    for addr, node in zip(mm.off_node_addrs, mm.off_node_nodes):
        i = bisect.bisect_right(sorted_starts, addr) - 1
        if i < 0:
            continue
        vma = mm.vmas[order[i]]
        if addr < vma.end:
            out.setdefault((vma.start, node), []).append(addr)
    return out


def _off_node_extents(samples: Mapping[tuple[int, int], list[int]], stride: int
                      ) -> dict[tuple[int, int], tuple[int, int]]:
    """(mapping start, node) -> the span of the mapping in which the sample found pages on
    that node (`samples`, from _off_node_samples), widened by a stride on each side
    (between two samples the pages are not seen). A few strays left at one end of a big
    mapping then cost the mover a walk of that end, not of the whole mapping: most of
    what a process local at last still has elsewhere."""
    margin = stride * PAGE_SIZE
    return {k: (min(addrs) - margin, max(addrs) + PAGE_SIZE + margin) for k, addrs in samples.items()}


def region_groups(regions: Mapping[int, RegionTouches], skip: Collection[int]
                  ) -> dict[int, tuple[PageGroup, GroupRange]]:
    """Groups of a process seen through its sampled writes: (2 MiB region, node), each with
    the last sampling window that saw the region written."""
    out = {}
    region_pages = REGION_BYTES // PAGE_SIZE
    for start, touches in sorted(regions.items()):
        total = sum(touches.nodes.values())
        for node, count in sorted(touches.nodes.items()):
            gid = group_id(start, node)
            if gid not in skip:
                out[gid] = (PageGroup(gid, node, max(1, int(region_pages * count // total)), dict(touches.tids),
                                      touches.window),
                            GroupRange(start, start + REGION_BYTES, node))
    return out


def touch_locality(regions: Mapping[int, RegionTouches], thread_node: Mapping[int, int]) -> float | None:
    """Share of the sampled memory that sits on the node of the threads writing it: each
    region written by threads still running counts alike (memory, not writes: the
    interpreter's or allocator's few hot shared pages do not outweigh a thread's own
    buffer), as local as its sampled pages are on its writers' nodes, each writer weighed
    by its share of the region's writes. Regions follow the daemon's moves
    (WriteFaultSampler.note_moved). None without any such region."""
    local = counted = 0.0
    for touches in regions.values():
        on = sum(touches.nodes.values())
        writes: dict[int, int] = {}
        for tid, count in touches.tids.items():
            node = thread_node.get(tid)
            if node is not None:
                writes[node] = writes.get(node, 0) + count
        total = sum(writes.values())
        if not on or not total:
            continue
        counted += 1
        local += sum(count * touches.nodes.get(node, 0) for node, count in writes.items()) / on / total
    return local / counted if counted else None


def process_locality(view: ProcessView, shared_memory: bool = False) -> float | None:
    """Share of the process's memory on the node each of its threads runs on, averaged
    over its threads weighted by how busy each is (what the workload tool measures from
    inside: an idle main thread waiting on another node does not make a process misplaced);
    over all its threads alike when none was seen running. Where its writes were sampled,
    the share of them local to the writer instead (`ProcessView.touch_locality`), unless
    its threads were seen sharing its memory (`shared_memory`, Plan.shared_memory): a
    window sees each page's first writer only, which of two sweepers that is being chance."""
    if view.touch_locality is not None and not shared_memory:
        return view.touch_locality
    total = sum(view.node_pages.values())
    if not total or not view.tasks:
        return None
    weights = [t.runnable_weight for t in view.tasks]
    if sum(weights) <= 0:
        weights = [1.0] * len(view.tasks)
    local = sum(w * view.node_pages.get(t.cpu_node, 0) for w, t in zip(weights, view.tasks))
    return local / total / sum(weights)


def locality_bound(view: ProcessView, runnable_threshold: float) -> float | None:
    """The best locality the process can have with its busy threads on the nodes they run
    on now: with each thread touching all of its memory, the most of it one node can hold
    is local to that node's threads only, max over nodes of (busy threads there) / (busy
    threads). 1.0 when they share one node; None when none is busy. A process spread over
    nodes because it is bigger than one (AutoNUMA's numa01 with more threads than a node
    has CPUs) sits at this bound once balanced, below any locality target."""
    busy = Counter(t.cpu_node for t in view.tasks if t.runnable_weight >= runnable_threshold)
    total = sum(busy.values())
    return max(busy.values()) / total if total else None


def node_mb(node_pages: Mapping[int, float], page_size: int = 4096) -> dict[str, float]:
    return {str(n): round(p * page_size / (1 << 20), 1) for n, p in sorted(node_pages.items())}
