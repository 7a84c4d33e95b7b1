"""The daemon following CPUs that go offline and come back, on fixture trees.

A daemon is built on a copy of the 4-node tree, whose sys/ is then swapped for the
cpu-offline tree (CPU 3 offline: node 3 holds memory only) and back, with a pass
after each swap. Its pass logs the change, forgets an affinity it had set on CPU 3
that the kernel has since reset (this test's own thread stands in for that thread:
its real affinity has no CPU 3), and its status names the memory-only node and the
offline CPU. The actuator's side (online CPUs only, refused moves, restoring) is in
test_actuator.py; the text of `autonumactl status` in test_cli_control.py.
"""

import logging
import os
import shutil
import threading

from conftest import FIXTURES

from autonumad.config import load_config
from autonumad.daemon import Daemon
from autonumad.kernel.files import KernelFiles
from autonumad.kernel.procfs import read_stat
from autonumad.state_file import AffinityRecord, StateFile, ThreadKey

SYSFS = os.path.join(FIXTURES, "sysfs")


def swap_sys(root: str, tree: str) -> None:
    shutil.rmtree(os.path.join(root, "sys"))
    shutil.copytree(os.path.join(SYSFS, tree, "sys"), os.path.join(root, "sys"))


def make_daemon(tmp_path) -> Daemon:
    root = str(tmp_path / "root")
    shutil.copytree(os.path.join(SYSFS, "4node"), root)
    os.makedirs(os.path.join(root, "proc"))
    for name, text in (("cmdline", "quiet\n"), ("uptime", "1000.00 900.00\n")):
        with open(os.path.join(root, "proc", name), "w") as f:
            f.write(text)
    conf = tmp_path / "autonumad.conf"
    conf.write_text(f'[daemon]\nstate_file = "{tmp_path}/state.json"\ncontrol_socket = "{tmp_path}/s.sock"\n')
    return Daemon(load_config(str(conf)), str(conf), KernelFiles(root))


def test_a_node_whose_cpus_go_offline_holds_memory_only_until_they_come_back(tmp_path, caplog):
    d = make_daemon(tmp_path)
    me = ThreadKey(os.getpid(), read_stat(KernelFiles("/"), os.getpid()).start_time_ticks,
                   threading.get_native_id())
    d.actuator.state.affinities[me] = AffinityRecord(frozenset({0, 1, 2, 3}), frozenset({3}), "pytest")
    caplog.set_level(logging.INFO, logger="autonumad")

    swap_sys(d.files.root, "cpu-offline")
    d.run_pass()
    status = d.handle_status({})
    assert status["nodes"]["3"]["cpus"] == [] and status["nodes"]["3"]["memory_only"]
    assert status["nodes"]["3"]["offline_cpus"] == [3] and status["cpus_offline"] == [3]
    assert not status["nodes"]["2"]["memory_only"]
    assert d.tasks.cpu_nodes == {0: 0, 1: 1, 2: 2}
    messages = [r.getMessage() for r in caplog.records]
    assert ("node 3: CPU 3 went offline; it holds memory only: no thread is placed there until a CPU "
            "of it comes back") in messages
    reset = [m for m in messages if m.startswith(f"pid {me.pid} (pytest) tid {me.tid}: its CPUs 3 went offline")]
    assert len(reset) == 1, messages
    assert me not in StateFile(str(tmp_path / "state.json")).load().affinities
    assert d.all_counters()["affinities_reset_by_kernel"] == 1
    assert d.actuator.move_task(me.pid, me.start_time, me.tid, 3) == "refused: node has no online CPUs"

    swap_sys(d.files.root, "4node")
    d.run_pass()
    status = d.handle_status({})
    assert status["nodes"]["3"]["cpus"] == [3] and not status["nodes"]["3"]["memory_only"]
    assert status["cpus_offline"] == []
    assert "node 3: CPU 3 came back online; it has CPU 3 online" in [r.getMessage() for r in caplog.records]
