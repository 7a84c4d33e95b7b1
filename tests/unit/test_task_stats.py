"""Task statistics: run time per node, halving, threads coming and going, preferred node,
and the paced arming of write-fault sampling (with a fake sampler)."""

import errno
import json
import logging
import os

import pytest

from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.kernel.procfs import ThreadSnapshot
from autonumad.processes import ProcessKey
from autonumad.task_stats import (MIN_ACCESS_SAMPLES, RegionTouches, TaskStatsTable, WriteFaultSampler,
                                  next_sample_period)

from conftest import FIXTURES

VM_TREE = os.path.join(FIXTURES, "proc", "vm2node")
MIXED = json.load(open(os.path.join(VM_TREE, "scenarios.json")))["pids"]["mixed"]
CPU_NODES = {0: 0, 1: 0, 2: 1, 3: 1}
KEY = ProcessKey(100, 7)
MS = 1_000_000


def snap(tid, cpu, run_ms, start=50, comm="worker"):
    return ThreadSnapshot(tid, comm, "R", start, cpu, run_ms * MS)


def test_first_look_is_a_baseline_then_run_time_goes_to_the_current_node():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 5000)])
    (th,) = t.threads(KEY)
    assert th.looks == 1 and th.run_ns == {} and th.current_node == 0
    assert th.preferred_node() == 0            # no history: where it runs now
    t.observe(KEY, [snap(101, 3, 5300)])
    (th,) = t.threads(KEY)
    assert th.current_node == 1 and th.cpu == 3
    # it moved between looks: the 300 ms are split between the old and the new node
    assert th.run_ns == {0: 150 * MS, 1: 150 * MS}
    t.observe(KEY, [snap(101, 2, 5700)])
    assert t.threads(KEY)[0].run_share() == {0: pytest.approx(150 / 700), 1: pytest.approx(550 / 700)}
    assert t.threads(KEY)[0].preferred_node() == 1


def test_each_window_that_saw_a_thread_write_is_counted():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 0), snap(102, 0, 0)])
    t.add_accesses(KEY, [(101, 0x1000, 0)] * 3 + [(102, 0x2000, 0)], [1] * 4)
    t.add_accesses(KEY, [(101, 0x1000, 0), (102, 0x3000, 0)], [1, -2])   # 102's page was not present
    assert [th.access_windows for th in t.threads(KEY)] == [2, 1]


def test_figures_are_halved_each_pass():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 0)])
    t.observe(KEY, [snap(101, 0, 800)])
    t.add_accesses(KEY, [(101, 0x1000, 0)] * 10, [1] * 10)
    t.end_pass()
    th = t.threads(KEY)[0]
    assert th.run_ns == {0: 400 * MS} and th.accesses == {1: 5.0}
    t.observe(KEY, [snap(101, 2, 1000)])      # 200 ms more, now on node 1
    t.end_pass()
    th = t.threads(KEY)[0]
    assert th.run_ns == {0: 250 * MS, 1: 50 * MS}
    assert th.accesses == {1: 2.5}


def test_threads_come_and_go():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 100), snap(102, 2, 100)])
    t.observe(KEY, [snap(101, 0, 200), snap(103, 2, 10)])      # 102 exited, 103 started
    threads = {th.tid: th for th in t.threads(KEY)}
    assert sorted(threads) == [101, 103]
    assert threads[101].run_ns == {0: 100 * MS}
    assert threads[103].looks == 1 and threads[103].run_ns == {}


def test_a_reused_tid_starts_afresh():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 100, start=50)])
    t.observe(KEY, [snap(101, 0, 900, start=50)])
    t.observe(KEY, [snap(101, 2, 30, start=77)])      # a new thread got TID 101
    (th,) = t.threads(KEY)
    assert th.start_time == 77 and th.run_ns == {} and th.last_run_ns == 30 * MS


def test_cpu_outside_the_topology_has_no_node():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 9, 100)])
    t.observe(KEY, [snap(101, 9, 200)])
    th = t.threads(KEY)[0]
    assert th.current_node is None and th.run_ns == {}


def test_preferred_node_follows_accesses_once_there_are_enough():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 0)])
    t.observe(KEY, [snap(101, 0, 1000)])        # it runs on node 0...
    few = MIN_ACCESS_SAMPLES - 1
    t.add_accesses(KEY, [(101, 0x1000, 0)] * few, [1] * few)
    assert t.threads(KEY)[0].preferred_node() == 0
    t.add_accesses(KEY, [(101, 0x2000, 0)], [1])   # ...but writes memory on node 1
    assert t.threads(KEY)[0].preferred_node() == 1
    assert t.threads(KEY)[0].access_share() == {1: 1.0}


def test_accesses_of_unknown_threads_and_absent_pages_are_not_credited():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 0)])
    credited = t.add_accesses(KEY, [(101, 0x1000, 0), (999, 0x2000, 1), (101, 0x3000, 0)], [1, 1, -errno.ENOENT])
    assert credited == 1
    assert t.add_accesses(ProcessKey(5, 5), [(5, 0x1000, 0)], [0]) == 0


def test_nodes_run_on_counts_where_threads_ran_not_where_idle_ones_sit():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 0), snap(102, 1, 0)])
    assert t.nodes_run_on(KEY) == {0}          # nothing measured yet: where they sit
    t.observe(KEY, [snap(101, 0, 950), snap(102, 1, 50)])
    assert t.nodes_run_on(KEY) == {0}
    assert t.process_run_ns(KEY) == {0: 1000 * MS}
    t.observe(KEY, [snap(101, 0, 950), snap(102, 2, 60)])    # 102 moved to node 1 and idles there
    assert t.nodes_run_on(KEY) == {0}
    t.observe(KEY, [snap(101, 0, 950), snap(102, 2, 1060)])  # now it runs there
    assert t.nodes_run_on(KEY) == {0, 1}


def test_look_reads_the_threads_of_a_fixture_process():
    t = TaskStatsTable({0: 0, 1: 1})
    key = ProcessKey(MIXED, 1774)
    assert t.look(KernelFiles(VM_TREE), key)
    nodes = {th.tid: th.current_node for th in t.threads(key)}
    assert nodes[MIXED] == 0 and sorted(nodes.values()) == [0, 1]
    assert t.nodes_run_on(key) == {0, 1}


def test_look_at_a_gone_process_forgets_it():
    t = TaskStatsTable({0: 0})
    key = ProcessKey(4242, 1)
    t.observe(key, [snap(4242, 0, 1)])
    assert not t.look(KernelFiles(VM_TREE), key)
    assert t.threads(key) == []


def test_forget():
    t = TaskStatsTable(CPU_NODES)
    t.observe(KEY, [snap(101, 0, 1)])
    t.forget([KEY])
    assert t.threads(KEY) == []


# ---------------------------------------------------------------- write-fault sampling

class FakeCalls:
    """numa_calls' fault-sampling and page-node entry points, scripted."""

    def __init__(self, samples=(), page_node=lambda addr: 1, open_error=None):
        self.samples = list(samples)
        self.page_node = page_node
        self.open_error = open_error
        self.opened, self.closed, self.periods = [], [], []

    def open_fault_sampler(self, tids, pages=8, period=1):
        if self.open_error:
            raise self.open_error
        handle = object()
        self.opened.append((handle, list(tids)))
        self.periods.append(period)
        return handle

    def read_fault_samples(self, handle):
        out, self.samples = self.samples, []
        return out

    def close_fault_sampler(self, handle):
        self.closed.append(handle)

    def page_nodes(self, pid, addrs):
        return [self.page_node(a) for a in addrs]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def spread_table(*keys):
    """Processes whose two threads ran on both nodes (pids 1000+)."""
    t = TaskStatsTable(CPU_NODES)
    for key in keys:
        t.observe(key, [snap(key.pid, 0, 0), snap(key.pid + 1, 2, 0)])
        t.observe(key, [snap(key.pid, 0, 500), snap(key.pid + 1, 2, 500)])
    return t


def sampler(tasks, calls, clock, **kwargs):
    files = KernelFiles("/nonexistent", dry_run=True)
    return files, WriteFaultSampler(files, tasks, calls, clock=clock, window_s=1.0, rearm_after_s=30.0, **kwargs)


def test_arms_a_spread_process_and_credits_its_threads():
    key = ProcessKey(1000, 1)
    tasks, calls, clock = spread_table(key), FakeCalls(), Clock()
    files, s = sampler(tasks, calls, clock)
    s.poll([key])
    assert calls.opened[0][1] == [1000, 1001]
    assert files.writes == [("proc/1000/clear_refs", "4")]
    calls.samples = [(1000, 0x5008, 0)] * 6 + [(1001, 0x9000, 2)] * 10
    calls.page_node = lambda addr: 0 if addr == 0x5000 else 1
    clock.now = 0.5
    s.poll([key])                     # drained, window still open
    assert calls.closed == []
    clock.now = 1.0
    s.poll([key])
    assert len(calls.closed) == 1
    threads = {th.tid: th for th in tasks.threads(key)}
    assert threads[1000].accesses == {0: 6.0} and threads[1001].accesses == {1: 10.0}
    assert s.counters.samples == 16 and s.counters.credited == 16
    assert s.counters.armed == 1 and s.windows[key] == 1
    s.poll([key])
    assert s.counters.armed == 1                             # the second waits for the plan's votes
    s.confirm([key], [key])
    assert s.counters.armed == 2                             # voted: the pair's second window


def test_a_window_whose_writers_stopped_faulting_is_read_before_window_s():
    key = ProcessKey(1000, 1)
    tasks, calls, clock = spread_table(key), FakeCalls(), Clock()
    _, s = sampler(tasks, calls, clock)
    s.poll([key])
    assert s.window_left() == 1.0
    calls.samples = [(1000, 0x200000 * i, 0) for i in range(1, 100)]
    clock.now = 0.1
    assert not s.window_ready()            # a first look only counts
    calls.samples = [(1001, 0x200000 * i, 2) for i in range(100, 150)]
    clock.now = 0.2
    assert not s.window_ready()            # still faulting
    clock.now = 0.3
    assert not s.window_ready()            # no new fault in 0.1 s: once is not enough
    clock.now = 0.4
    assert s.window_ready()                # twice in a row, open 0.25 s or more, 8 samples a thread
    assert s.window_left() == 0.6
    s.poll([key])
    assert len(calls.closed) == 1 and s.windows[key] == 1 and s.counters.samples == 149


def test_windows_armed_one_after_another_are_read_together():
    first, second = ProcessKey(1000, 1), ProcessKey(2000, 1)
    tasks, calls, clock = spread_table(first, second), FakeCalls(), Clock()
    _, s = sampler(tasks, calls, clock, max_armed=2)
    s.poll([first])
    clock.now = 0.5
    s.poll([second])                       # later in the same pass
    assert s.windows_open() == 2 and s.window_left() == 1.0
    clock.now = 1.2
    assert not s.window_ready()            # the first one's window_s is up, not the second's
    clock.now = 1.5
    assert s.window_ready() and s.window_left() == 0.0
    s.poll([])
    assert s.windows_open() == 0 and len(calls.closed) == 2


def test_a_process_the_daemon_just_spread_is_armed_beside_those_armed_in_the_pass():
    first, second = ProcessKey(1000, 1), ProcessKey(2000, 1)
    tasks, calls, clock = spread_table(first), FakeCalls(), Clock()
    _, s = sampler(tasks, calls, clock, max_armed=2)
    s.poll([first])
    s.arm_spread([first, second])          # the first is armed already; the second now
    assert s.windows_open() == 2 and s.counters.armed == 2
    clock.now = 1.0
    s.poll([])
    s.confirm([], [first, second])         # nothing voted: both pairs end
    s.arm_spread([second])                 # not again before rearm_after_s
    assert s.windows_open() == 0
    clock.now = 31.0
    s.arm_spread([second])
    assert s.windows_open() == 1
    s.enabled = False
    s.arm_spread([first])
    assert s.windows_open() == 1


def test_a_window_of_a_few_samples_waits_for_window_s():
    key = ProcessKey(1000, 1)
    tasks, calls, clock = spread_table(key), FakeCalls(), Clock()
    _, s = sampler(tasks, calls, clock)
    s.poll([key])
    calls.samples = [(1000, 0x200000, 0)] * 5          # a slow writer: 5 faults, then a pause
    for step in range(1, 10):
        clock.now = step / 10
        assert not s.window_ready()


def test_a_window_that_saw_no_write_or_keeps_faulting_waits_for_window_s():
    key = ProcessKey(1000, 1)
    tasks, calls, clock = spread_table(key), FakeCalls(), Clock()
    _, s = sampler(tasks, calls, clock)
    s.poll([key])
    for step in range(1, 10):              # nothing written: no sign the writers are done
        clock.now = step / 10
        assert not s.window_ready()
    clock.now = 1.0
    assert s.window_ready()
    s.poll([key])
    assert len(calls.closed) == 1
    for step in range(11, 20):             # the second window: a steady stream of new faults
        calls.samples = [(1000, 0x1000 * step, 0)] * 5
        clock.now = step / 10
        assert not s.window_ready()


def test_every_fault_is_sampled_until_a_window_loses_samples_then_one_in_enough():
    assert next_sample_period(1, samples=1500, lost=0, threads=2) == 1
    assert next_sample_period(1, samples=2048, lost=8192, threads=2) == 10   # 10240 faults, 512 a ring
    assert next_sample_period(10, samples=300, lost=0, threads=2) == 2       # 3000 faults: back down
    assert next_sample_period(10, samples=50, lost=0, threads=2) == 1
    key = ProcessKey(1000, 1)
    calls, clock = FakeCalls(), Clock()

    class Handle:
        lost = 8192

    calls.open_fault_sampler = lambda tids, pages=8, period=1: calls.periods.append(period) or Handle()
    _, s = sampler(spread_table(key), calls, clock)
    s.poll([key])
    calls.samples = [(1000, 0x5000 + 4096 * i, 0) for i in range(2048)]
    clock.now = 1.0
    s.poll([key])
    s.confirm([key], [key])                        # the first window lost samples: the second samples less
    assert calls.periods == [1, 10] and s.counters.lost == 8192


def test_a_region_the_daemon_moved_counts_on_its_new_node():
    key = ProcessKey(1000, 1)
    calls = FakeCalls()
    clock = Clock()
    _, s = sampler(spread_table(key), calls, clock)
    s.poll([key])
    calls.samples = [(1000, 0x200000, 0), (1000, 0x201000, 0), (1001, 0x400000, 2)]
    calls.page_node = lambda addr: 1
    clock.now = 1.0
    s.poll([key])
    assert s.regions[key][0x200000].nodes == {1: 2}
    s.note_moved(key, 0x200000, 0x400000, 1, 0)
    assert s.regions[key][0x200000].nodes == {0: 2} and s.regions[key][0x400000].nodes == {1: 1}


def test_process_on_one_node_is_not_armed():
    key = ProcessKey(1000, 1)
    tasks = TaskStatsTable(CPU_NODES)
    tasks.observe(key, [snap(1000, 0, 0), snap(1001, 1, 0)])    # CPUs 0 and 1: both node 0
    calls = FakeCalls()
    files, s = sampler(tasks, calls, Clock())
    s.poll([key])
    assert calls.opened == [] and files.writes == []


def test_arming_is_paced():
    a, b = ProcessKey(1000, 1), ProcessKey(2000, 1)
    tasks, calls, clock = spread_table(a, b), FakeCalls(), Clock()
    files, s = sampler(tasks, calls, clock, max_armed=1)
    s.poll([a, b])
    assert [w[0] for w in files.writes] == ["proc/1000/clear_refs"]      # one at a time
    clock.now = 1.0
    s.poll([a, b])                     # a's window is over: b's turn
    assert [w[0] for w in files.writes] == ["proc/1000/clear_refs", "proc/2000/clear_refs"]
    clock.now = 2.0
    s.poll([a, b])
    clock.now = 29.0
    s.poll([a, b])                     # a was armed at 0 s: not again before 30 s
    assert len(files.writes) == 2
    clock.now = 30.0
    s.poll([a, b])
    assert files.writes[-1] == ("proc/1000/clear_refs", "4")


def test_off_by_config_arms_nothing():
    key = ProcessKey(1000, 1)
    files, s = sampler(spread_table(key), None, Clock(), enabled=False)
    s.poll([key])
    assert files.writes == []


def test_perf_unavailable_turns_sampling_off_with_one_warning(caplog):
    key = ProcessKey(1000, 1)
    calls = FakeCalls(open_error=OSError(errno.ENOSYS, "Function not implemented"))
    clock = Clock()
    files, s = sampler(spread_table(key), calls, clock)
    s.poll([key])
    clock.now = 100
    s.poll([key])
    assert not s.enabled and files.writes == []
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_refused_or_gone_process_is_skipped():
    key = ProcessKey(1000, 1)
    for error in (AccessDenied(errno.EACCES, "denied"), ProcessGone(errno.ESRCH, "gone")):
        files, s = sampler(spread_table(key), FakeCalls(open_error=error), Clock())
        s.poll([key])
        assert s.enabled and files.writes == []


def test_a_paranoid_kernel_refusing_every_process_is_named_once_in_the_log_and_status(tmp_path, caplog):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/perf_event_paranoid").write_text("3\n")
    files = KernelFiles(str(tmp_path), dry_run=True)
    keys = [ProcessKey(1000, 1), ProcessKey(2000, 1)]
    clock = Clock()
    s = WriteFaultSampler(files, spread_table(*keys), FakeCalls(open_error=AccessDenied(errno.EACCES, "denied")),
                          clock=clock, window_s=1.0, rearm_after_s=30.0)
    assert s.state() == "on"
    with caplog.at_level(logging.DEBUG, logger="autonumad.task_stats"):
        s.poll(keys)
        s.poll(keys)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "kernel.perf_event_paranoid = 3" in warnings[0], warnings
    assert s.enabled and s.state().startswith("unavailable: kernel.perf_event_paranoid = 3")
    assert 'perf_event_paranoid = "lower"' in s.state()
    s.calls.open_error = None   # the admin lowered it: sampling works again, status says so
    clock.now = 100
    s.poll(keys)
    assert s.state() == "on"


def test_a_process_of_many_threads_is_sampled_on_its_busiest_and_running_out_of_files_skips_it_only():
    key = ProcessKey(1000, 1)
    tasks = TaskStatsTable(CPU_NODES)
    many = [snap(1000 + i, i % 4, 0) for i in range(200)]
    tasks.observe(key, many)
    tasks.observe(key, [snap(1000 + i, i % 4, 1000 * i) for i in range(200)])
    calls = FakeCalls()
    _, s = sampler(tasks, calls, Clock())
    s.poll([key])
    assert calls.opened[0][1] == list(range(1136, 1200))       # the 64 that ran most
    other = ProcessKey(2000, 1)
    calls = FakeCalls(open_error=OSError(errno.EMFILE, "Too many open files"))
    _, s = sampler(spread_table(other), calls, Clock())
    s.poll([other])
    assert s.enabled and s.state() == "on" and s.counters.failures == 1


def test_forget_closes_an_armed_sampler():
    key = ProcessKey(1000, 1)
    calls = FakeCalls()
    _, s = sampler(spread_table(key), calls, Clock())
    s.poll([key])
    s.forget([key])
    assert len(calls.closed) == 1
    s.close()
    assert len(calls.closed) == 1


def test_busy_thread_nodes_count_busy_threads_once_each_and_not_idle_ones():
    t = TaskStatsTable(CPU_NODES)
    # first sight: a busy toucher on node 1 beside the idle main thread on node 0
    t.observe(KEY, [snap(101, 0, 30), snap(102, 2, 2000)])
    assert t.busy_thread_nodes(KEY) == {1}
    # one busy thread the scheduler moved from node 1 to node 0: still one node
    t.observe(KEY, [snap(101, 0, 31), snap(102, 0, 3000)])
    t.observe(KEY, [snap(101, 0, 32), snap(102, 2, 3900)])
    assert len(t.busy_thread_nodes(KEY)) == 1 and t.nodes_run_on(KEY) == {0, 1}
    # numa02: two busy threads, one on each node
    other = ProcessKey(200, 7)
    t.observe(other, [snap(201, 0, 900), snap(202, 2, 950)])
    assert t.busy_thread_nodes(other) == {0, 1}
    t.observe(other, [snap(201, 1, 1900), snap(202, 3, 1950)])
    assert t.busy_thread_nodes(other) == {0, 1}
    # first sight of a job whose main thread first touched its memory and now sleeps while
    # its one worker runs: one busy thread; once measured, run times tell
    job = ProcessKey(300, 9)
    t.observe(job, [ThreadSnapshot(301, "job", "S", 50, 0, 900 * MS), snap(302, 2, 700)])
    assert t.busy_thread_nodes(job) == {1}
    t.observe(job, [ThreadSnapshot(301, "job", "S", 50, 0, 901 * MS), snap(302, 2, 1700)])
    assert t.busy_thread_nodes(job) == {1}


def test_windows_come_in_pairs_then_wait_and_their_regions_add_up_decayed():
    key = ProcessKey(1000, 1)
    calls, clock = FakeCalls(), Clock()
    _, s = sampler(spread_table(key), calls, clock)
    s.poll([key])                                            # window 1 armed at 0
    calls.samples = [(1000, 0x200000, 0)] * 4
    calls.page_node = lambda addr: 0
    clock.now = 1.0
    s.poll([key])                                            # read
    s.confirm([key], [key])                                  # the plan voted: window 2 armed at once
    assert len(calls.opened) == 2 and s.windows[key] == 1
    assert s.regions[key][0x200000].tids == {1000: 4}
    calls.samples = [(1001, 0x200000, 2)] * 2                # the other thread, first this time
    clock.now = 2.0
    s.poll([key])                                            # read; the pair is done: no third yet
    assert len(calls.opened) == 2 and s.windows[key] == 2
    assert s.regions[key][0x200000].tids == {1000: 2.0, 1001: 2}   # window 1's counts halved
    assert s.regions[key][0x200000].nodes == {0: 4.0} and s.regions[key][0x200000].window == 2
    clock.now = 31.5
    s.poll([key])                                            # rearm_after_s from window 2's arming
    assert len(calls.opened) == 3


def test_a_first_window_the_plan_voted_nothing_for_ends_its_pair():
    key, other = ProcessKey(1000, 1), ProcessKey(2000, 1)
    calls, clock = FakeCalls(), Clock()
    read = set()

    def one_write_per_window(handle):  # each window sees its first thread write once
        tids = next(t for h, t in calls.opened if h is handle)
        first = handle not in read
        read.add(handle)
        return [(tids[0], 0x200000, 0)] if first else []

    calls.read_fault_samples = one_write_per_window
    _, s = sampler(spread_table(key, other), calls, clock, max_armed=2)
    s.poll([key])
    s.poll([other])
    clock.now = 1.0
    s.poll([key, other])                                     # both first windows read
    assert len(calls.opened) == 2 and s.windows == {key: 1, other: 1}
    s.confirm([other], [key, other])                         # votes for `other` only
    assert len(calls.opened) == 3 and calls.opened[-1][1] == [2000, 2001]
    clock.now = 2.0
    s.poll([key, other])                                     # `other`'s pair is read; `key` waits
    s.confirm([key, other], [key, other])                    # no pair open: nothing armed
    assert len(calls.opened) == 3 and s.windows == {key: 1, other: 2}
    clock.now = 30.5
    s.poll([key])                                            # its pair found nothing: twice rearm_after_s
    assert len(calls.opened) == 3
    clock.now = 60.5
    s.poll([key])
    assert len(calls.opened) == 4


def test_a_pair_of_a_process_the_plan_left_aside_waits_for_a_later_verdict():
    key = ProcessKey(1000, 1)
    calls, clock = FakeCalls(), Clock()
    _, s = sampler(spread_table(key), calls, clock)
    s.poll([key])
    calls.samples = [(1000, 0x200000, 0)]
    clock.now = 1.0
    s.poll([key])                                            # first window read
    s.confirm([], [])                                        # the plan did not weigh it (growing, say)
    s.poll([key])
    assert len(calls.opened) == 1                            # no second yet, the pair still open
    s.confirm([key], [key])                                  # the next plan votes: the second comes
    assert len(calls.opened) == 2


def test_pairs_that_find_nothing_to_move_come_less_often_until_the_threads_move():
    key = ProcessKey(1000, 1)
    calls, clock = FakeCalls(), Clock()
    tasks = TaskStatsTable({0: 0, 1: 1, 2: 2})               # three nodes of one CPU
    for run_ms in (0, 500):
        tasks.observe(key, [snap(1000, 0, run_ms), snap(1001, 1, run_ms)])
    _, s = sampler(tasks, calls, clock)

    def next_pair_after() -> float:
        """Read the open window (the plan votes nothing), then poll each second until armed again."""
        armed_at = clock.now
        calls.samples = [(1000, 0x200000, 0)]
        clock.now += 1.0
        s.poll([key])
        s.confirm([], [key])
        opened = len(calls.opened)
        while len(calls.opened) == opened:
            clock.now += 1.0
            s.poll([key])
        return clock.now - armed_at

    s.poll([key])
    assert [next_pair_after() for _ in range(5)] == [60, 120, 240, 240, 240]
    for run_ms in range(1500, 6500, 1000):                   # a thread moved: nodes 0 and 2 now
        tasks.observe(key, [snap(1000, 0, run_ms), snap(1001, 2, run_ms)])
        tasks.end_pass()
    assert tasks.busy_thread_nodes(key) == {0, 2}
    assert next_pair_after() == 60                           # counted afresh: one idle pair
    assert next_pair_after() == 120
    opened = len(calls.opened)
    calls.samples = [(1000, 0x200000, 0)]                    # a pair with nothing to move...
    clock.now += 1.0
    s.poll([key])
    s.confirm([], [key])
    for run_ms in range(6500, 11500, 1000):                  # ...then a thread moves back during the wait
        tasks.observe(key, [snap(1000, 0, run_ms), snap(1001, 1, run_ms)])
        tasks.end_pass()
    clock.now += 30.0
    s.poll([key])
    assert len(calls.opened) == opened + 1                   # rearm_after_s after that pair's window


def test_merged_regions_drop_what_has_not_been_written_for_three_windows():
    from autonumad.task_stats import RegionTouches, merge_regions
    regions = {0x200000: RegionTouches({5: 1}, {0: 1}, window=1)}
    for window in (2, 3):
        regions = merge_regions(regions, {0x400000: RegionTouches({5: 1}, {0: 1})}, window)
        assert regions[0x200000].window == 1 and regions[0x400000].window == window
    assert 0x200000 not in merge_regions(regions, {}, 4)


def test_regions_of_a_process_whose_threads_came_together_are_dropped_once_no_window_is_due():
    key = ProcessKey(1000, 1)
    calls, clock = FakeCalls(), Clock()
    tasks = spread_table(key)
    _, s = sampler(tasks, calls, clock)
    s.poll([key])
    calls.samples = [(1000, 0x200000, 0)]
    clock.now = 1.0
    s.poll([key])
    s.confirm([key], [key])
    clock.now = 2.0
    s.poll([key])                                            # the pair is read
    assert key in s.regions
    for run_ms in (1000, 2000, 3000, 4000):                  # both threads on node 0 from now on
        tasks.observe(key, [snap(1000, 0, run_ms), snap(1001, 0, run_ms)])
        tasks.end_pass()
    assert len(tasks.busy_thread_nodes(key)) == 1
    clock.now = 20.0
    s.poll([key])
    assert key in s.regions                                  # too soon: a window may come
    clock.now = 40.0
    s.poll([key])
    assert key not in s.regions and len(calls.opened) == 2   # dropped, not armed again


def test_a_region_with_nothing_left_on_its_node_counts_on_none():
    key = ProcessKey(1000, 1)
    _, s = sampler(spread_table(key), FakeCalls(), Clock())
    s.regions[key] = {0x200000: RegionTouches({1000: 4}, {1: 3, 0: 1})}
    assert s.note_moved(key, 0x200000, 0x400000, 1, None) == 1
    assert s.regions[key][0x200000].nodes == {0: 1}
