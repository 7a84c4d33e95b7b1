"""Inside the NUMA VM: the topology read from the live kernel agrees with `numactl -H`.

The tests adapt to whatever topology the VM was booted with (2 nodes, 4 nodes,
memory-only nodes, custom distances).
"""

import os
import re
import subprocess
import sys
import time

import pytest

from autonumad.kernel.files import KernelFiles
from autonumad.topology import read_topology

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE_SLACK_MB = 2
FREE_SLACK_MB = 32  # free memory moves between numactl's read and ours


def parse_numactl_hardware(text: str) -> dict:
    """The facts `numactl -H` prints: node ids, cpus, size and free MB, distance matrix."""
    parsed: dict = {"cpus": {}, "size": {}, "free": {}, "distances": {}}
    columns: list[int] = []
    in_matrix = False
    for line in text.splitlines():
        if m := re.fullmatch(r"available: (\d+) nodes \((.*)\)", line):
            parsed["count"], parsed["listed"] = int(m.group(1)), m.group(2)
        elif m := re.fullmatch(r"node (\d+) cpus:((?: \d+)*)", line):
            parsed["cpus"][int(m.group(1))] = [int(c) for c in m.group(2).split()]
        elif m := re.fullmatch(r"node (\d+) (size|free): (\d+) MB", line):
            parsed[m.group(2)][int(m.group(1))] = int(m.group(3))
        elif line == "node distances:":
            in_matrix = True
        elif in_matrix and line.startswith("node "):
            columns = [int(x) for x in line[len("node "):].split()]
        elif in_matrix and (m := re.fullmatch(r"\s*(\d+):((?:\s+\d+)+)\s*", line)):
            parsed["distances"][int(m.group(1))] = dict(zip(columns, map(int, m.group(2).split())))
        else:
            raise AssertionError(f"unexpected numactl -H line: {line!r}")
    return parsed


@pytest.fixture(scope="module")
def numactl_text() -> str:
    return subprocess.run(["numactl", "-H"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def numactl(numactl_text):
    return parse_numactl_hardware(numactl_text)


@pytest.fixture(scope="module")
def topo():
    return read_topology(KernelFiles("/"))


def test_vm_has_the_nodes_it_was_booted_with(topo):
    assert topo.is_numa
    assert len(topo.node_ids) >= 2
    if "AUTONUMAD_VM_NODES" in os.environ:
        assert len(topo.cpu_nodes_only) == int(os.environ["AUTONUMAD_VM_NODES"])


def test_node_ids_and_cpus_match_numactl(topo, numactl):
    assert numactl["count"] == len(topo.node_ids)
    assert sorted(numactl["cpus"]) == list(topo.node_ids)
    assert {n: list(topo.nodes[n].cpus) for n in topo.node_ids} == numactl["cpus"]
    assert sorted(topo.cpu_nodes) == list(topo.cpus_online)


def test_memory_sizes_match_numactl(topo, numactl):
    for n in topo.node_ids:
        assert abs(topo.nodes[n].size_mb - numactl["size"][n]) <= SIZE_SLACK_MB, f"node {n} size"
    # Free memory is read afresh, ours and numactl's back to back: the module's fixtures were
    # read earlier, and memory an earlier test's processes held can still be coming back.
    for attempt in range(5):
        ours = read_topology(KernelFiles("/"))
        theirs = parse_numactl_hardware(subprocess.run(["numactl", "-H"], capture_output=True, text=True,
                                                       check=True).stdout)
        off = {n: round(ours.nodes[n].free_mb - theirs["free"][n]) for n in ours.node_ids
               if abs(ours.nodes[n].free_mb - theirs["free"][n]) > FREE_SLACK_MB}
        if not off:
            return
        time.sleep(2)
    raise AssertionError(f"free MB, ours minus numactl's, beyond {FREE_SLACK_MB} MB: {off}")


def test_distance_matrix_matches_numactl(topo, numactl):
    assert {n: topo.nodes[n].distances for n in topo.node_ids} == numactl["distances"]


def test_autonumactl_topology_prints_what_numactl_prints(numactl_text):
    ours = subprocess.run([sys.executable, "-m", "autonumad.cli", "topology"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout

    def without_free(text: str) -> list[str]:
        return [line for line in text.splitlines() if not re.fullmatch(r"node \d+ free: \d+ MB", line)]

    assert without_free(ours) == without_free(numactl_text)
