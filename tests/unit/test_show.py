"""autonumactl show on a fixture root: the VM-captured /proc tree plus a 2-node sysfs tree."""

import json
import os
import shutil

import pytest

from autonumad import cli
from autonumad.commands import show

from conftest import FIXTURES

PROC_TREE = os.path.join(FIXTURES, "proc", "vm2node")
PIDS = json.load(open(os.path.join(PROC_TREE, "scenarios.json")))["pids"]
MIXED, MEMBIND = PIDS["mixed"], PIDS["membind"]


@pytest.fixture
def root(tmp_path):
    shutil.copytree(os.path.join(PROC_TREE, "proc"), tmp_path / "proc")
    shutil.copytree(os.path.join(FIXTURES, "sysfs", "2node", "sys"), tmp_path / "sys")
    return str(tmp_path)


def run(root, *argv, capsys):
    args = cli.build_parser().parse_args(["--root", root, "show", *argv])
    rc = show.run(args, sleep=lambda s: None)
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_of_a_pid_has_node_keyed_memory_and_threads(root, capsys):
    rc, out, _ = run(root, str(MIXED), "--json", capsys=capsys)
    assert rc == 0
    report = json.loads(out)
    assert report["pid"] == MIXED and report["comm"] == "python3"
    assert set(report["memory_mb"]) == {"0", "1"}
    assert report["rows_mb"]["huge"] == {"0": 0.0, "1": 4.0}
    assert report["rows_mb"]["heap"] == {"0": round(59 * 4096 / 2**20, 2), "1": round(1181 * 4096 / 2**20, 2)}
    assert report["total_mb"] == pytest.approx(sum(report["memory_mb"].values()), abs=0.02)
    assert report["policies_mb"]["bind:0"] == 4.0 and report["policies_mb"]["bind:1"] == 4.0
    assert len(report["threads"]) == 2
    main = next(t for t in report["threads"] if t["tid"] == MIXED)
    assert main["cpu"] == 0 and main["node"] == 0 and main["preferred_node"] == 0
    assert main["run_share"] is None and main["accesses"] is None   # no run time in a still tree
    assert "need the daemon" in report["history"]


def test_name_matches_several_processes(root, capsys):
    rc, out, _ = run(root, "python*", "--json", "--interval", "0", capsys=capsys)
    assert rc == 0
    reports = json.loads(out)["processes"]
    assert sorted(r["pid"] for r in reports) == sorted(p for n, p in PIDS.items() if n != "kthread")
    membind = next(r for r in reports if r["pid"] == MEMBIND)
    assert set(membind["policies_mb"]) == {"bind:1"} and membind["self_placed_share"] == 1.0
    assert "not measured" in membind["history"]


def test_text_is_numastat_shaped(root, capsys):
    rc, out, _ = run(root, str(MIXED), capsys=capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == f"Per-node process memory usage (in MBs) for PID {MIXED} (python3)"
    assert lines[1].split() == ["Node", "0", "Node", "1", "Total"]
    assert [line.split()[0] for line in lines[3:9]] == ["Huge", "Heap", "Stack", "Private", "-" * 16, "Total"]
    assert lines[3].split() == ["Huge", "0.00", "4.00", "4.00"]
    assert any(line.split()[:1] == [str(MIXED)] for line in lines)


def test_no_match_is_an_error(root, capsys):
    rc, _, err = run(root, "nosuch", capsys=capsys)
    assert rc == 1 and "no process matches" in err


def test_kernel_thread_is_not_shown(root, capsys):
    rc, _, err = run(root, "2", capsys=capsys)
    assert rc == 1 and "no process matches" in err
