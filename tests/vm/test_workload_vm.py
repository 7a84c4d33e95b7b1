"""autonumad-workload on a real multi-node kernel: its placement is what it says, and its locality reads it.

Runs inside scripts/numa-vm (2 or 4 nodes). The kernel's own NUMA balancing is
switched off for these tests, so nothing moves the pages while we measure.
Sizes are small: Python in the TCG VM is about 18x slower.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autonumad.kernel.files import KernelFiles
from autonumad.topology import read_topology

pytestmark = pytest.mark.vm

NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"


@pytest.fixture(scope="module", autouse=True)
def kernel_balancing_off():
    with open(NUMA_BALANCING) as f:
        old = f.read().strip()
    with open(NUMA_BALANCING, "w") as f:
        f.write("0")
    yield
    with open(NUMA_BALANCING, "w") as f:
        f.write(old)


def run_workload(*args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "autonumad.workload", "--duration", "2", *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def first_reports(lines: list[dict]) -> dict[tuple[int, int], dict]:
    """Each thread's report at t=0, taken as sweeping begins."""
    first: dict[tuple[int, int], dict] = {}
    for line in lines:
        if "locality" in line:
            first.setdefault((line["proc"], line["thread"]), line)
    return first


def test_adversarial_numa01_start_reads_locality_zero():
    lines = run_workload("--processes", "2", "--threads", "1", "--mb", "64", "--affinity", "pinned")
    ready = lines[0]["ready"]
    homes = [p["home_nodes"][0] for p in ready["processes"]]
    memory = [p["memory"][0]["node"] for p in ready["processes"]]
    nodes = len(read_topology(KernelFiles()).cpu_nodes_only)
    assert homes == [0, 1] and memory == [1, 2 % nodes]
    for p in ready["processes"]:
        assert p["memory"][0]["bound_bytes"] == 64 << 20 and p["memory"][0]["on_node"] == 1.0, p
    first = first_reports(lines)
    assert sorted(first) == [(0, 0), (1, 0)]
    for (proc, _), report in first.items():
        assert report["node"] == homes[proc]
        assert report["locality"] <= 0.05 and report["absent"] == 0, report
    assert all(s["summary"]["final_locality"] <= 0.05 for s in lines if "summary" in s)


def test_local_numa01_start_reads_locality_one():
    lines = run_workload("--processes", "2", "--threads", "1", "--mb", "64", "--affinity", "pinned",
                         "--start", "local")
    first = first_reports(lines)
    assert len(first) == 2
    assert all(r["locality"] >= 0.95 for r in first.values()), first


def test_adversarial_numa02_start_reads_locality_zero_and_verifies_clean():
    lines = run_workload("--shape", "numa02", "--threads", "2", "--mb", "32", "--affinity", "pinned", "--verify")
    first = first_reports(lines)
    assert sorted(first) == [(0, 0), (0, 1)]
    assert [first[key]["node"] for key in sorted(first)] == [0, 1]
    assert all(r["locality"] <= 0.05 for r in first.values()), first
    (summary,) = [line["summary"] for line in lines if "summary" in line]
    assert summary["mismatches"] == 0 and summary["verified_bytes"] > 0
