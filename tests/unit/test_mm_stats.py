"""mm statistics: stride choice, chunking, sampled estimates against the truth, numa_maps
snapshots from the VM fixture, and the per-process table across passes."""

import errno
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autonumad import mm_stats
from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.kernel.procfs import MapsEntry, MemPolicy
from autonumad.mm_stats import (MmStatsTable, choose_stride, exact_snapshot, sampled_mappings,
                                sampled_snapshot)
from autonumad.processes import ProcessInfo, ProcessKey
from autonumad.scan_pacing import ScanBudget

from conftest import FIXTURES

PAGE = 4096
MB_PAGES = 256
VM_TREE = os.path.join(FIXTURES, "proc", "vm2node")
MIXED = json.load(open(os.path.join(VM_TREE, "scenarios.json")))["pids"]["mixed"]
KEY = ProcessKey(MIXED, 1774)


@dataclass
class FakeScanResult:
    node_pages: dict
    range_node_pages: list
    sampled: int
    absent: int
    errors: int
    off_node_addrs: list = field(default_factory=list)
    off_node_nodes: list = field(default_factory=list)
    off_node: int = 0


class FakeMemory:
    """A process's pages and the C scanner's sampling rule over them, in Python: every
    stride-th page of each range from a random start in [0, stride)."""

    def __init__(self, placement):
        self.placement = placement      # address of a page -> node, or absent
        self.calls = []
        self.seeds = []

    def scan_ranges(self, pid, ranges, stride, seed, local_nodes=(), max_off_node=0):
        self.calls.append((list(ranges), stride))
        self.seeds.append(seed)
        rng = random.Random(seed)
        per_range, sampled, absent = [], 0, 0
        off = []
        for start, end in ranges:
            pages = (end - start) // PAGE
            counts = {}
            for page in range(rng.randrange(stride), pages, stride):
                sampled += 1
                node = self.placement(start + page * PAGE)
                if node is None:
                    absent += 1
                    continue
                counts[node] = counts.get(node, 0) + 1
                if local_nodes and node not in local_nodes:
                    off.append((start + page * PAGE, node))
            per_range.append(counts)
        total = {}
        for counts in per_range:
            for n, c in counts.items():
                total[n] = total.get(n, 0) + c
        seen, off = len(off), off[:max_off_node]
        return FakeScanResult(total, per_range, sampled, absent, 0, [a for a, _ in off], [n for _, n in off], seen)


def mapping(start_mb, size_mb, path="", perms="rw-p"):
    start = (0x7F0000000000 // PAGE + start_mb * MB_PAGES) * PAGE
    return MapsEntry(start, start + size_mb * MB_PAGES * PAGE, perms, 0, "00:00", 0, path)


def budget(pages_to_scan=1 << 30):
    return ScanBudget(pages_to_scan=pages_to_scan, cpu_ceiling_percent=100, sleep=lambda s: None)


def process(rss_pages, key=KEY):
    return ProcessInfo(key, "python3", "python3", 0, "root", rss_pages * 4, 2, 0, 50.0, "/")


# ---------------------------------------------------------------- what is sampled, how often

def test_special_and_inaccessible_mappings_are_not_sampled():
    maps = [mapping(0, 1, "[heap]"), mapping(1, 1, "[vvar]"), mapping(2, 1, "[vdso]"),
            mapping(3, 1, "[vsyscall]", "--xp"), mapping(4, 1, "", "---p"), mapping(5, 1, "/lib/x.so", "r--p")]
    assert [m.path for m in sampled_mappings(maps)] == ["[heap]", "/lib/x.so"]


def test_stride_keeps_about_4096_resident_samples_and_bounds_the_cost():
    assert choose_stride(rss_pages=1000, mapped_pages=3000, pages_to_scan=32768) == 1
    gib = 262144
    assert choose_stride(rss_pages=gib, mapped_pages=gib, pages_to_scan=32768) == 65   # 64, made odd
    # sparse: little resident, much mapped: the cost bound decides, and is never undercut
    assert choose_stride(rss_pages=1000, mapped_pages=100 * gib, pages_to_scan=32768) == 801
    assert choose_stride(rss_pages=gib, mapped_pages=gib, pages_to_scan=32768, fixed=7) == 7
    assert choose_stride(rss_pages=gib, mapped_pages=gib, pages_to_scan=32768, fixed=8) == 9
    assert choose_stride(rss_pages=gib, mapped_pages=gib, pages_to_scan=32768, fixed=8, n_nodes=4) == 11


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 4, 8, 16, 64])
def test_stride_shares_no_factor_with_any_interleave_period_and_stays_near_the_target(n_nodes):
    for rss in range(1, 3_000_000, 997):
        stride = choose_stride(rss_pages=rss, mapped_pages=rss, pages_to_scan=32768, n_nodes=n_nodes)
        ideal = max(1, math.ceil(rss / 4096))
        assert all(stride % k for k in range(2, min(n_nodes, 16) + 1)), (rss, stride)
        assert ideal / 2 <= stride <= ideal * 2 or stride == 1, (rss, ideal, stride)


@pytest.mark.parametrize("n_nodes", [2, 3, 4])
def test_memory_interleaved_page_by_page_is_counted_exactly(n_nodes):
    """Systematic sampling at a stride with no factor in common with the interleave
    period: each node's share comes out within a sample per mapping, not within
    binomial noise (the 2 pp accuracy target of the observe issue, every pass)."""
    maps = [mapping(0, 64), mapping(100, 12)]
    pages = sum(m.pages for m in maps)
    memory = FakeMemory(lambda addr: (addr // PAGE) % n_nodes)
    stride = choose_stride(pages, pages, 32768, n_nodes=n_nodes)
    for seed in range(20):
        snap = sampled_snapshot(KEY, maps, stride, memory.scan_ranges, budget(), random.Random(seed), 0.0)
        for node in range(n_nodes):
            share = snap.node_pages[node] / snap.total_pages
            assert abs(share - 1 / n_nodes) < 0.002, (seed, node, share)


def test_cost_per_pass_is_bounded_by_pages_to_scan():
    maps = [mapping(i * 64, 48) for i in range(40)]   # 40 mappings, 1.9 GiB
    memory = FakeMemory(lambda addr: 0)
    stride = choose_stride(1000, sum(m.pages for m in maps), 32768)
    snap = sampled_snapshot(KEY, maps, stride, memory.scan_ranges, budget(), random.Random(1), 0.0)
    assert snap.samples <= 32768 + len(maps)


@settings(max_examples=80, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=8), stride=st.integers(1, 17),
       grants=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_chunks_cover_every_mapping_once_cut_at_window_boundaries(sizes, stride, grants):
    maps, at = [], 0
    for size in sizes:
        maps.append(MapsEntry(at * PAGE, (at + size) * PAGE, "rw-p", 0, "00:00", 0, ""))
        at += size + 3
    given_out = []

    def take(wanted):
        granted = min(wanted, grants[len(given_out) % len(grants)])
        given_out.append(granted)
        return granted

    covered = {i: [] for i in range(len(maps))}
    for chunk, granted in zip(mm_stats._window_chunks(maps, stride, take), iter(lambda: given_out[-1], None)):
        windows = sum(math.ceil((end - start) / (stride * PAGE)) for _, start, end in chunk)
        assert windows <= granted
        for index, start, end in chunk:
            assert (start - maps[index].start) % (stride * PAGE) == 0
            covered[index].append((start, end))
    for index, m in enumerate(maps):
        pieces = covered[index]
        assert pieces[0][0] == m.start and pieces[-1][1] == m.end
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))


# ---------------------------------------------------------------- sampled estimates

def two_node_process():
    """40 MiB on node 0 and 120 MiB on node 1 (the VM test's shape), a little heap with
    holes, and a library mapped but mostly not resident."""
    node0, node1 = mapping(0, 40), mapping(64, 120)
    heap = mapping(256, 8, "[heap]")
    lib = mapping(300, 4, "/usr/lib/libc.so.6", "r-xp")

    def placement(addr):
        if node0.start <= addr < node0.end:
            return 0
        if node1.start <= addr < node1.end:
            return 1
        if heap.start <= addr < heap.end:
            return None if (addr // PAGE) % 3 == 0 else 1
        if lib.start <= addr < lib.start + 64 * PAGE:
            return 0
        return None

    maps = [node0, node1, heap, lib]
    truth = {0: 40 * MB_PAGES + 64, 1: 120 * MB_PAGES + sum(1 for a in range(heap.start, heap.end, PAGE)
                                                          if placement(a) is not None)}
    return maps, FakeMemory(placement), truth


@pytest.mark.parametrize("seed", range(5))
def test_sampled_shares_are_within_2_points_of_the_truth(seed):
    maps, memory, truth = two_node_process()
    rss = sum(truth.values())
    stride = choose_stride(rss, sum(m.pages for m in maps), 32768)
    assert stride == 11
    snap = sampled_snapshot(KEY, maps, stride, memory.scan_ranges, budget(), random.Random(seed), 0.0)
    share = snap.node_share()
    assert share[0] == pytest.approx(truth[0] / rss, abs=0.02)
    assert share[1] == pytest.approx(truth[1] / rss, abs=0.02)
    assert snap.total_pages == pytest.approx(rss, rel=0.03)
    assert not snap.exact and snap.stride == stride and snap.samples > snap.absent > 0
    # per mapping, too
    assert snap.vmas[0].node_pages == {0: pytest.approx(40 * MB_PAGES, rel=0.001)}
    assert snap.vmas[1].node_pages == {1: pytest.approx(120 * MB_PAGES, rel=0.001)}
    # 186 samples of a heap with every third page absent: ~5 % standard error
    assert snap.kind_node_pages()["heap"][1] == pytest.approx(8 * MB_PAGES * 2 / 3, rel=0.15)


@pytest.mark.parametrize("stride", [2, 4, 8, 16])
def test_interleaved_placement_is_not_aliased_even_at_a_fixed_even_stride(stride):
    area = mapping(0, 64)
    memory = FakeMemory(lambda addr: (addr // PAGE) % 2)
    stride = choose_stride(area.pages, area.pages, 32768, fixed=stride, n_nodes=2)
    snap = sampled_snapshot(KEY, [area], stride, memory.scan_ranges, budget(), random.Random(3), 0.0)
    assert snap.node_share()[0] == pytest.approx(0.5, abs=0.002)


def test_a_process_is_scanned_in_the_chunks_the_budget_grants():
    maps, memory, truth = two_node_process()
    snap = sampled_snapshot(KEY, maps, 11, memory.scan_ranges, budget(pages_to_scan=1000), random.Random(0), 0.0)
    windows = sum(math.ceil(m.pages / 11) for m in maps)
    assert len(memory.calls) == math.ceil(windows / 1000)
    assert len(set(memory.seeds)) == len(memory.seeds)
    for ranges, stride in memory.calls:
        assert sum(math.ceil((end - start) / (stride * PAGE)) for start, end in ranges) <= 1000
    assert snap.node_share()[0] == pytest.approx(truth[0] / sum(truth.values()), abs=0.02)


def test_off_node_pages_are_kept_up_to_the_limit():
    maps, memory, _ = two_node_process()
    snap = sampled_snapshot(KEY, maps, 11, memory.scan_ranges, budget(pages_to_scan=500), random.Random(0),
                            0.0, local_nodes=frozenset({0}), max_off_node=50)
    assert len(snap.off_node_addrs) == 50
    assert set(snap.off_node_nodes) == {1}
    assert snap.local_nodes == {0} and not snap.off_node_complete   # more were seen than kept
    every = sampled_snapshot(KEY, maps, 11, memory.scan_ranges, budget(pages_to_scan=100_000), random.Random(0),
                             0.0, local_nodes=frozenset({1}), max_off_node=100_000)
    assert every.off_node_complete and set(every.off_node_nodes) == {0}


def test_known_policies_label_sampled_mappings():
    maps, memory, _ = two_node_process()
    known = {maps[1].start: ("private", MemPolicy("bind", (1,)))}
    snap = sampled_snapshot(KEY, maps, 11, memory.scan_ranges, budget(), random.Random(0), 0.0, known)
    assert snap.vmas[1].policy == MemPolicy("bind", (1,))
    assert snap.vmas[0].policy is None and snap.vmas[2].kind == "heap"
    assert snap.self_placed_share() == 1.0   # of the memory whose policy is known


# ---------------------------------------------------------------- exact snapshots

def test_exact_snapshot_sums_numa_maps_in_base_pages():
    files = KernelFiles(VM_TREE)
    entries = procfs.read_numa_maps(files, MIXED)
    snap = exact_snapshot(KEY, entries, procfs.read_maps(files, MIXED), 5.0)
    expected = {}
    for e in entries:
        for node, pages in e.node_base_pages.items():
            expected[node] = expected.get(node, 0) + pages
    assert snap.exact and snap.node_pages == expected
    rows = snap.kind_node_pages()
    assert rows["huge"] == {1: 1024.0}
    assert rows["heap"] == {0: 59.0, 1: 1181.0}
    assert sum(sum(r.values()) for r in rows.values()) == snap.total_pages
    assert not any(v.path in ("[vvar]", "[vdso]") for v in snap.vmas)
    assert all(v.end > v.start for v in snap.vmas)
    chosen = sum(sum(v.node_pages.values()) for v in snap.vmas if v.policy.chosen_by_process)
    assert chosen == 3 * 1024
    assert snap.self_placed_share() == pytest.approx(chosen / snap.total_pages)
    assert snap.node_mb()[1] == pytest.approx(expected[1] * PAGE / (1 << 20))


# ---------------------------------------------------------------- the table across passes

def bound_placement(files):
    """Every page of the fixture process on the node its mapping is bound to, else node 0."""
    bound = [(e.start, e.policy.nodes[0]) for e in procfs.read_numa_maps(files, MIXED) if e.policy.mode == "bind"]
    ends = {m.start: m.end for m in procfs.read_maps(files, MIXED)}

    def placement(addr):
        for start, node in bound:
            if start <= addr < ends[start]:
                return node
        return 0
    return placement


def read_policies(table, info, b=None):
    """A first sight (sampled), then the numa_maps read the daemon asks for before pages move."""
    table.observe(info, b or budget())
    table.want_policies(info.key)
    table.end_pass()
    return table.observe(info, b or budget())


def test_first_sight_is_sampled_numa_maps_is_read_when_policies_are_wanted_and_kept():
    files = KernelFiles(VM_TREE)
    memory = FakeMemory(bound_placement(files))
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges, seed=1)
    b = budget()
    first = table.observe(process(9768), b)
    assert not first.exact and not first.policies_read and memory.calls
    assert all(v.policy is None for v in first.vmas)
    table.end_pass()
    assert not table.observe(process(9768), b).policies_read   # nobody asked: still sampled
    memory.calls.clear()
    table.want_policies(KEY)
    scanned = b.counters.pages_scanned
    exact = table.observe(process(9768), b)
    assert exact.exact and exact.policies_read and memory.calls == []
    assert b.counters.pages_scanned - scanned == 9768 // mm_stats.NUMA_MAPS_PAGES_PER_SAMPLE
    table.end_pass()
    table.want_policies(KEY)                 # read already: not again
    second = table.observe(process(9768), b)
    assert not second.exact and second.policies_read and memory.calls
    assert table.get(KEY) is second
    bind1 = next(v for v in second.vmas if v.policy == MemPolicy("bind", (1,)))
    assert bind1.node_pages == {1: pytest.approx(1024, rel=0.03)}   # all on node 1: the coarse look's estimate
    assert table.counters.exact_reads == 1 and table.counters.processes_scanned == 4


def test_maps_are_parsed_again_only_when_they_change(monkeypatch, tmp_path):
    import shutil
    root = tmp_path / "tree"
    shutil.copytree(VM_TREE, root, symlinks=True)
    files = KernelFiles(str(root))
    parsed = []
    real = procfs.parse_maps
    monkeypatch.setattr(procfs, "parse_maps", lambda text: parsed.append(1) or real(text))
    table = MmStatsTable(files, scan_ranges=FakeMemory(lambda addr: 0).scan_ranges)
    for _ in range(3):
        table.observe(process(9768), budget())
        table.end_pass()
    assert len(parsed) == 1                     # the first pass's; the next two reuse it
    maps = root / "proc" / str(MIXED) / "maps"
    lines = maps.read_text().splitlines(keepends=True)
    maps.write_text("".join(lines[:-1]))        # a mapping went away
    snapshot = table.observe(process(9768), budget())
    assert len(parsed) == 2 and len(snapshot.vmas) <= len(lines) - 1


def test_sampled_passes_keep_read_only_file_mappings_from_numa_maps_and_sample_the_rest():
    files = KernelFiles(VM_TREE)
    memory = FakeMemory(lambda addr: 0)
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges)
    exact = read_policies(table, process(9768))
    table.end_pass()
    memory.calls.clear()
    sampled = table.observe(process(9768), budget())
    perms = {m.start: m.perms for m in procfs.read_maps(files, MIXED)}
    read_only = [v for v in exact.vmas if not mm_stats.movable_mapping(v.path)
                 and perms[v.start][1] != "w" and perms[v.start][3] == "p"]
    writable = [v for v in exact.vmas if not mm_stats.movable_mapping(v.path) and perms[v.start][1] == "w"]
    assert read_only and writable
    by_start = {v.start: v for v in sampled.vmas}
    assert all(by_start[v.start] is v for v in read_only)           # figures kept as numa_maps gave them
    scanned = {start for ranges, _ in memory.calls for start, _ in ranges}
    assert not scanned & {v.start for v in read_only}
    assert {v.start for v in writable} <= scanned                   # a data file or shared memory may grow


def test_a_process_never_read_exact_keeps_its_first_sampled_read_only_file_mappings():
    files = KernelFiles(VM_TREE)
    memory = FakeMemory(lambda addr: 0)
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges)
    first = table.observe(process(9768), budget())
    scanned_first = {start for ranges, _ in memory.calls for start, _ in ranges}
    table.end_pass()
    memory.calls.clear()
    second = table.observe(process(9768), budget())
    assert not second.policies_read
    perms = {m.start: m.perms for m in procfs.read_maps(files, MIXED)}
    read_only = {v.start for v in first.vmas if not mm_stats.movable_mapping(v.path)
                 and perms[v.start][1] != "w" and perms[v.start][3] == "p"}
    assert read_only and read_only <= scanned_first                 # the first look samples them
    scanned = {start for ranges, _ in memory.calls for start, _ in ranges}
    assert scanned and not scanned & read_only                      # the next keeps what it found
    by_start = {v.start: v for v in second.vmas}
    assert all(by_start[v.start] is v for v in first.vmas if v.start in read_only)


def test_numa_maps_is_read_again_every_so_many_passes():
    files = KernelFiles(VM_TREE)
    memory = FakeMemory(lambda addr: 0)
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges)
    exact = [read_policies(table, process(9768)).exact]
    table.end_pass()
    for _ in range(mm_stats.EXACT_EVERY_PASSES + 1):
        exact.append(table.observe(process(9768), budget()).exact)
        table.end_pass()
    assert exact[0] and exact[mm_stats.EXACT_EVERY_PASSES]
    assert not any(exact[1:mm_stats.EXACT_EVERY_PASSES]) and not exact[-1]


def test_mappings_all_on_one_node_are_told_by_a_coarse_look_the_rest_sampled_again_in_full():
    files = KernelFiles(VM_TREE)
    fine = mm_stats.choose_stride(9768, 9768, 1 << 30)
    memory = FakeMemory(lambda addr: 1)
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges)
    snapshot = table.observe(process(9768), budget(), local_nodes={1})
    coarse = memory.calls[0][1]
    assert coarse > 4 * fine and [stride for _, stride in memory.calls[1:]] in ([], [fine])
    biggest = max(snapshot.vmas, key=lambda v: v.end - v.start)
    assert biggest.node_pages == {1: pytest.approx(biggest.end // PAGE - biggest.start // PAGE, rel=0.05)}
    again = [start for ranges, stride in memory.calls[1:] for start, _ in ranges]
    assert biggest.start not in again                        # settled by the coarse look
    looked = [(start, end) for ranges, stride in memory.calls if stride == coarse for start, end in ranges]
    assert looked and all(end - start >= mm_stats.COARSE_MIN_SAMPLES * coarse * PAGE for start, end in looked)
    small = [v for v in snapshot.vmas if v.end - v.start < mm_stats.COARSE_MIN_SAMPLES * coarse * PAGE
             and mm_stats.movable_mapping(v.path)]
    assert small and {v.start for v in small} <= set(again)  # too small to settle: only the full look
    assert set(snapshot.node_pages) == {1} and snapshot.off_node_complete
    memory.calls.clear()
    table.end_pass()
    elsewhere = table.observe(process(9768), budget(), local_nodes={0}, max_off_node=16)
    # its threads elsewhere: the big mapping is all on node 1 all the same, more of it than the
    # list of pages off their node could hold (which lacks them, and says it is not complete)
    assert biggest.start not in [start for ranges, _ in memory.calls[1:] for start, _ in ranges]
    assert set(elsewhere.node_pages) == {1} and not elsewhere.off_node_complete
    memory.calls.clear()
    table.end_pass()
    table.observe(process(9768), budget(), local_nodes={0}, max_off_node=1 << 20)   # room for them all:
    assert biggest.start in [start for ranges, _ in memory.calls[1:] for start, _ in ranges]   # in full
    mixed = FakeMemory(bound_placement(files))
    table = MmStatsTable(files, scan_ranges=mixed.scan_ranges)
    snapshot = table.observe(process(9768), budget())
    assert snapshot.stride == fine and len(set(snapshot.node_pages)) > 1
    assert table.counters.coarse_scans == 0


def test_a_quiet_process_keeps_its_last_scan_a_few_passes_while_its_threads_and_rss_stay():
    files = KernelFiles(VM_TREE)
    memory = FakeMemory(lambda addr: 0)
    now = [100.0]
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges, clock=lambda: now[0])
    scanned = []

    def observe(rss=9768, local=(0,), quiet=True):
        calls = len(memory.calls)
        snapshot = table.observe(process(rss), budget(), local, quiet=quiet)
        table.end_pass()
        now[0] += 1.0
        scanned.append(len(memory.calls) > calls)
        return snapshot

    first = observe(quiet=False)
    assert observe() is first and observe() is first                # kept twice in a row...
    assert observe() is not first                                    # ...then scanned again
    observe(quiet=False)                                             # not quiet: scanned
    observe(local=(1,))                                              # its threads moved: scanned
    observe(local=(1,), rss=9768 + 200)                              # RSS changed 2%: scanned
    assert observe(local=(1,), rss=9768 + 250) is table.get(KEY)     # 0.5% more: kept
    observe(local=(0, 1))                                            # threads on two nodes: scanned
    assert observe(local=(1, 0)) is table.get(KEY)                   # spread, on the same two: kept
    observe(local=())                                                # none busy: scanned
    assert scanned == [True, False, False, True, True, True, True, False, True, False, True]
    assert table.counters.quiet_carried == 4
    observe(quiet=False)
    now[0] += mm_stats.QUIET_CARRY_S
    observe()
    assert scanned[-2:] == [True, True]                              # the last scan is too old: scanned


def test_strays_of_a_process_settled_on_one_node_are_told_apart_by_whether_another_process_maps_them(tmp_path):
    import shutil
    shutil.copytree(VM_TREE, tmp_path / "tree", symlinks=True)
    files = KernelFiles(str(tmp_path / "tree"))
    heap = next(m for m in procfs.read_maps(files, MIXED) if m.path == "[heap]")
    half = heap.start + (heap.end - heap.start) // 2
    memory = FakeMemory(lambda addr: 1 if heap.start <= addr < heap.end else 0)   # its heap sits on node 1
    with open(tmp_path / "tree" / "proc" / str(MIXED) / "pagemap", "wb") as f:   # its first half shared
        for addr in range(heap.start, heap.end, PAGE):
            f.seek(addr // PAGE * procfs.PAGEMAP_ENTRY)
            entry = procfs.PAGEMAP_PRESENT | (procfs.PAGEMAP_EXCLUSIVE if addr >= half else 0)
            f.write(entry.to_bytes(procfs.PAGEMAP_ENTRY, "little"))
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges, seed=3)
    snap = table.observe(process(9768), budget(), local_nodes={0}, max_off_node=100_000)
    strays = [a for a, n in zip(snap.off_node_addrs, snap.off_node_nodes) if n == 1]
    assert snap.off_node_complete and strays
    assert snap.off_node_shared == frozenset(a for a in strays if a < half)
    assert snap.off_node_shared_share == {1: pytest.approx(0.5, abs=0.1)}
    heap_pages = sum(v.node_pages.get(1, 0) for v in snap.vmas if v.path == "[heap]")
    assert snap.own_node_pages()[1] == pytest.approx(heap_pages * (1 - snap.off_node_shared_share[1]))
    assert table.observe(process(9768), budget()).off_node_shared == frozenset()  # threads' nodes unknown: not looked
    # threads on two nodes, neither the heap's: most of its memory off them, only some of it
    # kept (not complete): not looked up
    table.end_pass()
    spread = table.observe(process(9768), budget(), local_nodes={0, 2}, max_off_node=8)
    assert not spread.off_node_complete and spread.off_node_shared == frozenset()


def test_strays_of_a_spread_process_are_looked_up_though_the_scan_kept_only_some(tmp_path):
    import shutil
    shutil.copytree(VM_TREE, tmp_path / "tree", symlinks=True)
    files = KernelFiles(str(tmp_path / "tree"))
    heap = next(m for m in procfs.read_maps(files, MIXED) if m.path == "[heap]")
    half = heap.start + (heap.end - heap.start) // 2
    memory = FakeMemory(lambda addr: 2 if heap.start <= addr < half else 0)   # half its heap on node 2
    with open(tmp_path / "tree" / "proc" / str(MIXED) / "pagemap", "wb") as f:   # shared with its parent
        for addr in range(heap.start, half, PAGE):
            f.seek(addr // PAGE * procfs.PAGEMAP_ENTRY)
            f.write(procfs.PAGEMAP_PRESENT.to_bytes(procfs.PAGEMAP_ENTRY, "little"))
    table = MmStatsTable(files, scan_ranges=memory.scan_ranges, seed=3)
    snap = table.observe(process(9768), budget(), local_nodes={0, 1}, max_off_node=4)
    total = sum(snap.node_pages.values())
    assert not snap.off_node_complete and snap.node_pages[2] <= mm_stats.SHARED_LOOK_OFF_SHARE * total
    assert len(snap.off_node_shared) == 4 and snap.off_node_shared_share == {2: 1.0}
    assert snap.own_node_pages().get(2, 0.0) == 0.0 and snap.own_node_pages()[0] > 0
    # a numa_maps read (its policies wanted) does not look them up: it keeps what was found
    table.end_pass()
    table.want_policies(KEY)
    exact = table.observe(process(9768), budget(), local_nodes={0, 1}, max_off_node=4)
    assert exact.exact and exact.off_node_shared_share == {2: 1.0}
    table.end_pass()
    elsewhere = table.observe(process(9768), budget(), local_nodes={1, 2}, max_off_node=4)
    assert elsewhere.off_node_shared_share == {}            # its threads moved: not carried over
    # threads on one node, more strays than the list holds: not looked up (nothing uses it)
    table.end_pass()
    one = table.observe(process(9768), budget(), local_nodes={0}, max_off_node=4)
    assert not one.off_node_complete and one.off_node_shared == frozenset()


def test_process_exiting_mid_scan_is_a_debug_line_only(caplog):
    files = KernelFiles(VM_TREE)

    def gone(*args, **kwargs):
        raise ProcessGone(errno.ESRCH, "No such process")

    table = MmStatsTable(files, scan_ranges=FakeMemory(lambda a: 0).scan_ranges)
    table.observe(process(9768), budget())
    table.scan_ranges = gone
    with caplog.at_level(logging.DEBUG, logger="autonumad.mm_stats"):
        assert table.observe(process(9768), budget()) is None
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "went away" in caplog.records[0].getMessage()
    assert table.get(KEY) is None and table.counters.gone_mid_scan == 1


def test_process_gone_before_its_maps_are_read():
    table = MmStatsTable(KernelFiles(VM_TREE), scan_ranges=FakeMemory(lambda a: 0).scan_ranges)
    assert table.observe(process(100, ProcessKey(4242, 1)), budget()) is None
    assert table.counters.gone_mid_scan == 1


def test_access_denied_keeps_the_previous_snapshot():
    files = KernelFiles(VM_TREE)

    def denied(*args, **kwargs):
        raise AccessDenied(errno.EPERM, "Operation not permitted")

    table = MmStatsTable(files, scan_ranges=FakeMemory(lambda a: 0).scan_ranges)
    first = table.observe(process(9768), budget())
    table.end_pass()
    table.scan_ranges = denied
    assert table.observe(process(9768), budget()) is None
    assert table.get(KEY) is first and table.counters.access_denied == 1


def test_forget_drops_a_process():
    table = MmStatsTable(KernelFiles(VM_TREE), scan_ranges=FakeMemory(lambda a: 0).scan_ranges)
    assert read_policies(table, process(9768)).exact
    table.forget([KEY])
    assert table.get(KEY) is None
    assert not table.observe(process(9768), budget()).policies_read   # seen afresh
