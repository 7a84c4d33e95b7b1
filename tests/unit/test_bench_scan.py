"""scripts/bench-scan in a tiny mode, so the benchmark cannot rot: every row of its table,
the anchors and the verdicts; and its accuracy mode in the NUMA VM."""

import os
import subprocess
import sys

import pytest

from conftest import IN_VM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "scripts", "bench-scan")


def bench(*argv, timeout=120):
    return subprocess.run([sys.executable, BENCH, *argv], capture_output=True, text=True, timeout=timeout)


def test_tiny_run_prints_every_row_of_the_cost_table():
    done = bench("--mb", "16", "--repeat", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("method "))
    assert lines[head].split()[1:] == ["stride", "queries", "CPU", "ms", "wall", "ms", "ns/page", "ns/query",
                                       "Mpages/s", "CPU", "ms/GiB", "CPU/raw", "anchor", "/", "target"]
    rows = lines[head + 2:lines.index("", head)]
    labels = [(line[:46].strip(), line[46:53].strip()) for line in rows]
    default_stride = labels[5][1]
    assert labels == [
        ("raw move_pages (one C call, every mapped page)", "1"),
        ("(a) C scanner scan_ranges", "1"),
        ("(a) C scanner scan_ranges", "4"),
        ("(a) C scanner scan_ranges", "16"),
        ("(a) C scanner scan_ranges", "64"),
        ("(a) C scanner scan_ranges, default stride", default_stride),
        ("(b) Python loop, page_nodes per 1024", "1"),
        ("(b) Python loop, page_nodes per 1024", default_stride),
        ("(c) numa_maps read (text only)", "-"),
        ("(c) numa_maps read + parse (procfs)", "-"),
    ]
    assert int(default_stride) >= 1
    for line in rows:
        queries, cpu_ms, wall_ms, ns_page, ns_query, mpages_s, ms_gib, vs_raw = line[53:].split()[:8]
        assert all(float(x) >= 0 for x in (cpu_ms, wall_ms, ns_page, mpages_s, ms_gib))
        assert vs_raw.endswith("x")
        assert (queries == ns_query == "-") == ("numa_maps" in line)
    assert rows[0].split()[-3:] == ["1.00x", "~180", "ns/page"]
    text = done.stdout
    assert "move_pages status query ~180 ns/page natively; numa_maps ~55 ns/page" in text
    assert "C stride 1 vs raw move_pages:" in text and "ms CPU per GiB (target < 1 ms:" in text
    assert "process size 16 MiB" in text


def test_bad_arguments_are_refused():
    done = bench("--mb", "1")
    assert done.returncode == 2 and "--mb must be at least 4" in done.stderr


@pytest.mark.skipif(IN_VM, reason="the host has one node; the VM has several")
def test_accuracy_needs_two_nodes_with_memory():
    done = bench("--accuracy", "--mb", "16")
    assert done.returncode == 2 and "needs at least 2 nodes with memory" in done.stderr


@pytest.mark.vm
def test_accuracy_in_the_vm_is_within_two_points_of_numa_maps():
    done = bench("--accuracy", "--mb", "64", "--repeat", "3", timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "split 16 MiB bound to node 0, 48 MiB to node 1" in done.stdout
    assert done.stdout.count("interleaved 64 MiB over all nodes") == 2
    assert "(target within 2: met)" in done.stdout
