"""autonumad-workload on any machine: arguments, the placement plan, the verify scheme, the output.

The plan tests use hand-made topologies. The protocol tests run the real parent
and children with a pure-Python stand-in for the C extension (FakeCalls), so the
lockstep verify scheme is checked without it; the last tests run the real tool,
which on a one-node host must read locality 1.0.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time

import pytest

from autonumad import workload
from autonumad.constants import PAGE_SIZE
from autonumad.topology import Node, Topology
from autonumad.workload import (
    MIB,
    ProcessRecord,
    Supervisor,
    WorkloadError,
    measure_locality,
    parse_options,
    plan_workload,
    sample_addresses,
    split_pages,
)


def make_topology(cpus_per_node: dict[int, tuple[int, ...]]) -> Topology:
    ids = tuple(sorted(cpus_per_node))
    nodes = {
        n: Node(id=n, cpus=cpus, mem_total_kb=1 << 20, mem_free_kb=1 << 19,
                distances={m: 10 if m == n else 20 for m in ids})
        for n, cpus in cpus_per_node.items()
    }
    return Topology(
        nodes=nodes, online=ids, possible=ids,
        has_cpu=tuple(n for n in ids if cpus_per_node[n]),
        has_memory=ids,
        cpus_online=tuple(sorted(c for cpus in cpus_per_node.values() for c in cpus)),
    )


def one_cpu_per_node(n: int) -> Topology:
    return make_topology({i: (i,) for i in range(n)})


ALL = frozenset(range(64))


def memory_nodes(plans) -> list[int]:
    return [r.memory_node for p in plans for r in p.regions]


def home_nodes(plans) -> list[int]:
    return [t.home_node for p in plans for t in p.threads]


# ---------------------------------------------------------------- arguments


def test_defaults_are_an_adversarial_numa01_of_two_processes():
    opts = parse_options([])
    assert (opts.shape, opts.processes, opts.threads, opts.mb) == ("numa01", 2, 1, 64)
    assert (opts.start, opts.affinity, opts.verify, opts.interval) == ("adversarial", "free", False, 1.0)


def test_numa02_is_one_process():
    assert parse_options(["--shape", "numa02", "--threads", "3"]).processes == 1


@pytest.mark.parametrize("argv, message", [
    (["--shape", "numa02", "--processes", "2"], "numa02 runs one process"),
    (["--start", "local", "--memory-nodes", "0,1"], "--memory-nodes goes with --start adversarial"),
    (["--processes", "3", "--home-nodes", "0,1"],
     "--home-nodes needs one node per process (numa01): 3 wanted, 2 given"),
    (["--shape", "numa02", "--threads", "2", "--memory-nodes", "1"],
     "--memory-nodes needs one node per thread (numa02): 2 wanted, 1 given"),
    (["--mb", "0"], "'0' must be at least 1"),
    (["--threads", "two"], "'two' is not a whole number"),
    (["--duration", "-1"], "'-1' must be a positive number of seconds"),
    (["--interval", "nan"], "'nan' must be a positive number of seconds"),
    (["--home-nodes", "0,x"], "'0,x' is not a comma-separated list of node ids"),
    (["--shape", "numa03"], "invalid choice: 'numa03'"),
])
def test_bad_arguments_exit_2_saying_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_options(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_node_lists_keep_their_order_and_repeats():
    assert parse_options(["--processes", "3", "--home-nodes", "1,0,1"]).home_nodes == (1, 0, 1)


# ---------------------------------------------------------------- the plan


def test_adversarial_numa01_puts_each_process_memory_on_the_other_node():
    plans = plan_workload(parse_options(["--processes", "2"]), one_cpu_per_node(2), ALL)
    assert home_nodes(plans) == [0, 1]
    assert memory_nodes(plans) == [1, 0]
    assert [p.buffer_bytes for p in plans] == [64 * MIB, 64 * MIB]
    assert all(p.shared for p in plans)


def test_adversarial_start_is_a_rotation_on_four_nodes():
    plans = plan_workload(parse_options(["--processes", "4", "--mb", "200"]), one_cpu_per_node(4), ALL)
    assert home_nodes(plans) == [0, 1, 2, 3]
    assert memory_nodes(plans) == [1, 2, 3, 0]


def test_local_start_touches_the_home_node():
    plans = plan_workload(parse_options(["--processes", "3", "--start", "local"]), one_cpu_per_node(2), ALL)
    assert home_nodes(plans) == [0, 1, 0]
    assert memory_nodes(plans) == [0, 1, 0]


def test_explicit_home_and_memory_nodes_are_used():
    opts = parse_options(["--processes", "2", "--home-nodes", "1,1", "--memory-nodes", "0,2"])
    plans = plan_workload(opts, one_cpu_per_node(3), ALL)
    assert home_nodes(plans) == [1, 1]
    assert memory_nodes(plans) == [0, 2]


def test_all_threads_of_a_numa01_process_share_its_home_and_whole_buffer():
    plans = plan_workload(parse_options(["--processes", "2", "--threads", "3", "--mb", "8"]),
                          make_topology({0: (0, 1), 1: (2, 3)}), ALL)
    assert [[t.home_node for t in p.threads] for p in plans] == [[0, 0, 0], [1, 1, 1]]
    assert {t.cpus for t in plans[1].threads} == {frozenset({2, 3})}
    assert {t.memory for p in plans for t in p.threads} == {(0, 8 * MIB)}


def test_numa02_gives_each_thread_a_slice_touched_on_the_next_node():
    opts = parse_options(["--shape", "numa02", "--threads", "2", "--mb", "256", "--affinity", "pinned"])
    (plan,) = plan_workload(opts, one_cpu_per_node(2), ALL)
    assert plan.buffer_bytes == 512 * MIB and not plan.shared
    assert [(t.home_node, t.memory) for t in plan.threads] == [(0, (0, 256 * MIB)), (1, (256 * MIB, 256 * MIB))]
    assert [(r.offset, r.length, r.memory_node) for r in plan.regions] == [
        (0, 256 * MIB, 1), (256 * MIB, 256 * MIB, 0)]


def test_sparse_node_ids_rotate_over_the_nodes_that_exist():
    plans = plan_workload(parse_options([]), make_topology({0: (0,), 2: (1,)}), ALL)
    assert home_nodes(plans) == [0, 2]
    assert memory_nodes(plans) == [2, 0]


def test_memory_only_nodes_are_not_homes_but_may_hold_memory():
    topo = make_topology({0: (0,), 1: (1,), 2: ()})
    assert memory_nodes(plan_workload(parse_options(["--processes", "3"]), topo, ALL)) == [1, 0, 1]
    opts = parse_options(["--memory-nodes", "2,2"])
    assert memory_nodes(plan_workload(opts, topo, ALL)) == [2, 2]
    with pytest.raises(WorkloadError, match="home node 2 has no CPU this workload may run on"):
        plan_workload(parse_options(["--home-nodes", "0,2"]), topo, ALL)


def test_one_node_means_adversarial_and_local_are_the_same():
    plans = plan_workload(parse_options([]), make_topology({0: (0, 1)}), ALL)
    assert home_nodes(plans) == memory_nodes(plans) == [0, 0]


def test_nodes_that_do_not_exist_are_refused():
    with pytest.raises(WorkloadError, match=r"home node 5 does not exist \(online nodes: 0,1\)"):
        plan_workload(parse_options(["--home-nodes", "0,5"]), one_cpu_per_node(2), ALL)
    with pytest.raises(WorkloadError, match="memory node 7 holds no memory"):
        plan_workload(parse_options(["--memory-nodes", "0,7"]), one_cpu_per_node(2), ALL)


def test_threads_stay_inside_the_cpus_the_workload_was_allowed():
    topo = make_topology({0: (0, 1), 1: (2, 3)})
    plans = plan_workload(parse_options([]), topo, frozenset({1, 2, 3}))
    assert [t.cpus for p in plans for t in p.threads] == [frozenset({1}), frozenset({2, 3})]
    with pytest.raises(WorkloadError, match="home node 0 has no CPU"):
        plan_workload(parse_options(["--home-nodes", "0,1"]), topo, frozenset({2, 3}))


def test_split_pages_gives_page_aligned_pieces_covering_everything():
    pieces = split_pages(10 * PAGE_SIZE, 3)
    assert pieces == [(0, 3 * PAGE_SIZE), (3 * PAGE_SIZE, 3 * PAGE_SIZE), (6 * PAGE_SIZE, 4 * PAGE_SIZE)]
    assert split_pages(MIB, 1) == [(0, MIB)]


# ---------------------------------------------------------------- locality


def test_samples_are_distinct_pages_inside_the_thread_memory():
    rng = random.Random(1)
    base = 0x7F0000000000
    addrs = sample_addresses(rng, base, (8 * PAGE_SIZE, 100 * PAGE_SIZE), 40)
    assert len(addrs) == len(set(addrs)) == 40
    assert all(a % PAGE_SIZE == 0 and base + 8 * PAGE_SIZE <= a < base + 108 * PAGE_SIZE for a in addrs)
    assert len(sample_addresses(rng, base, (0, 10 * PAGE_SIZE), 512)) == 10


class FakeCalls:
    """A pure-Python stand-in for autonumad.kernel.numa_calls (one node; pattern = the seed in every word).

    `corrupt_sweep`: on that sweep call (counted from 1) one word is left holding
    garbage, as a write lost in a migration would be.
    """

    def __init__(self, page_nodes: list[int] | None = None, cpu: int = 0, node: int = 0,
                 corrupt_sweep: int | None = None) -> None:
        self.nodes = page_nodes
        self.cpu = cpu
        self.node = node
        self.corrupt_sweep = corrupt_sweep
        self.sweep_calls = 0
        self.policy: list[object] = []

    def page_nodes(self, pid, addrs):
        return list(self.nodes) if self.nodes is not None else [self.node] * len(addrs)

    def current_cpu(self):
        return self.cpu

    def node_of_cpu(self, cpu):
        return self.node

    def set_membind(self, node):
        self.policy.append(node)

    def reset_mempolicy(self):
        self.policy.append("default")

    def buffer_address(self, buf):
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def sweep(self, buf, offset, length, write_seed, check_seed):
        self.sweep_calls += 1
        words = memoryview(buf)[offset:offset + length].cast("Q")
        mismatches = 0 if check_seed is None else len(words) - words.tolist().count(check_seed)
        buf[offset:offset + length] = struct.pack("Q", write_seed) * (length // 8)
        if self.sweep_calls == self.corrupt_sweep:
            words[0] = 0xDEAD
        words.release()
        return mismatches


def test_locality_is_the_share_of_sampled_pages_on_the_current_node_absent_apart():
    calls = FakeCalls(page_nodes=[1, 1, 0, -2], cpu=3, node=1)
    loc = measure_locality(calls, [0, 4096, 8192, 12288])
    assert (loc.cpu, loc.node, loc.sampled, loc.local, loc.absent) == (3, 1, 4, 2, 1)
    assert loc.fraction == 0.5


def test_summary_means_every_report_and_finals_each_thread_last():
    plan = plan_workload(parse_options(["--threads", "2"]), one_cpu_per_node(2), ALL)[0]
    record = ProcessRecord(plan, pid=42, exit_code=0)
    for thread, locality, sweeps in ((0, 0.0, 0), (1, 0.2, 0), (0, 1.0, 5), (1, 0.6, 4)):
        record.add_report({"thread": thread, "locality": locality, "sweeps": sweeps,
                           "mismatches": 0, "verified_bytes": sweeps * MIB})
    assert record.summary() == {
        "proc": 0, "pid": 42, "threads": 2, "reports": 4, "mean_locality": 0.45,
        "final_locality": 0.8, "sweeps": 9, "mismatches": 0, "verified_bytes": 9 * MIB, "status": "ok"}


# ---------------------------------------------------------------- parent and children, with FakeCalls


def run_supervised(argv: list[str], calls: FakeCalls, tmp_path) -> tuple[int, list[dict]]:
    opts = parse_options(argv + ["--ready-file", str(tmp_path / "ready")])
    topo = make_topology({0: tuple(sorted(os.sched_getaffinity(0)))})
    allowed = frozenset(os.sched_getaffinity(0))
    out = io.StringIO()
    code = Supervisor(opts, plan_workload(opts, topo, allowed), calls, allowed, out).run()
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


REPORT_KEYS = {"t", "pid", "tid", "proc", "thread", "cpu", "node", "locality", "sampled", "absent",
               "sweeps", "mismatches", "verified_bytes"}


def test_lockstep_verify_of_a_shared_buffer_sees_no_false_mismatches(tmp_path):
    argv = ["--processes", "1", "--threads", "3", "--mb", "1", "--duration", "1", "--interval", "0.2", "--verify"]
    code, lines = run_supervised(argv, FakeCalls(), tmp_path)
    (summary,) = [line["summary"] for line in lines if "summary" in line]
    assert code == 0, lines
    assert summary["mismatches"] == 0 and summary["status"] == "ok"
    assert summary["sweeps"] >= 6 and summary["verified_bytes"] >= summary["sweeps"] * MIB


def test_a_lost_write_is_found_and_exits_3(tmp_path):
    argv = ["--processes", "1", "--threads", "2", "--mb", "1", "--duration", "1", "--interval", "0.2", "--verify"]
    code, lines = run_supervised(argv, FakeCalls(corrupt_sweep=5), tmp_path)
    (summary,) = [line["summary"] for line in lines if "summary" in line]
    assert summary["mismatches"] == 1
    assert code == 3


def test_output_is_ready_then_reports_then_one_summary_per_process(tmp_path):
    argv = ["--shape", "numa02", "--threads", "2", "--mb", "1", "--duration", "0.6", "--interval", "0.2"]
    code, lines = run_supervised(argv, FakeCalls(), tmp_path)
    assert code == 0
    assert list(lines[0]) == ["ready"]
    ready = lines[0]["ready"]
    assert json.loads((tmp_path / "ready").read_text()) == ready
    assert ready["processes"][0]["memory"] == [
        {"node": 0, "offset": 0, "bytes": MIB, "bound_bytes": MIB, "on_node": 1.0},
        {"node": 0, "offset": MIB, "bytes": MIB, "bound_bytes": MIB, "on_node": 1.0}]
    reports = lines[1:-1]
    assert reports and all(set(r) == REPORT_KEYS for r in reports)
    assert {r["thread"] for r in reports} == {0, 1}
    assert {r["pid"] for r in reports} == set(ready["pids"])
    assert all(r["locality"] == 1.0 and r["sampled"] == 256 for r in reports)
    assert [r["t"] for r in reports if r["thread"] == 0][0] < 0.1
    assert list(lines[-1]) == ["summary"]


def one_node_sysfs(root, mem_free_kb: int) -> None:
    node = root / "sys/devices/system/node"
    (node / "node0").mkdir(parents=True)
    cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    (root / "sys/devices/system/cpu").mkdir(parents=True)
    (root / "sys/devices/system/cpu/online").write_text(cpus + "\n")
    (node / "online").write_text("0\n")
    (node / "node0/cpulist").write_text(cpus + "\n")
    (node / "node0/distance").write_text("10\n")
    (node / "node0/meminfo").write_text(f"Node 0 MemTotal: 4194304 kB\nNode 0 MemFree: {mem_free_kb} kB\n")


def test_memory_beyond_a_nodes_free_room_is_left_to_the_default_policy(tmp_path):
    one_node_sysfs(tmp_path / "root", mem_free_kb=(64 << 10) + 512)  # the bind reserve plus 512 KiB
    argv = ["--processes", "1", "--mb", "1", "--duration", "0.3", "--root", str(tmp_path / "root")]
    code, lines = run_supervised(argv, FakeCalls(), tmp_path)
    assert code == 0
    assert lines[0]["ready"]["processes"][0]["memory"] == [
        {"node": 0, "offset": 0, "bytes": MIB, "bound_bytes": 512 << 10, "on_node": 1.0}]


# ---------------------------------------------------------------- the real tool (needs the C extension)


def workload_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autonumad.workload", *args]


def run_workload(*args: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run(workload_command(*args), capture_output=True, text=True, timeout=60)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_numa01_on_one_node_is_fully_local_and_verifies_clean():
    code, lines, err = run_workload("--processes", "2", "--threads", "2", "--mb", "16",
                                    "--duration", "2", "--verify", "--samples", "128")
    assert code == 0, err
    reports = [line for line in lines if "locality" in line]
    summaries = [line["summary"] for line in lines if "summary" in line]
    assert {(r["proc"], r["thread"]) for r in reports} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(set(r) == REPORT_KEYS and r["locality"] == 1.0 and r["absent"] == 0 for r in reports)
    assert [s["proc"] for s in summaries] == [0, 1]
    for s in summaries:
        assert s["mean_locality"] == s["final_locality"] == 1.0
        assert s["mismatches"] == 0 and s["sweeps"] > 0 and s["verified_bytes"] > 0


def test_numa02_on_one_node_is_fully_local():
    code, lines, err = run_workload("--shape", "numa02", "--threads", "2", "--mb", "8", "--duration", "2",
                                    "--affinity", "pinned", "--verify")
    assert code == 0, err
    (summary,) = [line["summary"] for line in lines if "summary" in line]
    assert summary["final_locality"] == 1.0 and summary["mismatches"] == 0 and summary["threads"] == 2


def test_sigterm_stops_the_children_and_still_prints_summaries(tmp_path):
    ready = tmp_path / "ready"
    report = tmp_path / "report.jsonl"
    proc = subprocess.Popen(workload_command("--mb", "8", "--duration", "60", "--ready-file", str(ready),
                                             "--report", str(report)), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = json.loads(ready.read_text())["pids"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, proc.stderr.read()
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [line["summary"]["status"] for line in lines if "summary" in line] == ["ok", "ok"]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_node_that_is_not_there_is_a_usage_error(capsys):
    assert workload.main(["--home-nodes", "0,9"]) == 2
    assert "home node 9 does not exist" in capsys.readouterr().err
