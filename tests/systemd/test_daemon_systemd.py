"""autonumad as a service under a real systemd (PID 1 in the NUMA VM), installed the way an operator does.

Three boots, each a module-scoped fixture running its checks in order (see systemd_vm.py):

- two nodes, the service's life: `autonumactl service install`, `systemd-analyze verify`;
  start (Type=notify READY, the STATUS= line in `systemctl status`); a numa01 workload run
  by another user (nobody), so the capability set is tried on processes root does not
  own; the decisions in the journal as structured fields; `autonumactl status` over the
  socket; the unit's capabilities and syscall filter tried on that user's process the
  way the write-fault sampler touches it; reload with a broken then a fixed config; stop giving back the affinities and
  kernel.numa_balancing; a stopped daemon (SIGSTOP) caught by the watchdog and restarted;
  `systemd-analyze security`;
- two nodes with `noautonuma` on the kernel command line: systemd skips the unit and says
  why; started by hand the daemon says why and exits 0, setting nothing up;
- one node: the daemon idles, says why, and spends next to no CPU.

Each check prints what it saw, with MARK lines that the tests look for; a failing test
shows the whole output of its check.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from systemd_vm import SYSTEMD_VM, Check, boot_and_check

pytestmark = SYSTEMD_VM

BIN = os.path.dirname(os.path.abspath(sys.executable))  # the venv's bin/: the guest sees the same paths
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WATCHDOG_SEC = 20

# Shell functions every check starts with. The workload runs as a transient service of
# its own (not in the checks' cgroup) under the unprivileged user nobody.
PRELUDE = f"""\
BIN={BIN}
REPO={REPO}
WORKLOAD_MAIN='import sys; from autonumad.workload import main; sys.exit(main())'
ALL_CPUS=$(taskset -pc 1 | sed 's/.*: //')  # as taskset writes them: PID 1 may run anywhere
show() {{ systemctl show -p "$1" --value autonumad.service; }}
# wait_until SECONDS 'SHELL CONDITION': poll each second; says so and fails when it never holds
wait_until() {{
    n=$1
    while ! eval "$2"; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || {{ echo "gave up waiting for: $2"; return 1; }}
        sleep 1
    done
}}
workload_pids() {{ $BIN/python -c 'import json; print(*json.load(open("/tmp/numa01.ready"))["pids"])'; }}
# one line per workload thread: its affinity as a CPU list
workload_affinities() {{
    for pid in $(workload_pids); do
        for task in /proc/$pid/task/*; do
            echo "thread $pid/${{task##*/}} affinity $(taskset -pc ${{task##*/}} | sed 's/.*: //')"
        done
    done
}}
"""

TEST_DROP_IN = f"""\
[Service]
# tests only: trip the watchdog, and restart, quickly
WatchdogSec={WATCHDOG_SEC}s
TimeoutAbortSec=5s
RestartSec=1s
"""

# The example config with a quicker policy, so that a short test sees decisions.
TEST_CONFIG_EDITS = ("-e 's/^settle_seconds = .*/settle_seconds = 2/' "
                     "-e 's/^scan_sleep_pass_millisecs = .*/scan_sleep_pass_millisecs = 3000/' "
                     "-e 's/^min_rss_mb = .*/min_rss_mb = 32/' "
                     "-e 's/^perf_event_paranoid = .*/perf_event_paranoid = \"lower\"/'")

# A checkout under /tmp or /var/tmp (a CI clone, say): the unit's PrivateTmp=yes hides it from
# the service, and `autonumactl service install` rightly refuses a daemon there. The guest
# then shows the checkout at CHECKOUT_SEEN_AT too (a bind mount), installs the daemon found
# there, and a drop-in of the tests' own binds the checkout back to its own path in the
# service's private /tmp, where its venv's scripts look for their Python.
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
CHECKOUT_SEEN_AT = "/run/autonumad-checkout"
UNDER_PRIVATE_TMP = any(REPO.startswith(d + "/") for d in PRIVATE_TMP_DIRS)
if UNDER_PRIVATE_TMP:
    _venv_bin = os.path.relpath(BIN, REPO)
    assert not _venv_bin.startswith(".."), f"a checkout under /tmp needs its venv inside it, not {BIN}"
    INSTALL_FROM = f"""\
mkdir -p {CHECKOUT_SEEN_AT} && {{ mountpoint -q {CHECKOUT_SEEN_AT} || mount --bind $REPO {CHECKOUT_SEEN_AT}; }} || exit 1
mkdir -p /etc/systemd/system/autonumad.service.d
printf '[Service]\\n# tests only: the checkout is under /tmp\\nBindReadOnlyPaths={CHECKOUT_SEEN_AT}:%s\\n' "$REPO" \
    >/etc/systemd/system/autonumad.service.d/checkout.conf
echo "MARK checkout under a private tmp: installing from {CHECKOUT_SEEN_AT}"
$BIN/autonumactl service install --executable {CHECKOUT_SEEN_AT}/{_venv_bin}/autonumad || exit 1
"""
else:
    INSTALL_FROM = "$BIN/autonumactl service install || exit 1\n"

INSTALL = INSTALL_FROM + f"""\
sed -i {TEST_CONFIG_EDITS} /etc/autonumad.conf
grep -E '^(settle_seconds|scan_sleep_pass_millisecs|min_rss_mb|perf_event_paranoid) =' /etc/autonumad.conf
systemctl daemon-reload
"""

LIFECYCLE_CHECKS = [
    Check("install", PRELUDE + INSTALL + f"""\
mkdir -p /etc/systemd/system/autonumad.service.d
cat >/etc/systemd/system/autonumad.service.d/test.conf <<'EOF'
{TEST_DROP_IN}EOF
systemctl daemon-reload
echo "MARK numa_balancing at boot: $(sysctl -n kernel.numa_balancing)"
echo "MARK perf_event_paranoid at boot: $(sysctl -n kernel.perf_event_paranoid)"
systemd-analyze verify /etc/systemd/system/autonumad.service && echo "MARK verify passed"
""", timeout=300),  # systemd-analyze verify loads every unit: over 120 s under TCG at times
    Check("start", PRELUDE + """\
systemctl start autonumad.service; echo "MARK start exited $?"
echo "MARK type=$(show Type) active=$(show ActiveState)/$(show SubState) watchdog_usec=$(show WatchdogUSec)"
echo "MARK status_text=$(show StatusText)"
echo "MARK numa_balancing while running: $(sysctl -n kernel.numa_balancing)"
echo "MARK perf_event_paranoid while running: $(sysctl -n kernel.perf_event_paranoid)"
systemctl status --no-pager --lines=5 autonumad.service
""", timeout=180),
    Check("decisions", PRELUDE + """\
# nobody cannot reach the venv's Python (under /root, 0700): the system's Python runs the workload
systemd-run --unit=numa01 -p User=nobody -p Environment=PYTHONPATH=$REPO /usr/bin/python3 -c "$WORKLOAD_MAIN" \
    --shape numa01 --processes 2 --threads 1 --mb 64 --start adversarial --affinity free --duration 3600 \
    --ready-file /tmp/numa01.ready --report /tmp/numa01.report
wait_until 180 '[ -s /tmp/numa01.ready ]' || { journalctl -u numa01 --no-pager | tail; exit 1; }
echo "MARK workload pids: $(workload_pids)"
echo "MARK workload users: $(for pid in $(workload_pids); do stat -c %U /proc/$pid; done | sort -u)"
wait_until 240 '[ -n "$(journalctl -u autonumad -F ACTION)" ]'
sleep 5  # a few more passes' worth of decisions
echo "MARK actions logged: $(journalctl -u autonumad -F ACTION | sort | tr '\\n' ' ')"
# every decision entry, its structured fields only
journalctl -u autonumad -o json --no-pager | $BIN/python -c '
import json, sys
FIELDS = ("TARGET_PID", "TARGET_COMM", "ACTION", "FROM_NODE", "TO_NODE", "REASON", "RESULT", "PRIORITY")
for line in sys.stdin:
    entry = json.loads(line)
    if "ACTION" in entry:
        print("DECISION", json.dumps({k: entry.get(k) for k in FIELDS}))
'
echo "--- one decision as journalctl -o verbose shows it"
journalctl -u autonumad -o verbose --no-pager -n 1 ACTION=$(journalctl -u autonumad -F ACTION | head -n 1)
echo "--- autonumactl status"
$BIN/autonumactl status; echo "MARK autonumactl status exited $?"
echo "--- autonumactl stats (fault sampler on nobody's processes)"
$BIN/autonumactl stats --json | $BIN/python -c 'import json, sys; print("MARK fault_sampler", json.dumps(json.load(sys.stdin)["fault_sampler"]))'
workload_affinities
""", timeout=600),
    Check("sandbox_on_another_user", PRELUDE + """\
# What the write-fault sampler does to a workload process (nobody's), tried with the
# unit's capabilities, syscall filter and NoNewPrivileges: perf_event_open on its
# thread, then "4" into its /proc/PID/clear_refs.
pid=$(workload_pids | cut -d' ' -f1); tid=$(ls /proc/$pid/task | tail -n 1)
echo "MARK perf_event_paranoid: $(sysctl -n kernel.perf_event_paranoid)"
echo "MARK capabilities: $(show CapabilityBoundingSet)"
systemd-run --wait --pipe --quiet -p CapabilityBoundingSet="$(show CapabilityBoundingSet)" -p NoNewPrivileges=yes \
    -p SystemCallFilter="$(show SystemCallFilter)" -p SystemCallErrorNumber=EPERM \
    $BIN/python -c '
import sys
from autonumad.kernel import numa_calls
pid, tid = int(sys.argv[1]), int(sys.argv[2])
try:
    numa_calls.close_fault_sampler(numa_calls.open_fault_sampler([tid]))
    print("MARK perf_event_open: ok")
except OSError as exc:
    print("MARK perf_event_open:", exc)
try:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("4")
    print("MARK clear_refs: ok")
except OSError as exc:
    print("MARK clear_refs:", exc)
' $pid $tid
"""),
    Check("reload", PRELUDE + """\
pid=$(show MainPID)
cp /etc/autonumad.conf /run/autonumad.conf.good
sed -i 's/^pages_to_scan = .*/pages_to_scan = "lots"/' /etc/autonumad.conf
grep -n '^pages_to_scan' /etc/autonumad.conf
sleep 1; since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reload autonumad.service; echo "MARK broken reload exited $?"
wait_until 60 'journalctl -u autonumad --since "$since" -o cat | grep -q "reload refused"'
journalctl -u autonumad --since "$since" -o cat --no-pager | sed 's/^/MARK journal after broken reload: /'
$BIN/autonumactl status >/dev/null; echo "MARK status after broken reload exited $?"
echo "MARK pages_to_scan after broken reload: $($BIN/autonumactl get pages_to_scan)"
sed -i 's/^pages_to_scan = .*/pages_to_scan = 16384/' /etc/autonumad.conf
sleep 1; since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reload autonumad.service; echo "MARK fixed reload exited $?"
wait_until 60 'journalctl -u autonumad --since "$since" -o cat | grep -q "configuration reloaded"'
journalctl -u autonumad --since "$since" -o cat --no-pager | sed 's/^/MARK journal after fixed reload: /'
echo "MARK pages_to_scan after fixed reload: $($BIN/autonumactl get pages_to_scan)"
echo "MARK same daemon: $([ "$(show MainPID)" = "$pid" ] && echo yes || echo no) active=$(show ActiveState)"
""", timeout=240),
    Check("stop", PRELUDE + """\
# the daemon moved threads of the workload (a narrowed affinity), then stop gives them back
wait_until 240 'workload_affinities | grep -qv "affinity $ALL_CPUS\\$"'
workload_affinities | sed 's/^/MARK before stop: /'
echo "MARK all cpus: $ALL_CPUS"
echo "MARK numa_balancing before stop: $(sysctl -n kernel.numa_balancing)"
sleep 1; since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl stop autonumad.service; echo "MARK stop exited $?"
workload_affinities | sed 's/^/MARK after stop: /'
echo "MARK numa_balancing after stop: $(sysctl -n kernel.numa_balancing)"
echo "MARK perf_event_paranoid after stop: $(sysctl -n kernel.perf_event_paranoid)"
echo "MARK state after stop: $(show ActiveState)/$(show Result)"
journalctl -u autonumad --since "$since" --no-pager
""", timeout=360),
    Check("watchdog", PRELUDE + """\
systemctl start autonumad.service; echo "MARK restart for the watchdog check exited $?"
pid=$(show MainPID); restarts=$(show NRestarts)
echo "MARK before: pid=$pid restarts=$restarts"
sleep 1; since=$(date '+%Y-%m-%d %H:%M:%S')
kill -STOP "$pid"
wait_until 150 '[ "$(show NRestarts)" -gt "$restarts" ] && [ "$(show ActiveState)" = active ]'
echo "MARK after: pid=$(show MainPID) restarts=$(show NRestarts) active=$(show ActiveState)"
journalctl -u autonumad --since "$since" --no-pager | grep -v ' autonumad\\[' | sed 's/^/MARK systemd: /'
$BIN/autonumactl status >/dev/null; echo "MARK status of the new daemon exited $?"
""", timeout=240),
    Check("security", """\
systemd-analyze security --no-pager autonumad.service | sed 's/^/SECURITY /'
systemctl stop autonumad.service numa01.service
echo "MARK numa_balancing at the end: $(sysctl -n kernel.numa_balancing)"
"""),
]

NOAUTONUMA_CHECKS = [
    Check("install", PRELUDE + INSTALL),
    Check("systemd_skips", PRELUDE + """\
grep -o noautonuma /proc/cmdline
systemctl start autonumad.service; echo "MARK start exited $?"
echo "MARK active=$(show ActiveState) condition_result=$(show ConditionResult)"
systemctl status --no-pager autonumad.service; echo "MARK status exited $?"
"""),
    Check("by_hand", PRELUDE + """\
$BIN/autonumad --foreground; echo "MARK by hand exited $?"
echo "MARK socket: $(ls /run/autonumad/control.sock 2>&1)"
echo "MARK numa_balancing: $(sysctl -n kernel.numa_balancing)"
""", timeout=180),
]

IDLE_SECONDS = 20

SINGLE_NODE_CHECKS = [
    Check("install", PRELUDE + INSTALL),
    Check("idle", PRELUDE + f"""\
echo "MARK numa_balancing before start: $(sysctl -n kernel.numa_balancing)"  # 0: the kernel's own, one node
systemctl start autonumad.service; echo "MARK start exited $?"
echo "MARK status_text=$(show StatusText)"
$BIN/autonumactl status; echo "MARK autonumactl status exited $?"
sleep 5  # past start-up
pid=$(show MainPID)
ticks() {{ awk '{{print $14 + $15}}' /proc/$pid/stat; }}  # utime + stime, clock ticks
before=$(ticks); usage_before=$(show CPUUsageNSec)
sleep {IDLE_SECONDS}
after=$(ticks); usage_after=$(show CPUUsageNSec)
echo "MARK cpu ticks in {IDLE_SECONDS} s idle: $((after - before)) of $(getconf CLK_TCK)/s; total since start: $after"
echo "MARK cgroup CPUUsageNSec in {IDLE_SECONDS} s idle: $((usage_after - usage_before))"
echo "MARK numa_balancing: $(sysctl -n kernel.numa_balancing)"
""", timeout=180),
]


def marks(output: str, prefix: str) -> list[str]:
    """The text after "MARK PREFIX" on each line that has it."""
    return [line.split(prefix, 1)[1].strip() for line in output.splitlines()
            if line.startswith("MARK " + prefix)]


def mark(output: str, prefix: str) -> str:
    found = marks(output, prefix)
    assert found, f"no 'MARK {prefix}' line in:\n{output}"
    return found[-1]


# ---------------------------------------------------------------------- the service's life, 2 nodes

# The boot (3 to 8 minutes under TCG on a loaded machine) and every check's own limit.
LIFECYCLE_TIMEOUT = 600 + sum(c.timeout for c in LIFECYCLE_CHECKS)

@pytest.fixture(scope="module")
def lifecycle():
    return boot_and_check(LIFECYCLE_CHECKS, nodes=2, timeout=LIFECYCLE_TIMEOUT)


def test_service_installs_and_systemd_analyze_verify_passes(lifecycle):
    out = lifecycle["install"].output
    assert "wrote /etc/systemd/system/autonumad.service" in out, out
    assert "MARK verify passed" in out, out
    assert mark(out, "numa_balancing at boot:") == "1"


def test_start_reaches_active_with_ready_and_status_shows_the_status_line(lifecycle):
    out = lifecycle["start"].output
    assert mark(out, "start exited") == "0", out
    assert mark(out, "type=") == f"notify active=active/running watchdog_usec={WATCHDOG_SEC}s", out
    status_text = mark(out, "status_text=")
    assert status_text.startswith("balancing "), out
    assert f'Status: "{status_text}"' in out, out  # systemctl status shows what STATUS= said
    assert mark(out, "numa_balancing while running:") == "0", out  # ExecStartPre=+ helper turned it off


def test_decisions_reach_the_journal_as_structured_fields_and_status_answers(lifecycle):
    out = lifecycle["decisions"].output
    pids = mark(out, "workload pids:").split()
    assert len(pids) == 2, out
    decisions = [json.loads(line[len("DECISION "):]) for line in out.splitlines() if line.startswith("DECISION ")]
    assert decisions, out
    for d in decisions:
        assert d["ACTION"] in ("move", "exchange", "migrate"), d
        assert d["TARGET_PID"] in pids, d  # only the workload is worth balancing here
        assert d["TARGET_COMM"] and d["REASON"] and d["RESULT"], d
        assert d["FROM_NODE"] in ("0", "1") and d["TO_NODE"] in ("0", "1"), d
        # a move to the node it runs on is a hold: the thread kept there while its memory comes
        assert d["FROM_NODE"] != d["TO_NODE"] or d["REASON"].startswith("holds it on node"), d
    assert any(d["RESULT"] == "done" or d["RESULT"].startswith("done") for d in decisions), decisions
    assert re.search(r"^\s+TARGET_PID=\d+$", out, re.M) and re.search(r"^\s+ACTION=\w+$", out, re.M), out
    assert mark(out, "autonumactl status exited") == "0", out
    assert "balancing: on" in out, out


def test_the_units_capabilities_reach_another_users_process(lifecycle):
    assert mark(lifecycle["decisions"].output, "workload users:") == "nobody"
    out = lifecycle["sandbox_on_another_user"].output
    assert "cap_dac_override" in mark(out, "capabilities:"), out
    assert mark(out, "clear_refs:") == "ok", out  # 0200 and nobody's: CAP_DAC_OVERRIDE


def test_the_units_capabilities_allow_fault_sampling_on_another_users_thread(lifecycle):
    # Debian's kernels (kernel.perf_event_paranoid = 3) refuse perf_event_open without
    # CAP_SYS_ADMIN, CAP_PERFMON or not; the test config says perf_event_paranoid =
    # "lower", so the unit's ExecStartPre=+ helper set it to 2 for the daemon's run.
    assert mark(lifecycle["install"].output, "perf_event_paranoid at boot:") == "3"
    assert mark(lifecycle["start"].output, "perf_event_paranoid while running:") == "2"
    out = lifecycle["sandbox_on_another_user"].output
    assert mark(out, "perf_event_open:") == "ok", out
    assert ("write-fault sampling: on (kernel.perf_event_paranoid 2, was 3; restored when autonumad stops)"
            in lifecycle["decisions"].output), lifecycle["decisions"].output


def test_reload_with_a_broken_config_keeps_the_old_one_and_a_fixed_one_is_taken(lifecycle):
    out = lifecycle["reload"].output
    assert mark(out, "broken reload exited") == "0", out
    broken = "\n".join(marks(out, "journal after broken reload:"))
    assert re.search(r"reload refused, the running configuration stays: /etc/autonumad\.conf:\d+: "
                     r"scan\.pages_to_scan: must be an integer", broken), out
    assert mark(out, "status after broken reload exited") == "0", out
    assert mark(out, "pages_to_scan after broken reload:").endswith("32768"), out
    assert mark(out, "fixed reload exited") == "0", out
    assert "changed: scan.pages_to_scan" in "\n".join(marks(out, "journal after fixed reload:")), out
    assert mark(out, "pages_to_scan after fixed reload:").endswith("16384"), out
    assert mark(out, "same daemon:") == "yes active=active", out


def test_stop_gives_back_the_affinities_it_set_and_kernel_numa_balancing(lifecycle):
    out = lifecycle["stop"].output
    all_cpus = mark(out, "all cpus:")
    before = marks(out, "before stop:")
    after = marks(out, "after stop:")
    assert any(not line.endswith(f"affinity {all_cpus}") for line in before), out  # it had narrowed some
    assert after and len(after) == len(before), out
    assert all(line.endswith(f"affinity {all_cpus}") for line in after), out
    assert mark(out, "numa_balancing before stop:") == "0", out
    assert mark(out, "stop exited") == "0", out
    assert mark(out, "numa_balancing after stop:") == "1", out
    assert mark(out, "perf_event_paranoid after stop:") == "3", out
    assert mark(out, "state after stop:") == "inactive/success", out


def test_a_stopped_daemon_trips_the_watchdog_and_systemd_restarts_it(lifecycle):
    out = lifecycle["watchdog"].output
    assert mark(out, "restart for the watchdog check exited") == "0", out
    before = dict(kv.split("=") for kv in mark(out, "before:").split())
    after = dict(kv.split("=") for kv in mark(out, "after:").split())
    assert int(after["restarts"]) > int(before["restarts"]), out
    assert after["pid"] != before["pid"] and after["active"] == "active", out
    assert "Watchdog timeout" in "\n".join(marks(out, "systemd:")), out
    assert mark(out, "status of the new daemon exited") == "0", out


def test_systemd_analyze_security_rates_the_unit(lifecycle):
    out = lifecycle["security"].output
    assert re.search(r"Overall exposure level for autonumad\.service: \d+\.\d+ \w+", out), out
    assert mark(out, "numa_balancing at the end:") == "1", out


# ---------------------------------------------------------------------- noautonuma on the kernel command line

@pytest.fixture(scope="module")
def noautonuma():
    return boot_and_check(NOAUTONUMA_CHECKS, nodes=2, append=["noautonuma"])


def test_noautonuma_makes_systemd_skip_the_unit_and_status_says_why(noautonuma):
    assert noautonuma["install"].status == 0, noautonuma["install"].output
    out = noautonuma["systemd_skips"].output
    assert mark(out, "start exited") == "0", out  # a condition that fails is not an error
    assert mark(out, "active=") == "inactive condition_result=no", out
    assert "skipped because of an unmet condition check (ConditionKernelCommandLine=!noautonuma)" in out, out


def test_noautonuma_by_hand_says_why_and_exits_0_setting_nothing_up(noautonuma):
    out = noautonuma["by_hand"].output
    assert "'noautonuma' is on the kernel command line: not starting, nothing set up." in out, out
    assert mark(out, "by hand exited") == "0", out
    assert "No such file" in mark(out, "socket:"), out
    assert mark(out, "numa_balancing:") == "1", out


# ---------------------------------------------------------------------- one node

@pytest.fixture(scope="module")
def single_node():
    return boot_and_check(SINGLE_NODE_CHECKS, nodes=1)


def test_single_node_daemon_idles_says_why_and_costs_next_to_no_cpu(single_node):
    assert single_node["install"].status == 0, single_node["install"].output
    out = single_node["idle"].output
    assert mark(out, "start exited") == "0", out
    assert "single NUMA node" in mark(out, "status_text="), out
    assert mark(out, "autonumactl status exited") == "0", out
    assert "balancing: off (this machine has a single NUMA node" in out, out
    ticks = int(mark(out, "cpu ticks in").split(":")[1].split()[0])
    hz = int(re.search(r"of (\d+)/s", mark(out, "cpu ticks in")).group(1))
    print(f"single-node idle: {ticks / hz:.2f} s CPU in {IDLE_SECONDS} s")
    assert ticks / hz < 0.01 * IDLE_SECONDS, out  # under 1 % of one CPU, even under TCG
    assert mark(out, "numa_balancing:") == mark(out, "numa_balancing before start:"), out  # left alone
