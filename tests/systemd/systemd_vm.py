"""Host side of the systemd VM tests: one boot of `scripts/numa-vm --systemd` runs many checks.

A boot costs from ~35 s to minutes, so these tests run only when AUTONUMAD_SYSTEMD_VM=1
(and never inside a VM). A test module marks itself with SYSTEMD_VM, lists its checks
(shell scripts run as root in the guest once its boot is over, in order), boots once for
all of them in a module-scoped fixture, and each test asserts on its own check's result:

    pytestmark = SYSTEMD_VM
    CHECKS = [Check("hello_status", "systemctl start hello.service; systemctl status hello.service")]

    @pytest.fixture(scope="module")
    def results():
        return boot_and_check(CHECKS, units=[HELLO_UNIT])

    def test_hello_runs(results):
        assert results["hello_status"].status == 0
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
NUMA_VM = os.path.join(REPO, "scripts", "numa-vm")
GUEST_CHECKS = os.path.join(HERE, "guest_checks.py")
UNITS = os.path.join(HERE, "units")

SYSTEMD_VM = [
    pytest.mark.systemd_vm,
    pytest.mark.skipif(os.environ.get("AUTONUMAD_SYSTEMD_VM") != "1" or os.environ.get("AUTONUMAD_IN_VM") == "1",
                       reason="boots a VM with systemd as PID 1: set AUTONUMAD_SYSTEMD_VM=1 to run"),
]


@dataclass(frozen=True)
class Check:
    name: str
    script: str  # sh script, run as root in the guest
    timeout: float = 120.0  # seconds; past it the check's status is 124 and the next one runs


@dataclass(frozen=True)
class CheckResult:
    status: int
    output: str  # stdout and stderr together


def boot_and_check(checks: Sequence[Check], units: Sequence[str] = (), nodes: int = 2,
                   append: Sequence[str] = (), timeout: float = 1200.0) -> dict[str, CheckResult]:
    """Boot the NUMA VM once with systemd as PID 1 and `units` known to it; run `checks` in order.

    Raises AssertionError, with numa-vm's report, if the VM did not bring the results back.
    """
    names = [c.name for c in checks]
    assert len(set(names)) == len(names), f"check names must be unique: {names}"
    command = [NUMA_VM, "--systemd", "--nodes", str(nodes), "--timeout", str(timeout)]
    command += [x for unit in units for x in ("--unit", unit)]
    command += [x for arg in append for x in ("--append", arg)]
    command += ["--", sys.executable, GUEST_CHECKS, json.dumps([asdict(c) for c in checks])]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, (f"numa-vm --systemd exited {done.returncode}\n"
                                  f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}")
    return {name: CheckResult(**r) for name, r in json.loads(done.stdout).items()}
