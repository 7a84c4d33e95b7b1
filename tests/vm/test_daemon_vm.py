"""The daemon on real pages and real threads, in the 2- and 4-node VMs.

One daemon runs for the module (kernel balancing off while it runs, as in
production); each test starts workloads against it:
- an adversarial numa01 start (free threads, memory on the next node) is fixed,
  mostly by moving threads (CPU follows memory), with the buffers intact;
- an adversarial numa02 start with pinned threads is fixed by moving memory
  (memory follows CPU), and the pinned threads stay pinned where their user put them;
- a process pinned and bound by its user (numactl --cpunodebind --membind) keeps
  both its affinity and its memory;
- the affinities the daemon set are restored when it stops, and
  kernel.numa_balancing gets its original value back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.vm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CONFIG = """
[daemon]
state_file = "{tmp}/state.json"
control_socket = "{tmp}/run/control.sock"
log_level = "debug"
[policy]
min_rss_mb = 16
min_cpu_percent = 5
settle_seconds = 5
"""


def online_cpus() -> set[int]:
    return os.sched_getaffinity(0)


def node_count() -> int:
    return len([d for d in os.listdir("/sys/devices/system/node") if d.startswith("node")])


def status(sock: str) -> dict:
    """The daemon's status, asked in-process (a new interpreter costs many seconds under TCG)."""
    from autonumad.control_client import ControlError, DaemonNotRunning, request
    try:
        return request("status", path=sock, timeout=60)
    except (ControlError, DaemonNotRunning, OSError) as exc:
        raise AssertionError(f"status: {exc}") from None


class Daemon:
    """autonumad with a temporary config, socket and state file; restartable on the same ones."""

    def __init__(self, tmp: str, config: str = CONFIG, log_name: str = "daemon.log") -> None:
        os.makedirs(f"{tmp}/run", mode=0o755, exist_ok=True)
        self.tmp = tmp
        self.sock = f"{tmp}/run/control.sock"
        self.state_path = f"{tmp}/state.json"
        self.conf = f"{tmp}/autonumad.conf"
        if not os.path.exists(self.conf):
            with open(self.conf, "w") as f:
                f.write(config.format(tmp=tmp))
                # The test runner is no workload: pinned by the daemon while it starts one, it
                # would hand the pin to the workload, which takes its affinity as the CPUs it may use.
                f.write(f"\n[processes]\nexclude_pids = [{os.getpid()}]\n")
        self.log_path = f"{tmp}/{log_name}"
        self.balancing_before = open("/proc/sys/kernel/numa_balancing").read().strip()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "autonumad.daemon_main", "--config", self.conf],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 240
        while True:
            assert self.proc.poll() is None, self.read_log()
            try:
                status(self.sock)
                return
            except AssertionError:
                assert time.monotonic() < deadline, "daemon never answered status:\n" + self.read_log()
                time.sleep(1)

    def read_log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def trouble(self) -> list[str]:
        """Log lines at ERROR level or from a traceback."""
        return [line for line in self.read_log().splitlines()
                if " ERROR:" in line or "Traceback" in line or "CRITICAL" in line]

    def state_file(self) -> dict:
        with open(self.state_path) as f:
            return json.load(f)

    def usage(self) -> tuple[float, int]:
        """(CPU seconds so far, RSS in KiB) of the daemon process."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{self.proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, rss

    def set_knob(self, knob: str, value: int) -> int:
        """Change a runtime knob; returns its previous value."""
        from autonumad.control_client import request
        return request("set", {"knob": knob, "value": value}, path=self.sock, timeout=60)["previous"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=300)


class Workload:
    def __init__(self, tmp: str, name: str, *args: str) -> None:
        self.report = f"{tmp}/{name}.jsonl"
        self.ready = f"{tmp}/{name}.ready"
        self.proc = subprocess.Popen([f"{BIN}/autonumad-workload", "--report", self.report, "--ready-file",
                                      self.ready, "--verify", "--interval", "1", *args], cwd=REPO)
        deadline = time.monotonic() + 240
        while not os.path.exists(self.ready):
            assert self.proc.poll() is None, f"workload {name} failed to start"
            assert time.monotonic() < deadline, f"workload {name} never got ready"
            time.sleep(0.5)
        with open(self.ready) as f:
            self.pids = json.load(f)["pids"]

    def reports(self) -> list[dict]:
        with open(self.report) as f:
            return [json.loads(line) for line in f if line.strip()]

    def locality(self, last_s: float = 3.0) -> float:
        """Mean locality of every thread's reports in the last `last_s` seconds."""
        rows = [r for r in self.reports() if "locality" in r]
        if not rows:
            return 0.0
        end = max(r["t"] for r in rows)
        recent = [r["locality"] for r in rows if r["t"] >= end - last_s]
        return sum(recent) / len(recent)

    def wait_locality(self, target: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(2)
            loc = self.locality()
            if loc >= target:
                return loc
        return self.locality()

    def thread_ids(self) -> list[int]:
        return [int(t) for pid in self.pids for t in os.listdir(f"/proc/{pid}/task")]

    def stop(self) -> list[dict]:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=120) == 0
        return [r["summary"] for r in self.reports() if "summary" in r]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(str(tmp_path_factory.mktemp("daemon")))
    yield d
    if d.proc.poll() is None:
        d.stop()


def test_daemon_fixes_an_adversarial_numa01_start_and_restores_affinity_on_stop(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("numa01"))
    d = Daemon(tmp)
    assert open("/proc/sys/kernel/numa_balancing").read().strip() == "0"
    nodes = node_count()
    w = Workload(tmp, "numa01", "--shape", "numa01", "--processes", str(nodes), "--threads", "1",
                 "--mb", "64", "--duration", "300", "--affinity", "free")
    try:
        loc = w.wait_locality(0.9, timeout=150)
        assert loc >= 0.9, f"locality {loc:.2f} after 150 s\n{d.read_log()}"
        st = status(d.sock)
        assert st["counters"].get("task_moves", 0) >= 1, st["counters"]
        deadline = time.monotonic() + 60
        while all(os.sched_getaffinity(t) == online_cpus() for t in w.thread_ids()):
            assert time.monotonic() < deadline, "the daemon placed threads, so some affinity must be narrowed"
            time.sleep(1)
        assert d.stop() == 0
        for t in w.thread_ids():
            assert os.sched_getaffinity(t) == online_cpus(), f"thread {t} kept the daemon's affinity"
        assert open("/proc/sys/kernel/numa_balancing").read().strip() == d.balancing_before
    finally:
        d.stop()
        summaries = w.stop()
    assert all(s["mismatches"] == 0 and s["verified_bytes"] > 0 for s in summaries), summaries


def test_pinned_numa02_threads_stay_and_their_memory_comes_to_them(daemon, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("numa02"))
    w = Workload(tmp, "numa02", "--shape", "numa02", "--threads", "2", "--mb", "48", "--duration", "300",
                 "--affinity", "pinned")
    try:
        pinned_before = {t: os.sched_getaffinity(t) for t in w.thread_ids()}
        loc = w.wait_locality(0.9, timeout=180)
        assert loc >= 0.9, f"locality {loc:.2f} after 180 s\n{daemon.read_log()}"
        assert {t: os.sched_getaffinity(t) for t in w.thread_ids()} == pinned_before
        assert status(daemon.sock)["counters"].get("pages_migrated", 0) > 0
        # its movers ran on the CPUs of the nodes they moved pages to, then got their own back
        # (a later pass may be moving a few pages right now: that pin goes within seconds)
        deadline = time.monotonic() + 30
        while any(os.sched_getaffinity(int(t)) != online_cpus() for t in os.listdir(f"/proc/{daemon.proc.pid}/task")):
            assert time.monotonic() < deadline, "a thread of the daemon kept a mover's CPUs"
            time.sleep(0.5)
    finally:
        summaries = w.stop()
    assert all(s["mismatches"] == 0 for s in summaries), summaries


CHILD = """
import mmap, os, sys, time
buf = mmap.mmap(-1, 48 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, len(buf), 4096):
    buf[i] = 1
print(os.getpid(), flush=True)
end = time.monotonic() + 120
while time.monotonic() < end:
    for i in range(0, len(buf), 4096):
        buf[i] = (buf[i] + 1) & 0xFF
"""


def test_a_process_pinned_and_bound_by_its_user_keeps_affinity_and_memory(daemon):
    from autonumad.kernel.files import KernelFiles
    from autonumad.kernel.procfs import read_numa_maps

    child = subprocess.Popen(["numactl", "--cpunodebind=0", "--membind=1", sys.executable, "-c", CHILD],
                             stdout=subprocess.PIPE, text=True)
    try:
        pid = int(child.stdout.readline())
        affinity = os.sched_getaffinity(pid)

        def node1_pages() -> int:
            return sum(e.node_base_pages.get(1, 0) for e in read_numa_maps(KernelFiles("/"), pid))

        before = node1_pages()
        time.sleep(25)  # several passes of the daemon
        assert os.sched_getaffinity(pid) == affinity
        assert node1_pages() >= before * 0.98
    finally:
        child.kill()
        child.wait()
