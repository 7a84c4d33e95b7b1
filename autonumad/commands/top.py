"""autonumactl top: processes ranked by remote memory, refreshed live like top(1).

A read-only view that works without the daemon, reading the system directly. Each
refresh finds every user process (`ProcessDiscovery`, no thresholds), estimates
where its memory is with the sampled scanner (`mm_stats.sampled_snapshot`: about
TARGET_RESIDENT_SAMPLES move_pages queries per process, a few ms of CPU for all
processes of a quiet machine) or, with `--exact` or on a fixture root, reads
numa_maps, and looks at its threads (`TaskStatsTable`) before and after, at least
THREAD_WINDOW_S apart. Remote memory is memory on nodes where the process does
not run: its run nodes (`run_nodes`) are those where its threads spent at least
MULTI_NODE_SHARE of the run time seen (over that window in one snapshot; on a live
screen over the last refreshes, halved at each refresh as the daemon does per
pass). Where a thread last ran is not enough: an idle main thread parked on
another node would make every page there look local. For a process that did not
run at all while watched, the nodes of the CPUs its threads last ran on stand in.

Fields that need the daemon's history are not shown here: per-thread write-access
counts and the preferred nodes they give, figures decayed over many passes, and
what autonumad moved (`autonumactl show`, `status`). When the daemon answers, each
process says whether it manages it.

Modes: on a terminal the screen is redrawn every `--interval` seconds until q or
Ctrl-C (any other key refreshes at once); in a pipe, or with `--once` / `-n 1`, one
snapshot is printed (`-n N` prints N, `--interval` apart); `--json` prints one
snapshot as JSON, per-node figures keyed by node id as a string:
  {"taken_at": 1700000000.0, "source": "sampled", "nodes": ["0", "1"],
   "processes_seen": 212, "unreadable": 0, "cpu_ms": 18.2,
   "daemon": "not running", "history": "...",
   "processes": [{"pid": 1234, "comm": "db", "user": "pg", "threads": 8,
                  "run_nodes": [0], "memory_mb": {"0": 201.3, "1": 600.0},
                  "total_mb": 801.3, "remote_mb": 600.0, "locality": 0.251,
                  "stride": 64, "managed": null}, ...]}
`stride` is the sampling stride in pages (null for exact numa_maps figures);
`managed` is null when the daemon did not answer.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import select
import shutil
import sys
import termios
import textwrap
import time
import tty
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from autonumad import control_client
from autonumad.commands.control_request import socket_path
from autonumad.constants import PAGE_SIZE
from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone
from autonumad.mm_stats import choose_stride, exact_snapshot, sampled_mappings, sampled_snapshot
from autonumad.nodelist import format_list
from autonumad.processes import ProcessDiscovery, ProcessFilter, ProcessInfo, ProcessKey
from autonumad.scan_pacing import ScanBudget
from autonumad.task_stats import MULTI_NODE_SHARE, TaskStatsTable
from autonumad.topology import TopologyError, read_topology

MB = 1 << 20
DEFAULT_INTERVAL_S = 3.0
PAGES_TO_SCAN = 4096          # cap on queries per process per refresh (mapped pages / this = stride floor)
UNLIMITED_BATCH = 1 << 62     # top samples each process in one go: its budget never pauses
DAEMON_TIMEOUT_S = 1.0
THREAD_WINDOW_S = 0.2         # shortest time between the two looks at threads of one refresh
NEEDS_DAEMON = ("per-thread write-access counts and preferred nodes, figures decayed over many "
                "passes, what autonumad moved (they need the daemon's history)")

# ANSI control sequences for the live screen (the alternate screen, as top uses).
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
CURSOR_OFF, CURSOR_ON = "\x1b[?25l", "\x1b[?25h"
HOME, CLEAR_LINE_END, CLEAR_SCREEN_END = "\x1b[H", "\x1b[K", "\x1b[J"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interval", "-d", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                        help=f"seconds between refreshes (default {DEFAULT_INTERVAL_S:g})")
    parser.add_argument("-n", dest="iterations", type=int, default=None, metavar="N",
                        help="stop after N refreshes (default: until q on a terminal, 1 in a pipe)")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit (as -n 1)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="show at most N processes (default: all, or what fits the terminal)")
    parser.add_argument("--exact", action="store_true",
                        help="read every process's numa_maps (a full page-table walk) instead of sampling")
    parser.add_argument("--json", action="store_true",
                        help="print one snapshot as JSON (node ids as string keys)")


# ---------------------------------------------------------------- ranking (pure)

@dataclass(frozen=True)
class TopRow:
    """One process on the screen: its memory per node and where its threads run."""

    pid: int
    comm: str
    user: str
    threads: int
    run_nodes: tuple[int, ...]        # where it runs (see run_nodes); () when no CPU maps to a node
    node_pages: Mapping[int, float]   # base pages per node (estimated when stride is set)
    stride: int | None = None         # sampling stride in pages; None for exact numa_maps figures
    managed: bool | None = None       # whether the daemon manages it; None when it did not answer

    @property
    def total_pages(self) -> float:
        return sum(self.node_pages.values())

    @property
    def local_pages(self) -> float:
        return sum(p for n, p in self.node_pages.items() if n in self.run_nodes)

    @property
    def remote_pages(self) -> float:
        """Pages on nodes none of its threads run on (0 when that is unknown)."""
        return self.total_pages - self.local_pages if self.run_nodes else 0.0

    @property
    def locality(self) -> float | None:
        """Share of its memory on the nodes its threads run on; None if unknown or no memory."""
        total = self.total_pages
        return self.local_pages / total if total and self.run_nodes else None


def run_nodes(run_ns: Mapping[int, float], current: Iterable[int | None]) -> tuple[int, ...]:
    """Nodes where a process runs: those with at least MULTI_NODE_SHARE of its run time
    (`run_ns`, per node); when no run time was seen, the `current` nodes of its threads."""
    total = sum(run_ns.values())
    if total > 0:
        return tuple(sorted(n for n, ns in run_ns.items() if ns / total >= MULTI_NODE_SHARE))
    return tuple(sorted({n for n in current if n is not None}))


def rank_by_remote(rows: Iterable[TopRow], limit: int | None = None) -> list[TopRow]:
    """Most remote memory first; ties by most memory, then by PID. At most `limit` rows."""
    ranked = sorted(rows, key=lambda r: (-r.remote_pages, -r.total_pages, r.pid))
    return ranked if limit is None else ranked[:max(limit, 0)]


# ---------------------------------------------------------------- sampling the system

@dataclass(frozen=True)
class TopSnapshot:
    taken_at: float                   # time.time()
    nodes: tuple[int, ...]
    rows: list[TopRow]                # ranked
    processes_seen: int
    unreadable: int                   # processes whose memory the kernel would not show us
    cpu_s: float                      # CPU time this refresh cost top itself
    exact: bool
    daemon: str                       # "running", "not running", or why it did not answer


class TopSampler:
    """What `top` keeps between refreshes: CPU-use and thread history."""

    def __init__(self, files: KernelFiles, exact: bool = False,
                 request: Callable[..., Any] | None = control_client.request,
                 scan_ranges: Callable[..., Any] | None = None, seed: int | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 cpu_clock: Callable[[], float] = time.process_time):
        try:
            topo = read_topology(files)
            cpu_nodes, self.node_ids = topo.cpu_nodes, topo.node_ids
        except TopologyError as exc:
            print(f"autonumactl top: {exc}; locality unknown", file=sys.stderr)
            cpu_nodes, self.node_ids = {}, ()
        self.files = files
        self.exact = exact
        self.request = request
        if scan_ranges is None and not exact:
            from autonumad.kernel import numa_calls
            scan_ranges = numa_calls.scan_ranges
        self.scan_ranges = scan_ranges
        self.rng = random.Random(seed)
        self.clock = clock
        self.sleep = sleep
        self.cpu_clock = cpu_clock
        self.discovery = ProcessDiscovery(files, ProcessFilter())
        self.tasks = TaskStatsTable(cpu_nodes)
        self.budget = ScanBudget(pages_to_scan=UNLIMITED_BATCH)

    def sample(self, limit: int | None = None) -> TopSnapshot:
        cpu_before = self.cpu_clock()
        found = self.discovery.discover()
        managed, daemon = self._daemon_view()
        watched_from = self.clock()
        for info in found.processes:
            self.tasks.look(self.files, info.key)
        memory: dict[ProcessKey, tuple[dict[int, float], int | None]] = {}
        unreadable = 0
        for info in found.processes:
            try:
                memory[info.key] = self._memory(info)
            except ProcessGone:
                continue
            except AccessDenied:
                unreadable += 1
        self.sleep(max(0.0, THREAD_WINDOW_S - (self.clock() - watched_from)))
        rows: list[TopRow] = []
        for info in found.processes:
            if info.key not in memory or not self.tasks.look(self.files, info.key):
                continue
            threads = self.tasks.threads(info.key)
            node_pages, stride = memory[info.key]
            rows.append(TopRow(info.pid, info.comm, info.user, len(threads),
                               run_nodes(self.tasks.process_run_ns(info.key), (t.current_node for t in threads)),
                               node_pages, stride, None if managed is None else info.pid in managed))
        self.tasks.forget(found.left)
        self.tasks.end_pass()
        nodes = sorted(set(self.node_ids).union(*(r.node_pages for r in rows)))
        return TopSnapshot(time.time(), tuple(nodes), rank_by_remote(rows, limit), len(found.processes),
                           unreadable, self.cpu_clock() - cpu_before, self.exact, daemon)

    def _memory(self, info: ProcessInfo) -> tuple[dict[int, float], int | None]:
        maps = procfs.read_maps(self.files, info.pid)
        if self.exact:
            snapshot = exact_snapshot(info.key, procfs.read_numa_maps(self.files, info.pid), maps, 0.0)
            return snapshot.node_pages, None
        mappings = sampled_mappings(maps)
        if not mappings:
            return {}, None
        stride = choose_stride(info.rss_pages, sum(m.pages for m in mappings), PAGES_TO_SCAN,
                               n_nodes=max(2, len(self.node_ids)))
        snapshot = sampled_snapshot(info.key, mappings, stride, self.scan_ranges, self.budget, self.rng, 0.0)
        return snapshot.node_pages, stride

    def _daemon_view(self) -> tuple[set[int] | None, str]:
        """PIDs the daemon manages, or None, and a word on the daemon."""
        if self.request is None:
            return None, "not asked"
        try:
            result = self.request("show", timeout=DAEMON_TIMEOUT_S)
        except control_client.DaemonNotRunning:
            return None, "not running"
        except control_client.ControlError as exc:
            return None, f"did not answer ({exc.message})"
        return {p["pid"] for p in result.get("processes", [])}, "running"


# ---------------------------------------------------------------- output

def _mb(pages: float) -> float:
    return round(pages * PAGE_SIZE / MB, 1)


def history_note(snapshot: TopSnapshot, live: bool) -> str:
    """What RUN-ON means here, and what this view cannot show without the daemon."""
    over = "the last refreshes (halved at each)" if live else f"the {THREAD_WINDOW_S:g}+ s this snapshot watched"
    return (f"RUN-ON: nodes with {MULTI_NODE_SHARE:.0%} of the threads' run time over {over}; for a process "
            f"that did not run, where its threads last ran. Not shown: {NEEDS_DAEMON}. "
            f"Daemon: {snapshot.daemon}.")


def snapshot_json(snapshot: TopSnapshot) -> dict[str, Any]:
    """The JSON object (see the module docstring)."""
    def by_node(row: TopRow) -> dict[str, float]:
        return {str(n): _mb(row.node_pages.get(n, 0.0)) for n in snapshot.nodes}

    return {
        "taken_at": round(snapshot.taken_at, 3),
        "source": "numa_maps" if snapshot.exact else "sampled",
        "nodes": [str(n) for n in snapshot.nodes],
        "processes_seen": snapshot.processes_seen,
        "unreadable": snapshot.unreadable,
        "cpu_ms": round(snapshot.cpu_s * 1000, 1),
        "daemon": snapshot.daemon,
        "history": history_note(snapshot, live=False),
        "processes": [{
            "pid": r.pid, "comm": r.comm, "user": r.user, "threads": r.threads,
            "run_nodes": list(r.run_nodes), "memory_mb": by_node(r), "total_mb": _mb(r.total_pages),
            "remote_mb": _mb(r.remote_pages),
            "locality": None if r.locality is None else round(r.locality, 3),
            "stride": r.stride, "managed": r.managed,
        } for r in snapshot.rows],
    }


def format_header(snapshot: TopSnapshot, interval: float | None) -> list[str]:
    unreadable = ""
    if snapshot.unreadable:
        unreadable = f" ({snapshot.unreadable} unreadable{': run as root' if os.geteuid() else ''})"
    clock = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    source = "numa_maps (exact)" if snapshot.exact else "sampled with move_pages"
    refresh = f"; refresh every {interval:g} s, q quits" if interval is not None else ""
    columns = (f"{'PID':>8} {'USER':<9} {'COMM':<16} {'THR':>4} {'RUN-ON':>6} {'REMOTE MB':>10} "
               f"{'LOCAL%':>6} {'TOTAL MB':>10}" + "".join(f"{'N' + str(n) + ' MB':>10}" for n in snapshot.nodes)
               + ("  M" if snapshot.daemon == "running" else ""))
    return [f"autonumactl top - {clock}  nodes {format_list(snapshot.nodes) or '-'}  "
            f"processes {snapshot.processes_seen}{unreadable}  daemon {snapshot.daemon}",
            f"memory {source}, {snapshot.cpu_s * 1000:.0f} ms CPU{refresh}", "", columns]


def format_row(row: TopRow, nodes: Sequence[int]) -> str:
    locality = "-" if row.locality is None else f"{row.locality * 100:.1f}"
    managed = "  *" if row.managed else ""
    return (f"{row.pid:>8} {row.user[:9]:<9} {row.comm[:16]:<16} {row.threads:>4} "
            f"{format_list(row.run_nodes) or '-':>6} {_mb(row.remote_pages):>10.1f} {locality:>6} "
            f"{_mb(row.total_pages):>10.1f}" + "".join(f"{_mb(row.node_pages.get(n, 0.0)):>10.1f}" for n in nodes)
            + managed)


def format_footer(snapshot: TopSnapshot, live: bool, width: int | None = None) -> list[str]:
    marks = "M: * = managed by autonumad. " if snapshot.daemon == "running" else ""
    text = marks + history_note(snapshot, live)
    return [""] + (textwrap.wrap(text, width) if width else [text])


def format_text(snapshot: TopSnapshot, interval: float | None = None, live: bool = False,
                height: int | None = None, width: int | None = None) -> list[str]:
    """The screen: header, ranked rows, footer; at most `height` lines and `width` columns."""
    header, footer = format_header(snapshot, interval), format_footer(snapshot, live, width)
    rows = snapshot.rows
    if height is not None:
        rows = rows[:max(height - len(header) - len(footer), 0)]
    lines = header + [format_row(r, snapshot.nodes) for r in rows] + footer
    return [line[:width] for line in lines] if width else lines


# ---------------------------------------------------------------- modes

def print_snapshots(sampler: TopSampler, args: argparse.Namespace, count: int,
                    sleep: Callable[[float], None], out: TextIO) -> None:
    for i in range(count):
        if i:
            sleep(args.interval)
            out.write("\n")
        out.write("\n".join(format_text(sampler.sample(args.limit))) + "\n")
        out.flush()


def _wait_for_key(fd: int | None, seconds: float) -> str:
    """Wait up to `seconds` for a key on `fd` (None: just sleep); the key, or ""."""
    if fd is None:
        time.sleep(seconds)
        return ""
    ready, _, _ = select.select([fd], [], [], seconds)
    return os.read(fd, 32).decode(errors="replace") if ready else ""


def live_screen(sampler: TopSampler, args: argparse.Namespace, out: TextIO, keys: TextIO) -> None:
    """Redraw until q, Ctrl-C or `-n` refreshes; any other key refreshes now.

    Without -n the screen is drawn on the terminal's alternate screen, as top does; with
    -n it is drawn on the normal one, so the last refresh stays visible afterwards."""
    fd = keys.fileno() if keys.isatty() else None
    saved = termios.tcgetattr(fd) if fd is not None else None
    screen_on, screen_off = (ALT_SCREEN_ON, ALT_SCREEN_OFF) if args.iterations is None else ("", "\n")
    try:
        if fd is not None:
            tty.setcbreak(fd)
        out.write(screen_on + CURSOR_OFF)
        done = 0
        while True:
            size = shutil.get_terminal_size()
            lines = format_text(sampler.sample(args.limit), args.interval, live=True,
                                height=size.lines, width=size.columns)
            out.write(HOME + "".join(line + CLEAR_LINE_END + "\n" for line in lines[:-1])
                      + lines[-1] + CLEAR_SCREEN_END)
            out.flush()
            done += 1
            if args.iterations is not None and done >= args.iterations:
                break
            if "q" in _wait_for_key(fd, args.interval).lower():
                break
    except KeyboardInterrupt:
        pass
    finally:
        out.write(CURSOR_ON + screen_off)
        out.flush()
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args: argparse.Namespace, sleep: Callable[[float], None] = time.sleep,
        request: Callable[..., Any] | None = control_client.request,
        out: TextIO | None = None, keys: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not 0 < args.interval < math.inf:
        print("autonumactl top: --interval must be above 0", file=sys.stderr)
        return 2
    if args.iterations is not None and args.iterations < 1:
        print("autonumactl top: -n must be at least 1", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("autonumactl top: --limit must be at least 1", file=sys.stderr)
        return 2
    files = KernelFiles(args.root)
    live_root = os.path.realpath(args.root) == "/"
    # A fixture root has no processes behind its PIDs to query, nor a daemon to ask.
    ask = functools.partial(request, path=socket_path(args)) if live_root and request is not None else None
    sampler = TopSampler(files, exact=args.exact or not live_root, request=ask, sleep=sleep)
    if args.json:
        out.write(json.dumps(snapshot_json(sampler.sample(args.limit)), indent=2) + "\n")
        return 0
    count = 1 if args.once else args.iterations
    if out.isatty() and count != 1:
        live_screen(sampler, args, out, keys or sys.stdin)
    else:
        print_snapshots(sampler, args, count or 1, sleep, out)
    return 0
