"""Placement advice for a job about to start: numad's `-w CPUS[:MB]`, as `autonumactl advise`.

Pure: from the topology, free memory and idle CPUs per node, pick the fewest nodes
that hold the job, nearest to each other, least loaded. A job that fits nowhere
gets every node with CPUs, and the reason says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import combinations

from autonumad.topology import Topology

ADVISE_RE = re.compile(r"^(\d+(?:\.\d+)?)(?::(\d+))?$")


@dataclass(frozen=True)
class Advice:
    nodes: tuple[int, ...]
    reason: str

    def to_json(self) -> dict:
        return {"nodes": list(self.nodes), "reason": self.reason}


def parse_job_size(text: str) -> tuple[float, int]:
    """Parse numad's CPUS[:MB] ("4", "2:1024", "0.5:256"); ValueError names the problem."""
    m = ADVISE_RE.match(text.strip())
    if not m:
        raise ValueError(f"job size {text!r}: expected CPUS[:MB], e.g. 4 or 2:1024")
    cpus, mb = float(m.group(1)), int(m.group(2) or 0)
    if cpus <= 0 or cpus > 65536:
        raise ValueError(f"job size {text!r}: CPUS must be above 0 and at most 65536")
    return cpus, mb


def advise(topology: Topology, cpus: float, mb: int, idle_cpus: dict[int, float],
           reserve_mb: int = 0) -> Advice:
    """The nodes a job of `cpus` CPUs and `mb` MiB should be started on now."""
    candidates = [n for n in topology.cpu_nodes_only]
    free = {n: max(0, topology.nodes[n].free_mb - reserve_mb) for n in topology.node_ids}
    idle = {n: idle_cpus.get(n, float(len(topology.nodes[n].cpus))) for n in candidates}
    for k in range(1, len(candidates) + 1):
        fits = []
        for group in combinations(candidates, k):
            g_idle = sum(idle[n] for n in group)
            g_free = sum(free[n] for n in group)
            if g_idle + 1e-9 < cpus or g_free < mb:
                continue
            spread = sum(topology.distance(a, b) for a in group for b in group if a != b)
            fits.append((spread, -g_idle, -g_free, group))
        if fits:
            spread, neg_idle, neg_free, group = min(fits)
            where = "node" if k == 1 else "nodes"
            return Advice(group, f"{where} {','.join(map(str, group))}: {-neg_idle:.1f} idle CPUs, "
                                 f"{-neg_free} MB free (job: {cpus:g} CPUs, {mb} MB)")
    return Advice(tuple(candidates), f"no set of nodes has {cpus:g} idle CPUs and {mb} MB free: "
                                     "use all nodes")
