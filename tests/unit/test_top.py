"""autonumactl top: ranking by remote memory (pure), one snapshot in a pipe and as JSON
(on the VM-captured fixture tree and on the live host), and the live screen on a pty."""

import argparse
import json
import mmap
import os
import pty
import select
import shutil
import subprocess
import signal
import sys
import time

import pytest

from autonumad.commands import top
from autonumad.commands.top import TopRow, TopSampler, rank_by_remote, run_nodes
from autonumad.kernel.files import KernelFiles

from conftest import FIXTURES

PROC_TREE = os.path.join(FIXTURES, "proc", "vm2node")
PIDS = json.load(open(os.path.join(PROC_TREE, "scenarios.json")))["pids"]
PAGES_PER_MB = (1 << 20) // mmap.PAGESIZE


def row(pid, node_mb, run_nodes=(0,), comm="p"):
    return TopRow(pid, comm, "root", 1, tuple(run_nodes), {n: mb * PAGES_PER_MB for n, mb in node_mb.items()})


def parse(*argv, root="/"):
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=root)
    top.add_arguments(parser)
    return parser.parse_args(list(argv))


class Pipe:
    """A stdout that is not a terminal."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


@pytest.fixture
def root(tmp_path):
    """The 2-node VM's captured /proc (threads on CPUs 0 and 1) with a sysfs where CPUs 0-1
    are node 0: every fixture process runs on node 0, so its node-1 memory is remote."""
    shutil.copytree(os.path.join(PROC_TREE, "proc"), tmp_path / "proc")
    shutil.copytree(os.path.join(FIXTURES, "sysfs", "2node", "sys"), tmp_path / "sys")
    return str(tmp_path)


# ---------------------------------------------------------------- ranking

def test_remote_memory_is_memory_off_the_nodes_threads_run_on():
    r = row(1, {0: 200.0, 1: 600.0, 2: 100.0}, run_nodes=(1,))
    assert r.remote_pages == 300 * PAGES_PER_MB
    assert r.locality == pytest.approx(600 / 900)
    spread = row(2, {0: 200.0, 1: 600.0, 2: 100.0}, run_nodes=(0, 1))
    assert spread.remote_pages == 100 * PAGES_PER_MB
    assert spread.locality == pytest.approx(800 / 900)


def test_unknown_run_nodes_or_no_memory_give_no_locality():
    assert row(1, {1: 50.0}, run_nodes=()).remote_pages == 0.0
    assert row(1, {1: 50.0}, run_nodes=()).locality is None
    assert row(2, {}, run_nodes=(0,)).locality is None


def test_run_nodes_follow_run_time_not_where_an_idle_thread_sits():
    # the worker ran on node 0 all along; the idle main thread last ran on node 1
    assert run_nodes({0: 5e8, 1: 1e6}, current=[1, 0]) == (0,)
    assert run_nodes({0: 5e8, 1: 1e8}, current=[1, 0]) == (0, 1)      # 1/6 of the time on node 1
    assert run_nodes({}, current=[1, 0, None, 1]) == (0, 1)             # did not run: where it sits
    assert run_nodes({}, current=[None]) == ()


def test_ranking_puts_most_remote_memory_first_then_largest_then_pid():
    rows = [
        row(10, {0: 900.0}),                       # big but all local
        row(11, {0: 100.0, 1: 300.0}),             # 300 remote
        row(12, {1: 300.0, 0: 150.0}),             # 300 remote, larger total
        row(13, {0: 10.0, 1: 600.0}, run_nodes=(0, 1)),   # all local: runs on both
        row(9, {0: 100.0, 1: 300.0}),              # ties with 11: lower pid first
        row(14, {1: 5.0}, run_nodes=(1,)),
    ]
    assert [r.pid for r in rank_by_remote(rows)] == [12, 9, 11, 10, 13, 14]
    assert [r.pid for r in rank_by_remote(rows, limit=2)] == [12, 9]
    assert rank_by_remote(rows, limit=0) == []


# ---------------------------------------------------------------- one snapshot, fixture tree

def test_json_on_fixture_ranks_by_remote_and_keys_nodes_by_string(root):
    out = Pipe()
    assert top.run(parse("--json", root=root), out=out, sleep=lambda s: None) == 0
    report = json.loads(out.text)
    assert set(report) == {"taken_at", "source", "nodes", "processes_seen", "unreadable", "cpu_ms", "daemon",
                           "history", "processes"}
    assert report["nodes"] == ["0", "1"] and report["source"] == "numa_maps"
    assert report["daemon"] == "not asked"
    assert "need the daemon's history" in report["history"]
    procs = report["processes"]
    assert [p["pid"] for p in procs] == [PIDS["mixed"], PIDS["membind"], PIDS["interleave"], PIDS["preferred"]]
    for p in procs:
        assert set(p) == {"pid", "comm", "user", "threads", "run_nodes", "memory_mb", "total_mb",
                          "remote_mb", "locality", "stride", "managed"}
        assert set(p["memory_mb"]) == {"0", "1"}
        assert p["run_nodes"] == [0]
        assert p["remote_mb"] == p["memory_mb"]["1"]
        assert p["total_mb"] == pytest.approx(p["memory_mb"]["0"] + p["memory_mb"]["1"], abs=0.11)
        assert p["stride"] is None and p["managed"] is None
    mixed = procs[0]
    assert mixed["comm"] == "python3" and mixed["threads"] == 2
    assert mixed["locality"] == pytest.approx(mixed["memory_mb"]["0"] / mixed["total_mb"], abs=0.002)


def test_pipe_prints_one_snapshot_with_node_columns_and_a_footer(root):
    out, slept = Pipe(), []
    assert top.run(parse("--limit", "2", root=root), out=out, sleep=slept.append) == 0
    assert all(s <= top.THREAD_WINDOW_S for s in slept)       # no refresh interval
    lines = out.text.splitlines()
    assert lines[0].startswith("autonumactl top - ") and "nodes 0-1" in lines[0] and "processes 4" in lines[0]
    assert lines[1].startswith("memory numa_maps (exact)") and "q quits" not in lines[1]
    assert lines[3].split() == ["PID", "USER", "COMM", "THR", "RUN-ON", "REMOTE", "MB", "LOCAL%",
                                "TOTAL", "MB", "N0", "MB", "N1", "MB"]
    body = lines[4:6]
    assert [int(line.split()[0]) for line in body] == [PIDS["mixed"], PIDS["membind"]]
    assert lines[6] == "" and lines[7].startswith("RUN-ON: nodes with 10% of the threads' run time over the 0.2+ s")
    assert len(lines) == 8


def test_n_prints_that_many_snapshots_interval_apart(root):
    out, slept = Pipe(), []
    assert top.run(parse("-n", "3", "--interval", "0.25", root=root), out=out, sleep=slept.append) == 0
    assert [s for s in slept if s > top.THREAD_WINDOW_S] == [0.25, 0.25]
    assert out.text.count("autonumactl top - ") == 3


def test_bad_interval_or_count_is_refused(root, capsys):
    assert top.run(parse("--interval", "0", root=root), out=Pipe()) == 2
    assert top.run(parse("-n", "0", root=root), out=Pipe()) == 2
    assert "must be" in capsys.readouterr().err


def test_processes_the_daemon_manages_are_marked(root):
    def request(cmd, timeout):
        assert cmd == "show"
        return {"processes": [{"pid": PIDS["membind"]}]}

    snapshot = TopSampler(KernelFiles(root), exact=True, request=request, sleep=lambda s: None).sample()
    assert snapshot.daemon == "running"
    assert {r.pid: r.managed for r in snapshot.rows}[PIDS["membind"]] is True
    assert {r.pid: r.managed for r in snapshot.rows}[PIDS["mixed"]] is False
    lines = top.format_text(snapshot)
    assert lines[3].endswith("  M")
    assert next(line for line in lines if line.split()[:1] == [str(PIDS["membind"])]).endswith("  *")


# ---------------------------------------------------------------- the live host, sampled

HOLDER = """
import mmap, sys
mb = int(sys.argv[1])
buf = mmap.mmap(-1, mb << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
buf.madvise(mmap.MADV_NOHUGEPAGE)
for offset in range(0, len(buf), mmap.PAGESIZE):
    buf[offset] = 1
print("ready", flush=True)
sys.stdin.read()
"""


def test_live_host_json_samples_a_known_process():
    child = subprocess.Popen([sys.executable, "-c", HOLDER, "48"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        out = Pipe()
        assert top.run(parse("--json"), out=out, request=None) == 0
    finally:
        child.stdin.close()
        child.wait()
    report = json.loads(out.text)
    assert report["source"] == "sampled" and report["daemon"] == "not asked"
    mine = next(p for p in report["processes"] if p["pid"] == child.pid)
    assert mine["stride"] >= 1 and mine["threads"] == 1
    assert 48 <= mine["total_mb"] <= 48 * 1.1 + 16     # the buffer plus the interpreter
    assert set(mine["memory_mb"]) == set(report["nodes"])
    assert report["cpu_ms"] < 2000


# ---------------------------------------------------------------- the live screen

RUN_TOP = """
import argparse, sys
from autonumad.commands import top
parser = argparse.ArgumentParser()
parser.add_argument("--root")
top.add_arguments(parser)
sys.exit(top.run(parser.parse_args(sys.argv[1:]), request=None))
"""


def run_on_pty(argv, keys=b"", after=1.0, deadline=20.0):
    """Run top on a pseudo-terminal, type `keys` once `after` seconds have passed;
    return (exit status, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(COLUMNS="120", LINES="30")
        # as from a terminal: a runner started in the background (`cmd &` in a script) hands
        # its children SIGINT ignored, and Python then installs no handler for ctrl-c
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-c", RUN_TOP, *argv])
    output, typed, start = b"", not keys, time.monotonic()
    try:
        while time.monotonic() - start < deadline:
            if not typed and time.monotonic() - start > after:
                os.write(fd, keys)
                typed = True
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:   # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        # a child that closed its terminal may take a moment more to exit (a loaded machine)
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() - start < deadline:
            time.sleep(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_terminal_screen_refreshes_until_q_or_ctrl_c(root, key):
    status, output = run_on_pty(["--root", root, "--interval", "0.2"], keys=key, after=2.0)
    assert status == 0
    assert output.startswith(top.ALT_SCREEN_ON.encode())
    assert output.rstrip().endswith(top.ALT_SCREEN_OFF.encode())
    assert output.count(b"autonumactl top - ") >= 2
    assert b"q quits" in output and b"N1 MB" in output


def test_terminal_with_n_stops_by_itself_on_the_normal_screen(root):
    status, output = run_on_pty(["--root", root, "--interval", "0.1", "-n", "2"])
    assert status == 0
    assert output.count(b"autonumactl top - ") == 2
    assert top.ALT_SCREEN_ON.encode() not in output
