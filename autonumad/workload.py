"""autonumad-workload: the numa01/numa02-style workload that tests and benchmarks run.

Not a box of the daemon's flow: it is what the daemon is measured on. It places
memory and threads on purpose, sweeps the memory from its threads and measures
its own locality.

Shapes (after autonuma-benchmark):
  numa01  P processes x T threads; every thread sweeps its process's whole
          buffer (--mb per process).
  numa02  one process, T threads; each thread sweeps its own slice of the
          buffer (--mb per slice).

Placement. The nodes with CPUs, in id order, are the rotation. Process p's home
node is the p-th of them (round robin), or --home-nodes; in numa02 it is thread
t's home that is the t-th. A process's buffer (numa01) or a thread's slice
(numa02) is first touched by a short-lived toucher thread under MPOL_BIND on the
next node of the rotation after its home (--start adversarial, the default; a
rotation, as benchmark scenario S4 wants) or on --memory-nodes, or on its home
node (--start local); the toucher then resets its policy to MPOL_DEFAULT, and
no other thread ever sets one. Threads start on their home node's CPUs; with
--affinity free they are released to every CPU the workload was allowed at
start the moment sweeping begins (before their first report), with --affinity pinned they stay (as
`numactl --cpunodebind` users pin them).

Placement check. After touching, up to PLACEMENT_CHECK_PAGES sampled pages of
each region are looked up; the ready line gives the share on the intended node
("on_node"), 1.0 unless the region spilled.

Memory bigger than a node. A region is bound only up to its memory node's free
memory less a reserve (BIND_RESERVE_BYTES); the rest is touched under the
default policy by the toucher running on that node's CPUs, so the kernel puts it
there while it fits and spills it to another node when it does not. Processes
touch concurrently, so two regions aimed at one node can still overrun it.

Locality. When sweeping starts and then every --interval seconds (checked
between sweep chunks of SWEEP_CHUNK_BYTES), each thread samples --samples
random pages of its memory (the whole buffer in numa01, its slice in numa02),
asks the kernel their nodes (move_pages) and reports the fraction on the node of
the CPU it runs on at that moment. Pages not present count as not local and are
also counted apart ("absent"); after the first touch there should be none.

--verify. Sweep k writes pattern k (the extension's pattern(seed, word index));
the first touch writes pattern 0. With --verify a sweep first checks that each
word still holds pattern k-1. A numa02 slice has one writer, so that is all. A
numa01 buffer is shared by T threads, which must not see each other's writes
as mismatches, so each sweep runs in two phases with all of the process's
threads meeting in between: phase 1, thread t moves its own segment (the t-th
of T equal parts) from pattern k-1 to k; phase 2, it checks that every other
segment holds k and writes k again, which a concurrent writer of the same value
cannot disturb. Every thread still touches every byte once per sweep and the
pattern changes every sweep, so a write lost in a migration shows as a mismatch.
The price: with --verify a numa01 process's threads sweep in lockstep. Without
--verify nothing is checked and threads sweep independently.

Output: JSON lines on stdout, or --report FILE.
  {"ready": {"t0": ..., "pids": [...], "processes": [{"proc", "pid", "home_nodes",
   "memory": [{"node", "offset", "bytes", "bound_bytes", "on_node"}]}]}}
      once every process has placed its memory and pinned its threads, at the
      instant they are told to begin (--ready-file gets the same object);
  {"t", "pid", "tid", "proc", "thread", "cpu", "node", "locality", "sampled",
   "absent", "sweeps", "mismatches", "verified_bytes"}
      per thread, at t=0 and every interval; t is seconds since t0; the
      counters are the thread's totals so far;
  {"summary": {"proc", "pid", "threads", "reports", "mean_locality",
   "final_locality", "sweeps", "mismatches", "verified_bytes", "status"}}
      one per process at the end; mean_locality over every report of the
      process, final_locality the mean of each thread's last report, the
      counters summed over its threads; status ok, error, killed (after
      STOP_GRACE_SECONDS), "exit N" or "signal N".
Exit status: 0; 2 bad arguments; 3 a mismatch was found; 1 a process failed.
SIGTERM or SIGINT stops the children cleanly and still prints the summaries.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import random
import select
import signal
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from autonumad.constants import PAGE_SIZE
from autonumad.kernel import sched
from autonumad.kernel.files import KernelFiles
from autonumad.topology import Topology, read_topology

MIB = 1 << 20
SWEEP_CHUNK_BYTES = 4 * MIB
BIND_RESERVE_BYTES = 64 * MIB
HUGE_PAGE_BYTES = 2 * MIB  # x86-64 PMD size: transparent huge pages
PLACEMENT_CHECK_PAGES = 4096
STOP_GRACE_SECONDS = 15.0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
_PR_SET_PDEATHSIG = 1
_T0 = struct.Struct("d")


class WorkloadError(ValueError):
    """Arguments that cannot be honoured on this machine; the message says why."""


# ---------------------------------------------------------------- arguments


@dataclass(frozen=True)
class Options:
    shape: str
    processes: int
    threads: int
    mb: int
    duration: float
    interval: float
    start: str
    home_nodes: tuple[int, ...] | None
    memory_nodes: tuple[int, ...] | None
    affinity: str
    samples: int
    verify: bool
    report: str | None
    ready_file: str | None
    root: str


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _node_sequence(text: str) -> tuple[int, ...]:
    """An ordered node list with repeats allowed, one id per entry: "1,0,1"."""
    try:
        nodes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of node ids") from None
    if any(n < 0 for n in nodes):
        raise argparse.ArgumentTypeError(f"{text!r}: node ids are not negative")
    return nodes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autonumad-workload",
        description="numa01/numa02-style workload with deliberate placement and self-measured locality.",
    )
    parser.add_argument("--shape", choices=("numa01", "numa02"), default="numa01",
                        help="numa01: P processes x T threads sweeping their process's buffer; "
                             "numa02: one process, T threads each sweeping its own slice (default numa01)")
    parser.add_argument("--processes", type=_positive_int,
                        help="processes (numa01; default 2; numa02 is always 1)")
    parser.add_argument("--threads", type=_positive_int, default=1, help="threads per process (default 1)")
    parser.add_argument("--mb", type=_positive_int, default=64,
                        help="MiB per process (numa01) or per thread slice (numa02) (default 64)")
    parser.add_argument("--duration", type=_positive_float, default=10.0,
                        help="seconds of sweeping after all memory is placed (default 10)")
    parser.add_argument("--interval", type=_positive_float, default=1.0,
                        help="seconds between locality reports (default 1)")
    parser.add_argument("--start", choices=("adversarial", "local"), default="adversarial",
                        help="first-touch memory on the wrong node (default) or on the home node")
    parser.add_argument("--home-nodes", type=_node_sequence, metavar="N,N,...",
                        help="home node per process (numa01) or per thread (numa02)")
    parser.add_argument("--memory-nodes", type=_node_sequence, metavar="N,N,...",
                        help="first-touch node per process (numa01) or slice (numa02); "
                             "adversarial start only (default: the next node after the home)")
    parser.add_argument("--affinity", choices=("free", "pinned"), default="free",
                        help="free: threads start on their home node, then may run anywhere (default); "
                             "pinned: they stay on their home node's CPUs")
    parser.add_argument("--samples", type=_positive_int, default=512,
                        help="pages sampled per thread per report (default 512)")
    parser.add_argument("--verify", action="store_true",
                        help="check every sweep's pattern before writing the next; exit 3 on a mismatch")
    parser.add_argument("--report", metavar="FILE", help="write the JSON lines here instead of stdout")
    parser.add_argument("--ready-file", metavar="PATH",
                        help="write the ready object here when the threads begin sweeping")
    parser.add_argument("--root", default="/", help=argparse.SUPPRESS)
    return parser


def parse_options(argv: list[str] | None = None) -> Options:
    """Parse and check the arguments that need no knowledge of the machine; exit 2 on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shape == "numa02":
        if args.processes not in (None, 1):
            parser.error("--shape numa02 runs one process; drop --processes or use --shape numa01")
        processes = 1
    else:
        processes = 2 if args.processes is None else args.processes
    if args.memory_nodes is not None and args.start == "local":
        parser.error("--memory-nodes goes with --start adversarial; --start local touches the home node")
    per = "thread (numa02)" if args.shape == "numa02" else "process (numa01)"
    wanted = args.threads if args.shape == "numa02" else processes
    for flag, nodes in (("--home-nodes", args.home_nodes), ("--memory-nodes", args.memory_nodes)):
        if nodes is not None and len(nodes) != wanted:
            parser.error(f"{flag} needs one node per {per}: {wanted} wanted, {len(nodes)} given")
    return Options(
        shape=args.shape,
        processes=processes,
        threads=args.threads,
        mb=args.mb,
        duration=args.duration,
        interval=args.interval,
        start=args.start,
        home_nodes=args.home_nodes,
        memory_nodes=args.memory_nodes,
        affinity=args.affinity,
        samples=args.samples,
        verify=args.verify,
        report=args.report,
        ready_file=args.ready_file,
        root=args.root,
    )


# ---------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class Region:
    """A page-aligned part of a process's buffer, first touched on one node."""

    offset: int
    length: int
    memory_node: int


@dataclass(frozen=True)
class ThreadPlan:
    index: int
    home_node: int
    cpus: frozenset[int]
    memory: tuple[int, int]  # (offset, length) this thread sweeps and samples


@dataclass(frozen=True)
class ProcessPlan:
    index: int
    buffer_bytes: int
    regions: tuple[Region, ...]
    threads: tuple[ThreadPlan, ...]
    shared: bool  # numa01: every thread sweeps the whole buffer


def split_pages(length: int, parts: int) -> list[tuple[int, int]]:
    """Split [0, length) into `parts` consecutive page-aligned (offset, length) pieces, sizes within a page."""
    pages = length // PAGE_SIZE
    bounds = [pages * i // parts * PAGE_SIZE for i in range(parts + 1)]
    bounds[-1] = length
    return [(bounds[i], bounds[i + 1] - bounds[i]) for i in range(parts)]


def plan_workload(opts: Options, topology: Topology, allowed_cpus: frozenset[int]) -> list[ProcessPlan]:
    """Where every process's memory and threads go; WorkloadError if the machine cannot do it."""
    rotation = [n for n in topology.cpu_nodes_only if set(topology.nodes[n].cpus) & allowed_cpus]
    if not rotation:
        raise WorkloadError("no NUMA node has a CPU this workload may run on")
    units = opts.threads if opts.shape == "numa02" else opts.processes
    homes = list(opts.home_nodes) if opts.home_nodes else [rotation[i % len(rotation)] for i in range(units)]
    for node in homes:
        if node not in topology.nodes:
            raise WorkloadError(f"home node {node} does not exist (online nodes: {_ids(topology.node_ids)})")
        if node not in rotation:
            raise WorkloadError(f"home node {node} has no CPU this workload may run on "
                                f"(nodes with usable CPUs: {_ids(rotation)})")
    if opts.memory_nodes:
        memory = list(opts.memory_nodes)
    elif opts.start == "local":
        memory = homes
    else:
        memory = [rotation[(rotation.index(h) + 1) % len(rotation)] for h in homes]
    for node in memory:
        if node not in topology.has_memory:
            raise WorkloadError(f"memory node {node} holds no memory "
                                f"(nodes with memory: {_ids(topology.has_memory)})")

    def cpus_of(node: int) -> frozenset[int]:
        return frozenset(topology.nodes[node].cpus) & allowed_cpus

    unit_bytes = opts.mb * MIB
    if opts.shape == "numa02":
        slices = [(t * unit_bytes, unit_bytes) for t in range(opts.threads)]
        return [ProcessPlan(
            index=0,
            buffer_bytes=unit_bytes * opts.threads,
            regions=tuple(Region(off, length, memory[t]) for t, (off, length) in enumerate(slices)),
            threads=tuple(ThreadPlan(t, homes[t], cpus_of(homes[t]), slices[t]) for t in range(opts.threads)),
            shared=False,
        )]
    return [ProcessPlan(
        index=p,
        buffer_bytes=unit_bytes,
        regions=(Region(0, unit_bytes, memory[p]),),
        threads=tuple(ThreadPlan(t, homes[p], cpus_of(homes[p]), (0, unit_bytes)) for t in range(opts.threads)),
        shared=True,
    ) for p in range(opts.processes)]


def _ids(nodes: Any) -> str:
    return ",".join(str(n) for n in nodes) or "none"


# ---------------------------------------------------------------- locality (pure, given the calls)


class NumaCalls(Protocol):
    """The calls of autonumad.kernel.numa_calls this tool uses; tests pass a fake."""

    def page_nodes(self, pid: int, addrs: list[int]) -> list[int]: ...
    def node_of_cpu(self, cpu: int) -> int: ...
    def current_cpu(self) -> int: ...
    def set_membind(self, node: int) -> None: ...
    def reset_mempolicy(self) -> None: ...
    def buffer_address(self, buf: Any) -> int: ...
    def sweep(self, buf: Any, offset: int, length: int, write_seed: int, check_seed: int | None) -> int: ...


@dataclass(frozen=True)
class Locality:
    cpu: int
    node: int
    sampled: int
    local: int
    absent: int

    @property
    def fraction(self) -> float:
        return self.local / self.sampled if self.sampled else 0.0


def sample_addresses(rng: random.Random, base: int, memory: tuple[int, int], samples: int) -> list[int]:
    """Up to `samples` distinct random page addresses inside memory=(offset, length) of the buffer at `base`."""
    offset, length = memory
    pages = length // PAGE_SIZE
    picked = rng.sample(range(pages), min(samples, pages))
    return [base + offset + page * PAGE_SIZE for page in picked]


def measure_locality(calls: NumaCalls, addrs: list[int]) -> Locality:
    """Nodes of the pages at `addrs` (this process) against the node of the CPU the caller runs on now."""
    cpu = calls.current_cpu()
    node = calls.node_of_cpu(cpu)
    nodes = calls.page_nodes(0, addrs)
    return Locality(
        cpu=cpu,
        node=node,
        sampled=len(nodes),
        local=sum(1 for n in nodes if n == node),
        absent=sum(1 for n in nodes if n < 0),
    )


# ---------------------------------------------------------------- one process (runs in a child)


class PhaseGate:
    """Lets the threads of a process through their n-th phase only once all of them reached it."""

    def __init__(self, parties: int) -> None:
        self._parties = parties
        self._arrived = 0
        self._cond = threading.Condition()

    def arrive(self) -> None:
        with self._cond:
            self._arrived += 1
            self._cond.notify_all()

    def wait_for_phase(self, phase: int, timeout: float) -> bool:
        """True once every thread arrived at `phase` (counted from 1); False after `timeout`."""
        with self._cond:
            return self._cond.wait_for(lambda: self._arrived >= phase * self._parties, timeout)


@dataclass
class ProcessRun:
    """What a child's threads share."""

    plan: ProcessPlan
    opts: Options
    calls: NumaCalls
    out_fd: int
    allowed_cpus: frozenset[int]
    buf: mmap.mmap | None = None
    lead: int = 0  # bytes of buf before the workload's buffer, which starts on a huge-page boundary
    base: int = 0  # address of the workload's buffer (buf's address + lead)
    t0: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    gate: PhaseGate | None = None
    failed: bool = False
    emit_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def end(self) -> float:
        return self.t0 + self.opts.duration

    def emit(self, kind: str, body: dict[str, Any]) -> None:
        """One message to the parent: a JSON line in one write.

        Children share the pipe; a write under PIPE_BUF (4096 bytes) is never
        interleaved with another. Only a numa02 ready line can be longer, and a
        numa02 workload has a single child.
        """
        line = memoryview((json.dumps({"kind": kind, **body}) + "\n").encode())
        with self.emit_lock:
            try:
                while line:
                    line = line[os.write(self.out_fd, line):]
            except BrokenPipeError:
                self.stop.set()

    def fail(self, message: str) -> None:
        self.failed = True
        self.emit("error", {"proc": self.plan.index, "pid": os.getpid(), "message": message})
        self.stop.set()

    def sweep_range(self, offset: int, length: int, write_seed: int, check_seed: int | None,
                    between_chunks: Callable[[], bool]) -> tuple[int, int] | None:
        """Sweep [offset, offset+length) in chunks; (mismatches, bytes checked), or None if stopped."""
        mismatches = checked = 0
        end = offset + length
        while offset < end:
            if not between_chunks():
                return None
            n = min(SWEEP_CHUNK_BYTES, end - offset)
            mismatches += self.calls.sweep(self.buf, self.lead + offset, n, write_seed, check_seed)
            if check_seed is not None:
                checked += n
            offset += n
        return mismatches, checked


def place_memory(run: ProcessRun, files: KernelFiles) -> list[dict[str, Any]]:
    """First-touch every region on its node (in a toucher thread, whose policy is reset after)."""
    placed: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def still_running() -> bool:
        return not run.stop.is_set()

    def touch() -> None:
        try:
            for region in run.plan.regions:
                topology = read_topology(files)
                room = topology.nodes[region.memory_node].mem_free_kb * 1024 - BIND_RESERVE_BYTES
                bound = max(0, min(region.length, room)) // PAGE_SIZE * PAGE_SIZE
                run.calls.set_membind(region.memory_node)
                try:
                    run.sweep_range(region.offset, bound, 0, None, still_running)
                finally:
                    run.calls.reset_mempolicy()
                if bound < region.length:
                    node_cpus = frozenset(topology.nodes[region.memory_node].cpus) & run.allowed_cpus
                    sched.set_affinity(threading.get_native_id(), node_cpus or run.allowed_cpus)
                    run.sweep_range(region.offset + bound, region.length - bound, 0, None, still_running)
                nodes = run.calls.page_nodes(0, sample_addresses(
                    random.Random(), run.base, (region.offset, region.length), PLACEMENT_CHECK_PAGES))
                on_node = sum(1 for n in nodes if n == region.memory_node) / max(1, len(nodes))
                placed.append({"node": region.memory_node, "offset": region.offset, "bytes": region.length,
                               "bound_bytes": bound, "on_node": round(on_node, 4)})
        except BaseException as exc:  # handed to the main thread, which reports it
            errors.append(exc)

    toucher = threading.Thread(target=touch, name="toucher")
    toucher.start()
    while toucher.is_alive():
        toucher.join(0.2)
    if errors:
        raise errors[0]
    return placed


class Worker:
    """One sweeping thread: pins itself, waits for go, sweeps and reports until stopped."""

    def __init__(self, run: ProcessRun, plan: ThreadPlan, pinned: threading.Barrier) -> None:
        self.run = run
        self.plan = plan
        self.pinned = pinned
        self.rng = random.Random()
        self.tid = 0
        self.sweeps = 0
        self.mismatches = 0
        self.verified = 0
        self.next_report = 0.0
        self.phases = 0
        segments = split_pages(run.plan.buffer_bytes, len(run.plan.threads)) if run.plan.shared else []
        self.lockstep = run.opts.verify and len(segments) > 1
        self.own = segments[plan.index] if self.lockstep else plan.memory
        self.others = [s for i, s in enumerate(segments) if i != plan.index] if self.lockstep else []

    def main(self) -> None:
        run = self.run
        try:
            self.tid = threading.get_native_id()
            sched.set_affinity(self.tid, self.plan.cpus)
            self.pinned.wait()
            run.go.wait()
            if run.stop.is_set():
                return
            if run.opts.affinity == "free":  # released before anything else can pin it
                sched.set_affinity(self.tid, run.allowed_cpus)
            self.report()
            while self.sweep_once(self.sweeps + 1):
                self.sweeps += 1
            self.report()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:
            self.pinned.abort()
            run.fail(f"thread {self.plan.index}: {exc!r}\n{traceback.format_exc()}")

    def sweep_once(self, k: int) -> bool:
        """Sweep k (pattern k) over this thread's memory; False if stopped part way."""
        check = k - 1 if self.run.opts.verify else None
        if not self.lockstep:
            return self.sweep(self.own, k, check)
        if not (self.sweep(self.own, k, check) and self.meet()):
            return False
        return all(self.sweep(segment, k, k) for segment in self.others) and self.meet()

    def sweep(self, memory: tuple[int, int], write_seed: int, check_seed: int | None) -> bool:
        result = self.run.sweep_range(memory[0], memory[1], write_seed, check_seed, self.tick)
        if result is None:
            return False
        self.mismatches += result[0]
        self.verified += result[1]
        return True

    def meet(self) -> bool:
        """Wait for every thread of the process to end this phase, reporting meanwhile."""
        self.phases += 1
        self.run.gate.arrive()
        while not self.run.gate.wait_for_phase(self.phases, timeout=0.1):
            if not self.tick():
                return False
        return True

    def tick(self) -> bool:
        """Between chunks: report if due; False once it is time to stop."""
        now = time.monotonic()
        if now >= self.run.end:
            self.run.stop.set()
        if self.run.stop.is_set():
            return False
        if now >= self.next_report:
            self.report()
        return True

    def report(self) -> None:
        run = self.run
        addrs = sample_addresses(self.rng, run.base, self.plan.memory, run.opts.samples)
        loc = measure_locality(run.calls, addrs)
        now = time.monotonic()
        interval = run.opts.interval
        self.next_report = run.t0 + interval * (int((now - run.t0) / interval) + 1)
        run.emit("report", {
            "t": round(now - run.t0, 3), "pid": os.getpid(), "tid": self.tid,
            "proc": run.plan.index, "thread": self.plan.index, "cpu": loc.cpu, "node": loc.node,
            "locality": round(loc.fraction, 4), "sampled": loc.sampled, "absent": loc.absent,
            "sweeps": self.sweeps, "mismatches": self.mismatches, "verified_bytes": self.verified,
        })


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(EXIT_FAILED)


def run_process(run: ProcessRun, go_fd: int, parent: int) -> int:
    """A child's life: place memory, start threads, wait for go, sweep until the end; its exit status."""
    _die_with_parent(parent)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: run.stop.set())
    plan = run.plan
    # The buffer starts on a huge-page boundary (the mapping is one huge page longer):
    # regions are whole huge pages apart, so a transparent huge page faulted in while
    # one region is touched never covers the next region's first pages on the wrong
    # node (6.1 does not align anonymous mappings to huge pages by itself).
    run.buf = mmap.mmap(-1, plan.buffer_bytes + HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # Keep the buffer a VMA of its own: merged with a neighbouring anonymous mapping
    # (Python's arenas), a transparent huge page faulted in by the neighbour could
    # cover the buffer's first pages on the wrong node before the toucher runs.
    # MADV_DONTFORK makes the flags differ; this process never forks.
    run.buf.madvise(mmap.MADV_DONTFORK)
    address = run.calls.buffer_address(run.buf)
    run.lead = -address % HUGE_PAGE_BYTES
    run.base = address + run.lead
    run.gate = PhaseGate(len(plan.threads))
    try:
        placed = place_memory(run, KernelFiles(run.opts.root))
    except Exception as exc:
        run.fail(f"placing memory: {exc!r}")
        return EXIT_FAILED
    pinned = threading.Barrier(len(plan.threads) + 1)
    workers = [Worker(run, t, pinned) for t in plan.threads]
    threads = [threading.Thread(target=w.main, name=f"sweep-{w.plan.index}") for w in workers]
    for thread in threads:
        thread.start()
    try:
        pinned.wait()
    except threading.BrokenBarrierError:
        run.stop.set()
    if not run.stop.is_set():
        run.emit("ready", {"proc": plan.index, "pid": os.getpid(),
                           "home_nodes": [t.home_node for t in plan.threads], "memory": placed})
        data = os.read(go_fd, _T0.size)
        if len(data) == _T0.size:
            run.t0 = _T0.unpack(data)[0]
        else:
            run.stop.set()
    run.go.set()
    while not run.stop.wait(max(0.0, min(0.5, run.end - time.monotonic()))):
        if time.monotonic() >= run.end:
            run.stop.set()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)
    return EXIT_FAILED if run.failed else 0


# ---------------------------------------------------------------- the parent


@dataclass
class ProcessRecord:
    """What the parent learnt about one child: its messages and how it ended."""

    plan: ProcessPlan
    pid: int
    ready: dict[str, Any] | None = None
    localities: list[float] = field(default_factory=list)
    last: dict[int, dict[str, Any]] = field(default_factory=dict)  # thread -> its latest report
    error: bool = False
    killed: bool = False
    exit_code: int | None = None  # os.waitstatus_to_exitcode once reaped

    def add_report(self, report: dict[str, Any]) -> None:
        self.localities.append(report["locality"])
        self.last[report["thread"]] = report

    @property
    def status(self) -> str:
        if self.killed:
            return "killed"
        if self.error:
            return "error"
        if self.exit_code is None:
            return "running"
        if self.exit_code == 0:
            return "ok"
        return f"exit {self.exit_code}" if self.exit_code > 0 else f"signal {-self.exit_code}"

    def summary(self) -> dict[str, Any]:
        last = list(self.last.values())
        return {
            "proc": self.plan.index,
            "pid": self.pid,
            "threads": len(self.plan.threads),
            "reports": len(self.localities),
            "mean_locality": _mean(self.localities),
            "final_locality": _mean([r["locality"] for r in last]),
            "sweeps": sum(r["sweeps"] for r in last),
            "mismatches": sum(r["mismatches"] for r in last),
            "verified_bytes": sum(r["verified_bytes"] for r in last),
            "status": self.status,
        }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


class Supervisor:
    """The parent: forks one child per process plan, relays their reports, starts and stops them."""

    def __init__(self, opts: Options, plans: list[ProcessPlan], calls: NumaCalls,
                 allowed_cpus: frozenset[int], out: TextIO) -> None:
        self.opts = opts
        self.plans = plans
        self.calls = calls
        self.allowed_cpus = allowed_cpus
        self.out = out
        self.records: dict[int, ProcessRecord] = {}
        self.stop_requested = False
        self.t0: float | None = None
        self.go_fd = -1

    def run(self) -> int:
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            reports_fd = self._start_children()
            self._relay(reports_fd)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        for record in self.records.values():
            self._write({"summary": record.summary()})
        if any(r.summary()["mismatches"] for r in self.records.values()):
            return EXIT_MISMATCH
        return 0 if all(r.status == "ok" for r in self.records.values()) else EXIT_FAILED

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _start_children(self) -> int:
        read_fd, write_fd = os.pipe()
        go_read, self.go_fd = os.pipe()
        parent = os.getpid()
        self.out.flush()
        sys.stderr.flush()
        for plan in self.plans:
            pid = os.fork()
            if pid == 0:
                code = EXIT_FAILED
                try:
                    os.close(read_fd)
                    os.close(self.go_fd)
                    run = ProcessRun(plan, self.opts, self.calls, write_fd, self.allowed_cpus)
                    code = run_process(run, go_read, parent)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            self.records[pid] = ProcessRecord(plan, pid)
        os.close(write_fd)
        os.close(go_read)
        return read_fd

    def _relay(self, reports_fd: int) -> None:
        """Pass reports on until every child has closed its end; stop them when asked or overdue."""
        pending = b""
        kill_at: float | None = None
        stopping = False
        while True:
            now = time.monotonic()
            overdue = self.t0 is not None and now > self.t0 + self.opts.duration + STOP_GRACE_SECONDS
            if (self.stop_requested or overdue) and not stopping:
                stopping = True
                self._signal_children(signal.SIGTERM)
                self._close_go()
                kill_at = now + STOP_GRACE_SECONDS
            if kill_at is not None and now > kill_at:
                self._signal_children(signal.SIGKILL)
                kill_at = None
            ready, _, _ = select.select([reports_fd], [], [], 0.2)
            if not ready:
                self._reap(block=False)
                continue
            data = os.read(reports_fd, 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._handle(json.loads(line))
        os.close(reports_fd)
        self._close_go()
        self._reap(block=True)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.pop("kind")
        record = next(r for r in self.records.values() if r.plan.index == message["proc"])
        if kind == "report":
            record.add_report(message)
            self._write(message)
        elif kind == "ready":
            record.ready = message
            if all(r.ready for r in self.records.values()) and not self.stop_requested:
                self._go()
        elif kind == "error":
            print(f"autonumad-workload: process {message['proc']} (pid {message['pid']}): {message['message']}",
                  file=sys.stderr)
            record.error = True
            self.stop_requested = True

    def _go(self) -> None:
        """Every child is placed and pinned: tell them to begin, and say so."""
        self.t0 = time.monotonic()
        try:
            os.write(self.go_fd, _T0.pack(self.t0) * len(self.records))
        except BrokenPipeError:  # every child is gone already; reaping will say why
            return
        ready = {"t0": self.t0, "pids": list(self.records),
                 "processes": [r.ready for r in self.records.values()]}
        if self.opts.ready_file:
            tmp = self.opts.ready_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(ready, f)
                f.write("\n")
            os.replace(tmp, self.opts.ready_file)
        self._write({"ready": ready})

    def _close_go(self) -> None:
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1

    def _signal_children(self, signum: int) -> None:
        for pid, record in self.records.items():
            if record.exit_code is None:
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    continue
                record.killed = signum == signal.SIGKILL

    def _reap(self, block: bool) -> None:
        for pid, record in self.records.items():
            if record.exit_code is not None:
                continue
            done, wait_status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done == 0:
                continue
            record.exit_code = os.waitstatus_to_exitcode(wait_status)
            if record.status not in ("ok", "error"):
                print(f"autonumad-workload: process {record.plan.index} (pid {pid}) ended: {record.status}",
                      file=sys.stderr)

    def _write(self, obj: dict[str, Any]) -> None:
        try:
            self.out.write(json.dumps(obj) + "\n")
            self.out.flush()
        except BrokenPipeError:
            self.stop_requested = True


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    allowed = sched.get_affinity(0)
    try:
        plans = plan_workload(opts, read_topology(KernelFiles(opts.root)), allowed)
    except WorkloadError as exc:
        print(f"autonumad-workload: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from autonumad.kernel import numa_calls  # the compiled extension; not needed to check arguments

    if opts.report:
        with open(opts.report, "w", buffering=1) as out:
            return Supervisor(opts, plans, numa_calls, allowed, out).run()
    return Supervisor(opts, plans, numa_calls, allowed, sys.stdout).run()


if __name__ == "__main__":
    sys.exit(main())
