"""The syscall half of the I/O layer: NUMA system calls through the compiled module.

Typed wrappers over `autonumad._numa_ext` (cext/numa_ext.c, cffi API mode): page
placement queries and moves (`move_pages`, `migrate_pages`), the sampling scanner,
CPU/node facts, memory policy and buffer sweeps for the workload tool, and
page-fault sampling for per-thread write attribution. The C side returns -errno;
here that becomes `OSError(errno, ...)` passed through `files.map_os_error`, so
callers catch `ProcessGone` and `AccessDenied` exactly as for /proc files.

Per-page outcomes are not errors: they come back as negative errno values in the
returned status lists (`-errno.ENOENT` not present, `-errno.EFAULT` unmapped, ...).
What the kernel means by them varies. Seen on Debian 12's 6.1: a never-touched
anonymous page is -EFAULT (as an unmapped address is), and a present page that
the kernel's own NUMA balancing has just marked PROT_NONE is -ENOENT and cannot be
moved by move_pages until it is touched again; so kernel.numa_balancing must be 0
for exact figures (autonumad turns it off while it runs). On 6.18 never-touched
pages are -ENOENT.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from autonumad.constants import LOCAL_NODES_MAX
from autonumad.kernel.files import ProcessGone, map_os_error

try:
    from autonumad._numa_ext import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        f"autonumad._numa_ext is not built ({exc}): run `pip install -e .` in the source tree "
        "(needs libnuma-dev / numactl-devel and a C compiler)"
    ) from exc

# Writing this to /proc/PID/clear_refs clears the soft-dirty bits of every page of
# PID and write-protects them, so each page's next write faults once: the arming
# step of fault sampling. Write it with KernelFiles.write_text (the file door),
# before or after open_fault_sampler.
CLEAR_REFS_SOFT_DIRTY = "4"


def _check(rc: int, call: str, pid: int | None = None, *, einval_means_gone: bool = False) -> int:
    """Return rc, or raise the OSError for a negative rc (-errno), mapped by files.map_os_error.

    With `einval_means_gone`, EINVAL (which move_pages gives for a task without an
    address space: a process that has exited but not been reaped, or a kernel
    thread) is ProcessGone too.
    """
    if rc >= 0:
        return rc
    err = -rc
    where = call if pid is None else f"{call}, pid {pid}"
    if err == errno.EINVAL and einval_means_gone:
        raise ProcessGone(err, f"process has no address space: exited or a kernel thread ({where})")
    raise map_os_error(OSError(err, f"{os.strerror(err)} ({where})"))


def _addresses(addrs: Sequence[int]):
    return ffi.new("uint64_t[]", addrs if isinstance(addrs, (list, tuple)) else list(addrs))


def page_nodes(pid: int, addrs: Sequence[int]) -> list[int]:
    """Node of each page at `addrs` in process `pid` (0 = this process).

    Each entry is a node id or a negative errno for that page: -ENOENT not
    present, -EFAULT unmapped or the shared zero page (and, on kernels such as
    Debian 12's 6.1, never touched: see untouched_page_status). One C call
    handles the whole list, querying the kernel in batches. Raises ProcessGone/AccessDenied
    (or OSError) only when the query as a whole fails.
    """
    count = len(addrs)
    if count == 0:
        return []
    status = ffi.new("int[]", count)
    rc = lib.ane_page_nodes(pid, _addresses(addrs), count, status)
    _check(rc, "move_pages", pid, einval_means_gone=True)
    return ffi.unpack(status, count)


@lru_cache(maxsize=1)
def untouched_page_status() -> int:
    """The status this kernel gives a never-touched anonymous page: -ENOENT or -EFAULT.

    Recent kernels (6.18 seen) say -ENOENT; Debian 12's 6.1 says -EFAULT, the same
    as for an address outside any mapping, so there scan_ranges counts untouched
    pages in `errors`, not `absent`. Found by asking about a page of our own.
    """
    probe = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        return page_nodes(0, [buffer_address(probe)])[0]
    finally:
        probe.close()


def move_pages(pid: int, addrs: Sequence[int], node: int | Sequence[int], move_all: bool = False) -> list[int]:
    """Move pages of `pid` to `node` (one node for all, or one per address).

    Returns per page the node it is on afterwards or a negative errno (-EBUSY,
    -ENOMEM, -EACCES, -EFAULT, -ENOENT). A page that the kernel could not migrate
    shows the node it stayed on, so `status == target` means moved or already
    there. MPOL_MF_MOVE moves only pages mapped by `pid` alone; `move_all`
    (MPOL_MF_MOVE_ALL, needs CAP_SYS_NICE) moves shared ones too. Raises OSError
    for a target node without memory (ENODEV) or outside the process's cpuset
    (EACCES -> AccessDenied), ProcessGone/AccessDenied for the process.
    """
    count = len(addrs)
    targets = [node] * count if isinstance(node, int) else list(node)
    if len(targets) != count:
        raise ValueError(f"{count} addresses but {len(targets)} target nodes")
    if count == 0:
        return []
    status = ffi.new("int[]", count)
    nodes = ffi.new("int[]", targets)
    rc = lib.ane_move_pages(pid, _addresses(addrs), count, nodes, status, int(move_all))
    _check(rc, "move_pages", pid, einval_means_gone=True)
    return ffi.unpack(status, count)


STATUS_KINDS = 256
"""Per-page failure statuses are counted by errno below this (others under 0)."""


@dataclass
class RangeMoves:
    """What one move_ranges call did: pages tried and moved per range, failures per errno,
    the addresses moved (a C array: unpacked only to undo the move), and where to resume."""

    tried: list[int]
    moved: list[int]
    failures: dict[int, int]
    moved_addrs: object
    moved_total: int
    resume: tuple[int, int]
    """(range index, address) to pass back to continue; range index == len(ranges) when done."""

    @property
    def done(self) -> bool:
        return self.resume[0] >= len(self.tried)

    def moved_addresses(self) -> list[int]:
        return list(self.moved_addrs[0:self.moved_total]) if self.moved_total else []


def move_ranges(pid: int, ranges: Sequence[tuple[int, int]], from_node: int, to_node: int, limit: int,
                resume: tuple[int, int] = (0, 0), move_all: bool = False) -> RangeMoves:
    """Move the pages of `ranges` that sit on `from_node` to `to_node`, at most `limit` of them,
    starting at `resume` (what a previous call returned): the mover's hot loop, in C, so that
    no page costs a Python object. Raises ProcessGone/AccessDenied/OSError only when a call
    as a whole fails (as move_pages)."""
    if limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    n = len(ranges)
    starts = ffi.new("uint64_t[]", [start for start, _ in ranges] or [0])
    ends = ffi.new("uint64_t[]", [end for _, end in ranges] or [0])
    pos = ffi.new("struct ane_range_moves *")
    pos.range, pos.addr = resume
    tried = ffi.new("int64_t[]", max(1, n))
    moved = ffi.new("int64_t[]", max(1, n))
    counts = ffi.new("int64_t[]", STATUS_KINDS)
    moved_addrs = ffi.new("uint64_t[]", max(1, limit))
    rc = lib.ane_move_ranges(pid, starts, ends, n, from_node, to_node, limit, int(move_all), pos,
                             tried, moved, counts, STATUS_KINDS, moved_addrs)
    _check(rc, "move_pages", pid, einval_means_gone=True)
    return RangeMoves(ffi.unpack(tried, n), ffi.unpack(moved, n),
                      {e: c for e, c in enumerate(ffi.unpack(counts, STATUS_KINDS)) if c},
                      moved_addrs, pos.moved, (pos.range, pos.addr))


def migrate_process_pages(pid: int, from_nodes: Iterable[int], to_nodes: Iterable[int]) -> int:
    """Move every page of `pid` on `from_nodes` to `to_nodes` (migrate_pages(2), as `migratepages`).

    Returns the number of pages that could not be moved. Pages shared with other
    processes stay where they are unless the caller has CAP_SYS_NICE. OSError(EINVAL)
    for a target node without memory; ProcessGone/AccessDenied for the process.
    """
    src = list(from_nodes)
    dst = list(to_nodes)
    rc = lib.ane_migrate_process_pages(pid, ffi.new("int[]", src), len(src), ffi.new("int[]", dst), len(dst))
    if rc == -errno.EINVAL and pid:
        # EINVAL also means "no address space left": move_pages tells the two apart.
        page_nodes(pid, [0])
    return _check(rc, "migrate_pages", pid)


def node_of_cpu(cpu: int) -> int:
    """The node CPU `cpu` belongs to; OSError(EINVAL) for a CPU that does not exist."""
    return _check(lib.ane_node_of_cpu(cpu), f"node of cpu {cpu}")


def current_cpu() -> int:
    """The CPU the calling thread is running on (sched_getcpu)."""
    return _check(lib.ane_current_cpu(), "sched_getcpu")


def max_node() -> int:
    """The highest node id of this machine (node ids may be sparse below it)."""
    return lib.ane_max_node()


def numa_available() -> bool:
    """Whether the kernel offers the NUMA system calls."""
    return bool(lib.ane_numa_available())


@dataclass
class ScanResult:
    """What one scan_ranges call saw. Counts are sampled pages, not bytes."""

    node_pages: dict[int, int]
    """Sampled present pages per node (nodes with none are left out)."""
    range_node_pages: list[dict[int, int]]
    """The same, per range, in the order the ranges were given."""
    sampled: int
    """Pages queried (present, absent and errors together)."""
    absent: int
    """Sampled pages not present (-ENOENT: never touched or swapped out; on 6.1 also
    pages the kernel's NUMA balancing has just marked, see the module note)."""
    errors: int
    """Sampled pages with another negative status (-EFAULT: unmapped, or the zero page;
    on kernels where untouched_page_status() is -EFAULT, never-touched pages too)."""
    off_node: int = 0
    """Sampled present pages on a node not in local_nodes (0 when local_nodes is empty or
    holds a node the mask cannot name)."""
    off_node_addrs: list[int] = field(default_factory=list)
    """Up to max_off_node of those pages, chosen uniformly, sorted by address."""
    off_node_nodes: list[int] = field(default_factory=list)
    """The node of each page in off_node_addrs."""


def scan_ranges(
    pid: int,
    ranges: Sequence[tuple[int, int]],
    stride_pages: int,
    seed: int,
    local_nodes: Collection[int] = (),
    max_off_node: int = 0,
) -> ScanResult:
    """Sample the placement of `pid`'s pages over address ranges (the scanner's hot loop, in C).

    For each [start, end) range every stride_pages-th page is queried, from a
    random start in [0, stride_pages) (from `seed`); stride 1 queries every page.
    Each page has the same chance 1/stride_pages of being sampled, and placement
    interleaved with a period sharing no factor with the stride is counted evenly
    (mm_stats.choose_stride picks such strides). Sampled pages present on a
    node not in `local_nodes` are collected (at most `max_off_node`; none when it
    is empty, or when it holds a node from LOCAL_NODES_MAX up, which the C side's
    bit mask cannot name).
    Pages that vanish mid-scan count in `errors`; only whole-call failures raise
    (ProcessGone, AccessDenied, OSError).
    """
    if stride_pages < 1:
        raise ValueError(f"stride_pages must be at least 1, not {stride_pages}")
    if max_off_node < 0:
        raise ValueError(f"max_off_node must not be negative, not {max_off_node}")
    n_ranges = len(ranges)
    n_nodes = max_node() + 1
    starts = ffi.new("uint64_t[]", [start for start, _ in ranges])
    ends = ffi.new("uint64_t[]", [end for _, end in ranges])
    per_range = ffi.new("int64_t[]", max(1, n_ranges * n_nodes))
    off_addrs = ffi.new("uint64_t[]", max(1, max_off_node))
    off_nodes = ffi.new("int[]", max(1, max_off_node))
    totals = ffi.new("struct ane_scan_totals *")
    mask = 0
    if all(0 <= node < LOCAL_NODES_MAX for node in local_nodes):
        for node in local_nodes:
            mask |= 1 << node
    rc = lib.ane_scan_ranges(
        pid, starts, ends, n_ranges, stride_pages, seed & 0xFFFFFFFFFFFFFFFF, mask,
        per_range, n_nodes, off_addrs, off_nodes, max_off_node, totals,
    )
    _check(rc, "move_pages", pid, einval_means_gone=True)
    flat = ffi.unpack(per_range, n_ranges * n_nodes)
    range_node_pages = [
        {node: count for node, count in enumerate(flat[r * n_nodes : (r + 1) * n_nodes]) if count}
        for r in range(n_ranges)
    ]
    node_pages: dict[int, int] = {}
    for counts in range_node_pages:
        for node, count in counts.items():
            node_pages[node] = node_pages.get(node, 0) + count
    off = sorted(zip(ffi.unpack(off_addrs, totals.n_off_out), ffi.unpack(off_nodes, totals.n_off_out)))
    return ScanResult(
        node_pages=dict(sorted(node_pages.items())),
        range_node_pages=range_node_pages,
        sampled=totals.sampled,
        absent=totals.absent,
        errors=totals.errors,
        off_node=totals.off_node,
        off_node_addrs=[addr for addr, _ in off],
        off_node_nodes=[node for _, node in off],
    )


def set_membind(node: int) -> None:
    """Bind the calling thread's future allocations to `node` (set_mempolicy MPOL_BIND)."""
    _check(lib.ane_set_membind(node), f"set_mempolicy bind {node}")


def reset_mempolicy() -> None:
    """Return the calling thread to the default memory policy (MPOL_DEFAULT)."""
    _check(lib.ane_reset_mempolicy(), "set_mempolicy default")


def buffer_address(buf) -> int:
    """Address of the first byte of a writable buffer (an mmap, a bytearray...)."""
    with ffi.from_buffer(buf, require_writable=True) as ptr:
        return int(ffi.cast("uintptr_t", ptr))


def sweep(buf, offset: int, length: int, write_seed: int, check_seed: int | None) -> int:
    """Write a pattern over buf[offset:offset+length], first checking the previous one.

    Works on 64-bit words (offset a multiple of 8; a tail shorter than a word is
    left alone). Word i of buf holds pattern(seed, i), a cheap function of the seed
    and the word's position in the whole buffer, so any slice can be checked by
    whoever wrote it or by another thread. If `check_seed` is given, words that
    differ from pattern(check_seed, i) are counted before being overwritten with
    pattern(write_seed, i). Returns that count. Runs without the GIL, so threads
    sweep in parallel.
    """
    with ffi.from_buffer(buf, require_writable=True) as ptr:
        if offset < 0 or length < 0 or offset + length > len(ptr):
            raise ValueError(f"[{offset}, {offset + length}) is outside a buffer of {len(ptr)} bytes")
        if offset % 8:
            raise ValueError(f"offset {offset} is not a multiple of 8")
        check = check_seed is not None
        return lib.ane_sweep(
            ptr, offset, length, write_seed & 0xFFFFFFFFFFFFFFFF,
            int(check), (check_seed or 0) & 0xFFFFFFFFFFFFFFFF,
        )


class FaultSampler:
    """Page-fault sampling events on a set of threads; see open_fault_sampler."""

    def __init__(self, handle, tids: list[int]) -> None:
        self._handle = handle
        self.tids = tids
        """The threads being watched (those that still existed when opened)."""
        self.lost = 0
        """Samples the kernel dropped because a ring buffer was full."""
        capacity = lib.ane_fault_sampler_capacity(handle)
        self._capacity = capacity
        self._tids = ffi.new("int[]", capacity)
        self._addrs = ffi.new("uint64_t[]", capacity)
        self._cpus = ffi.new("int[]", capacity)
        self._lost = ffi.new("int64_t *")

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> FaultSampler:
        return self

    def __exit__(self, *exc_info) -> None:
        close_fault_sampler(self)


def open_fault_sampler(tids: Sequence[int], pages: int = 8, period: int = 1) -> FaultSampler:
    """Start sampling the user-space page faults of the threads `tids`: every one, or
    one in every `period` of each thread's faults.

    One perf software event (PAGE_FAULTS, sample period `period`, TID|ADDR|CPU) per
    thread, each with a ring of `pages` data pages (a power of two; 8 pages hold
    1024 samples). Threads that have already exited are skipped; ProcessGone if
    all have. Needs CAP_PERFMON (or root) for other users' threads.

    To learn which thread writes which page, arm write faults in the target:
    write CLEAR_REFS_SOFT_DIRTY to /proc/PID/clear_refs (through
    KernelFiles.write_text); the first write to each page afterwards faults and is
    sampled. This needs CONFIG_MEM_SOFT_DIRTY (Debian's kernels have it).
    """
    if not tids:
        raise ValueError("no threads to sample")
    if pages < 1 or pages & (pages - 1):
        raise ValueError(f"ring pages must be a power of two, not {pages}")
    if period < 1:
        raise ValueError(f"sample period must be at least 1, not {period}")
    status = ffi.new("int[]", len(tids))
    out = ffi.new("struct ane_fault_sampler **")
    _check(lib.ane_fault_sampler_open(list(tids), len(tids), pages, period, status, out), "perf_event_open")
    watched = [tid for tid, st in zip(tids, ffi.unpack(status, len(tids))) if st == 0]
    return FaultSampler(ffi.gc(out[0], lib.ane_fault_sampler_close), watched)


def read_fault_samples(handle: FaultSampler) -> list[tuple[int, int, int]]:
    """Drain the samples gathered since the last read: (tid, fault address, cpu) each.

    Samples dropped because a ring filled up between reads are added to handle.lost.
    """
    if handle.closed:
        raise ValueError("fault sampler is closed")
    handle._lost[0] = 0
    n = lib.ane_fault_sampler_read(
        handle._handle, handle._tids, handle._addrs, handle._cpus, handle._capacity, handle._lost
    )
    handle.lost += handle._lost[0]
    return list(zip(ffi.unpack(handle._tids, n), ffi.unpack(handle._addrs, n), ffi.unpack(handle._cpus, n)))


def close_fault_sampler(handle: FaultSampler) -> None:
    """Stop sampling and free the events and ring buffers (closing twice is harmless)."""
    if handle._handle is not None:
        ffi.release(handle._handle)
        handle._handle = None
