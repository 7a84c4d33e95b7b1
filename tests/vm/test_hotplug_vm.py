"""CPUs taken offline under a balancing daemon and brought back, in the 2- and 4-node VMs.

A numa01 workload (one process per node, memory on the next node) is balanced,
then CPUs 1..N go offline (cpu0 cannot), so that every node but node 0 holds
memory only. Over the next passes: no workload thread may run on an offline CPU
(sched_getaffinity, and the mask the kernel keeps, /proc/TID/status
Cpus_allowed_list, whenever it is narrower than every CPU), no affinity the
daemon records as its own names an offline CPU (the ones the kernel reset are
forgotten), status names the memory-only nodes and the offline CPUs, the log has
no ERROR or traceback, and the daemon still answers. Then the CPUs come back:
status lists them again and the daemon pins workload threads to them again
(holding a thread where its memory is about to follow it, or moving one there);
how local the workload is again within RECONVERGE_S is reported. The CPUs are put
back online whatever happens.

Prints a "figures:" block (run pytest with -s to see it).
"""

from __future__ import annotations

import os
import time

import pytest

from autonumad.commands.status import format_status
from autonumad.nodelist import format_list, parse_list
from test_daemon_vm import Daemon, Workload, node_count, status
from test_robustness_vm import print_figures, wait_for

pytestmark = pytest.mark.vm

CPU_DIR = "/sys/devices/system/cpu"
PASSES_OFFLINE = 3
RECONVERGE_S = 60
"""How long the workload is given to be local again once the CPUs are back. Reported, not asserted:
under TCG it varies from run to run with the load on the machine (the memory that went to node 0
while the other nodes had no CPU has to come back)."""


def read_cpus(name: str) -> set[int]:
    with open(f"{CPU_DIR}/{name}") as f:
        return set(parse_list(f.read()))


def set_online(cpu: int, online: bool) -> None:
    with open(f"{CPU_DIR}/cpu{cpu}/online", "w") as f:
        f.write("1" if online else "0")


def kernel_mask(tid: int) -> set[int]:
    """The affinity mask the kernel keeps for a thread (sched_getaffinity shows only its online CPUs)."""
    with open(f"/proc/{tid}/status") as f:
        line = next(line for line in f if line.startswith("Cpus_allowed_list:"))
    return set(parse_list(line.split(":", 1)[1]))


def passes(sock: str) -> int:
    return status(sock)["counters"].get("passes", 0)


def wait_passes(d: Daemon, count: int, timeout: float) -> None:
    start = passes(d.sock)
    wait_for(lambda: passes(d.sock) >= start + count, timeout, f"{count} passes of the daemon")


def off_cpu_trouble(w: Workload, d: Daemon, offline: set[int], possible: set[int]) -> list[str]:
    """What contradicts 'no thread runs on an offline CPU and no pin of the daemon's names one'."""
    found = []
    for tid in w.thread_ids():
        try:
            seen, mask = os.sched_getaffinity(tid), kernel_mask(tid)
        except (ProcessLookupError, FileNotFoundError, StopIteration):
            continue
        if seen & offline:
            found.append(f"tid {tid}: sched_getaffinity {format_list(seen)}")
        if mask != possible and mask & offline:
            found.append(f"tid {tid}: pinned to {format_list(mask)}, offline CPUs among them")
    for key, entry in d.state_file()["affinities"].items():
        if set(entry["applied"]) & offline:
            tid = key.split(":")[2]
            alive = os.path.exists(f"/proc/{tid}")
            found.append(f"{key} ({entry['comm']}, {'alive' if alive else 'gone'}): the daemon records "
                         f"CPUs {format_list(entry['applied'])} as its pin")
    return found


def test_cpus_taken_offline_and_brought_back_are_followed(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("hotplug"))
    nodes = node_count()
    possible = read_cpus("present")
    assert read_cpus("online") == possible, "a CPU was offline before the test"
    taken = sorted(possible - {0})
    d = Daemon(tmp)
    w = Workload(tmp, "numa01", "--shape", "numa01", "--processes", str(nodes), "--threads", "1",
                 "--mb", "32", "--duration", "900", "--affinity", "free")
    try:
        balanced = w.wait_locality(0.9, timeout=150)
        assert balanced >= 0.9, f"locality {balanced:.2f} after 150 s\n{d.read_log()[-4000:]}"
        before = status(d.sock)["counters"]

        t0 = time.monotonic()
        for cpu in taken:
            set_online(cpu, False)
        offline = set(taken)
        assert read_cpus("online") == possible - offline
        wait_for(lambda: status(d.sock)["cpus_offline"] == taken, 180, "status to name the offline CPUs")
        seen_offline_s = time.monotonic() - t0
        wait_passes(d, PASSES_OFFLINE, 240)
        trouble = off_cpu_trouble(w, d, offline, possible)
        assert not trouble, "\n".join(trouble)
        st = status(d.sock)
        for n in range(1, nodes):
            node = st["nodes"][str(n)]
            assert node["memory_only"] and node["cpus"] == [] and node["offline_cpus"] == [n], (n, node)
        assert st["nodes"]["0"]["cpus"] == [0] and not st["nodes"]["0"]["memory_only"]
        text = format_status(st)
        assert "  node 1: memory-only (CPU 1 offline)" in text.splitlines(), text
        assert all(set(p["nodes"]) <= {0} for p in st["managed_processes"]), st["managed_processes"]
        assert "node 1: CPU 1 went offline" in d.read_log()
        assert d.proc.poll() is None and not d.trouble(), "\n".join(d.trouble()[:20])
        offline_locality = w.locality()
        during = st["counters"]

        t1 = time.monotonic()
        for cpu in taken:
            set_online(cpu, True)
        st = wait_for(lambda: (s := status(d.sock))["cpus_offline"] == [] and s, 120,
                      "status to list every CPU again")
        seen_back_s = time.monotonic() - t1
        assert all(st["nodes"][str(n)]["cpus"] == [n] and not st["nodes"][str(n)]["memory_only"]
                   for n in range(nodes)), st["nodes"]

        def pinned_to_returned_cpus() -> int:
            return sum(1 for e in d.state_file()["affinities"].values() if set(e["applied"]) <= set(taken))

        try:
            wait_for(pinned_to_returned_cpus, 120, "the daemon to pin a workload thread to a CPU that came back")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\naffinities: {d.state_file()['affinities']}\n"
                                 f"{d.read_log()[-6000:]}") from None
        back = w.wait_locality(0.9, timeout=RECONVERGE_S)
        back_s = time.monotonic() - t1
        pinned_back = pinned_to_returned_cpus()
        assert "node 1: CPU 1 came back online" in d.read_log()
        assert d.proc.poll() is None and not d.trouble(), "\n".join(d.trouble()[:20])
        after = status(d.sock)["counters"]
        logged = [line.split(": ", 1)[-1] for line in d.read_log().splitlines()
                  if "went offline" in line or "came back online" in line]
    finally:
        for cpu in sorted(possible - read_cpus("online")):
            set_online(cpu, True)
        d.stop()
        summaries = w.stop()
    assert all(s["mismatches"] == 0 and s["verified_bytes"] > 0 for s in summaries), summaries

    def delta(a: dict, b: dict, key: str) -> int:
        return b.get(key, 0) - a.get(key, 0)

    print_figures("CPUs taken offline under numa01 and brought back", {
        "CPUs taken offline": format_list(taken),
        "s until status named them offline / online again": f"{seen_offline_s:.0f} / {seen_back_s:.0f}",
        "locality balanced / while offline": f"{balanced:.2f} / {offline_locality:.2f}",
        "locality after the CPUs came back (s)": f"{back:.2f} ({back_s:.0f})",
        "threads pinned to the returned CPUs": pinned_back,
        "while offline: passes, task moves, pages migrated": (
            f"{delta(before, during, 'passes')}, {delta(before, during, 'task_moves')}, "
            f"{delta(before, during, 'pages_migrated')}"),
        "affinities the kernel reset, forgotten": during.get("affinities_reset_by_kernel", 0),
        "moves refused for want of online CPUs / failed": (
            f"{after.get('task_moves_refused_no_cpus', 0)} / {after.get('affinity_failed', 0)}"),
        "after: passes, task moves, pages migrated": (
            f"{delta(during, after, 'passes')}, {delta(during, after, 'task_moves')}, "
            f"{delta(during, after, 'pages_migrated')}"),
        "daemon log lines on the change": "".join(f"\n    {line}" for line in logged),
        "bytes verified": sum(s["verified_bytes"] for s in summaries),
        "mismatches": sum(s["mismatches"] for s in summaries),
    })
