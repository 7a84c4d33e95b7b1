"""autonumactl show PID|NAME: where a process's memory is, per node, and where its threads run.

A read-only view that works without the daemon, reading the system directly:
memory from /proc/PID/numa_maps (exact, `numastat -p`'s rows: Huge, Heap, Stack,
Private, Total, in MB), threads from two looks `--interval` seconds apart (current
node, run-time share per node over that interval, preferred node by run time).
Per-thread access counts come from the daemon's write-fault sampling, which this
command does not do: the field says so.

JSON (`--json`): for a PID, one process object; for a NAME (glob or "re:REGEX"),
{"processes": [...]}. Per-node figures are keyed by node id as a string:
  {"pid": 1234, "comm": "db", "memory_mb": {"0": 201.3, "1": 600.0}, "total_mb": 801.3,
   "rows_mb": {"huge": {...}, "heap": {...}, "stack": {...}, "private": {...}},
   "policies_mb": {"default": 801.3}, "self_placed_share": 0.0,
   "threads": [{"tid": 1234, "comm": "db", "cpu": 3, "node": 1, "preferred_node": 1,
                "run_share": {"0": 0.0, "1": 1.0}, "accesses": null}],
   "history": "..."}
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

from autonumad.constants import PAGE_SIZE
from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.mm_stats import KINDS, MmSnapshot, exact_snapshot
from autonumad.processes import ProcessInfo, find_processes
from autonumad.task_stats import TaskStatsTable
from autonumad.topology import TopologyError, read_topology

MB = 1 << 20
ROW_NAMES = {"huge": "Huge", "heap": "Heap", "stack": "Stack", "private": "Private"}
NO_ACCESSES = "access counts need the daemon's write-fault sampling (not running here)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("process", metavar="PID|NAME",
                        help="a PID, or a command name (glob, or re:REGEX matched in full)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="how long to watch the threads for their run-time shares (default 1; 0: do not)")
    parser.add_argument("--json", action="store_true", help="print JSON (node ids as string keys)")


def _mb(pages: float) -> float:
    return round(pages * PAGE_SIZE / MB, 2)


def _by_node(values: dict[int, float], nodes: list[int], scale: Callable[[float], float]) -> dict[str, float]:
    return {str(n): scale(values.get(n, 0.0)) for n in nodes}


def process_report(process: ProcessInfo, snapshot: MmSnapshot, tasks: TaskStatsTable, nodes: list[int],
                   interval: float) -> dict[str, Any]:
    """The JSON object for one process (see the module docstring)."""
    policies: dict[str, float] = {}
    for vma in snapshot.vmas:
        name = str(vma.policy) if vma.policy else "unknown"
        policies[name] = policies.get(name, 0.0) + sum(vma.node_pages.values())
    threads = []
    for t in tasks.threads(process.key):
        threads.append({
            "tid": t.tid, "comm": t.comm, "cpu": t.cpu, "node": t.current_node,
            "preferred_node": t.preferred_node(),
            "run_share": _by_node(t.run_share(), nodes, lambda v: round(v, 3)) if t.run_ns else None,
            "accesses": None,
        })
    history = (f"run-time shares measured over {interval:g} s by this command; " if interval > 0
               else "run-time shares not measured (--interval 0); ")
    return {
        "pid": process.pid, "comm": process.comm, "start_time": process.key.start_time,
        "memory_mb": _by_node(snapshot.node_pages, nodes, _mb),
        "total_mb": _mb(snapshot.total_pages),
        "rows_mb": {kind: _by_node(row, nodes, _mb) for kind, row in snapshot.kind_node_pages().items()},
        "policies_mb": {name: _mb(pages) for name, pages in sorted(policies.items())},
        "self_placed_share": round(snapshot.self_placed_share(), 3),
        "threads": threads,
        "history": history + NO_ACCESSES,
    }


def format_text(report: dict[str, Any]) -> str:
    """numastat -p's table, then one line per thread."""
    nodes = list(report["memory_mb"])
    head = f"{'':<16}" + "".join(f"{'Node ' + n:>16}" for n in nodes) + f"{'Total':>16}"
    rule = f"{'':<16}" + " ---------------" * (len(nodes) + 1)
    lines = [f"Per-node process memory usage (in MBs) for PID {report['pid']} ({report['comm']})", head, rule]

    def row(label: str, values: dict[str, float]) -> str:
        return f"{label:<16}" + "".join(f"{values[n]:>16.2f}" for n in nodes) + f"{sum(values.values()):>16.2f}"

    for kind in KINDS:
        lines.append(row(ROW_NAMES[kind], report["rows_mb"][kind]))
    lines.append("-" * 16 + " ---------------" * (len(nodes) + 1))
    lines.append(row("Total", report["memory_mb"]))
    policies = ", ".join(f"{name} {mb:.2f} MB" for name, mb in report["policies_mb"].items())
    lines.append(f"Memory policies: {policies}")
    lines.append("")
    lines.append(f"{'TID':>8}  {'COMM':<16} {'CPU':>4} {'NODE':>5} {'PREFERRED':>10}  RUN-TIME SHARE PER NODE")
    for t in report["threads"]:
        share = ("  ".join(f"N{n} {v * 100:5.1f}%" for n, v in t["run_share"].items())
                 if t["run_share"] is not None else "(no run time seen)")
        node = "-" if t["node"] is None else str(t["node"])
        preferred = "-" if t["preferred_node"] is None else str(t["preferred_node"])
        lines.append(f"{t['tid']:>8}  {t['comm']:<16} {t['cpu']:>4} {node:>5} {preferred:>10}  {share}")
    lines.append(f"({report['history']})")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep) -> int:
    if not 0 <= args.interval < math.inf:
        print("autonumactl show: --interval must be 0 or more seconds", file=sys.stderr)
        return 2
    files = KernelFiles(args.root)
    processes = find_processes(files, args.process)
    if not processes:
        print(f"autonumactl show: no process matches {args.process!r}", file=sys.stderr)
        return 1
    try:
        topo = read_topology(files)
        cpu_nodes, node_ids = topo.cpu_nodes, list(topo.node_ids)
    except TopologyError as exc:
        print(f"autonumactl show: {exc}; showing the nodes the process uses", file=sys.stderr)
        cpu_nodes, node_ids = {}, []
    tasks = TaskStatsTable(cpu_nodes)
    snapshots: dict[int, MmSnapshot] = {}
    for process in processes:
        try:
            maps = procfs.read_maps(files, process.pid)
            snapshots[process.pid] = exact_snapshot(process.key, procfs.read_numa_maps(files, process.pid),
                                                    maps, time.monotonic())
        except (ProcessGone, AccessDenied) as exc:
            print(f"autonumactl show: pid {process.pid} ({process.comm}): {exc}", file=sys.stderr)
            continue
        tasks.look(files, process.key)
    if args.interval > 0 and snapshots:
        sleep(args.interval)
        for process in processes:
            if process.pid in snapshots:
                tasks.look(files, process.key)
    reports = []
    for process in processes:
        snapshot = snapshots.get(process.pid)
        if snapshot is None:
            continue
        nodes = sorted(set(node_ids) | set(snapshot.node_pages))
        reports.append(process_report(process, snapshot, tasks, nodes, args.interval))
    if not reports:
        return 1
    if args.json:
        out: Any = reports[0] if args.process.isdigit() else {"processes": reports}
        print(json.dumps(out, indent=2))
    else:
        sys.stdout.write("\n".join(format_text(r) for r in reports))
    return 0
