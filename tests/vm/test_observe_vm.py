"""The observe side on real multi-node placement (2+ node VM): mm statistics exact by
numa_maps and within 2 points by sampling, a pinned thread's run time on its node,
write-fault attribution per thread, and a process exiting mid-scan."""

import contextlib
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from autonumad import cli
from autonumad.kernel.files import KernelFiles
from autonumad.mm_stats import MmStatsTable
from autonumad.processes import ProcessDiscovery, ProcessFilter, find_processes
from autonumad.scan_pacing import ScanBudget
from autonumad.task_stats import TaskStatsTable, WriteFaultSampler
from autonumad.topology import read_topology

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES_PER_MB = 256

# Modes (arguments are integers):
#   placed MB0 MB1    MB0 MiB written while bound to node 0, then MB1 MiB bound to node 1
#   plain MB          MB MiB written under the task's own policy (numactl's)
#   spinner CPU       a thread pinned to CPU spins; the main thread sleeps
#   writers CPU0 NODE0 CPU1 NODE1
#                     numa02 shape: writer i runs on CPU i and keeps writing its own
#                     half of a 16 MiB buffer (THP off), first written bound to NODE i
# It prints one JSON line (buffer addresses, thread ids) once set up, then runs
# until its stdin closes.
CHILD = r"""
import json, mmap, os, sys, threading, time
from autonumad.kernel import numa_calls
MB = 1 << 20
mode, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
keep, report = [], {}

def written(size, node, huge=True):
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if not huge:
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    if node >= 0:
        numa_calls.set_membind(node)
    numa_calls.sweep(buf, 0, size, 1, None)
    if node >= 0:
        numa_calls.reset_mempolicy()
    keep.append(buf)
    return buf

if mode == "placed":
    report["addrs"] = [numa_calls.buffer_address(written(args[0] * MB, 0)),
                       numa_calls.buffer_address(written(args[1] * MB, 1))]
elif mode == "plain":
    report["addrs"] = [numa_calls.buffer_address(written(args[0] * MB, -1))]
elif mode == "spinner":
    ready = threading.Event()
    def spin():
        os.sched_setaffinity(0, {args[0]})
        report["tid"] = threading.get_native_id()
        ready.set()
        while True:
            pass
    threading.Thread(target=spin, daemon=True).start()
    ready.wait()
elif mode == "writers":
    buf = mmap.mmap(-1, 16 * MB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_NOHUGEPAGE)
    half = len(buf) // 2
    report["tids"] = [0, 0]
    started = threading.Barrier(3)
    def writer(i):
        os.sched_setaffinity(0, {args[2 * i]})
        report["tids"][i] = threading.get_native_id()
        numa_calls.set_membind(args[2 * i + 1])
        numa_calls.sweep(buf, i * half, half, 1, None)
        numa_calls.reset_mempolicy()
        started.wait()
        seed = 2
        while True:
            numa_calls.sweep(buf, i * half, half, seed, None)
            seed += 1
            time.sleep(0.02)
    for i in (0, 1):
        threading.Thread(target=writer, args=(i,), daemon=True).start()
    started.wait()
print(json.dumps(report), flush=True)
os.read(0, 1)
"""


@pytest.fixture(scope="module", autouse=True)
def kernel_balancing_off():
    """The kernel's own balancer would move the pages these tests placed."""
    files = KernelFiles()
    old = files.read_text("proc/sys/kernel/numa_balancing").strip()
    files.write_text("proc/sys/kernel/numa_balancing", "0")
    yield
    files.write_text("proc/sys/kernel/numa_balancing", old)


@pytest.fixture(scope="module")
def cpu_nodes():
    topo = read_topology(KernelFiles())
    if len(topo.nodes) < 2 or topo.cpu_nodes.get(1) != 1:
        pytest.fail("these tests need a VM with 2+ nodes, CPU 1 on node 1")
    return topo.cpu_nodes


@contextlib.contextmanager
def child(*args, numactl=()):
    proc = subprocess.Popen([*numactl, sys.executable, "-c", CHILD, *map(str, args)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(proc.stdout.readline())
        yield proc, report
    finally:
        proc.kill()
        proc.wait()


def budget(**kwargs):
    return ScanBudget(**{"cpu_ceiling_percent": 100, "sleep": lambda s: None, **kwargs})


def the_process(pid):
    (process,) = find_processes(KernelFiles(), str(pid))
    return process


def numa_maps_totals(pid):
    """Per-node totals straight from the numa_maps text, in 4 KiB pages."""
    totals = {}
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            fields = dict(t.split("=", 1) for t in line.split() if "=" in t)
            factor = int(fields.get("kernelpagesize_kB", "4")) // 4
            for key, value in fields.items():
                if key[0] == "N" and key[1:].isdigit():
                    totals[int(key[1:])] = totals.get(int(key[1:]), 0) + int(value) * factor
    return totals


def exact_then_sampled(process):
    """numa_maps as the daemon reads it (the pass after a first, sampled, sight asks for the
    policies), then a sampled pass."""
    table = MmStatsTable(KernelFiles(), seed=11)
    table.observe(process, budget())
    table.want_policies(process.key)
    table.end_pass()
    exact = table.observe(process, budget())
    table.end_pass()
    cpu = time.process_time()
    sampled = table.observe(process, budget())
    return exact, sampled, time.process_time() - cpu


def test_known_placement_is_exact_by_numa_maps_and_within_2_points_sampled(capsys):
    with child("placed", 40, 120) as (proc, _):
        process = the_process(proc.pid)
        exact, sampled, cpu_s = exact_then_sampled(process)
        assert exact.exact and not sampled.exact
        assert exact.node_pages == numa_maps_totals(proc.pid)
        assert exact.node_pages[0] >= 40 * PAGES_PER_MB and exact.node_pages[1] >= 120 * PAGES_PER_MB
        exact_share, sampled_share = exact.node_share(), sampled.node_share()
        print(f"\nplaced 40+120 MiB: exact {exact.node_mb()} sampled {sampled.node_mb()} "
              f"stride {sampled.stride} samples {sampled.samples} cpu {cpu_s * 1000:.1f} ms")
        for node in set(exact_share) | set(sampled_share):
            assert sampled_share.get(node, 0) == pytest.approx(exact_share.get(node, 0), abs=0.02)
        assert sampled.stride > 1
        assert exact.self_placed_share() == 0.0   # bound while writing, default policy since
        capsys.readouterr()
        assert cli.main(["show", str(proc.pid), "--json", "--interval", "0"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["memory_mb"]["0"] >= 40 and shown["memory_mb"]["1"] >= 120
        for node, mb in exact.node_mb().items():
            assert shown["memory_mb"][str(node)] == pytest.approx(mb, abs=1.0)  # the child allocates a little


def test_interleaved_process_is_sampled_without_aliasing():
    with child("plain", 64, numactl=("numactl", "--interleave=0,1")) as (proc, _):
        exact, sampled, _ = exact_then_sampled(the_process(proc.pid))
        print(f"\ninterleaved 64 MiB: exact {exact.node_mb()} sampled {sampled.node_mb()} stride {sampled.stride}")
        for node, share in exact.node_share().items():
            assert sampled.node_share().get(node, 0) == pytest.approx(share, abs=0.02)
        assert exact.self_placed_share() == 1.0
        assert all(str(v.policy) == "interleave:0-1" for v in exact.vmas)


def test_thread_pinned_to_node_1_is_reported_there_with_its_run_time(cpu_nodes):
    with child("spinner", 1) as (proc, report):
        key = the_process(proc.pid).key
        tasks = TaskStatsTable(cpu_nodes)
        assert tasks.look(KernelFiles(), key)
        time.sleep(1.0)
        assert tasks.look(KernelFiles(), key)
        spinner = next(t for t in tasks.threads(key) if t.tid == report["tid"])
        print(f"\nspinner: node {spinner.current_node} run share {spinner.run_share()}")
        assert spinner.current_node == 1 and spinner.preferred_node() == 1
        assert spinner.run_share().get(1, 0) >= 0.98
        assert sum(spinner.run_ns.values()) >= 0.5e9


def test_numa02_writers_access_statistics_point_at_their_own_slice(cpu_nodes):
    # writer 0 runs on node 1 but writes its slice on node 0; writer 1 the other way
    with child("writers", 1, 0, 0, 1) as (proc, report):
        key = the_process(proc.pid).key
        files = KernelFiles()
        tasks = TaskStatsTable(cpu_nodes)
        tasks.look(files, key)
        time.sleep(0.3)
        tasks.look(files, key)
        assert tasks.nodes_run_on(key) >= {0, 1}
        sampler = WriteFaultSampler(files, tasks, window_s=1.0)
        sampler.poll([key])
        assert sampler.counters.armed == 1
        deadline = time.monotonic() + 10
        while sampler.counters.samples == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            sampler.poll([])
        threads = {t.tid: t for t in tasks.threads(key)}
        w0, w1 = threads[report["tids"][0]], threads[report["tids"][1]]
        print(f"\nwriters: w0 on {w0.current_node} accesses {w0.accesses}; "
              f"w1 on {w1.current_node} accesses {w1.accesses}; samples {sampler.counters.samples}")
        assert (w0.current_node, w1.current_node) == (1, 0)
        assert w0.preferred_node() == 0 and w1.preferred_node() == 1
        # a few writes go to the threads' own stacks and Python's heap, wherever those are
        assert w0.access_share()[0] >= 0.9 and w1.access_share()[1] >= 0.9


@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_process_exiting_mid_scan_is_only_a_debug_line(caplog, reaped):
    with child("placed", 8, 8) as (proc, _):
        process = the_process(proc.pid)
        table = MmStatsTable(KernelFiles(), seed=3)
        table.observe(process, budget())
        table.end_pass()

        killed = []

        def die_during_the_pause(seconds):
            if not killed:
                killed.append(seconds)
                proc.kill()
                if reaped:
                    proc.wait()
                else:
                    time.sleep(0.5)   # dead, not reaped: a zombie without memory

        chunked = budget(pages_to_scan=256, sleep=die_during_the_pause)
        with caplog.at_level(logging.DEBUG, logger="autonumad"):
            assert table.observe(process, chunked) is None
            discovery = ProcessDiscovery(KernelFiles(), ProcessFilter(include_pids=frozenset({proc.pid})))
            assert discovery.discover().processes == []
        assert killed and table.counters.gone_mid_scan == 1
        ours = [r for r in caplog.records if r.name.startswith("autonumad")]
        assert ours and all(r.levelno == logging.DEBUG for r in ours)
        assert any("went away" in r.getMessage() for r in ours)
