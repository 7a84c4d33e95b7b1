import json
import os

from conftest import FIXTURES

from autonumad.cli import main
from autonumad.commands.topology import format_numactl
from autonumad.topology import Node, Topology

SYSFS = os.path.join(FIXTURES, "sysfs")

# What numactl -H printed in the 4-node VM, with the free figures of the captured meminfo.
FOUR_NODE_TEXT = """\
available: 4 nodes (0-3)
node 0 cpus: 0
node 0 size: 1006 MB
node 0 free: 988 MB
node 1 cpus: 1
node 1 size: 899 MB
node 1 free: 875 MB
node 2 cpus: 2
node 2 size: 1007 MB
node 2 free: 979 MB
node 3 cpus: 3
node 3 size: 1004 MB
node 3 free: 981 MB
node distances:
node   0   1   2   3 
  0:  10  16  22  16 
  1:  16  10  16  22 
  2:  22  16  10  16 
  3:  16  22  16  10 
"""


def run_topology(capsys, tree, *extra):
    rc = main(["--root", os.path.join(SYSFS, tree), "topology", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_topology_prints_the_numactl_hardware_layout(capsys):
    assert run_topology(capsys, "4node") == (0, FOUR_NODE_TEXT, "")


def test_memory_only_node_prints_an_empty_cpu_list(capsys):
    rc, out, _ = run_topology(capsys, "memory-only")
    assert rc == 0
    assert "node 2 cpus:\n" in out
    assert "  2:  30  30  10 \n" in out


def test_sparse_ids_are_listed_and_label_the_matrix(capsys):
    _, out, _ = run_topology(capsys, "sparse")
    lines = out.splitlines()
    assert lines[0] == "available: 2 nodes (0,2)"
    assert lines[-3:] == ["node   0   2 ", "  0:  10  20 ", "  2:  20  10 "]


def test_asymmetric_rows_print_the_distance_from_the_row_node(capsys):
    _, out, _ = run_topology(capsys, "asymmetric")
    assert "  0:  10  15  22  16 \n  1:  25  10  16  22 \n" in out


def test_wide_numbers_keep_numactls_sign_space():
    node = Node(id=100, cpus=(7,), mem_total_kb=4096, mem_free_kb=0, distances={100: 10})
    topo = Topology(nodes={100: node}, online=(100,), possible=(100,), has_cpu=(100,),
                    has_memory=(100,), cpus_online=(7,))
    assert format_numactl(topo).splitlines()[-2:] == ["node  100 ", " 100:  10 "]


def test_json_keys_nodes_by_id_with_sizes_and_distances(capsys):
    rc, out, _ = run_topology(capsys, "memory-only", "--json")
    assert rc == 0
    data = json.loads(out)
    assert list(data["nodes"]) == ["0", "1", "2"]
    assert data["nodes"]["0"]["cpus"] == [0]
    assert data["nodes"]["2"]["cpus"] == []
    assert data["nodes"]["2"]["size_mb"] == 1005 and data["nodes"]["2"]["free_mb"] == 997
    assert data["nodes"]["0"]["distances"] == {"0": 10, "1": 20, "2": 30}
    assert data["has_cpu"] == [0, 1] and data["has_memory"] == [0, 1, 2]


def test_unreadable_tree_fails_with_the_file_named(capsys, tmp_path):
    rc = main(["--root", str(tmp_path), "topology"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert f"cannot read {tmp_path}/sys/devices/system/cpu/online" in err
