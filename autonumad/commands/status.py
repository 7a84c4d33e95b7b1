"""autonumactl status: what the running daemon is doing, for a person (or as JSON).

Balancing on or off and why, uptime, kernel.numa_balancing, write-fault sampling, the last pass, nodes
(CPUs, memory, threads managed there; which nodes hold memory only and which
CPUs are offline), managed processes (locality, MB per node),
counters, and the runtime knobs with the migration rate they allow (the daemon's
migration_rate_mb_s: pages_to_migrate per migrate_sleep_millisecs, in MB/s). When the daemon
is not running it says so on stderr and exits 3, like `systemctl status` of a
stopped unit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from typing import Any

from autonumad.commands.control_request import EXIT_NOT_RUNNING, add_json_argument, answer
from autonumad.nodelist import format_cpus, format_list

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser, "the daemon's status object")


def run(args: argparse.Namespace) -> int:
    return answer(args, "status", None, format_status, not_running_exit=EXIT_NOT_RUNNING)


def format_duration(seconds: float) -> str:
    """3d 4h, 2h 05m, 4m 09s, 12s."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str, indent: str = "  ") -> list[str]:
    """Columns sized to their widest cell; `align` has one "l" or "r" per column."""
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) if a == "l" else c.rjust(w)
                               for c, w, a in zip(row, widths, align)).rstrip()
            for row in cells]


def _balancing_line(status: Mapping[str, Any]) -> str:
    if status.get("balancing"):
        text = "balancing: on"
        if status.get("dry_run"):
            text += " (dry run: plans are logged, nothing is moved)"
        return text
    reason = status.get("off_reason")
    return "balancing: off" + (f" ({reason})" if reason else "")


def _kernel_balancing_line(kernel: Mapping[str, Any] | None) -> str:
    current = (kernel or {}).get("current")
    original = (kernel or {}).get("original")
    if current is None:
        return "kernel.numa_balancing: not available on this kernel"
    if original is not None and original != current:
        return (f"kernel.numa_balancing: {current} (was {original}; "
                f"restored when autonumad stops)")
    return f"kernel.numa_balancing: {current}"


def _fault_sampling_line(state: str | None, paranoid: Mapping[str, Any] | None) -> str | None:
    if state is None:
        return None
    line = f"write-fault sampling: {state}"
    current, original = (paranoid or {}).get("current"), (paranoid or {}).get("original")
    if original is not None and str(original) != str(current):
        line += f" (kernel.perf_event_paranoid {current}, was {original}; restored when autonumad stops)"
    return line


def _last_pass_line(last: Mapping[str, Any] | None, now: float) -> str:
    if not last or last.get("at") is None:
        return "last pass: none yet"
    ago = format_duration(max(0.0, now - last["at"]))
    return (f"last pass: {ago} ago, took {last.get('duration_s', 0):.2f} s, "
            f"{last.get('actions', 0)} actions over {last.get('processes', 0)} processes")


def _node_lines(nodes: Mapping[str, Mapping[str, Any]], cpus_offline: Sequence[int]) -> list[str]:
    rows = [[nid, format_list(n.get("cpus", [])) or "-", n.get("size_mb", "-"), n.get("free_mb", "-"),
             n.get("managed_threads", 0)]
            for nid, n in sorted(nodes.items(), key=lambda item: int(item[0]))]
    return ["nodes:", *table(["NODE", "CPUS", "SIZE MB", "FREE MB", "MANAGED THREADS"], rows, "rlrrr"),
            *_offline_lines(nodes, cpus_offline)]


def _offline_lines(nodes: Mapping[str, Mapping[str, Any]], cpus_offline: Sequence[int]) -> list[str]:
    """"node 1: memory-only (CPU 1 offline)" and the like, for nodes without all their CPUs."""
    lines = []
    placed: set[int] = set()
    for nid, n in sorted(nodes.items(), key=lambda item: int(item[0])):
        offline = list(n.get("offline_cpus", []))
        placed.update(offline)
        if offline:
            what = f"{format_cpus(offline)} offline"
            lines.append(f"  node {nid}: memory-only ({what})" if not n.get("cpus") else f"  node {nid}: {what}")
        elif not n.get("cpus"):
            lines.append(f"  node {nid}: memory-only")
    unplaced = [c for c in cpus_offline if c not in placed]
    if unplaced:
        lines.append(f"  {format_cpus(unplaced)} offline (node not known)")
    return lines


def _process_lines(processes: Sequence[Mapping[str, Any]], node_ids: Sequence[str]) -> list[str]:
    if not processes:
        return ["managed processes: none"]
    columns = sorted({*node_ids, *(n for p in processes for n in p.get("memory_mb", {}))}, key=int)
    # BEST: the locality a process spread over nodes can reach with its threads where they
    # run (numa01 bigger than one node); shown only when some process has such a bound
    spread = any((p.get("locality_bound") or 1.0) < 1.0 for p in processes)
    rows = []
    for p in processes:
        locality, bound = p.get("locality"), p.get("locality_bound")
        memory = p.get("memory_mb", {})
        rows.append([p.get("pid"), p.get("comm", "?"), p.get("threads", "-"),
                     "-" if locality is None else f"{locality * 100:.0f}%",
                     *(["-" if bound is None else f"{bound * 100:.0f}%"] if spread else []),
                     *(f"{memory.get(n, 0):.1f}" for n in columns),
                     format_list(p.get("nodes", [])) or "-"])
    header = ["PID", "COMMAND", "THREADS", "LOCAL", *(["BEST"] if spread else []),
              *(f"NODE {n} MB" for n in columns), "RUNS ON"]
    align = "rlrr" + ("r" if spread else "") + "r" * len(columns) + "l"
    return [f"managed processes: {len(processes)}", *table(header, rows, align)]


def _counter_lines(counters: Mapping[str, int], page_status: Mapping[str, int]) -> list[str]:
    lines = []
    if counters:
        lines += ["counters:", *table(["NAME", "VALUE"], sorted(counters.items()), "lr")[1:]]
    if page_status:
        lines.append("page status after moves: "
                     + ", ".join(f"{name} {count}" for name, count in sorted(page_status.items())))
    return lines


def _knob_lines(knobs: Mapping[str, int], rate: float | None) -> list[str]:
    lines = []
    if knobs:
        lines += ["knobs:", *table(["NAME", "VALUE"], list(knobs.items()), "lr")[1:]]
    if rate is not None:
        lines.append(f"migration limit: {rate:g} MB/s (pages_to_migrate every migrate_sleep_millisecs)")
    return lines


def format_status(status: Mapping[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    nodes = status.get("nodes", {})
    sections = [
        [f"autonumad {status.get('version', '?')} (pid {status.get('pid', '?')}), "
         f"up {format_duration(status.get('uptime_s', 0))}, "
         f"config {status.get('config_path') or 'built-in defaults'}",
         _balancing_line(status),
         _kernel_balancing_line(status.get("kernel_numa_balancing")),
         *filter(None, [_fault_sampling_line(status.get("fault_sampling"),
                                             status.get("kernel_perf_event_paranoid"))]),
         _last_pass_line(status.get("last_pass"), now)],
        _node_lines(nodes, status.get("cpus_offline", [])),
        _process_lines(status.get("managed_processes", []), list(nodes)),
        _counter_lines(status.get("counters", {}), status.get("page_status", {})),
        _knob_lines(status.get("knobs", {}), status.get("migration_rate_mb_s")),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"
