import os

import pytest

from autonumad.kernel.files import KernelFiles
from autonumad.placement_advice import advise, parse_job_size
from autonumad.topology import read_topology

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "sysfs")


def topo(name):
    return read_topology(KernelFiles(os.path.join(FIXTURES, name)))


def test_small_job_goes_to_the_idlest_single_node():
    t = topo("4node")
    a = advise(t, 1, 100, {0: 0.2, 1: 1.0, 2: 0.5, 3: 0.0})
    assert a.nodes == (1,)


def test_job_bigger_than_a_node_spans_the_nearest_pair():
    t = topo("8node")
    per_node = len(t.nodes[0].cpus)
    a = advise(t, per_node + 1, 0, {})
    assert len(a.nodes) == 2
    x, y = a.nodes
    assert t.distance(x, y) == min(t.distance(x, n) for n in t.node_ids if n != x)


def test_job_that_fits_nowhere_gets_all_nodes_and_says_so():
    t = topo("2node")
    a = advise(t, 1000, 0, {})
    assert a.nodes == t.cpu_nodes_only and "no set of nodes" in a.reason


def test_parse_job_size_names_bad_input():
    assert parse_job_size("2:1024") == (2.0, 1024)
    assert parse_job_size("0.5") == (0.5, 0)
    for bad in ("", "x", "2:", "-1", "0", "2:1:3"):
        with pytest.raises(ValueError, match="job size"):
            parse_job_size(bad)
