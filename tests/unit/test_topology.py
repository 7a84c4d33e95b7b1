import json
import os
import shutil

import pytest
from conftest import FIXTURES

from autonumad.kernel.files import KernelFiles
from autonumad.topology import (Node, Topology, TopologyError, describe_cpu_changes, read_topology,
                                refresh_topology)

SYSFS = os.path.join(FIXTURES, "sysfs")
NODE_DIR = "sys/devices/system/node"
ALL_TREES = ["1node", "2node", "4node", "8node", "asymmetric", "memory-only", "sparse", "cpu-offline", "no-numa"]


def topo(name: str) -> Topology:
    return read_topology(KernelFiles(os.path.join(SYSFS, name)))


def copy_tree(name: str, tmp_path) -> str:
    root = str(tmp_path / name)
    shutil.copytree(os.path.join(SYSFS, name), root)
    return root


def write(root: str, rel: str, text: str) -> None:
    with open(os.path.join(root, rel), "w") as f:
        f.write(text)


@pytest.mark.parametrize("name", ALL_TREES)
def test_every_fixture_reads_into_a_consistent_topology(name):
    t = topo(name)
    assert t.node_ids == t.online
    assert set(t.online) <= set(t.possible)
    for n in t.node_ids:
        assert t.distance(n, n) == 10
        assert set(t.nodes[n].distances) == set(t.node_ids)
        assert 0 <= t.nodes[n].mem_free_kb <= t.nodes[n].mem_total_kb
    assert sorted(t.cpu_nodes) == list(t.cpus_online)
    assert t.cpu_nodes_only == t.has_cpu
    json.dumps(t.to_json())


def test_one_node_host_is_not_numa():
    t = topo("1node")
    assert t.node_ids == (0,)
    assert t.nodes[0].cpus == (0, 1)
    assert t.nodes_by_distance(0) == (0,)
    assert not t.is_numa


def test_two_node_vm_tree_gives_cpus_memory_and_distances():
    t = topo("2node")
    assert t.node_ids == (0, 1)
    assert t.nodes[0].cpus == (0, 1) and t.nodes[1].cpus == (2, 3)
    assert t.cpu_nodes == {0: 0, 1: 0, 2: 1, 3: 1}
    assert t.node_of_cpu(3) == 1
    assert t.nodes[1].mem_total_kb == 1029320 and t.nodes[1].mem_free_kb == 979184
    assert t.nodes[1].size_mb == 1005 and t.nodes[1].free_mb == 956
    assert t.distance(0, 1) == t.distance(1, 0) == 20
    assert t.is_numa


def test_four_node_ring_orders_neighbours_before_the_opposite_node():
    t = topo("4node")
    assert t.nodes_by_distance(0) == (0, 1, 3, 2)
    assert t.nodes_by_distance(1) == (1, 0, 2, 3)
    assert t.nodes_by_distance(2) == (2, 1, 3, 0)


def test_eight_node_two_socket_orders_by_distance_then_id():
    t = topo("8node")
    assert len(t.cpus_online) == 32
    assert t.nodes[0].cpus == (0, 1, 16, 17)
    assert t.node_of_cpu(21) == 2
    assert t.nodes_by_distance(0) == (0, 1, 2, 3, 4, 5, 6, 7)
    assert t.nodes_by_distance(5) == (5, 4, 6, 7, 1, 0, 2, 3)
    assert t.nodes_by_distance(7) == (7, 4, 5, 6, 3, 0, 1, 2)


def test_asymmetric_distances_keep_each_direction():
    t = topo("asymmetric")
    assert t.distance(0, 1) == 15
    assert t.distance(1, 0) == 25
    assert t.nodes_by_distance(0) == (0, 1, 3, 2)
    assert t.nodes_by_distance(1) == (1, 2, 3, 0)


def test_memory_only_node_has_memory_and_no_cpus():
    t = topo("memory-only")
    assert t.node_ids == (0, 1, 2)
    assert t.nodes[2].cpus == ()
    assert t.nodes[2].mem_total_kb > 0
    assert t.has_cpu == (0, 1) and t.has_memory == (0, 1, 2)
    assert t.cpu_nodes_only == (0, 1)
    assert 2 not in t.cpu_nodes.values()
    assert t.nodes_by_distance(2) == (2, 0, 1)


def test_sparse_node_ids_map_distance_columns_to_online_ids():
    t = topo("sparse")
    assert t.node_ids == (0, 2)
    assert t.possible == (0, 1, 2, 3)
    assert t.nodes[0].distances == {0: 10, 2: 20}
    assert t.nodes[2].distances == {0: 20, 2: 10}
    assert t.node_of_cpu(2) == 2
    assert t.nodes_by_distance(2) == (2, 0)
    with pytest.raises(KeyError, match="no node 1"):
        t.distance(0, 1)


def test_offline_cpu_belongs_to_no_node():
    t = topo("cpu-offline")
    assert t.cpus_online == (0, 1, 2)
    assert t.nodes[3].cpus == ()
    assert t.cpu_nodes_only == (0, 1, 2)
    assert 3 in t.has_memory
    with pytest.raises(KeyError, match="CPU 3"):
        t.node_of_cpu(3)


def test_an_offline_cpu_is_known_as_its_nodes_offline_cpu():
    t = topo("cpu-offline")
    assert t.cpus_offline == (3,)
    assert {n: t.nodes[n].offline_cpus for n in t.node_ids} == {0: (), 1: (), 2: (), 3: (3,)}
    data = t.to_json()
    assert data["cpus_offline"] == [3] and data["nodes"]["3"]["offline_cpus"] == [3]


def test_an_offline_cpu_without_a_node_link_is_offline_on_no_node(tmp_path):
    root = copy_tree("cpu-offline", tmp_path)
    shutil.rmtree(os.path.join(root, "sys/devices/system/cpu/cpu3"))
    t = read_topology(KernelFiles(root))
    assert t.cpus_offline == (3,)
    assert all(t.nodes[n].offline_cpus == () for n in t.node_ids)


def test_trees_without_cpu_present_have_no_offline_cpus():
    for name in ("2node", "memory-only", "no-numa"):
        t = topo(name)
        assert t.cpus_offline == () and all(t.nodes[n].offline_cpus == () for n in t.node_ids), name


def test_cpu_changes_are_described_per_node(tmp_path):
    full, offline = topo("4node"), topo("cpu-offline")
    root = copy_tree("2node", tmp_path)
    write(root, "sys/devices/system/cpu/online", "0-2\n")
    assert describe_cpu_changes(topo("2node"), read_topology(KernelFiles(root))) == [
        "node 1: CPU 3 went offline; it has CPU 2 online"]
    assert describe_cpu_changes(full, offline) == [
        "node 3: CPU 3 went offline; it holds memory only: no thread is placed there until a CPU of it comes back"]
    assert describe_cpu_changes(offline, full) == ["node 3: CPU 3 came back online; it has CPU 3 online"]
    assert describe_cpu_changes(full, full) == []


def test_offline_cpu_still_in_a_cpulist_is_left_out(tmp_path):
    root = copy_tree("2node", tmp_path)
    write(root, "sys/devices/system/cpu/online", "0-2\n")
    t = read_topology(KernelFiles(root))
    assert t.nodes[1].cpus == (2,)


def test_kernel_without_numa_is_one_node_with_all_cpus_and_memory():
    t = topo("no-numa")
    assert t.node_ids == (0,)
    assert t.nodes[0].cpus == t.cpus_online == (0, 1)
    assert (t.nodes[0].mem_total_kb, t.nodes[0].mem_free_kb) == (24683656, 22823544)
    assert t.distance(0, 0) == 10
    assert not t.is_numa


def test_missing_optional_masks_are_derived(tmp_path):
    root = copy_tree("memory-only", tmp_path)
    for name in ("possible", "has_cpu", "has_memory"):
        os.remove(os.path.join(root, NODE_DIR, name))
    t = read_topology(KernelFiles(root))
    assert t.possible == (0, 1, 2)
    assert t.has_cpu == (0, 1)
    assert t.has_memory == (0, 1, 2)


@pytest.mark.parametrize("rel", [
    f"{NODE_DIR}/online",
    f"{NODE_DIR}/node1/cpulist",
    f"{NODE_DIR}/node1/distance",
    f"{NODE_DIR}/node1/meminfo",
    "sys/devices/system/cpu/online",
])
def test_missing_required_file_is_named(tmp_path, rel):
    root = copy_tree("2node", tmp_path)
    os.remove(os.path.join(root, rel))
    with pytest.raises(TopologyError, match=f"cannot read {os.path.join(root, rel)}: No such file"):
        read_topology(KernelFiles(root))


def test_distance_row_of_wrong_length_is_named(tmp_path):
    root = copy_tree("sparse", tmp_path)
    write(root, f"{NODE_DIR}/node2/distance", "20 10 20\n")
    with pytest.raises(TopologyError, match=r"node2/distance: 3 distances for 2 online nodes \(0,2\)"):
        read_topology(KernelFiles(root))


def test_malformed_files_are_named(tmp_path):
    root = copy_tree("2node", tmp_path)
    write(root, f"{NODE_DIR}/node0/cpulist", "0-x\n")
    with pytest.raises(TopologyError, match="node0/cpulist: bad list element"):
        read_topology(KernelFiles(root))
    write(root, f"{NODE_DIR}/node0/cpulist", "0-1\n")
    write(root, f"{NODE_DIR}/node0/meminfo", "Node 0 MemTotal:        1000 kB\n")
    with pytest.raises(TopologyError, match="node0/meminfo: no Node 0 MemFree line"):
        read_topology(KernelFiles(root))
    write(root, f"{NODE_DIR}/node0/meminfo", "Node 0 MemTotal: 1000 kB\nNode 0 MemFree: 10 kB\n")
    write(root, f"{NODE_DIR}/node0/distance", "10 far\n")
    with pytest.raises(TopologyError, match="node0/distance: not a list of numbers"):
        read_topology(KernelFiles(root))


def test_unknown_node_lookups_name_the_node():
    t = topo("2node")
    with pytest.raises(KeyError, match="no node 5"):
        t.distance(5, 0)
    with pytest.raises(KeyError, match="no node 5"):
        t.nodes_by_distance(5)


def test_to_json_keys_nodes_by_id_string():
    data = topo("sparse").to_json()
    assert data["online"] == [0, 2] and data["possible"] == [0, 1, 2, 3]
    assert list(data["nodes"]) == ["0", "2"]
    node2 = data["nodes"]["2"]
    assert node2["cpus"] == [2, 3]
    assert node2["size_mb"] == 1005 and node2["free_mb"] == 956
    assert node2["distances"] == {"0": 20, "2": 10}
    assert json.loads(json.dumps(data)) == data


def test_sizes_round_down_to_whole_mib_as_numactl_does():
    node = Node(id=0, cpus=(0,), mem_total_kb=2047, mem_free_kb=1024, distances={0: 10})
    assert (node.size_mb, node.free_mb) == (1, 1)


def test_refresh_rereads_free_memory_and_falls_back_to_a_full_read_when_cpus_change(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(os.path.join(SYSFS, "4node"), root)
    files = KernelFiles(str(root))
    first = read_topology(files)
    assert refresh_topology(files, first) == first
    meminfo = root / "sys/devices/system/node/node2/meminfo"
    meminfo.write_text(meminfo.read_text().replace("MemFree:  ", "MemFree:  9", 1))
    refreshed = refresh_topology(files, first)
    assert refreshed == read_topology(files) and refreshed.nodes[2].mem_free_kb != first.nodes[2].mem_free_kb
    shutil.rmtree(root / "sys")
    shutil.copytree(os.path.join(SYSFS, "cpu-offline", "sys"), root / "sys")
    offline = refresh_topology(files, first)
    assert offline == read_topology(files) and offline.nodes[3].cpus == ()
