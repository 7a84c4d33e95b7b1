"""scripts/bench-balance's scenarios and the arithmetic of its results: pure, no I/O.

A run is one fresh workload under one balancer in the scenario's VM. The guest
runner (balance_guest) records it as a dict (the "run record"):
    scenario, balancer, duration, interval, clk_tck, ready (the workload's ready
    object), snapshots {launch, t0, mid, end}: each {t (monotonic), wall (time.time(),
    to find the moment in the balancer's log), vmstat
    {pgmigrate_success, ...}, cpu_ticks (the balancer's utime+stime, or null),
    counters (autonumad's status counters, or null), cpu_ticks_after_status (its
    CPU ticks once it answered that status request, or null)}, placement {pid: {maps,
    numa_maps}} read one second before the end, error (or null)
and the workload's JSON lines beside it. `run_metrics` turns both into the
figures of the table; `verdicts` sets autonumad's figures against the issue's
targets.

Locality at a sample time is the mean over every thread's report at that time
(reports come every `interval` seconds from t0, the ready moment).
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autonumad.kernel.procfs import parse_maps, parse_numa_maps
from autonumad.workload import HUGE_PAGE_BYTES

BALANCERS = ("none", "kernel", "numad", "autonumad")
LOCALITY_GOAL = 0.9
FINAL_WINDOW_S = 5.0
FINAL_TARGET = 0.98
KERNEL_PAGES_SHARE_TARGET = 0.10
TIME_TO_GOAL_FACTOR_TARGET = 1.5
CPU_SHARE_TARGET = 0.05
STATIC_BOUND_TOLERANCE = 0.02  # sampling noise of 512 pages per report
MAX_PLACEMENTS = 1_000_000
LOCAL_DISTANCE = 10
DEFAULT_REMOTE_DISTANCE = 20


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    nodes: int
    workload_args: tuple[str, ...]
    distances: tuple[str, ...] = ()  # scripts/numa-vm --distance I,J=D
    static_bound: bool = False       # print the static optimum and the steadiness checks (S5)

    def distance(self, a: int, b: int) -> int:
        if a == b:
            return LOCAL_DISTANCE
        for spec in self.distances:
            pair, dist = spec.split("=")
            i, j = (int(x) for x in pair.split(","))
            if {i, j} == {a, b}:
                return int(dist)
        return DEFAULT_REMOTE_DISTANCE


def _numa01(processes: int, threads: int, mb: int) -> tuple[str, ...]:
    return ("--shape", "numa01", "--processes", str(processes), "--threads", str(threads), "--mb", str(mb),
            "--affinity", "free")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("S1", "numa01, 2 processes x 1 thread x 400 MB, free threads, 2 nodes", 2, _numa01(2, 1, 400)),
    Scenario("S2", "numa02, 2 threads x 256 MB slices, pinned, slices on the other node, 2 nodes", 2,
             ("--shape", "numa02", "--threads", "2", "--mb", "256", "--affinity", "pinned")),
    Scenario("S3", "numa01, 2 processes x 1 thread x 400 MB, free threads, 4 nodes", 4, _numa01(2, 1, 400)),
    Scenario("S4", "numa01, 4 processes x 1 thread x 200 MB, free threads, 4 nodes, memory rotated", 4,
             _numa01(4, 1, 200)),
    Scenario("S5", "numa01, 2 processes x 2 threads x 200 MB, free threads, 4 nodes, distances 10/15/25", 4,
             _numa01(2, 2, 200), ("0,1=15", "2,3=15", "0,2=25", "0,3=25", "1,2=25", "1,3=25"),
             static_bound=True),
)}


# ---------------------------------------------------------------- locality over time


def locality_samples(reports: Sequence[Mapping[str, Any]], interval: float) -> list[tuple[float, float]]:
    """(time, locality) per sample time: each thread's report counted at the nearest multiple of
    `interval` (its latest one there, if it was late twice), locality the mean over threads."""
    buckets: dict[int, dict[tuple[int, int], float]] = {}
    for r in sorted(reports, key=lambda r: r["t"]):
        buckets.setdefault(round(r["t"] / interval), {})[(r["pid"], r["tid"])] = r["locality"]
    return [(k * interval, sum(b.values()) / len(b)) for k, b in sorted(buckets.items())]


def time_to_goal(samples: Sequence[tuple[float, float]], goal: float = LOCALITY_GOAL) -> float | None:
    return next((t for t, loc in samples if loc >= goal), None)


def dips_after_goal(samples: Sequence[tuple[float, float]], goal: float = LOCALITY_GOAL) -> int:
    """Times locality fell below `goal` after first reaching it (a dip lasting several samples counts once)."""
    dips = 0
    reached = above = False
    for _, loc in samples:
        if loc >= goal:
            reached = above = True
        elif reached and above:
            dips += 1
            above = False
    return dips


def mean_locality(samples: Sequence[tuple[float, float]]) -> float | None:
    return sum(loc for _, loc in samples) / len(samples) if samples else None


def final_locality(samples: Sequence[tuple[float, float]], duration: float,
                   window: float = FINAL_WINDOW_S) -> float | None:
    """Mean of the samples in the last `window` seconds of the run."""
    last = [loc for t, loc in samples if t >= duration - window]
    return sum(last) / len(last) if last else None


def thread_moves_since(reports: Sequence[Mapping[str, Any]], since: float) -> int:
    """Node changes between a thread's consecutive reports, counted when the later one is at or after `since`."""
    moves = 0
    last_node: dict[tuple[int, int], int] = {}
    for r in sorted(reports, key=lambda r: r["t"]):
        key = (r["pid"], r["tid"])
        if key in last_node and last_node[key] != r["node"] and r["t"] >= since:
            moves += 1
        last_node[key] = r["node"]
    return moves


def final_nodes(reports: Sequence[Mapping[str, Any]]) -> dict[int, list[int]]:
    """Per process index: the nodes its threads ran on at their last report, one entry per thread."""
    last: dict[tuple[int, int], Mapping[str, Any]] = {}
    for r in sorted(reports, key=lambda r: r["t"]):
        last[(r["proc"], r["thread"])] = r
    nodes: dict[int, list[int]] = {}
    for (proc, _), r in sorted(last.items()):
        nodes.setdefault(proc, []).append(r["node"])
    return nodes


# ---------------------------------------------------------------- where a buffer's pages are


def buffer_node_pages(maps_text: str, numa_maps_text: str, buffer_bytes: int) -> dict[int, int] | None:
    """Base pages per node of the workload's buffer: the anonymous mapping one huge page longer
    than `buffer_bytes` (the workload keeps it a VMA of its own and starts the buffer on a
    huge-page boundary inside it); None if there is no such mapping."""
    length = buffer_bytes + HUGE_PAGE_BYTES
    starts = [m.start for m in parse_maps(maps_text) if m.end - m.start == length and not m.path]
    if not starts:
        return None
    entries = {e.start: e for e in parse_numa_maps(numa_maps_text)}
    entry = entries.get(starts[0])
    return dict(entry.node_base_pages) if entry else {}


# ---------------------------------------------------------------- the static optimum (numa01 shapes)


@dataclass(frozen=True)
class StaticOptimum:
    locality: float
    placement: tuple[tuple[int, ...], ...]  # per process, its threads' nodes
    spread: int                             # sum over processes of the distances between its nodes


def static_optimum(threads: Sequence[int], node_cpus: Mapping[int, int], distance: Callable[[int, int], int],
                   memory_nodes: Sequence[int]) -> StaticOptimum | None:
    """The best locality any static placement reaches when every thread sweeps its whole process
    buffer (numa01) and no CPU runs two threads.

    With c_n of a process's T threads on node n and a share f_n of its memory there, its threads'
    mean locality is sum(c_n * f_n) / T, at most max(c_n) / T, reached with all its memory on
    the node holding most of its threads (node memory is not the limit here: every buffer is
    smaller than a node). Every placement of threads on nodes with at most as many threads as
    CPUs per node is tried; the bound is the best sum of max(c_n) over all threads. Among the
    best, the placement shown keeps each process's nodes nearest (least sum of distances
    between them), then moves the fewest buffers (`memory_nodes`: each process's node now).
    None if there are more than MAX_PLACEMENTS placements to try.
    """
    nodes = sorted(node_cpus)
    choices = [list(itertools.combinations_with_replacement(nodes, t)) for t in threads]
    if math.prod(len(c) for c in choices) > MAX_PLACEMENTS:
        return None
    best: tuple[tuple[int, int, int], tuple[tuple[int, ...], ...]] | None = None
    for placement in itertools.product(*choices):
        load = Counter(n for proc in placement for n in proc)
        if any(load[n] > node_cpus[n] for n in load):
            continue
        local = spread = moved = 0
        for proc, memory_node in zip(placement, memory_nodes):
            counts = Counter(proc)
            most = max(counts.values())
            local += most
            spread += sum(distance(a, b) for a, b in itertools.combinations(sorted(counts), 2))
            moved += counts.get(memory_node, 0) != most
        key = (-local, spread, moved)
        if best is None or key < best[0]:
            best = (key, placement)
    if best is None:
        return None
    (neg_local, spread, _), placement = best
    return StaticOptimum(-neg_local / sum(threads), placement, spread)


def scenario_optimum(scenario: Scenario, ready: Mapping[str, Any]) -> StaticOptimum | None:
    """static_optimum for a run of `scenario` (1 CPU per node), from the workload's ready object."""
    processes = sorted(ready["processes"], key=lambda p: p["proc"])
    threads = [len(p["home_nodes"]) for p in processes]
    memory_nodes = [max(p["memory"], key=lambda m: m["bytes"] * m["on_node"])["node"] for p in processes]
    return static_optimum(threads, {n: 1 for n in range(scenario.nodes)}, scenario.distance, memory_nodes)


# ---------------------------------------------------------------- one run's figures


@dataclass(frozen=True)
class RunMetrics:
    scenario: str
    balancer: str
    duration: float
    error: str | None
    samples: list[tuple[float, float]]
    time_to_goal_s: float | None
    mean: float | None
    final: float | None
    dips: int
    pages_migrated: int | None           # pgmigrate_success, t0 to the end
    pages_migrated_before_t0: int | None  # from the workload's launch to t0
    cpu_s: float | None                  # the balancer's CPU, t0 to the end, less our mid-run status request
    move_cpu_s: float | None             # autonumad's part of it in page moves (the kernel copying pages), launch to end
    wall_s: float | None
    thread_moves_last_half: int
    pages_migrated_last_half: int | None
    daemon_last_half: dict[str, int] | None  # autonumad's counters' growth in the last half
    final_nodes: dict[int, list[int]]
    stray_pages: dict[int, tuple[int, int]]  # per process: buffer pages on nodes none of its threads run on, of all

    @property
    def cpu_share(self) -> float | None:
        if self.cpu_s is None or not self.wall_s:
            return None
        return self.cpu_s / self.wall_s


DAEMON_MOVE_COUNTERS = ("task_moves", "exchanges", "pages_migrated")


def _vmstat_delta(record: Mapping[str, Any], a: str, b: str, key: str = "pgmigrate_success") -> int | None:
    snaps = record.get("snapshots", {})
    if a not in snaps or b not in snaps:
        return None
    return snaps[b]["vmstat"].get(key, 0) - snaps[a]["vmstat"].get(key, 0)


def run_metrics(record: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> RunMetrics:
    """The table's figures for one run, from its record and the workload's JSON lines."""
    duration = float(record["duration"])
    reports = [r for r in lines if "locality" in r]
    samples = locality_samples(reports, float(record["interval"]))
    snaps = record.get("snapshots", {})
    cpu_s = wall_s = None
    if "t0" in snaps and "end" in snaps:
        wall_s = snaps["end"]["t"] - snaps["t0"]["t"]
        if snaps["t0"].get("cpu_ticks") is not None and snaps["end"].get("cpu_ticks") is not None:
            ticks = snaps["end"]["cpu_ticks"] - snaps["t0"]["cpu_ticks"]
            mid = snaps.get("mid", {})
            if mid.get("cpu_ticks_after_status") is not None and mid.get("cpu_ticks") is not None:
                ticks -= mid["cpu_ticks_after_status"] - mid["cpu_ticks"]  # answering our status request
            cpu_s = ticks / record["clk_tck"]
    move_cpu_s = None
    if None not in (snaps.get("launch", {}).get("counters"), snaps.get("end", {}).get("counters")):
        before, after = snaps["launch"]["counters"].get("move_cpu_ms"), snaps["end"]["counters"].get("move_cpu_ms")
        if before is not None and after is not None:
            move_cpu_s = (after - before) / 1000  # nothing to move before the workload's t0
    daemon = None
    if "mid" in snaps and "end" in snaps and None not in (snaps["mid"].get("counters"), snaps["end"].get("counters")):
        mid, end = snaps["mid"]["counters"], snaps["end"]["counters"]
        daemon = {k: end.get(k, 0) - mid.get(k, 0) for k in DAEMON_MOVE_COUNTERS}
    nodes = final_nodes(reports)
    stray: dict[int, tuple[int, int]] = {}
    for proc in (record.get("ready") or {}).get("processes", []):
        seen = record.get("placement", {}).get(str(proc["pid"]))
        if not seen or proc["proc"] not in nodes:
            continue
        pages = buffer_node_pages(seen["maps"], seen["numa_maps"], sum(m["bytes"] for m in proc["memory"]))
        if pages is not None:
            stray[proc["proc"]] = (sum(c for n, c in pages.items() if n not in nodes[proc["proc"]]),
                                   sum(pages.values()))
    return RunMetrics(
        scenario=record["scenario"], balancer=record["balancer"], duration=duration, error=record.get("error"),
        samples=samples, time_to_goal_s=time_to_goal(samples), mean=mean_locality(samples),
        final=final_locality(samples, duration), dips=dips_after_goal(samples),
        pages_migrated=_vmstat_delta(record, "t0", "end"),
        pages_migrated_before_t0=_vmstat_delta(record, "launch", "t0"),
        cpu_s=cpu_s, move_cpu_s=move_cpu_s, wall_s=wall_s,
        thread_moves_last_half=thread_moves_since(reports, duration / 2),
        pages_migrated_last_half=_vmstat_delta(record, "mid", "end"),
        daemon_last_half=daemon, final_nodes=nodes, stray_pages=stray,
    )


# ---------------------------------------------------------------- printing


def _num(value: float | None, fmt: str, none: str = "-") -> str:
    return none if value is None else format(value, fmt)


TABLE_HEAD = (f"{'scen':<4} {'balancer':<9} {'to 90%':>7} {'mean':>5} {'final':>5} {'dips':>4} "
              f"{'pages migr.':>11} {'CPU s':>6} {'CPU %':>6}  {'last half: thread/page moves':<28}")


def table_row(m: RunMetrics) -> str:
    if m.error and not m.samples:
        return f"{m.scenario:<4} {m.balancer:<9} failed: {m.error}"
    to_goal = _seconds(m.time_to_goal_s)
    share = m.cpu_share
    last_half = f"{m.thread_moves_last_half} / {_num(m.pages_migrated_last_half, 'd')}"
    if m.daemon_last_half is not None:
        d = m.daemon_last_half
        last_half += f" (daemon {d['task_moves']} / {d['pages_migrated']})"
    row = (f"{m.scenario:<4} {m.balancer:<9} {to_goal:>7} {_num(m.mean, '.2f'):>5} {_num(m.final, '.2f'):>5} "
           f"{m.dips:>4} {_num(m.pages_migrated, 'd'):>11} {_num(m.cpu_s, '.2f'):>6} "
           f"{_num(None if share is None else 100 * share, '.1f'):>6}  {last_half}")
    return row + (f"  [error: {m.error}]" if m.error else "")


def format_table(metrics: Sequence[RunMetrics]) -> list[str]:
    return [TABLE_HEAD, "-" * len(TABLE_HEAD), *(table_row(m) for m in metrics)]


def optimum_lines(scenario: Scenario, optimum: StaticOptimum | None, runs: Sequence[RunMetrics]) -> list[str]:
    """The static optimum of a scenario and, per balancer, how its end state compares."""
    if optimum is None:
        return [f"{scenario.name} static optimum: not computed (too many placements)"]
    placement = "; ".join(f"process {p} on nodes {','.join(map(str, nodes))}"
                          for p, nodes in enumerate(optimum.placement))
    lines = [f"{scenario.name} static optimum: locality {optimum.locality:.2f} ({placement}; "
             f"spread {optimum.spread})"]
    lines += textwrap.wrap(
        "How: every thread sweeps its whole process buffer, so a process with c_n of its T threads on "
        "node n and a share f_n of its memory there has mean locality sum(c_n*f_n)/T <= max(c_n)/T, "
        "reached with the whole buffer on the node holding most of its threads. Every placement of the "
        "threads with no CPU running two is tried; with one CPU per node each process has at most one "
        "thread per node, so the bound is (processes)/(threads) whatever the memory layout. The placement "
        "shown is the best one with each process on its nearest nodes (least sum of distances between "
        "them; 'spread'), then with the fewest buffers to move.", width=110,
        initial_indent="  ", subsequent_indent="  ")
    for m in runs:
        nodes = ", ".join(f"process {p} on {','.join(map(str, n))}" for p, n in sorted(m.final_nodes.items()))
        stray = ", ".join(f"{s}/{t}" for _, (s, t) in sorted(m.stray_pages.items()))
        lines.append(f"  {m.balancer:<9} at the end: {nodes or 'no reports'}; buffer pages away from "
                     f"the process's threads: {stray or 'unknown'}")
    return lines


@dataclass(frozen=True)
class Verdict:
    target: str
    figure: str
    met: bool | None  # None: cannot be judged (a run missing or failed)

    @property
    def word(self) -> str:
        return "n/a" if self.met is None else "met" if self.met else "NOT met"


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def verdicts(scenarios: Sequence[Scenario], runs: Mapping[tuple[str, str], RunMetrics],
             optima: Mapping[str, StaticOptimum | None]) -> list[Verdict]:
    """autonumad's figures against the issue's targets, scenario by scenario."""
    out: list[Verdict] = []
    for s in scenarios:
        ours = runs.get((s.name, "autonumad"))
        kernel = runs.get((s.name, "kernel"))
        n = s.name
        if ours is None or (ours.error and not ours.samples):
            out.append(Verdict(f"{n} autonumad targets", "no autonumad run", None))
            continue
        if n in ("S1", "S2", "S3", "S4"):
            out.append(Verdict(f"{n} final locality >= {FINAL_TARGET}", _num(ours.final, ".3f"),
                               ours.final is not None and ours.final >= FINAL_TARGET))
            reached = ours.time_to_goal_s is not None
            out.append(Verdict(f"{n} no dip below 90% after first reaching it",
                               f"{ours.dips} dip{'' if ours.dips == 1 else 's'}" if reached else "never reached 90%",
                               reached and ours.dips == 0))
        if n in ("S1", "S3", "S4"):
            if kernel is None or kernel.mean is None:
                out.append(Verdict(f"{n} mean above kernel's; pages < 10% of kernel's", "no kernel run", None))
            else:
                out.append(Verdict(f"{n} mean locality above kernel's",
                                   f"{_num(ours.mean, '.3f')} vs {kernel.mean:.3f}",
                                   ours.mean is not None and ours.mean > kernel.mean))
                ok = None
                if ours.pages_migrated is not None and kernel.pages_migrated is not None:
                    ok = ours.pages_migrated < KERNEL_PAGES_SHARE_TARGET * kernel.pages_migrated
                share = (f" ({100 * ours.pages_migrated / kernel.pages_migrated:.1f}%)"
                         if ok is not None and kernel.pages_migrated else "")
                out.append(Verdict(f"{n} pages migrated < 10% of kernel's",
                                   f"{_num(ours.pages_migrated, 'd')} vs {_num(kernel.pages_migrated, 'd')}{share}",
                                   ok))
        if n == "S2":
            if kernel is None or kernel.mean is None:
                out.append(Verdict(f"{n} time to 90% within 1.5x kernel's", "no kernel run", None))
            else:
                a, k = ours.time_to_goal_s, kernel.time_to_goal_s
                figure = (f"{_seconds(a)} vs {_seconds(k)}"
                          + (f" ({_ratio(a, k)})" if a is not None and k is not None else ""))
                ok = a is not None and (k is None or a <= TIME_TO_GOAL_FACTOR_TARGET * k)
                out.append(Verdict(f"{n} time to 90% within 1.5x kernel's", figure, ok))
        if s.static_bound:
            out.extend(_static_bound_verdicts(s, ours, optima.get(n)))
        share = ours.cpu_share
        out.append(Verdict(f"{n} autonumad CPU < 5% of wall",
                           f"{_num(ours.cpu_s, '.2f')} s of {_num(ours.wall_s, '.1f')} s "
                           f"({_num(None if share is None else 100 * share, '.1f')}%)" + _move_part(ours),
                           None if share is None else share < CPU_SHARE_TARGET))
    return out


def _move_part(m: RunMetrics) -> str:
    """The part of autonumad's CPU spent moving pages, most of it the kernel copying them (which
    kernel NUMA balancing charges to the workload), and the share of wall time the rest is."""
    if m.move_cpu_s is None or m.cpu_s is None or not m.wall_s:
        return ""
    rest = max(0.0, m.cpu_s - m.move_cpu_s)
    return f"; {m.move_cpu_s:.2f} s of it moving pages, the rest {100 * rest / m.wall_s:.1f}%"


def _static_bound_verdicts(s: Scenario, ours: RunMetrics, optimum: StaticOptimum | None) -> list[Verdict]:
    n = s.name
    out = []
    if optimum is None:
        out.append(Verdict(f"{n} final locality no worse than the static optimum", "no optimum", None))
    else:
        out.append(Verdict(f"{n} final locality no worse than the static optimum {optimum.locality:.2f} "
                           f"(within {STATIC_BOUND_TOLERANCE})", _num(ours.final, ".3f"),
                           ours.final is not None and ours.final >= optimum.locality - STATIC_BOUND_TOLERANCE))
    all_nodes = [node for nodes in ours.final_nodes.values() for node in nodes]
    stacked = [node for node, c in Counter(all_nodes).items() if c > 1]
    spread = sum(s.distance(a, b) for nodes in ours.final_nodes.values()
                 for a, b in itertools.combinations(sorted(set(nodes)), 2))
    nearest = optimum is not None and not stacked and spread == optimum.spread
    out.append(Verdict(f"{n} one thread per CPU, each process on its nearest nodes",
                       f"stacked on nodes {stacked or 'none'}; spread {spread} (optimum "
                       f"{optimum.spread if optimum else '-'})", nearest if optimum else None))
    if ours.stray_pages:
        stray = sum(pages for pages, _ in ours.stray_pages.values())
        total = sum(pages for _, pages in ours.stray_pages.values())
        out.append(Verdict(f"{n} no buffer pages on a node where none of its process's threads run",
                           f"{stray} of {total} pages", stray == 0))
    else:
        out.append(Verdict(f"{n} no buffer pages on a node where none of its process's threads run",
                           "placement not read", None))
    d = ours.daemon_last_half
    pages = ours.pages_migrated_last_half
    figure = (f"{ours.thread_moves_last_half} thread node changes, {_num(pages, 'd')} pages migrated"
              + (f"; daemon: {d['task_moves']} task moves, {d['exchanges']} exchanges, "
                 f"{d['pages_migrated']} pages" if d else ""))
    steady = ours.thread_moves_last_half == 0 and pages == 0 and (d is None or not any(d.values()))
    out.append(Verdict(f"{n} steady: no task or page moves in the last half", figure,
                       None if pages is None else steady))
    return out


def format_verdicts(items: Sequence[Verdict]) -> list[str]:
    return [f"{v.word:<7}  {v.target}: {v.figure}" for v in items]
