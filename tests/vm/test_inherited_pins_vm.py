"""Pins inherited from a thread the daemon pinned, in the 2- and 4-node VMs.

A process with two busy threads, on nodes of one CPU each, is bigger than one node:
the daemon pins each of its threads to a node. Then its main thread starts a new
thread and forks a child, both busy: the kernel hands both the main thread's pin. They must not be
taken for pins of a user (never balanced, never restored): the state file records
them as the daemon's with the original the daemon replaced (every CPU), the log
names the child's inheritance, and when the daemon stops, the new thread and the
child get every CPU back.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_daemon_vm import Daemon, status
from test_robustness_vm import wait_for

pytestmark = pytest.mark.vm

PROGRAM = r'''
import mmap, os, sys, threading
from autonumad.kernel import numa_calls

go_file, report = sys.argv[1], sys.argv[2]

def busy(buf, until=None):
    while until is None or not os.path.exists(until):
        numa_calls.sweep(buf, 0, len(buf), 1, None)

buf = mmap.mmap(-1, 48 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
numa_calls.sweep(buf, 0, len(buf), 1, None)
# Two busy threads on nodes of one CPU: a process bigger than one node, each of whose
# threads the daemon pins (holds where it runs, or moves).
threading.Thread(target=busy, args=(buf,), daemon=True).start()
busy(buf, go_file)
# each notes the CPUs it was born with, before the daemon, which may move it later, can act
def cpus():
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))

born = {}
def work():
    born["worker"] = cpus()
    busy(buf)

worker = threading.Thread(target=work, daemon=True)
worker.start()
r, w = os.pipe()
child = os.fork()
if child == 0:
    os.write(w, (cpus() + "\n").encode())
    own = mmap.mmap(-1, 24 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    busy(own)
child_cpus = os.read(r, 4096).decode().strip()
while "worker" not in born:
    pass
with open(report, "w") as f:
    f.write(f"{worker.native_id} {child} {born['worker']} {child_cpus}\n")
busy(buf)
'''


def records(d: Daemon) -> dict[tuple[int, int], dict]:
    """(pid, tid) -> the daemon's record of a pin it counts as its own."""
    out = {}
    for key, entry in d.state_file()["affinities"].items():
        pid, _, tid = (int(x) for x in key.split(":"))
        out[(pid, tid)] = entry
    return out


def test_a_new_thread_and_a_forked_child_inherit_the_daemons_pin_and_get_every_cpu_back(tmp_path):
    tmp = str(tmp_path)
    everything = set(os.sched_getaffinity(0))
    program = f"{tmp}/inherits.py"
    with open(program, "w") as f:
        f.write(PROGRAM)
    go, report = f"{tmp}/go", f"{tmp}/report"
    d = Daemon(tmp)
    proc = subprocess.Popen([sys.executable, program, go, report],
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    child = 0
    try:
        try:
            wait_for(lambda: (proc.pid, proc.pid) in records(d), 180, "the daemon to pin the process's main thread")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{d.read_log()[-4000:]}") from None
        pin = set(records(d)[(proc.pid, proc.pid)]["applied"])
        assert pin < everything
        with open(go, "w"):
            pass
        wait_for(lambda: os.path.exists(report) and os.path.getsize(report) > 0, 120, "the new thread and child")
        with open(report) as f:
            fields = f.read().split()
        worker, child = int(fields[0]), int(fields[1])
        born = [{int(c) for c in field.split(",")} for field in fields[2:4]]
        assert born == [pin, pin], (born, pin)  # what each had at birth (the daemon may move them since)
        try:
            wait_for(lambda: {(proc.pid, worker), (child, child)} <= records(d).keys(), 180,
                     "the daemon to adopt the pins the new thread and the child inherited")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{records(d)}\n{d.read_log()[-4000:]}") from None
        held = records(d)
        for k in ((proc.pid, worker), (child, child)):
            assert set(held[k]["original"]) >= everything, held[k]
        assert "inherited autonumad's pin to CPUs" in d.read_log() and f"from pid {proc.pid}" in d.read_log()
        assert status(d.sock)["counters"].get("inherited_pins_adopted", 0) >= 2
        assert d.stop() == 0
        for tid in (worker, child):
            assert set(os.sched_getaffinity(tid)) == everything, f"tid {tid} kept the daemon's pin"
        assert not d.trouble(), "\n".join(d.trouble()[:20])
    finally:
        for pid in (child, proc.pid):
            if pid:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=60)
        if d.proc.poll() is None:
            d.stop()
