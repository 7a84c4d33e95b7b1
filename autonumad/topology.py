"""The topology snapshot: NUMA nodes, their CPUs, memory and distances, read from sysfs.

Part of the snapshot layer above the I/O layer: `read_topology(files)` reads only
through `KernelFiles`, so tests point it at fixture trees (tests/fixtures/sysfs/).

What is read, under sys/devices/system/:
  node/online                  the nodes there are (and the order of every distance row)
  node/possible                optional; defaults to `online`
  node/has_cpu, node/has_memory optional; derived from cpulist and MemTotal when absent
  node/nodeN/cpulist           CPUs of node N
  node/nodeN/distance          distances from node N, one per online node, in `online` order
  node/nodeN/meminfo           "Node N MemTotal:" and "Node N MemFree:"
  cpu/online                   CPUs online
  cpu/present                  optional; defaults to `online`: present CPUs that are not
                               online were taken offline (`echo 0 > cpu/cpuN/online`)
  cpu/cpuN/nodeM               for such an offline CPU N only: the node M it belongs to
A kernel without NUMA (no node/ directory) is one node 0 holding every online CPU,
with proc/meminfo's MemTotal and MemFree and distance 10 to itself.

Offline CPUs are left out of a node's CPUs. That is what `numactl -H` shows: on
x86 the kernel itself drops an offline CPU from nodeN/cpulist, and we also mask
with cpu/online so architectures that keep it listed give the same answer. They
are kept apart as the node's `offline_cpus` (the cpu/cpuN/nodeM link stays while
the CPU is offline): a node whose CPUs all went offline holds memory only until
they come back, and status says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from autonumad.constants import SYSFS_CPU_DIR, SYSFS_NODE_DIR
from autonumad.kernel.files import KernelFiles
from autonumad.nodelist import format_cpus, format_list, parse_list

SYSFS_CPU_ONLINE = f"{SYSFS_CPU_DIR}/online"
SYSFS_CPU_PRESENT = f"{SYSFS_CPU_DIR}/present"
PROC_MEMINFO = "proc/meminfo"
LOCAL_DISTANCE = 10


class TopologyError(Exception):
    """A topology file is missing or unreadable; the message names the file."""


@dataclass(frozen=True)
class Node:
    id: int
    cpus: tuple[int, ...]
    mem_total_kb: int
    mem_free_kb: int
    distances: dict[int, int]  # to node id -> distance from this node (this node's row)
    offline_cpus: tuple[int, ...] = ()  # present CPUs of this node that are offline now

    @property
    def size_mb(self) -> int:
        """MemTotal in whole MiB, rounded down as `numactl -H` shows it."""
        return self.mem_total_kb // 1024

    @property
    def free_mb(self) -> int:
        """MemFree in whole MiB, rounded down as `numactl -H` shows it."""
        return self.mem_free_kb // 1024


@dataclass(frozen=True)
class Topology:
    nodes: dict[int, Node]
    online: tuple[int, ...]
    possible: tuple[int, ...]
    has_cpu: tuple[int, ...]
    has_memory: tuple[int, ...]
    cpus_online: tuple[int, ...]
    cpus_offline: tuple[int, ...] = ()
    """Present CPUs that are not online (taken offline), whichever node they belong to."""

    @property
    def node_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.nodes))

    @property
    def cpu_nodes(self) -> dict[int, int]:
        """Online CPU -> its node."""
        return {cpu: node.id for node in self.nodes.values() for cpu in node.cpus}

    def node_of_cpu(self, cpu: int) -> int:
        """The node of an online CPU; KeyError for a CPU that is not online."""
        try:
            return self.cpu_nodes[cpu]
        except KeyError:
            raise KeyError(f"CPU {cpu} is not an online CPU of any node") from None

    def distance(self, from_node: int, to_node: int) -> int:
        """Distance from `from_node`'s CPUs to `to_node`'s memory (row from_node, column to_node)."""
        if from_node not in self.nodes:
            raise KeyError(f"no node {from_node}")
        try:
            return self.nodes[from_node].distances[to_node]
        except KeyError:
            raise KeyError(f"no node {to_node}") from None

    def nodes_by_distance(self, from_node: int) -> tuple[int, ...]:
        """Every node, nearest to `from_node` first (itself first), ties by node id."""
        return tuple(sorted(self.nodes, key=lambda n: (self.distance(from_node, n), n)))

    @property
    def cpu_nodes_only(self) -> tuple[int, ...]:
        """Node ids that have online CPUs (memory-only nodes left out)."""
        return tuple(n for n in self.node_ids if self.nodes[n].cpus)

    @property
    def is_numa(self) -> bool:
        """More than one node with memory: placement can matter."""
        return len(self.has_memory) > 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; node ids become string keys, as JSON requires."""
        return {
            "online": list(self.online),
            "possible": list(self.possible),
            "has_cpu": list(self.has_cpu),
            "has_memory": list(self.has_memory),
            "cpus_online": list(self.cpus_online),
            "cpus_offline": list(self.cpus_offline),
            "nodes": {
                str(node.id): {
                    "cpus": list(node.cpus),
                    "offline_cpus": list(node.offline_cpus),
                    "size_mb": node.size_mb,
                    "free_mb": node.free_mb,
                    "mem_total_kb": node.mem_total_kb,
                    "mem_free_kb": node.mem_free_kb,
                    "distances": {str(to): d for to, d in sorted(node.distances.items())},
                }
                for node in (self.nodes[n] for n in self.node_ids)
            },
        }


def describe_cpu_changes(before: Topology, after: Topology) -> list[str]:
    """One line per node whose online CPUs changed between two readings, for the log."""
    lines = []
    for nid in after.node_ids:
        old, new = before.nodes.get(nid), after.nodes[nid]
        if old is None or old.cpus == new.cpus:
            continue
        gone = [c for c in old.cpus if c not in new.cpus]
        back = [c for c in new.cpus if c not in old.cpus]
        what = []
        if gone:
            what.append(f"{format_cpus(gone)} went offline")
        if back:
            what.append(f"{format_cpus(back)} came back online")
        if new.cpus:
            now = f"it has {format_cpus(new.cpus)} online"
        else:
            now = "it holds memory only: no thread is placed there until a CPU of it comes back"
        lines.append(f"node {nid}: {' and '.join(what)}; {now}")
    return lines


def read_topology(files: KernelFiles) -> Topology:
    """Read the NUMA topology under `files.root`; TopologyError names any missing or bad file."""
    cpus_online = tuple(_read_list(files, SYSFS_CPU_ONLINE))
    online_cpu_set = set(cpus_online)
    cpus_offline = tuple(c for c in _read_optional_list(files, SYSFS_CPU_PRESENT, cpus_online)
                         if c not in online_cpu_set)
    if not files.exists(SYSFS_NODE_DIR):
        return _single_node(files, cpus_online, cpus_offline)

    online = tuple(_read_list(files, f"{SYSFS_NODE_DIR}/online"))
    if not online:
        raise TopologyError(f"{files.path(SYSFS_NODE_DIR + '/online')}: no node is online")
    possible = tuple(_read_optional_list(files, f"{SYSFS_NODE_DIR}/possible", online))
    offline_by_node = _offline_cpus_by_node(files, cpus_offline)
    nodes: dict[int, Node] = {}
    for nid in online:
        node_dir = f"{SYSFS_NODE_DIR}/node{nid}"
        cpus = tuple(c for c in _read_list(files, f"{node_dir}/cpulist") if c in online_cpu_set)
        meminfo = _read_meminfo(files, f"{node_dir}/meminfo", prefix=f"Node {nid} ")
        nodes[nid] = Node(
            id=nid,
            cpus=cpus,
            mem_total_kb=meminfo["MemTotal"],
            mem_free_kb=meminfo["MemFree"],
            distances=_read_distances(files, f"{node_dir}/distance", online),
            offline_cpus=tuple(offline_by_node.get(nid, ())),
        )
    has_cpu = _read_optional_list(files, f"{SYSFS_NODE_DIR}/has_cpu", [n for n in online if nodes[n].cpus])
    has_memory = _read_optional_list(
        files, f"{SYSFS_NODE_DIR}/has_memory", [n for n in online if nodes[n].mem_total_kb > 0]
    )
    return Topology(
        nodes=nodes,
        online=online,
        possible=possible,
        has_cpu=tuple(has_cpu),
        has_memory=tuple(has_memory),
        cpus_online=cpus_online,
        cpus_offline=cpus_offline,
    )


def refresh_topology(files: KernelFiles, previous: Topology) -> Topology:
    """The topology now, reading only what changes from pass to pass when nothing else did:
    the online CPUs and nodes (any change: a full read_topology) and each node's free and
    total memory. Cheaper by three quarters of the files (the daemon reads it every pass;
    under TCG each sysfs file costs a millisecond or two)."""
    cpus_online = tuple(_read_list(files, SYSFS_CPU_ONLINE))
    if cpus_online != previous.cpus_online or not files.exists(SYSFS_NODE_DIR):
        return read_topology(files)
    if tuple(_read_list(files, f"{SYSFS_NODE_DIR}/online")) != previous.online:
        return read_topology(files)
    nodes = {}
    for nid, node in previous.nodes.items():
        meminfo = _read_meminfo(files, f"{SYSFS_NODE_DIR}/node{nid}/meminfo", prefix=f"Node {nid} ")
        if (meminfo["MemTotal"] > 0) != (node.mem_total_kb > 0):
            return read_topology(files)  # memory came to a node or left it: has_memory changes
        nodes[nid] = replace(node, mem_total_kb=meminfo["MemTotal"], mem_free_kb=meminfo["MemFree"])
    return replace(previous, nodes=nodes)


def _offline_cpus_by_node(files: KernelFiles, cpus_offline: tuple[int, ...]) -> dict[int, list[int]]:
    """Node -> its offline CPUs, from each offline CPU's cpu/cpuN/nodeM link (none: no node known)."""
    by_node: dict[int, list[int]] = {}
    for cpu in cpus_offline:
        try:
            entries = files.listdir(f"{SYSFS_CPU_DIR}/cpu{cpu}")
        except OSError:
            continue
        for entry in entries:
            if entry.startswith("node") and entry[4:].isdigit():
                by_node.setdefault(int(entry[4:]), []).append(cpu)
    return by_node


def _single_node(files: KernelFiles, cpus_online: tuple[int, ...], cpus_offline: tuple[int, ...]) -> Topology:
    """A kernel built without NUMA: one node 0 holding everything."""
    meminfo = _read_meminfo(files, PROC_MEMINFO, prefix="")
    node = Node(
        id=0,
        cpus=cpus_online,
        mem_total_kb=meminfo["MemTotal"],
        mem_free_kb=meminfo["MemFree"],
        distances={0: LOCAL_DISTANCE},
        offline_cpus=cpus_offline,
    )
    return Topology(
        nodes={0: node}, online=(0,), possible=(0,), has_cpu=(0,), has_memory=(0,), cpus_online=cpus_online,
        cpus_offline=cpus_offline,
    )


def _read(files: KernelFiles, rel: str) -> str:
    try:
        return files.read_text(rel)
    except OSError as exc:
        raise TopologyError(f"cannot read {files.path(rel)}: {exc.strerror or exc}") from None


def _read_list(files: KernelFiles, rel: str) -> list[int]:
    text = _read(files, rel)
    try:
        return parse_list(text)
    except ValueError as exc:
        raise TopologyError(f"{files.path(rel)}: {exc}") from None


def _read_optional_list(files: KernelFiles, rel: str, default: list[int] | tuple[int, ...]) -> list[int]:
    if not files.exists(rel):
        return list(default)
    return _read_list(files, rel)


def _read_meminfo(files: KernelFiles, rel: str, prefix: str) -> dict[str, int]:
    """MemTotal and MemFree in kB from a meminfo file whose lines start with `prefix`."""
    values: dict[str, int] = {}
    for line in _read(files, rel).splitlines():
        if not line.startswith(prefix):
            continue
        key, sep, rest = line[len(prefix):].partition(":")
        fields = rest.split()
        if sep and key in ("MemTotal", "MemFree") and fields and fields[0].isdigit():
            values[key] = int(fields[0])
            if len(values) == 2:
                break  # the first two lines, in every kernel's order: read at every pass
    missing = [k for k in ("MemTotal", "MemFree") if k not in values]
    if missing:
        raise TopologyError(f"{files.path(rel)}: no {' or '.join(prefix + k for k in missing)} line")
    return values


def _read_distances(files: KernelFiles, rel: str, online: tuple[int, ...]) -> dict[int, int]:
    """One row of the distance matrix: the kernel writes one entry per online node, in id order."""
    text = _read(files, rel)
    try:
        row = [int(x) for x in text.split()]
    except ValueError:
        raise TopologyError(f"{files.path(rel)}: not a list of numbers: {text.strip()!r}") from None
    if len(row) != len(online):
        raise TopologyError(
            f"{files.path(rel)}: {len(row)} distances for {len(online)} online nodes "
            f"({format_list(online)})"
        )
    return dict(zip(online, row))
