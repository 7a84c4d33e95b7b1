"""The /proc half of the I/O layer for processes and threads: parsers and readers.

Parsers are pure (a file's text in, a dataclass out), so tests feed them captured
files; readers take a `KernelFiles` and read only through it, so tests point them
at a fixture tree (tests/fixtures/proc/). Every reader raises `ProcessGone` when
the process or thread went away and `AccessDenied` when the kernel refused, the
one error mapping of `autonumad.kernel.files`.

Files read, under proc/PID/ (and proc/PID/task/TID/ for threads):
  stat       comm, state, flags (PF_KTHREAD), CPU ticks, start time, RSS, CPU last run on
  schedstat  run time in ns (first field), the run-time weight of task statistics
  status     uids, VmRSS and friends, Kthread (newer kernels), allowed CPUs and nodes
  cgroup     cgroup paths (v2 "0::PATH" line, v1 "N:controllers:PATH" lines)
  cmdline    argv (the full command name when comm is cut to 15 characters)
  maps       mappings: the address ranges the scanner samples
  numa_maps  per-mapping memory policy and exact per-node page counts
  clear_refs written "4" to clear soft-dirty bits (arms write-fault sampling)

numa_maps facts these parsers rely on (seen on 6.1 in the 2-node VM, fixture
tests/fixtures/proc/vm2node, and on 6.18 on the host):
  - one line per mapping, in maps order, starting with the mapping's start address;
  - the policy shown is the mapping's own, or else the task's: under
    `numactl --membind=1` every line says bind:1;
  - policy syntax is MODE[=FLAGS][:NODES]; two modes contain a space
    ("prefer (many)", "weighted interleave");
  - N<node>=<count> counts are in units of kernelpagesize_kB: hugetlb mappings
    (marked "huge", kernelpagesize_kB=2048) count 2 MiB pages, while anonymous
    transparent huge pages sit in 4 KiB mappings and are counted in 4 KiB pages
    (an 8 MiB MADV_HUGEPAGE mapping holding 6 MiB of THP reads N1=2048);
  - mappings with no page present print only the address and policy;
  - paths escape space, tab, newline and "=" as \\ooo octal.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil

from autonumad.constants import PAGE_SIZE
from autonumad.kernel.files import KernelFiles, ProcessGone
from autonumad.nodelist import format_list, parse_list

PF_KTHREAD = 0x00200000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BASE_PAGE_KB = PAGE_SIZE // 1024
CLEAR_REFS_SOFT_DIRTY = "4"

_POLICY_RE = re.compile(
    r"(?P<mode>default|local|prefer \(many\)|weighted interleave|prefer|bind|interleave)"
    r"(?:=(?P<flags>[a-z|]+))?(?::(?P<nodes>[0-9,\-]+))?(?=\s|$)")
_OCTAL_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


# ---------------------------------------------------------------- dataclasses

@dataclass(frozen=True)
class MemPolicy:
    """A memory policy as numa_maps shows it: "bind:1", "interleave=static:0-3", "default"."""

    mode: str
    nodes: tuple[int, ...] = ()
    flags: str = ""

    @property
    def chosen_by_process(self) -> bool:
        """True for bind, interleave, weighted interleave and prefer: the process placed
        its memory itself (default and local leave the choice to the kernel)."""
        return self.mode not in ("default", "local")

    def __str__(self) -> str:
        text = self.mode
        if self.flags:
            text += "=" + self.flags
        if self.nodes:
            text += ":" + format_list(self.nodes)
        return text


@dataclass(frozen=True)
class NumaMapsEntry:
    """One line of /proc/PID/numa_maps."""

    start: int
    policy: MemPolicy
    path: str = ""               # file= value, unescaped; "" for anonymous memory
    heap: bool = False
    stack: bool = False
    huge: bool = False           # a hugetlb mapping
    page_size_kb: int = BASE_PAGE_KB
    node_pages: dict[int, int] = field(default_factory=dict)   # in page_size_kb units
    counters: dict[str, int] = field(default_factory=dict)     # anon, dirty, mapped, ...

    @property
    def node_base_pages(self) -> dict[int, int]:
        """Per-node counts in base (4 KiB) pages: huge pages counted at their real size."""
        factor = self.page_size_kb // BASE_PAGE_KB
        return {node: count * factor for node, count in self.node_pages.items()}

    @property
    def kind(self) -> str:
        """The numastat -p row this mapping adds to: huge, heap, stack or private."""
        if self.huge:
            return "huge"
        if self.heap:
            return "heap"
        if self.stack:
            return "stack"
        return "private"


@dataclass(frozen=True)
class MapsEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE


@dataclass(frozen=True)
class TaskStat:
    """The fields of /proc/PID/stat (or task/TID/stat) that autonumad uses."""

    pid: int
    comm: str
    state: str
    ppid: int
    flags: int
    utime_ticks: int
    stime_ticks: int
    num_threads: int
    start_time_ticks: int        # since boot; with pid, the identity of a process
    rss_pages: int
    processor: int               # CPU it last ran on (field 39)

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)

    @property
    def cpu_ticks(self) -> int:
        return self.utime_ticks + self.stime_ticks


@dataclass(frozen=True)
class SchedStat:
    """/proc/PID/task/TID/schedstat: time on CPU, time waiting to run (ns), timeslices."""

    run_ns: int
    wait_ns: int
    timeslices: int


@dataclass(frozen=True)
class ProcStatus:
    """The fields of /proc/PID/status that autonumad uses (kB sizes as the kernel gives them)."""

    name: str
    uids: tuple[int, int, int, int]   # real, effective, saved, filesystem
    threads: int
    vm_rss_kb: int
    rss_anon_kb: int
    rss_file_kb: int
    rss_shmem_kb: int
    hugetlb_kb: int
    kthread: bool | None              # None where the kernel has no Kthread: line (before 6.2)
    cpus_allowed_list: str
    mems_allowed_list: str


@dataclass(frozen=True)
class CgroupEntry:
    """One line of /proc/PID/cgroup: hierarchy 0 with no controllers is cgroup v2."""

    hierarchy: int
    controllers: tuple[str, ...]
    path: str


@dataclass(frozen=True)
class ThreadSnapshot:
    """One look at a thread: where it last ran and how long it has run in total."""

    tid: int
    comm: str
    state: str
    start_time_ticks: int
    processor: int
    run_ns: int                  # schedstat's run time, or CPU ticks where there is no schedstat


# ---------------------------------------------------------------- parsers

def _unescape(text: str) -> str:
    return _OCTAL_ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_policy(text: str) -> MemPolicy:
    """Parse a policy as numa_maps spells it ("bind=static:0-1"); ValueError if unknown."""
    m = _POLICY_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"unknown memory policy {text!r}")
    return _policy_from_match(m)


def _policy_from_match(m: re.Match[str]) -> MemPolicy:
    nodes = tuple(parse_list(m.group("nodes"))) if m.group("nodes") else ()
    return MemPolicy(m.group("mode"), nodes, m.group("flags") or "")


_DEFAULT_POLICY = MemPolicy("default")


def parse_numa_maps_line(line: str) -> NumaMapsEntry:
    """Parse one numa_maps line; ValueError names what is wrong with it."""
    address, _, rest = line.strip().partition(" ")
    try:
        start = int(address, 16)
    except ValueError:
        raise ValueError(f"numa_maps line does not start with an address: {line!r}") from None
    if rest.startswith("default "):  # nearly every line: no regular expression
        policy = _DEFAULT_POLICY
        rest = rest[8:]
    elif m := _POLICY_RE.match(rest):
        policy = _policy_from_match(m)
        rest = rest[m.end():]
    else:  # a policy this parser does not know yet: keep its spelling as the mode
        mode, _, rest = rest.partition(" ")
        policy = MemPolicy(mode)
    path = ""
    heap = stack = huge = False
    page_size_kb = BASE_PAGE_KB
    node_pages: dict[int, int] = {}
    counters: dict[str, int] = {}
    for token in rest.split():
        key, sep, value = token.partition("=")
        if key == "file":
            path = _unescape(value)
        elif not sep:
            heap = heap or key == "heap"
            stack = stack or key.startswith("stack")   # "stack:TID" before Linux 4.5
            huge = huge or key == "huge"
        elif key == "kernelpagesize_kB":
            page_size_kb = int(value)
        elif key[0] == "N" and key[1:].isdigit():
            node_pages[int(key[1:])] = int(value)
        elif value.isdigit():
            counters[key] = int(value)
    return NumaMapsEntry(start, policy, path, heap, stack, huge, page_size_kb, node_pages, counters)


def parse_numa_maps(text: str) -> list[NumaMapsEntry]:
    return [parse_numa_maps_line(line) for line in text.splitlines() if line.strip()]


def parse_maps(text: str) -> list[MapsEntry]:
    """Parse /proc/PID/maps; paths keep their spaces and a " (deleted)" suffix."""
    entries = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, _, hi = parts[0].partition("-")
        path = parts[5].strip() if len(parts) > 5 else ""
        entries.append(MapsEntry(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                                 parts[3], int(parts[4]), path))
    return entries


def parse_stat(text: str) -> TaskStat:
    """Parse /proc/PID/stat; comm may hold spaces and parentheses, so split at the last ')'."""
    open_paren = text.find("(")
    close_paren = text.rfind(")")
    if open_paren < 0 or close_paren < open_paren:
        raise ValueError(f"not a /proc stat line: {text[:80]!r}")
    fields = text[close_paren + 2:].split()
    if len(fields) < 37:
        raise ValueError(f"short /proc stat line ({len(fields) + 2} fields): {text[:80]!r}")

    def f(number: int) -> int:  # the field's number as in proc(5), counting from 1
        return int(fields[number - 3])

    return TaskStat(
        pid=int(text[:open_paren]),
        comm=text[open_paren + 1:close_paren],
        state=fields[0],
        ppid=f(4),
        flags=f(9),
        utime_ticks=f(14),
        stime_ticks=f(15),
        num_threads=f(20),
        start_time_ticks=f(22),
        rss_pages=f(24),
        processor=f(39),
    )


def parse_schedstat(text: str) -> SchedStat:
    run, wait, slices = (int(x) for x in text.split()[:3])
    return SchedStat(run, wait, slices)


def parse_status(text: str) -> ProcStatus:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            values[key] = value.strip()

    def kb(key: str) -> int:
        return int(values.get(key, "0 kB").split()[0])

    uids = tuple(int(u) for u in values["Uid"].split()[:4])
    kthread = values.get("Kthread")
    return ProcStatus(
        name=values.get("Name", ""),
        uids=uids,  # type: ignore[arg-type]
        threads=int(values.get("Threads", "1")),
        vm_rss_kb=kb("VmRSS"),
        rss_anon_kb=kb("RssAnon"),
        rss_file_kb=kb("RssFile"),
        rss_shmem_kb=kb("RssShmem"),
        hugetlb_kb=kb("HugetlbPages"),
        kthread=None if kthread is None else kthread == "1",
        cpus_allowed_list=values.get("Cpus_allowed_list", ""),
        mems_allowed_list=values.get("Mems_allowed_list", ""),
    )


def parse_cgroup(text: str) -> list[CgroupEntry]:
    entries = []
    for line in text.splitlines():
        hierarchy, sep1, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if sep1 and sep2:
            entries.append(CgroupEntry(int(hierarchy), tuple(c for c in controllers.split(",") if c), path))
    return entries


def cgroup_path(entries: list[CgroupEntry]) -> str:
    """The process's cgroup path: the v2 one, else systemd's v1 name=systemd tree, else "/"."""
    for entry in entries:
        if entry.hierarchy == 0 and not entry.controllers:
            return entry.path
    for entry in entries:
        if "name=systemd" in entry.controllers:
            return entry.path
    return "/"


def parse_cmdline(data: bytes) -> list[str]:
    return [arg.decode("utf-8", "replace") for arg in data.split(b"\0")[:-1]] if data else []


# ---------------------------------------------------------------- readers

def list_pids(files: KernelFiles) -> list[int]:
    """PIDs of all processes: psutil on the live system, the fixture tree's proc/ otherwise."""
    if os.path.realpath(files.root) == "/":
        return psutil.pids()
    return sorted(int(name) for name in files.listdir("proc") if name.isdigit())


def last_pid(files: KernelFiles) -> int | None:
    """The PID the kernel handed out last (/proc/loadavg's last field): unchanged between two
    reads, no process or thread was created in between. The kernel gives it for the reader's
    PID namespace, so only when the tree's proc/self is this process (its /proc is that of
    our namespace); None otherwise, or if unreadable."""
    try:
        own = (files.root, os.getpid())
        if own not in _OWN_PROC:
            _OWN_PROC[own] = os.readlink(files.path("proc/self")) == str(own[1])
        if not _OWN_PROC[own]:
            return None
        return int(files.read_text("proc/loadavg").split()[-1])
    except (OSError, ValueError, IndexError):
        return None


_OWN_PROC: dict[tuple[str, int], bool] = {}
"""Per (tree root, our PID): whether the tree's proc/self is this process (read once: a
process does not change PID namespace, and the daemon asks at every tick of a pause)."""


def list_tids(files: KernelFiles, pid: int) -> list[int]:
    return sorted(int(name) for name in files.listdir(f"proc/{pid}/task") if name.isdigit())


def _read_stat_file(files: KernelFiles, rel: str) -> TaskStat:
    text = files.read_text(rel)
    if not text:  # the task was reaped between open and read
        raise ProcessGone(2, "task went away", files.path(rel))
    return parse_stat(text)


def read_stat(files: KernelFiles, pid: int) -> TaskStat:
    return _read_stat_file(files, f"proc/{pid}/stat")


def read_task_stat(files: KernelFiles, pid: int, tid: int) -> TaskStat:
    return _read_stat_file(files, f"proc/{pid}/task/{tid}/stat")


def read_task_schedstat(files: KernelFiles, pid: int, tid: int) -> SchedStat:
    return parse_schedstat(files.read_text(f"proc/{pid}/task/{tid}/schedstat"))


def read_status(files: KernelFiles, pid: int) -> ProcStatus:
    text = files.read_text(f"proc/{pid}/status")
    if not text:
        raise ProcessGone(2, "process went away", files.path(f"proc/{pid}/status"))
    return parse_status(text)


def read_cgroup(files: KernelFiles, pid: int) -> list[CgroupEntry]:
    return parse_cgroup(files.read_text(f"proc/{pid}/cgroup"))


def read_cmdline(files: KernelFiles, pid: int) -> list[str]:
    return parse_cmdline(files.read_bytes(f"proc/{pid}/cmdline"))


def read_maps(files: KernelFiles, pid: int) -> list[MapsEntry]:
    """Mappings of `pid`; empty for a kernel thread or a zombie (no mm)."""
    return parse_maps(read_maps_text(files, pid))


PAGEMAP_ENTRY = 8
PAGEMAP_PRESENT = 1 << 63
PAGEMAP_EXCLUSIVE = 1 << 56
PAGEMAP_SPAN_GAP = 64
"""Entries of /proc/PID/pagemap between two wanted ones up to which one read covers both."""
PAGEMAP_SPAN_MAX = 512


def pages_exclusive(files: KernelFiles, pid: int, addrs: Sequence[int]) -> dict[int, bool]:
    """For each address of `addrs` whose page is present: whether only this process maps it
    (/proc/PID/pagemap's "page exclusively mapped" bit, Linux 4.2+). A page it still
    shares with its parent since a fork, or with another process, is not: move_pages
    (MPOL_MF_MOVE) leaves such a page where it is (-EACCES). Nearby addresses are read
    together. Raises ProcessGone / AccessDenied."""
    pages = sorted({addr // PAGE_SIZE for addr in addrs})
    spans: list[tuple[int, int]] = []   # (first page, pages)
    for page in pages:
        first, count = spans[-1] if spans else (0, 0)
        if spans and page - first < PAGEMAP_SPAN_MAX and page - (first + count) < PAGEMAP_SPAN_GAP:
            spans[-1] = (first, page - first + 1)
        else:
            spans.append((page, 1))
    chunks = files.read_spans(f"proc/{pid}/pagemap",
                              [(first * PAGEMAP_ENTRY, count * PAGEMAP_ENTRY) for first, count in spans])
    span_starts = [first for first, _ in spans]
    out = {}
    for addr in addrs:
        page = addr // PAGE_SIZE
        i = bisect.bisect_right(span_starts, page) - 1
        at = (page - span_starts[i]) * PAGEMAP_ENTRY
        entry = int.from_bytes(chunks[i][at:at + PAGEMAP_ENTRY], "little")  # short read: b"", 0
        if entry & PAGEMAP_PRESENT:
            out[addr] = bool(entry & PAGEMAP_EXCLUSIVE)
    return out


def read_maps_text(files: KernelFiles, pid: int) -> str:
    """/proc/PID/maps as text, for a caller that parses it only when it changed."""
    return files.read_text(f"proc/{pid}/maps")


def read_numa_maps(files: KernelFiles, pid: int) -> list[NumaMapsEntry]:
    """numa_maps of `pid` (a full page-table walk: ~55 ns per resident page)."""
    return parse_numa_maps(files.read_text(f"proc/{pid}/numa_maps"))


def read_uptime(files: KernelFiles) -> float:
    """Seconds since boot (the clock of stat's start time, in CLOCK_TICKS)."""
    return float(files.read_text("proc/uptime").split()[0])


def read_threads(files: KernelFiles, pid: int) -> list[ThreadSnapshot]:
    """One look at every thread of `pid`; threads that exit meanwhile are left out.

    Raises ProcessGone when the process itself is gone (its task/ directory is).
    """
    threads = []
    for tid in list_tids(files, pid):
        try:
            stat = read_task_stat(files, pid, tid)
        except ProcessGone:
            continue
        try:
            run_ns = read_task_schedstat(files, pid, tid).run_ns
        except ProcessGone:  # no schedstat (CONFIG_SCHED_INFO off) or the thread just exited
            run_ns = stat.cpu_ticks * 1_000_000_000 // CLOCK_TICKS
        threads.append(ThreadSnapshot(tid, stat.comm, stat.state, stat.start_time_ticks,
                                      stat.processor, run_ns))
    return threads


def clear_soft_dirty(files: KernelFiles, pid: int) -> None:
    """Write "4" to clear_refs: the process's pages become write-protected, so each first
    write afterwards takes a fault that perf can sample (needs CONFIG_MEM_SOFT_DIRTY)."""
    files.write_text(f"proc/{pid}/clear_refs", CLEAR_REFS_SOFT_DIRTY)
