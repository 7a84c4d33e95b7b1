"""The C extension through numa_calls on this machine's own memory (any node count)."""

from collections import Counter
import errno
import mmap
import os
import subprocess
import sys
import threading
import time

import pytest

from autonumad.kernel import numa_calls
from autonumad.kernel.files import ProcessGone

PAGE = mmap.PAGESIZE
UNTOUCHED = numa_calls.untouched_page_status()  # -ENOENT here (6.18); -EFAULT on 6.1


@pytest.fixture
def buf():
    """64 pages of private anonymous memory, none touched yet."""
    m = mmap.mmap(-1, 64 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    yield m
    m.close()


def touch(m, first_page, n_pages):
    for page in range(first_page, first_page + n_pages):
        m[page * PAGE] = 1


def pages_of(m, first_page=0, n_pages=64):
    base = numa_calls.buffer_address(m)
    return [base + page * PAGE for page in range(first_page, first_page + n_pages)]


def histogram(statuses):
    return dict(Counter(node for node in statuses if node >= 0))


def local_node():
    return numa_calls.node_of_cpu(numa_calls.current_cpu())


def scan_all_off_node(base, n_pages, stride, seed, max_off_node=None):
    """scan_ranges over our own pages with a local node that does not exist, so that
    off_node_addrs lists the sampled present pages (all of them unless capped)."""
    no_such_node = min(numa_calls.max_node() + 1, numa_calls.LOCAL_NODES_MAX - 1)
    cap = n_pages if max_off_node is None else max_off_node
    return numa_calls.scan_ranges(0, [(base, base + n_pages * PAGE)], stride, seed, {no_such_node}, cap)


@pytest.fixture
def gone_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def zombie_pid():
    """A child that has exited but is not reaped yet: it has no memory left."""
    child = subprocess.Popen(["true"])
    while True:
        with open(f"/proc/{child.pid}/stat", encoding="ascii") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.01)
    yield child.pid
    child.wait()


def test_touched_pages_are_on_a_node_and_untouched_ones_are_not(buf):
    touch(buf, 0, 32)
    nodes = numa_calls.page_nodes(0, pages_of(buf))
    assert all(0 <= node <= numa_calls.max_node() for node in nodes[:32])
    assert nodes[32:] == [UNTOUCHED] * 32


def test_page_nodes_of_own_pid_matches_pid_zero(buf):
    touch(buf, 0, 64)
    assert numa_calls.page_nodes(os.getpid(), pages_of(buf)) == numa_calls.page_nodes(0, pages_of(buf))


def test_page_nodes_handles_more_pages_than_one_batch():
    m = mmap.mmap(-1, 5000 * PAGE)
    touch(m, 0, 5000)
    nodes = numa_calls.page_nodes(0, pages_of(m, 0, 5000))
    assert len(nodes) == 5000 and min(nodes) >= 0
    m.close()


def test_single_node_host_puts_everything_on_node_zero(buf):
    if numa_calls.max_node() != 0:
        pytest.skip("this machine has several nodes")
    touch(buf, 0, 64)
    assert numa_calls.page_nodes(0, pages_of(buf)) == [0] * 64
    assert numa_calls.node_of_cpu(0) == 0


def test_unmapped_pages_report_efault(buf):
    hole = mmap.mmap(-1, 4 * PAGE)
    addrs = pages_of(hole, 0, 4)
    hole.close()
    assert numa_calls.page_nodes(0, addrs) == [-errno.EFAULT] * 4


def test_empty_address_list_makes_no_call():
    assert numa_calls.page_nodes(0, []) == []
    assert numa_calls.move_pages(0, [], 0) == []


def test_queries_on_a_pid_that_is_gone_raise_process_gone(gone_pid):
    with pytest.raises(ProcessGone):
        numa_calls.page_nodes(gone_pid, [0x10000])
    with pytest.raises(ProcessGone):
        numa_calls.scan_ranges(gone_pid, [(0x10000, 0x20000)], 1, 0)
    with pytest.raises(ProcessGone):
        numa_calls.move_pages(gone_pid, [0x10000], 0)
    with pytest.raises(ProcessGone):
        numa_calls.migrate_process_pages(gone_pid, [0], [0])


def test_queries_on_an_exited_unreaped_process_raise_process_gone(zombie_pid):
    with pytest.raises(ProcessGone) as caught:
        numa_calls.page_nodes(zombie_pid, [0x10000])
    assert caught.value.errno == errno.EINVAL
    with pytest.raises(ProcessGone):
        numa_calls.scan_ranges(zombie_pid, [(0x10000, 0x20000)], 1, 0)
    with pytest.raises(ProcessGone):
        numa_calls.migrate_process_pages(zombie_pid, [0], [0])


def test_migrate_process_pages_to_a_node_without_memory_raises_einval():
    with pytest.raises(OSError) as caught:
        numa_calls.migrate_process_pages(os.getpid(), [0], [numa_calls.max_node() + 1])
    assert caught.value.errno == errno.EINVAL and not isinstance(caught.value, ProcessGone)


def test_move_pages_to_the_local_node_reports_it(buf):
    touch(buf, 0, 16)
    node = local_node()
    status = numa_calls.move_pages(0, pages_of(buf, 0, 20), node)
    assert status[:16] == [node] * 16
    assert status[16:] == [UNTOUCHED] * 4


def test_move_ranges_goes_through_the_ranges_a_grant_at_a_time(buf):
    # one node here: the pages are on it already, so each one tried counts as moved
    touch(buf, 0, 40)
    node = local_node()
    base = numa_calls.buffer_address(buf)
    ranges = [(base, base + 30 * PAGE), (base + 30 * PAGE, base + 50 * PAGE)]
    first = numa_calls.move_ranges(0, ranges, node, node, 25)
    assert first.tried == [25, 0] and first.resume == (0, base + 25 * PAGE) and not first.done
    rest = numa_calls.move_ranges(0, ranges, node, node, 100, first.resume)
    assert rest.tried == [5, 10] and rest.moved == [5, 10] and rest.done     # 10 untouched pages skipped
    assert rest.moved_addresses() == [base + i * PAGE for i in range(25, 40)]
    exact = numa_calls.move_ranges(0, ranges, node, node, 30)   # the grant ends with the first range
    assert exact.tried == [30, 0] and exact.resume == (1, 0)
    with pytest.raises(ValueError):
        numa_calls.move_ranges(0, ranges, node, node, -1)


def test_move_ranges_of_a_pid_that_is_gone_raises_process_gone(gone_pid):
    with pytest.raises(ProcessGone):
        numa_calls.move_ranges(gone_pid, [(0x10000, 0x20000)], 0, 0, 10)


def test_move_pages_takes_one_target_per_page(buf):
    touch(buf, 0, 2)
    node = local_node()
    assert numa_calls.move_pages(0, pages_of(buf, 0, 2), [node, node]) == [node, node]
    with pytest.raises(ValueError):
        numa_calls.move_pages(0, pages_of(buf, 0, 2), [node])


def test_move_pages_to_a_node_that_does_not_exist_raises(buf):
    touch(buf, 0, 1)
    with pytest.raises(OSError) as caught:
        numa_calls.move_pages(0, pages_of(buf, 0, 1), numa_calls.max_node() + 1)
    assert caught.value.errno == errno.ENODEV


def test_migrate_process_pages_within_one_node_moves_nothing():
    node = local_node()
    assert numa_calls.migrate_process_pages(0, [node], [node]) == 0


def test_scan_at_stride_one_counts_every_page(buf):
    touch(buf, 0, 40)
    base = numa_calls.buffer_address(buf)
    result = numa_calls.scan_ranges(0, [(base, base + 64 * PAGE)], 1, seed=1)
    assert result.sampled == 64
    assert sum(result.node_pages.values()) == 40
    assert (result.absent, result.errors) == ((24, 0) if UNTOUCHED == -errno.ENOENT else (0, 24))
    assert result.range_node_pages == [result.node_pages]
    assert result.off_node == 0 and result.off_node_addrs == []


def test_scan_histogram_matches_page_nodes(buf):
    touch(buf, 0, 64)
    base = numa_calls.buffer_address(buf)
    result = numa_calls.scan_ranges(0, [(base, base + 64 * PAGE)], 1, seed=5)
    assert result.node_pages == histogram(numa_calls.page_nodes(0, pages_of(buf)))


def test_scan_at_stride_n_samples_one_page_per_window():
    m = mmap.mmap(-1, 4096 * PAGE)
    touch(m, 0, 4096)
    base = numa_calls.buffer_address(m)
    for stride in (2, 16, 64):
        result = scan_all_off_node(base, 4096, stride, seed=stride)
        assert result.sampled == 4096 // stride
        windows = [(addr - base) // PAGE // stride for addr in result.off_node_addrs]
        assert windows == list(range(4096 // stride))
    m.close()


def test_scan_samples_a_short_last_window_in_proportion():
    # 10 pages at stride 16: each page is sampled with chance 1/16, so over many
    # seeds the range is sampled about 10/16 of the time.
    m = mmap.mmap(-1, 10 * PAGE)
    touch(m, 0, 10)
    base = numa_calls.buffer_address(m)
    sampled = sum(scan_all_off_node(base, 10, 16, seed).sampled for seed in range(1600))
    assert 850 <= sampled <= 1150
    m.close()


def test_sampling_is_systematic_so_interleaving_is_counted_evenly():
    # Every other page on one node (interleaving) looks like "page index is even":
    # the scanner takes every stride-th page from one random start, so at an odd
    # stride (mm_stats.choose_stride picks only those on 2 nodes) the samples
    # alternate between even and odd pages: an exact split, no binomial noise.
    m = mmap.mmap(-1, 4096 * PAGE)
    touch(m, 0, 4096)
    base = numa_calls.buffer_address(m)
    stride = 15
    starts = set()
    for seed in range(8):
        result = scan_all_off_node(base, 4096, stride, seed=seed)
        pages = [(addr - base) // PAGE for addr in result.off_node_addrs]
        assert len({p % stride for p in pages}) == 1 and len(pages) in (273, 274)
        starts.add(pages[0] % stride)
        even = sum(1 for p in pages if p % 2 == 0)
        assert abs(even - len(pages) / 2) <= 1
    assert len(starts) > 1
    m.close()


def test_scan_is_repeatable_for_a_seed_and_differs_across_seeds():
    m = mmap.mmap(-1, 1024 * PAGE)
    touch(m, 0, 1024)
    base = numa_calls.buffer_address(m)
    first = scan_all_off_node(base, 1024, 8, seed=11).off_node_addrs
    assert scan_all_off_node(base, 1024, 8, seed=11).off_node_addrs == first
    assert scan_all_off_node(base, 1024, 8, seed=12).off_node_addrs != first
    m.close()


def test_off_node_pages_are_capped_and_chosen_across_the_range():
    m = mmap.mmap(-1, 1024 * PAGE)
    touch(m, 0, 1024)
    base = numa_calls.buffer_address(m)
    result = scan_all_off_node(base, 1024, 1, seed=9, max_off_node=10)
    assert result.off_node == 1024
    assert len(result.off_node_addrs) == 10 == len(result.off_node_nodes)
    assert result.off_node_addrs == sorted(set(result.off_node_addrs))
    assert all(base <= addr < base + 1024 * PAGE for addr in result.off_node_addrs)
    assert result.off_node_addrs[-1] >= base + 512 * PAGE  # not just the first ten pages
    assert result.off_node_nodes == numa_calls.page_nodes(0, result.off_node_addrs)
    m.close()


def test_pages_on_the_local_node_are_not_off_node(buf):
    touch(buf, 0, 1)
    base = numa_calls.buffer_address(buf)
    node = numa_calls.page_nodes(0, [base])[0]
    result = numa_calls.scan_ranges(0, [(base, base + PAGE)], 1, 0, local_nodes={node}, max_off_node=64)
    assert result.off_node == 0 and result.off_node_addrs == []
    result = numa_calls.scan_ranges(0, [(base, base + PAGE)], 1, 0, local_nodes={node + 1, node}, max_off_node=64)
    assert result.off_node == 0 and result.off_node_addrs == []


def test_local_nodes_the_mask_cannot_name_collect_nothing(buf):
    touch(buf, 0, 4)
    base = numa_calls.buffer_address(buf)
    result = numa_calls.scan_ranges(0, [(base, base + 4 * PAGE)], 1, 0, local_nodes={numa_calls.LOCAL_NODES_MAX},
                                    max_off_node=64)
    assert sum(result.node_pages.values()) == 4 and result.off_node == 0 and result.off_node_addrs == []


def test_scan_keeps_figures_per_range_and_counts_vanished_ranges_as_errors(buf):
    touch(buf, 0, 64)
    hole = mmap.mmap(-1, 8 * PAGE)
    hole_base = numa_calls.buffer_address(hole)
    hole.close()
    base = numa_calls.buffer_address(buf)
    ranges = [(base, base + 16 * PAGE), (hole_base, hole_base + 8 * PAGE), (base + 16 * PAGE, base + 64 * PAGE)]
    result = numa_calls.scan_ranges(0, ranges, 1, seed=2)
    first, last = (histogram(numa_calls.page_nodes(0, pages_of(buf, *part))) for part in ((0, 16), (16, 48)))
    assert result.range_node_pages == [first, {}, last]
    assert result.errors == 8
    assert result.sampled == 72


def test_scan_rejects_a_stride_below_one():
    with pytest.raises(ValueError):
        numa_calls.scan_ranges(0, [], 0, 0)


def test_sweep_counts_words_that_lost_their_pattern(buf):
    assert numa_calls.sweep(buf, 0, len(buf), write_seed=1, check_seed=None) == 0
    assert numa_calls.sweep(buf, 0, len(buf), write_seed=2, check_seed=1) == 0
    buf[8 * 100 : 8 * 100 + 8] = b"\0" * 8
    buf[8 * 5000] ^= 0x40
    assert numa_calls.sweep(buf, 0, len(buf), write_seed=3, check_seed=2) == 2
    assert numa_calls.sweep(buf, 0, len(buf), write_seed=4, check_seed=3) == 0


def test_sweep_of_a_slice_checks_the_pattern_written_over_the_whole_buffer(buf):
    numa_calls.sweep(buf, 0, len(buf), write_seed=7, check_seed=None)
    assert numa_calls.sweep(buf, 4096, 8192, write_seed=8, check_seed=7) == 0
    assert numa_calls.sweep(buf, 0, len(buf), write_seed=9, check_seed=8) == len(buf) // 8 - 8192 // 8
    assert bytes(buf[4096 + 8192 : 4096 + 8192 + 8]) != b"\0" * 8


def test_sweep_rejects_bounds_outside_the_buffer(buf):
    with pytest.raises(ValueError):
        numa_calls.sweep(buf, 8, len(buf), 1, None)
    with pytest.raises(ValueError):
        numa_calls.sweep(buf, 4, 64, 1, None)


def test_threads_can_sweep_slices_of_one_buffer_at_once(buf):
    slices = [(i * len(buf) // 4, len(buf) // 4) for i in range(4)]
    threads = [threading.Thread(target=numa_calls.sweep, args=(buf, *part, 5, None)) for part in slices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert numa_calls.sweep(buf, 0, len(buf), 6, 5) == 0


def test_buffer_address_is_the_mapping_address(buf):
    touch(buf, 0, 1)
    assert numa_calls.buffer_address(buf) % PAGE == 0
    assert numa_calls.page_nodes(0, [numa_calls.buffer_address(buf)])[0] >= 0
    buf.close()  # the address lookup left no export behind


def test_membind_in_a_thread_places_its_allocations():
    node = local_node()
    seen = {}

    def bound_thread():
        numa_calls.set_membind(node)
        m = mmap.mmap(-1, 8 * PAGE)
        touch(m, 0, 8)
        seen["nodes"] = numa_calls.page_nodes(0, pages_of(m, 0, 8))
        numa_calls.reset_mempolicy()
        m.close()

    t = threading.Thread(target=bound_thread)
    t.start()
    t.join()
    assert seen["nodes"] == [node] * 8


def test_membind_to_a_node_that_does_not_exist_raises():
    with pytest.raises(OSError) as caught:
        numa_calls.set_membind(numa_calls.max_node() + 1)
    assert caught.value.errno == errno.EINVAL


def test_cpu_and_node_facts():
    assert numa_calls.numa_available()
    assert numa_calls.node_of_cpu(0) == 0
    assert 0 <= numa_calls.current_cpu() < 4096
    assert 0 <= local_node() <= numa_calls.max_node()
    with pytest.raises(OSError) as caught:
        numa_calls.node_of_cpu(1 << 20)
    assert caught.value.errno == errno.EINVAL


def test_fault_sampler_attributes_first_touches_to_the_thread_that_made_them():
    worker_buf = mmap.mmap(-1, 100 * PAGE)
    main_buf = mmap.mmap(-1, 100 * PAGE)
    ready, go, done = threading.Event(), threading.Event(), threading.Event()
    worker_tid = []

    def worker():
        worker_tid.append(threading.get_native_id())
        ready.set()
        go.wait()
        touch(worker_buf, 0, 100)
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait()
    with numa_calls.open_fault_sampler(worker_tid) as sampler:
        go.set()
        touch(main_buf, 0, 100)
        done.wait()
        samples = numa_calls.read_fault_samples(sampler)
    t.join()
    base = numa_calls.buffer_address(worker_buf)
    in_worker_buf = [s for s in samples if base <= s[1] < base + 100 * PAGE]
    assert len({addr // PAGE for _, addr, _ in in_worker_buf}) == 100
    assert {tid for tid, _, _ in samples} == set(worker_tid)
    assert all(0 <= cpu < 4096 for _, _, cpu in samples)
    main_base = numa_calls.buffer_address(main_buf)
    assert not [s for s in samples if main_base <= s[1] < main_base + 100 * PAGE]
    worker_buf.close()
    main_buf.close()


def test_fault_sampler_counts_samples_lost_to_a_full_ring():
    sampler = numa_calls.open_fault_sampler([threading.get_native_id()], pages=1)
    m = mmap.mmap(-1, 1000 * PAGE)
    touch(m, 0, 1000)
    first = numa_calls.read_fault_samples(sampler)
    other = mmap.mmap(-1, PAGE)
    touch(other, 0, 1)  # the kernel reports the loss ahead of the next sample
    numa_calls.read_fault_samples(sampler)
    assert len(first) < 1000
    assert len(first) + sampler.lost >= 1000
    numa_calls.close_fault_sampler(sampler)
    numa_calls.close_fault_sampler(sampler)
    with pytest.raises(ValueError):
        numa_calls.read_fault_samples(sampler)
    m.close()
    other.close()


def test_fault_sampler_with_a_period_takes_one_fault_in_that_many_across_the_buffer():
    m = mmap.mmap(-1, 4000 * PAGE)
    base = numa_calls.buffer_address(m)
    with numa_calls.open_fault_sampler([threading.get_native_id()], pages=8, period=16) as sampler:
        touch(m, 0, 4000)
        samples = [s for s in numa_calls.read_fault_samples(sampler) if base <= s[1] < base + 4000 * PAGE]
    assert sampler.lost == 0
    assert 4000 // 16 - 5 <= len(samples) <= 4000 // 16 + 1
    pages = sorted((addr - base) // PAGE for _, addr, _ in samples)
    assert pages[0] < 40 and pages[-1] > 3960   # spread over the whole buffer, not its start
    with pytest.raises(ValueError):
        numa_calls.open_fault_sampler([threading.get_native_id()], period=0)
    m.close()


def test_fault_sampler_skips_threads_that_are_gone(gone_pid):
    own = threading.get_native_id()
    fds = len(os.listdir("/proc/self/fd"))
    with numa_calls.open_fault_sampler([gone_pid, own]) as sampler:
        assert sampler.tids == [own]
        assert len(os.listdir("/proc/self/fd")) == fds + 1
    assert len(os.listdir("/proc/self/fd")) == fds
    with pytest.raises(ProcessGone):
        numa_calls.open_fault_sampler([gone_pid])


def test_fault_sampler_wants_threads_and_a_power_of_two_ring():
    with pytest.raises(ValueError):
        numa_calls.open_fault_sampler([])
    with pytest.raises(ValueError):
        numa_calls.open_fault_sampler([threading.get_native_id()], pages=3)
