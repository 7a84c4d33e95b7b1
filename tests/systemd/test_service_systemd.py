"""Under a real systemd (PID 1 in the NUMA VM): units handed to the guest are known and run.

One boot serves every test of this module (see systemd_vm.py); the daemon's own checks
(READY, STATUS, reload, watchdog, stop) join CHECKS once the daemon exists.
"""

import os

import pytest

from systemd_vm import SYSTEMD_VM, UNITS, Check, boot_and_check

pytestmark = SYSTEMD_VM

HELLO_UNIT = os.path.join(UNITS, "hello-oneshot.service")

CHECKS = [
    Check("pid1", "cat /proc/1/comm; systemctl is-system-running; echo AUTONUMAD_VM_SYSTEMD=$AUTONUMAD_VM_SYSTEMD"),
    Check("hello", "systemctl cat hello-oneshot.service && systemctl start hello-oneshot.service && "
                   "cat /run/hello-oneshot && systemctl status --no-pager hello-oneshot.service"),
]


@pytest.fixture(scope="module")
def results():
    return boot_and_check(CHECKS, units=[HELLO_UNIT])


def test_checks_run_under_systemd_as_pid1_after_the_boot(results):
    pid1 = results["pid1"]
    assert pid1.status == 0, pid1.output
    comm, state, env = pid1.output.splitlines()
    assert comm == "systemd"
    assert state in ("running", "degraded")  # degraded: units that are not ours may fail in the guest
    assert env == "AUTONUMAD_VM_SYSTEMD=1"


def test_unit_handed_in_is_known_and_systemctl_status_shows_it_ran(results):
    hello = results["hello"]
    assert hello.status == 0, hello.output
    assert "Description=systemd VM test: a oneshot that leaves a file behind" in hello.output  # systemctl cat
    assert "hello from hello-oneshot" in hello.output  # the file its ExecStart wrote
    assert "Active: active (exited)" in hello.output
    assert "status=0/SUCCESS" in hello.output
