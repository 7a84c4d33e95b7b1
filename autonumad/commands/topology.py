"""autonumactl topology: the NUMA topology laid out as `numactl -H` prints it, or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from autonumad.kernel.files import KernelFiles
from autonumad.nodelist import format_list
from autonumad.topology import Topology, TopologyError, read_topology


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print a JSON object (nodes keyed by id: cpus, size_mb, free_mb, distances)")


def format_numactl(topo: Topology) -> str:
    """The text of `numactl -H`: sizes in MiB rounded down, every number in the matrix as "% 3d "."""
    ids = topo.node_ids
    lines = [f"available: {len(ids)} nodes ({format_list(ids)})"]
    for nid in ids:
        node = topo.nodes[nid]
        lines.append(f"node {nid} cpus:" + "".join(f" {cpu}" for cpu in node.cpus))
        lines.append(f"node {nid} size: {node.size_mb} MB")
        lines.append(f"node {nid} free: {node.free_mb} MB")
    lines.append("node distances:")
    lines.append("node " + "".join(f"{to: 3d} " for to in ids))
    for nid in ids:
        lines.append(f"{nid: 3d}: " + "".join(f"{topo.distance(nid, to): 3d} " for to in ids))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        topo = read_topology(KernelFiles(args.root))
    except TopologyError as exc:
        print(f"autonumactl topology: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(topo.to_json(), indent=2))
    else:
        sys.stdout.write(format_numactl(topo))
    return 0
