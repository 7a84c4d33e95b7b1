"""The C extension on real multi-node placement, checked against /proc/PID/numa_maps (2+ node VM).

Every child process costs seconds under TCG, so tests that only look share one.
"""

from collections import Counter
import contextlib
import errno
import mmap
import os
import subprocess
import sys
import time

import pytest

from autonumad.kernel import numa_calls
from autonumad.kernel.files import KernelFiles
from autonumad.mm_stats import choose_stride

pytestmark = pytest.mark.vm

PAGE = mmap.PAGESIZE
BUFFER_PAGES = 16384  # 64 MiB
UNTOUCHED = numa_calls.untouched_page_status()

# A process holding one private buffer, placed segment by segment: each argument
# PAGES:NODE writes the next PAGES pages bound to NODE ("-" = no binding of its
# own, "untouched" = leave them untouched). Transparent huge pages are off for the
# buffer so that page counts are exact and its mapping stays one VMA. It prints the
# buffer's address once placed, then sleeps, allocating nothing more, until its
# stdin closes.
PLACED = """
import mmap, os, sys
from autonumad.kernel import numa_calls
segments = [arg.split(":") for arg in sys.argv[1:]]
buf = mmap.mmap(-1, sum(int(pages) for pages, _ in segments) * mmap.PAGESIZE,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
offset = 0
for pages, node in segments:
    length = int(pages) * mmap.PAGESIZE
    if node.isdigit():
        numa_calls.set_membind(int(node))
    if node != "untouched":
        numa_calls.sweep(buf, offset, length, 1, None)
    numa_calls.reset_mempolicy()
    offset += length
print(numa_calls.buffer_address(buf), flush=True)
os.read(0, 1)
"""

# A process whose two threads keep writing one half each of a 16 MiB buffer (THP
# off: one write fault per 4 KiB page after clear_refs). It prints the buffer's
# address and the two writers' thread ids, and runs until its stdin closes.
WRITERS = """
import mmap, os, threading
from autonumad.kernel import numa_calls
buf = mmap.mmap(-1, 4096 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
half = len(buf) // 2
numa_calls.sweep(buf, 0, len(buf), 0, None)
tids = [None, None]
started = threading.Barrier(3)

def writer(which):
    tids[which] = threading.get_native_id()
    started.wait()
    seed = 1
    while True:
        numa_calls.sweep(buf, which * half, half, seed, None)
        seed += 1

for which in (0, 1):
    threading.Thread(target=writer, args=(which,), daemon=True).start()
started.wait()
print(numa_calls.buffer_address(buf), *tids, flush=True)
os.read(0, 1)
"""


@pytest.fixture(scope="module", autouse=True)
def numa_vm_without_kernel_balancing():
    """Two or more nodes, and kernel.numa_balancing off while these tests run, as under
    autonumad: the kernel's balancer would move the children's pages behind the tests'
    back, and on 6.1 move_pages reports the pages it has just marked (PROT_NONE) as
    -ENOENT, and cannot move them, until they are touched again."""
    if numa_calls.max_node() < 1:
        pytest.fail("the VM has a single NUMA node; these tests need 2 or more")
    files = KernelFiles()
    original = files.read_text("proc/sys/kernel/numa_balancing").strip()
    files.write_text("proc/sys/kernel/numa_balancing", "0")
    yield
    files.write_text("proc/sys/kernel/numa_balancing", original)


@contextlib.contextmanager
def running(program, *args, prefix=(), busy=False):
    """Run a Python program; yield (pid, the integers of its first output line).

    Unless `busy`, wait until it sleeps after that line, so its memory no longer changes.
    """
    child = subprocess.Popen(
        [*prefix, sys.executable, "-c", program, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = child.stdout.readline()
        assert line, f"child exited with {child.wait()}"
        if not busy:
            wait_until_asleep(child.pid)
        yield child.pid, [int(word) for word in line.split()]
    finally:
        child.stdin.close()
        child.wait(timeout=60)


def wait_until_asleep(pid):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                return
        time.sleep(0.05)
    raise AssertionError(f"child {pid} never went to sleep")


@contextlib.contextmanager
def placed_process(*segments, prefix=()):
    """Run PLACED with `segments`; yield (pid, (buffer start, buffer end))."""
    pages = sum(int(segment.split(":")[0]) for segment in segments)
    with running(PLACED, *segments, prefix=prefix) as (pid, (addr,)):
        yield pid, (addr, addr + pages * PAGE)


@pytest.fixture(scope="module")
def split_process():
    """A quarter of the buffer on node 0, the rest on node 1, then 256 untouched pages;
    shared by the tests that only look."""
    with placed_process("4096:0", "12288:1", "256:untouched") as placed:
        yield placed


def mappings(pid, skip=()):
    """(start, end) of every VMA of pid, from /proc/PID/maps, but those named in `skip`."""
    result = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 6 or fields[5] not in skip:
                result.append(tuple(int(x, 16) for x in fields[0].split("-")))
    return result


def numa_maps(pid):
    """{VMA start: {node: pages}} from /proc/PID/numa_maps (base pages; THP are off here)."""
    result = {}
    with open(f"/proc/{pid}/numa_maps", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            counts = {}
            for field in fields[2:]:
                if field[0] == "N" and "=" in field:
                    node, pages = field[1:].split("=")
                    counts[int(node)] = int(pages)
            result[int(fields[0], 16)] = counts
    return result


def buffer_vma(pid, buffer):
    """The buffer's mapping, which must be exactly the buffer (nothing merged into it)."""
    vma = next(vma for vma in mappings(pid) if vma[0] <= buffer[0] < vma[1])
    assert vma == buffer
    return vma


def histogram(statuses):
    return dict(Counter(node for node in statuses if node >= 0))


def page_addrs(start, end, step=1):
    return list(range(start, end, step * PAGE))


def test_page_nodes_agree_with_numa_maps_for_a_process_bound_by_numactl():
    with placed_process(f"{BUFFER_PAGES}:-", prefix=("numactl", "--membind=1")) as (pid, buffer):
        nodes = numa_calls.page_nodes(pid, page_addrs(*buffer_vma(pid, buffer)))
        assert histogram(nodes) == numa_maps(pid)[buffer[0]] == {1: BUFFER_PAGES}


def test_page_nodes_agree_with_numa_maps_for_a_split_buffer(split_process):
    pid, buffer = split_process
    nodes = numa_calls.page_nodes(pid, page_addrs(*buffer_vma(pid, buffer)))
    assert histogram(nodes) == numa_maps(pid)[buffer[0]] == {0: 4096, 1: 12288}
    assert nodes == [0] * 4096 + [1] * 12288 + [UNTOUCHED] * 256


def test_scan_matches_numa_maps_exactly_at_stride_one_and_closely_at_stride_sixteen(split_process):
    pid, buffer = split_process
    exact = numa_maps(pid)[buffer[0]]
    full = numa_calls.scan_ranges(pid, [buffer], 1, seed=1)
    assert full.node_pages == exact
    assert full.sampled == BUFFER_PAGES + 256
    assert (full.absent, full.errors) == ((256, 0) if UNTOUCHED == -errno.ENOENT else (0, 256))
    for seed in (1, 2, 3):
        sampled = numa_calls.scan_ranges(pid, [buffer], 16, seed=seed)
        assert sampled.sampled == (BUFFER_PAGES + 256) // 16
        present = sum(sampled.node_pages.values())
        for node, pages in exact.items():
            assert abs(sampled.node_pages.get(node, 0) / present - pages / BUFFER_PAGES) <= 0.02


def test_scan_collects_off_node_pages_that_really_are_off_node(split_process):
    pid, (start, end) = split_process
    result = numa_calls.scan_ranges(pid, [(start, end)], 4, seed=7, local_nodes={0}, max_off_node=200)
    assert result.off_node == result.node_pages[1]
    assert len(result.off_node_addrs) == 200
    assert set(result.off_node_nodes) == {1}
    assert numa_calls.page_nodes(pid, result.off_node_addrs) == result.off_node_nodes
    assert all(start + 4096 * PAGE <= addr < start + BUFFER_PAGES * PAGE for addr in result.off_node_addrs)
    # several local nodes (a process whose threads run on both): nothing is off them
    both = numa_calls.scan_ranges(pid, [(start, end)], 4, seed=7, local_nodes={0, 1}, max_off_node=200)
    assert both.node_pages == result.node_pages and both.off_node == 0 and both.off_node_addrs == []
    other = numa_calls.scan_ranges(pid, [(start, end)], 4, seed=7, local_nodes={1}, max_off_node=10**6)
    assert other.off_node == other.node_pages[0] == len(other.off_node_addrs)
    assert set(other.off_node_nodes) == {0}


def test_scan_of_every_mapping_matches_the_whole_numa_maps(split_process):
    pid, _ = split_process
    # numa_maps leaves out the vdso's pages (kernel pages); move_pages reports them.
    ranges = mappings(pid, skip=("[vdso]",))
    expected = {}
    for counts in numa_maps(pid).values():
        for node, pages in counts.items():
            expected[node] = expected.get(node, 0) + pages
    result = numa_calls.scan_ranges(pid, ranges, 1, seed=4)
    assert result.node_pages == expected
    assert len(result.range_node_pages) == len(ranges)


def test_stride_sampling_of_an_interleaved_process_is_within_two_points():
    with placed_process(f"{BUFFER_PAGES}:-", prefix=("numactl", "--interleave=0,1")) as (pid, buffer):
        exact = numa_maps(pid)[buffer[0]]
        assert min(exact.values()) > BUFFER_PAGES // 4
        # the stride the daemon would use near 16 on 2 nodes: odd, so that systematic
        # sampling alternates between the interleaved nodes
        stride = choose_stride(BUFFER_PAGES, BUFFER_PAGES, 32768, fixed=16, n_nodes=2)
        assert stride == 17
        for seed in (1, 2, 3):
            sampled = numa_calls.scan_ranges(pid, [buffer], stride, seed=seed)
            for node, pages in exact.items():
                assert abs(sampled.node_pages.get(node, 0) / sampled.sampled - pages / BUFFER_PAGES) <= 0.02


def test_moved_pages_show_up_in_numa_maps():
    with placed_process("4096:0", "12288:1", "16:untouched") as (pid, (start, _)):
        to_node_0 = page_addrs(start + 4096 * PAGE, start + BUFFER_PAGES * PAGE, 4)
        to_node_1 = page_addrs(start, start + 64 * PAGE)
        untouched = start + BUFFER_PAGES * PAGE
        pages = to_node_0 + to_node_1 + [untouched]
        targets = [0] * len(to_node_0) + [1] * len(to_node_1) + [0]
        status = numa_calls.move_pages(pid, pages, targets)
        assert status == targets[:-1] + [UNTOUCHED]
        moved = len(to_node_0) - len(to_node_1)
        assert numa_maps(pid)[start] == {0: 4096 + moved, 1: 12288 - moved}
        assert numa_calls.page_nodes(pid, pages) == status


def test_move_ranges_moves_only_the_pages_on_the_source_node_and_resumes_where_the_grant_ended():
    # 4096 pages on node 0, 12288 on node 1, 16 untouched: of two ranges, move node 1's pages to 0
    with placed_process("4096:0", "12288:1", "16:untouched") as (pid, (start, end)):
        middle = start + 8192 * PAGE
        ranges = [(start, middle), (middle, end)]
        first = numa_calls.move_ranges(pid, ranges, 1, 0, 5000)
        assert first.tried == [4096, 904] and first.moved == [4096, 904] and not first.done
        assert first.resume == (1, middle + 904 * PAGE) and first.failures == {}
        assert sorted(first.moved_addresses())[:2] == [start + 4096 * PAGE, start + 4097 * PAGE]
        rest = numa_calls.move_ranges(pid, ranges, 1, 0, 1 << 20, first.resume)
        assert rest.tried == [0, 7288] and rest.moved_total == 7288 and rest.done
        assert numa_maps(pid)[start] == {0: BUFFER_PAGES}
        assert numa_calls.move_ranges(pid, ranges, 1, 0, 100).tried == [0, 0]   # nothing left on node 1


# A process holding 32 MiB of transparent huge pages on node 1 (MADV_HUGEPAGE,
# 2 MiB aligned) and, after them, 100 pages of 4 KiB on node 1 too. It prints the
# address of the huge pages, the address of the small pages, and its THP kB.
HUGE = """
import mmap, os
from autonumad.kernel import numa_calls
HPAGE = 2 << 20
raw = mmap.mmap(-1, 17 * HPAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
start = -numa_calls.buffer_address(raw) % HPAGE
huge = memoryview(raw)[start:start + 16 * HPAGE]
raw.madvise(mmap.MADV_HUGEPAGE, start, 16 * HPAGE)
small = mmap.mmap(-1, 100 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
small.madvise(mmap.MADV_NOHUGEPAGE)
numa_calls.set_membind(1)
for off in range(0, 16 * HPAGE, mmap.PAGESIZE):
    huge[off] = 1
numa_calls.sweep(small, 0, len(small), 1, None)
numa_calls.reset_mempolicy()
with open("/proc/self/smaps_rollup") as f:
    thp_kb = int(f.read().split("AnonHugePages:")[1].split()[0])
print(numa_calls.buffer_address(raw) + start, numa_calls.buffer_address(small), thp_kb, flush=True)
os.read(0, 1)
"""


def vmstat(name):
    with open("/proc/vmstat", encoding="ascii") as f:
        return dict(line.split() for line in f).get(name)


def test_move_ranges_moves_a_transparent_huge_page_whole_and_counts_each_of_its_pages():
    with running(HUGE) as (pid, (huge, small, thp_kb)):
        if thp_kb < 16 * 2048 or vmstat("thp_migration_success") is None:
            pytest.skip(f"no transparent huge pages here ({thp_kb} kB of the 32768 asked for)")
        before = int(vmstat("thp_migration_success"))
        ranges = [(huge, huge + 16 * 512 * PAGE), (small, small + 100 * PAGE)]
        moves = numa_calls.move_ranges(pid, ranges, 1, 0, 1 << 14)
        assert moves.tried == [8192, 100] and moves.moved == [8192, 100] and moves.failures == {}
        assert int(vmstat("thp_migration_success")) - before == 16   # moved whole, not split
        addrs = [huge + i * PAGE for i in range(8192)] + [small + i * PAGE for i in range(100)]
        assert sorted(moves.moved_addresses()) == sorted(addrs)
        assert set(numa_calls.page_nodes(pid, addrs)) == {0}
        # a grant that ends inside a huge page: the page moves whole, the grant counts 100
        assert numa_calls.move_ranges(pid, ranges[:1], 0, 1, 100).moved == [100]
        assert numa_calls.page_nodes(pid, [huge + 511 * PAGE, huge + 512 * PAGE]) == [1, 0]


# A process that fills 1024 private pages (THP off), then forks: the child writes the
# first half again (copies of its own) and leaves the second half shared with its
# parent. It prints the child's PID and the buffer's address; both wait for stdin.
FORKED = """
import mmap, os
from autonumad.kernel import numa_calls
buf = mmap.mmap(-1, 1024 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
numa_calls.sweep(buf, 0, len(buf), 1, None)
r, w = os.pipe()
child = os.fork()
if child == 0:
    numa_calls.sweep(buf, 0, len(buf) // 2, 2, None)
    os.write(w, b"x")
    os.read(0, 1)
    os._exit(0)
os.read(r, 1)
print(child, numa_calls.buffer_address(buf), flush=True)
os.read(0, 1)
os.waitpid(child, 0)
"""


def test_pagemap_tells_a_forked_child_s_own_pages_from_those_it_still_shares_with_its_parent():
    from autonumad.kernel import procfs
    with running(FORKED) as (_, (child, addr)):
        addrs = [addr + i * PAGE for i in range(1024)]
        exclusive = procfs.pages_exclusive(KernelFiles(), child, addrs)
        assert [exclusive[a] for a in addrs] == [True] * 512 + [False] * 512
        other = 1 if numa_calls.page_nodes(child, [addrs[600]])[0] == 0 else 0
        assert numa_calls.move_pages(child, [addrs[600]], other) == [-errno.EACCES]  # not its own to move


def test_move_ranges_tries_only_the_pages_a_forked_child_maps_alone():
    with running(FORKED) as (_, (child, addr)):
        addrs = [addr + i * PAGE for i in range(1024)]
        before = numa_calls.page_nodes(child, addrs)
        target = 1 if before[0] == 0 else 0
        tried = moved = 0
        for source in sorted(set(before) - {target}):
            moves = numa_calls.move_ranges(child, [(addr, addr + 1024 * PAGE)], source, target, 1 << 20)
            assert moves.failures == {}              # its parent's pages were not handed to the kernel
            tried, moved = tried + moves.tried[0], moved + moves.moved[0]
        own_away = sum(1 for node in before[:512] if node != target)
        assert tried == moved == own_away
        after = numa_calls.page_nodes(child, addrs)
        assert after[:512] == [target] * 512 and after[512:] == before[512:]


def test_migrate_process_pages_empties_a_node():
    with placed_process("4096:0", "12288:1") as (pid, (start, _)):
        assert numa_calls.migrate_process_pages(pid, [1], [0]) == 0
        assert numa_maps(pid)[start] == {0: BUFFER_PAGES}


def test_membind_places_this_threads_pages_on_the_other_node():
    buf = mmap.mmap(-1, 64 * PAGE)
    numa_calls.set_membind(1)
    try:
        numa_calls.sweep(buf, 0, len(buf), 1, None)
    finally:
        numa_calls.reset_mempolicy()
    base = numa_calls.buffer_address(buf)
    assert numa_calls.page_nodes(0, page_addrs(base, base + 64 * PAGE)) == [1] * 64
    buf.close()


def test_node_of_each_cpu_matches_sysfs():
    for entry in os.listdir("/sys/devices/system/node"):
        if entry.startswith("node") and entry[4:].isdigit():
            with open(f"/sys/devices/system/node/{entry}/cpulist", encoding="ascii") as f:
                cpulist = f.read().strip()
            for part in filter(None, cpulist.split(",")):
                first, _, last = part.partition("-")
                for cpu in range(int(first), int(last or first) + 1):
                    assert numa_calls.node_of_cpu(cpu) == int(entry[4:])


def test_fault_sampling_after_clear_refs_attributes_writes_to_each_thread():
    with running(WRITERS, busy=True) as (pid, (addr, *tids)):
        half = 2048 * PAGE
        with numa_calls.open_fault_sampler(tids, pages=64) as sampler:
            KernelFiles().write_text(f"proc/{pid}/clear_refs", numa_calls.CLEAR_REFS_SOFT_DIRTY)
            time.sleep(1.0)
            samples = numa_calls.read_fault_samples(sampler)
    halves = {tid: set() for tid in tids}
    for tid, fault_addr, cpu in samples:
        if addr <= fault_addr < addr + 2 * half:
            halves[tid].add((fault_addr - addr) // half)
        assert 0 <= cpu < os.cpu_count()
    assert halves == {tids[0]: {0}, tids[1]: {1}}
