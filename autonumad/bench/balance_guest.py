"""The guest half of scripts/bench-balance: inside the NUMA VM, one scenario's workload under each balancer in turn.

    .venv/bin/python -m autonumad.bench.balance_guest --scenario S1 --duration 40
        [--balancers none,kernel,numad,autonumad] [--autonumad-config FILE] [--workdir DIR]

For each balancer, one after the other: kernel.numa_balancing is set (1 for
"kernel", 0 for the others), the balancer started (numad with its defaults; it
daemonizes and names its pid in /var/run/numad.pid; autonumad in the foreground
with the config given, or one with its defaults and paths under --workdir,
waited for until its control socket answers `status`), then a fresh workload
with a ready file. The runner sleeps through the run and wakes only at a few
moments, all on the workload's clock (its t0 is CLOCK_MONOTONIC, as ours):
  launch  before the workload starts: /proc/vmstat, autonumad's counters;
  t0      as soon as the ready file appears: /proc/vmstat, the balancer's CPU ticks;
  mid     t0 + duration/2: the same and autonumad's counters (with its CPU ticks again
          after it answered, so that what `status` cost it is not counted);
  -1 s    t0 + duration - 1: each workload process's maps and numa_maps;
  end     t0 + duration: as at mid.
Then it waits for the workload to exit, stops the balancer (SIGTERM), undoes
what it changed (kernel.numa_balancing back to 0, numad's khugepaged setting)
and prints the run record (see autonumad.bench.balance) as one line
{"run": {...}} on stdout, with the workload's JSON lines ("reports_text") and
the balancer's log ("balancer_log") in it. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from typing import Any

from autonumad import control_client
from autonumad.bench.balance import BALANCERS, SCENARIOS, Scenario
from autonumad.constants import CONTROL_SOCKET_PATH, NUMA_BALANCING_SYSCTL
from autonumad.kernel.files import KernelFiles, ProcessGone
from autonumad.kernel.procfs import parse_stat

INTERVAL_S = 1.0
READY_POLL_S = 0.2
EXIT_POLL_S = 0.5
BALANCER_START_TIMEOUT_S = 240.0
WORKLOAD_START_TIMEOUT_S = 300.0
WORKLOAD_EXIT_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
PLACEMENT_BEFORE_END_S = 1.0
STATUS_TIMEOUT_S = 20.0
STATUS_WAIT_S = 0.5
"""A status answer slower than this waited for a pass's actions (see snapshot)."""
VMSTAT_PREFIXES = ("pgmigrate_", "numa_", "compact_", "thp_")
THP_SCAN_SLEEP = "sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs"
NUMAD_PIDFILE = "var/run/numad.pid"
NUMAD_LOG = "var/log/numad.log"
LOG_TAIL_CHARS = 200_000
BIN = os.path.dirname(sys.executable)
DEFAULT_AUTONUMAD_CONFIG = """\
# written by autonumad.bench.balance_guest: the defaults, with paths the VM can write
[daemon]
state_file = "{workdir}/autonumad-state.json"
control_socket = "{workdir}/autonumad.sock"
"""

files = KernelFiles("/")


def say(message: str) -> None:
    print(f"bench-balance-guest: {message}", file=sys.stderr, flush=True)


def read_tail(path: str, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    return text[-chars:]


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def set_numa_balancing(value: str) -> None:
    files.write_text(NUMA_BALANCING_SYSCTL, value)


def cpu_ticks(pid: int) -> int | None:
    try:
        return parse_stat(files.read_text(f"proc/{pid}/stat")).cpu_ticks
    except (ProcessGone, ValueError):
        return None


def process_gone(pid: int) -> bool:
    try:
        return parse_stat(files.read_text(f"proc/{pid}/stat")).state in ("Z", "X")
    except ProcessGone:
        return True


def vmstat() -> dict[str, int]:
    counts = {}
    for line in files.read_text("proc/vmstat").splitlines():
        key, _, value = line.partition(" ")
        if key.startswith(VMSTAT_PREFIXES):
            counts[key] = int(value)
    return counts


# ---------------------------------------------------------------- the balancers


class NoBalancer:
    """Nothing balances: kernel.numa_balancing 0 and no daemon."""

    name = "none"
    numa_balancing = "0"

    def __init__(self) -> None:
        self.pid: int | None = None

    def start(self, rundir: str) -> None:
        return None

    def counters(self) -> dict[str, int] | None:
        return None

    def stop(self) -> str:
        """Stop it and undo what it changed; its log."""
        return ""


class KernelBalancing(NoBalancer):
    """The kernel's automatic NUMA balancing: kernel.numa_balancing 1 for the run."""

    name = "kernel"
    numa_balancing = "1"


class Numad(NoBalancer):
    """numad with its defaults. It daemonizes; its pid is in its pid file, its log in /var/log/numad.log.
    It sets khugepaged's scan interval and leaves it so; stop() puts the old value back."""

    name = "numad"
    thp_scan_sleep: str | None = None

    def start(self, rundir: str) -> None:
        self.thp_scan_sleep = files.read_text(THP_SCAN_SLEEP).strip() if files.exists(THP_SCAN_SLEEP) else None
        done = subprocess.run(["numad"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"numad exited {done.returncode}: {done.stderr.strip()[-400:]}")
        deadline = time.monotonic() + BALANCER_START_TIMEOUT_S
        while True:
            if files.exists(NUMAD_PIDFILE):
                pid = int(files.read_text(NUMAD_PIDFILE).strip() or 0)
                if pid and not process_gone(pid):
                    self.pid = pid
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("numad wrote no pid file of a live process:\n" + read_tail("/" + NUMAD_LOG, 2000))
            time.sleep(0.5)

    def stop(self) -> str:
        if self.pid is not None:
            stop_pid(self.pid)
        if self.thp_scan_sleep is not None:
            files.write_text(THP_SCAN_SLEEP, self.thp_scan_sleep)
        return read_tail("/" + NUMAD_LOG)


def stop_pid(pid: int) -> None:
    """SIGTERM a process that is not our child; SIGKILL it if it is still there after STOP_TIMEOUT_S."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while not process_gone(pid):
        if time.monotonic() > deadline:
            say(f"pid {pid} still there {STOP_TIMEOUT_S:.0f} s after SIGTERM: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(EXIT_POLL_S)


class Autonumad(NoBalancer):
    """autonumad --foreground --config FILE; ready once its control socket answers `status`."""

    name = "autonumad"

    def __init__(self, config_path: str) -> None:
        super().__init__()
        self.config_path = config_path
        with open(config_path, "rb") as f:
            self.socket = tomllib.load(f).get("daemon", {}).get("control_socket", CONTROL_SOCKET_PATH)
        self.proc: subprocess.Popen | None = None
        self.log_path = ""
        self.exit_status: int | None = None

    def start(self, rundir: str) -> None:
        self.log_path = os.path.join(rundir, "autonumad.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([os.path.join(BIN, "autonumad"), "--foreground", "--config",
                                          self.config_path], stdout=log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        started = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"autonumad exited {self.proc.returncode} before answering status:\n"
                                   + read_tail(self.log_path, 4000))
            try:
                control_client.request("status", path=self.socket, timeout=STATUS_TIMEOUT_S)
                say(f"autonumad answers status after {time.monotonic() - started:.1f} s")
                return
            except (control_client.DaemonNotRunning, control_client.ControlError):
                pass
            if time.monotonic() - started > BALANCER_START_TIMEOUT_S:
                raise RuntimeError(f"autonumad did not answer status within {BALANCER_START_TIMEOUT_S:.0f} s:\n"
                                   + read_tail(self.log_path, 4000))
            time.sleep(1.0)

    def counters(self) -> dict[str, int] | None:
        try:
            return control_client.request("status", path=self.socket, timeout=STATUS_TIMEOUT_S)["counters"]
        except (control_client.DaemonNotRunning, control_client.ControlError) as exc:
            say(f"autonumad status failed: {exc}")
            return None

    def stop(self) -> str:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    say(f"autonumad still running {STOP_TIMEOUT_S:.0f} s after SIGTERM: SIGKILL")
                    self.proc.kill()
                    self.proc.wait()
            self.exit_status = self.proc.returncode
        return read_tail(self.log_path)


def make_balancer(name: str, autonumad_config: str) -> NoBalancer:
    if name == "autonumad":
        return Autonumad(autonumad_config)
    return {"none": NoBalancer, "kernel": KernelBalancing, "numad": Numad}[name]()


# ---------------------------------------------------------------- one run


def snapshot(balancer: NoBalancer, counters: bool) -> dict[str, Any]:
    """vmstat and the balancer's CPU ticks now; with `counters`, autonumad's counters too, and its CPU
    ticks again after answering (what our `status` cost it, which the host leaves out of its CPU time)."""
    pid = balancer.pid
    snap: dict[str, Any] = {"t": time.monotonic(), "wall": time.time(), "vmstat": vmstat(),
                            "cpu_ticks": None if pid is None else cpu_ticks(pid)}
    asked = time.monotonic()
    snap["counters"] = balancer.counters() if counters else None
    snap["cpu_ticks_after_status"] = cpu_ticks(pid) if pid is not None and snap["counters"] is not None else None
    if snap["counters"] is not None and time.monotonic() - asked > STATUS_WAIT_S:
        # autonumad answered once the actions of a pass were done (it applies them under the lock
        # its status takes): its counters include them, so the vmstat must too, and the CPU it
        # spent meanwhile was that pass's, not our request's
        snap["vmstat"] = vmstat()
        snap["cpu_ticks_after_status"] = snap["cpu_ticks"]
    return snap


def placement(pids: list[int]) -> dict[str, dict[str, str]]:
    seen = {}
    for pid in pids:
        try:
            seen[str(pid)] = {"maps": files.read_text(f"proc/{pid}/maps"),
                              "numa_maps": files.read_text(f"proc/{pid}/numa_maps")}
        except OSError as exc:
            say(f"cannot read the placement of pid {pid}: {exc}")
    return seen


def wait_ready(workload: subprocess.Popen, ready_file: str) -> dict[str, Any]:
    deadline = time.monotonic() + WORKLOAD_START_TIMEOUT_S
    while not os.path.exists(ready_file):
        if workload.poll() is not None:
            raise RuntimeError(f"the workload exited {workload.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workload was not ready within {WORKLOAD_START_TIMEOUT_S:.0f} s")
        time.sleep(READY_POLL_S)
    with open(ready_file) as f:
        return json.load(f)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(EXIT_POLL_S)
    return proc.returncode


def run_one(scenario: Scenario, balancer: NoBalancer, duration: float, workdir: str) -> dict[str, Any]:
    rundir = os.path.join(workdir, f"{scenario.name}-{balancer.name}")
    os.makedirs(rundir, exist_ok=True)
    report, ready_file = os.path.join(rundir, "workload.jsonl"), os.path.join(rundir, "ready.json")
    stderr_path = os.path.join(rundir, "workload.stderr")
    snaps: dict[str, Any] = {}
    record: dict[str, Any] = {
        "scenario": scenario.name, "balancer": balancer.name, "duration": duration, "interval": INTERVAL_S,
        "clk_tck": os.sysconf("SC_CLK_TCK"), "kernel": os.uname().release, "snapshots": snaps,
        "ready": None, "placement": {}, "error": None, "workload_exit": None, "balancer_pid": None,
    }
    command = [os.path.join(BIN, "autonumad-workload"), *scenario.workload_args, "--duration", f"{duration:g}",
               "--interval", f"{INTERVAL_S:g}", "--report", report, "--ready-file", ready_file]
    record["workload_command"] = command
    workload = None
    errors = []
    try:
        set_numa_balancing(balancer.numa_balancing)
        balancer.start(rundir)
        record["balancer_pid"] = balancer.pid
        snaps["launch"] = snapshot(balancer, counters=True)
        with open(stderr_path, "w") as err:
            workload = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        ready = wait_ready(workload, ready_file)
        snaps["t0"] = snapshot(balancer, counters=False)
        record["ready"] = ready
        t0 = ready["t0"]
        say(f"{scenario.name} {balancer.name}: workload ready {snaps['t0']['t'] - snaps['launch']['t']:.1f} s "
            f"after launch (seen {snaps['t0']['t'] - t0:.2f} s after its t0)")
        sleep_until(t0 + duration / 2)
        snaps["mid"] = snapshot(balancer, counters=True)
        sleep_until(t0 + duration - PLACEMENT_BEFORE_END_S)
        record["placement"] = placement(ready["pids"])
        sleep_until(t0 + duration)
        snaps["end"] = snapshot(balancer, counters=True)
        record["workload_exit"] = wait_exit(workload, WORKLOAD_EXIT_TIMEOUT_S)
        if record["workload_exit"] is None:
            errors.append(f"the workload did not exit within {WORKLOAD_EXIT_TIMEOUT_S:.0f} s of its end")
        elif record["workload_exit"] != 0:
            errors.append(f"the workload exited {record['workload_exit']}")
    except Exception as exc:  # recorded in the run; the next balancer still runs
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if workload is not None and workload.poll() is None:
            workload.terminate()
            if wait_exit(workload, WORKLOAD_EXIT_TIMEOUT_S) is None:
                workload.kill()
                workload.wait()
        try:
            record["balancer_log"] = balancer.stop()
        except Exception as exc:
            errors.append(f"stopping {balancer.name}: {type(exc).__name__}: {exc}")
        if isinstance(balancer, Autonumad):
            record["balancer_exit"] = balancer.exit_status
            if balancer.exit_status not in (0, None):
                errors.append(f"autonumad exited {balancer.exit_status}")
        set_numa_balancing("0")
    record["error"] = "; ".join(errors) or None
    record["reports_text"] = read_tail(report, 1 << 30)
    record["workload_stderr"] = read_tail(stderr_path)
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="balance_guest", description="Run one bench-balance scenario in the VM.")
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--duration", type=float, default=40.0, help="seconds of each run (default 40)")
    p.add_argument("--balancers", default=",".join(BALANCERS), help="comma-separated, run in this order")
    p.add_argument("--autonumad-config", help="autonumad's config (default: its defaults, paths in --workdir)")
    p.add_argument("--workdir", default="/tmp/bench-balance", help="where runs keep their files")
    args = p.parse_args(argv)
    args.balancers = args.balancers.split(",")
    unknown = [b for b in args.balancers if b not in BALANCERS]
    if unknown:
        p.error(f"unknown balancers {', '.join(unknown)} (known: {', '.join(BALANCERS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not files.exists(NUMA_BALANCING_SYSCTL):
        say("this kernel has no NUMA balancing (no /proc/sys/kernel/numa_balancing)")
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    config = args.autonumad_config
    if config is None:
        config = os.path.join(args.workdir, "autonumad.conf")
        with open(config, "w") as f:
            f.write(DEFAULT_AUTONUMAD_CONFIG.format(workdir=args.workdir))
    scenario = SCENARIOS[args.scenario]
    failed = False
    for name in args.balancers:
        say(f"{scenario.name} {name}: starting")
        record = run_one(scenario, make_balancer(name, config), args.duration, args.workdir)
        failed = failed or record["error"] is not None
        if record["error"]:
            say(f"{scenario.name} {name}: {record['error']}")
        print(json.dumps({"run": record}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
