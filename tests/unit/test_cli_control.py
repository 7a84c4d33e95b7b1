"""autonumactl's control verbs against a fake daemon (a real ControlServer with canned handlers),
their messages and exit codes without a daemon, local `advise`, the CPU load reader and completion."""

import copy
import json
import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import FIXTURES

from autonumad import constants
from autonumad.cli import VERBS, main
from autonumad.commands import advise as advise_command
from autonumad.config import RUNTIME_KNOBS
from autonumad.control_protocol import ProtocolError
from autonumad.control_server import ControlServer
from autonumad.kernel import cpu_load
from autonumad.kernel.files import KernelFiles
from autonumad.nodelist import parse_list

SYSFS = os.path.join(FIXTURES, "sysfs")
NOW = 1_700_000_000.0

STATUS = {
    "version": "0.1.0", "pid": 4242, "uptime_s": 7385.2, "balancing": True, "off_reason": None,
    "config_path": "/etc/autonumad.conf", "dry_run": False,
    "nodes": {"0": {"cpus": [0, 1], "size_mb": 962, "free_mb": 512, "managed_threads": 3},
              "1": {"cpus": [2, 3], "size_mb": 1005, "free_mb": 700, "managed_threads": 1}},
    "managed_processes": [
        {"pid": 3100, "comm": "numa01", "locality": 0.934, "memory_mb": {"0": 201.25, "1": 600.0},
         "threads": 4, "nodes": [1]},
        {"pid": 3200, "comm": "fresh", "locality": None, "memory_mb": {"0": 80.0}, "threads": 1, "nodes": []},
    ],
    "counters": {"pages_migrated": 51200, "task_moves": 7, "full_scans": 12},
    "page_status": {"EBUSY": 3},
    "knobs": {"scan_sleep_millisecs": 100, "scan_sleep_pass_millisecs": 10000, "pages_to_scan": 32768,
              "migrate_sleep_millisecs": 100, "pages_to_migrate": 32768},
    "migration_rate_mb_s": 1280.0,
    "kernel_numa_balancing": {"current": "0", "original": "1"},
    "last_pass": {"at": NOW - 4, "duration_s": 0.42, "actions": 2, "processes": 17},
}

STATS = {
    "scanner": {"pages_scanned": 123456, "full_scans": 12, "scan_cpu_s": 0.875, "processes_scanned": 40,
                "exact_reads": 3, "gone_mid_scan": 1, "passes": 12},
    "migrated": {"pages_migrated": 51200, "task_moves": 7, "page_status": {"EBUSY": 3}},
    "fault_sampler": {"armed": 2, "samples": 546},
    "knobs": {"pages_to_scan": 32768},
}


class FakeDaemon:
    """Canned answers in the daemon's result shapes; records every request it gets."""

    def __init__(self):
        self.calls = []
        self.status = copy.deepcopy(STATUS)
        self.refuse = {}  # cmd -> ProtocolError to raise
        self.knobs = dict(STATUS["knobs"])

    def handlers(self):
        def handler(cmd, answer):
            def call(args):
                self.calls.append((cmd, dict(args)))
                if cmd in self.refuse:
                    raise self.refuse[cmd]
                return answer(args)
            return call

        return {
            "status": handler("status", lambda a: self.status),
            "stats": handler("stats", lambda a: STATS),
            "get": handler("get", lambda a: {"knobs": {a["knob"]: self.knobs[a["knob"]]} if "knob" in a
                                             else self.knobs}),
            "set": handler("set", lambda a: {"knob": a["knob"], "value": a["value"],
                                             "previous": self.knobs[a["knob"]]}),
            "enable": handler("enable", lambda a: {"balancing": True, "off_reason": None,
                                                   "restored_affinities": 0}),
            "disable": handler("disable", lambda a: {"balancing": False,
                                                     "off_reason": "disabled with autonumactl disable",
                                                     "restored_affinities": 5}),
            "reload": handler("reload", lambda a: {"config_path": "/etc/autonumad.conf",
                                                   "changed": ["scan.pages_to_scan"]}),
            "advise": handler("advise", lambda a: {"nodes": [1], "reason": "node 1: 2.0 idle CPUs, 700 MB free"}),
        }


@pytest.fixture
def socket_dir():
    directory = tempfile.mkdtemp(prefix="autonumactl-test-", dir="/tmp")  # short: sun_path is 108 bytes
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon(socket_dir):
    fake = FakeDaemon()
    server = ControlServer(os.path.join(socket_dir, "control.sock"), handlers=fake.handlers())
    server.start()
    fake.path = server.path
    yield fake
    server.stop()


@pytest.fixture
def no_daemon(socket_dir):
    return os.path.join(socket_dir, "control.sock")


def ctl(capsys, socket_path, *argv):
    rc = main(["--socket", socket_path, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------- status, stats, get

def test_status_summarises_balancing_nodes_processes_counters_and_knobs(daemon, capsys, monkeypatch):
    monkeypatch.setattr("autonumad.commands.status.time.time", lambda: NOW)
    rc, out, err = ctl(capsys, daemon.path, "status")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "autonumad 0.1.0 (pid 4242), up 2h 03m, config /etc/autonumad.conf"
    assert lines[1] == "balancing: on"
    assert lines[2] == "kernel.numa_balancing: 0 (was 1; restored when autonumad stops)"
    assert lines[3] == "last pass: 4s ago, took 0.42 s, 2 actions over 17 processes"
    assert "  NODE  CPUS  SIZE MB  FREE MB  MANAGED THREADS" in lines
    assert "     0  0-1       962      512                3" in lines
    assert "managed processes: 2" in lines
    row = next(line for line in lines if "numa01" in line).split()
    assert row == ["3100", "numa01", "4", "93%", "201.2", "600.0", "1"]
    fresh = next(line for line in lines if "fresh" in line).split()
    assert fresh == ["3200", "fresh", "1", "-", "80.0", "0.0", "-"]
    assert any(line.split() == ["pages_migrated", "51200"] for line in lines)
    assert "page status after moves: EBUSY 3" in lines
    assert any(line.split() == ["pages_to_migrate", "32768"] for line in lines)
    assert "migration limit: 1280 MB/s (pages_to_migrate every migrate_sleep_millisecs)" in lines
    assert daemon.calls == [("status", {})]


def test_status_shows_the_best_locality_a_process_spread_over_nodes_can_reach(daemon, capsys):
    daemon.status["managed_processes"] = [
        {"pid": 3100, "comm": "numa01", "locality": 0.497, "locality_bound": 0.5, "threads": 2,
         "memory_mb": {"0": 200.0, "1": 0.0}, "nodes": [0, 1]},
        {"pid": 3300, "comm": "small", "locality": 1.0, "locality_bound": 1.0, "threads": 1,
         "memory_mb": {"0": 10.0}, "nodes": [0]}]
    rc, out, _ = ctl(capsys, daemon.path, "status")
    lines = out.splitlines()
    assert rc == 0 and any(line.split()[:5] == ["PID", "COMMAND", "THREADS", "LOCAL", "BEST"] for line in lines)
    assert next(line for line in lines if "numa01" in line).split() == ["3100", "numa01", "2", "50%", "50%",
                                                                         "200.0", "0.0", "0-1"]
    assert next(line for line in lines if "small" in line).split()[3:5] == ["100%", "100%"]


def test_status_says_why_balancing_is_off(daemon, capsys):
    daemon.status.update(balancing=False, off_reason="single-node machine: nothing to balance",
                         managed_processes=[], kernel_numa_balancing={"current": "1", "original": None},
                         last_pass={"at": None}, counters={}, page_status={})
    rc, out, _ = ctl(capsys, daemon.path, "status")
    assert rc == 0 and "\n\n\n" not in out and "counters:" not in out
    assert "balancing: off (single-node machine: nothing to balance)" in out
    assert "kernel.numa_balancing: 1\n" in out
    assert "last pass: none yet" in out
    assert "managed processes: none" in out


def test_status_says_whether_write_fault_sampling_works_and_what_it_changed_for_it(daemon, capsys):
    daemon.status.update(fault_sampling="on", kernel_perf_event_paranoid={"current": 2, "original": "3"})
    _, out, _ = ctl(capsys, daemon.path, "status")
    assert ("write-fault sampling: on (kernel.perf_event_paranoid 2, was 3; restored when autonumad stops)\n"
            in out), out
    daemon.status.update(fault_sampling="unavailable: kernel.perf_event_paranoid = 3 refuses it",
                         kernel_perf_event_paranoid={"current": 3, "original": None})
    _, out, _ = ctl(capsys, daemon.path, "status")
    assert "write-fault sampling: unavailable: kernel.perf_event_paranoid = 3 refuses it\n" in out


def test_status_says_which_nodes_hold_memory_only_and_which_cpus_are_offline(daemon, capsys):
    _, out, _ = ctl(capsys, daemon.path, "status")
    assert "offline" not in out and "memory-only" not in out
    nodes = daemon.status["nodes"]
    nodes["0"].update(cpus=[0], offline_cpus=[1], memory_only=False)
    nodes["1"].update(cpus=[], offline_cpus=[2, 3], memory_only=True)
    nodes["2"] = {"cpus": [], "offline_cpus": [], "memory_only": True, "size_mb": 1005, "free_mb": 997,
                  "managed_threads": 0}
    daemon.status["cpus_offline"] = [1, 2, 3, 9]
    _, out, _ = ctl(capsys, daemon.path, "status")
    lines = out.splitlines()
    table_end = lines.index("     2  -        1005      997                0")
    assert lines[table_end + 1:table_end + 5] == [
        "  node 0: CPU 1 offline", "  node 1: memory-only (CPUs 2-3 offline)", "  node 2: memory-only",
        "  CPU 9 offline (node not known)"]
    _, out, _ = ctl(capsys, daemon.path, "status", "--json")
    data = json.loads(out)
    assert data["nodes"]["1"]["memory_only"] and data["nodes"]["1"]["offline_cpus"] == [2, 3]
    assert data["cpus_offline"] == [1, 2, 3, 9]


def test_status_dry_run_is_shown(daemon, capsys):
    daemon.status["dry_run"] = True
    _, out, _ = ctl(capsys, daemon.path, "status")
    assert "balancing: on (dry run: plans are logged, nothing is moved)" in out


def test_read_verbs_print_the_daemons_result_as_is_with_json(daemon, capsys):
    for argv, expected in ((["status"], STATUS), (["stats"], STATS),
                           (["get"], {"knobs": STATUS["knobs"]}),
                           (["get", "pages_to_scan"], {"knobs": {"pages_to_scan": 32768}})):
        rc, out, _ = ctl(capsys, daemon.path, *argv, "--json")
        assert rc == 0
        assert json.loads(out) == expected
    assert daemon.calls[-1] == ("get", {"knob": "pages_to_scan"})


def test_stats_lists_counters_by_section(daemon, capsys):
    rc, out, _ = ctl(capsys, daemon.path, "stats")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "scanner:"
    assert "  pages_scanned      123456" in lines
    assert "  scan_cpu_s         0.88" in lines
    assert "migrated:" in lines and "  page_status:" in lines and "    EBUSY  3" in lines
    assert "fault_sampler:" in lines


def test_get_prints_name_equals_value(daemon, capsys):
    rc, out, _ = ctl(capsys, daemon.path, "get")
    assert rc == 0
    assert out.splitlines() == [f"{k} = {v}" for k, v in STATUS["knobs"].items()]
    rc, out, _ = ctl(capsys, daemon.path, "get", "migrate_sleep_millisecs")
    assert out == "migrate_sleep_millisecs = 100\n"


def test_get_unknown_knob_lists_the_valid_ones(daemon, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--socket", daemon.path, "get", "pages_to_eat"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "pages_to_eat" in err and all(knob in err for knob in RUNTIME_KNOBS)
    assert daemon.calls == []


# ---------------------------------------------------------------- set, enable, disable, reload

def test_set_sends_the_checked_integer_and_reports_the_previous_value(daemon, capsys):
    rc, out, err = ctl(capsys, daemon.path, "set", "pages_to_scan", " 4096")
    assert rc == 0 and err == ""
    assert daemon.calls == [("set", {"knob": "pages_to_scan", "value": 4096})]
    assert out.startswith("pages_to_scan = 4096 (was 32768; not saved in the config file")


@pytest.mark.parametrize("value, problem", [
    ("0", "must be from 1 to 3600000, got 0"),
    ("3600001", "must be from 1 to 3600000, got 3600001"),
    ("fast", "must be an integer from 1 to 3600000, got 'fast'"),
    ("-5", "must be an integer from 1 to 3600000, got '-5'"),
])
def test_set_refuses_a_bad_value_locally_naming_knob_and_range(daemon, capsys, value, problem):
    rc, out, err = ctl(capsys, daemon.path, "set", "scan_sleep_millisecs", value)
    assert rc == 2 and out == ""
    assert err.startswith("autonumactl set: scan_sleep_millisecs: ")
    assert problem in err and "(allowed: 1 to 3600000; default 100)" in err
    assert daemon.calls == []


def test_set_unknown_knob_lists_the_valid_ones(daemon, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--socket", daemon.path, "set", "scan_speed", "5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "scan_speed" in err and all(knob in err for knob in RUNTIME_KNOBS)
    assert daemon.calls == []


def test_set_refused_by_the_daemon_for_want_of_root_exits_4(daemon, capsys):
    daemon.refuse["set"] = ProtocolError("permission_denied", "'set' changes the daemon: only root may do that")
    rc, out, err = ctl(capsys, daemon.path, "set", "pages_to_scan", "4096")
    assert rc == 4 and out == ""
    assert err == ("autonumactl set: changes to autonumad need root: "
                   "'set' changes the daemon: only root may do that\n")


def test_status_refused_for_want_of_group_exits_4(daemon, capsys):
    daemon.refuse["status"] = ProtocolError("permission_denied", "'status' needs root or membership of group 'numa'")
    rc, _, err = ctl(capsys, daemon.path, "status")
    assert rc == 4
    assert err == "autonumactl status: permission denied: 'status' needs root or membership of group 'numa'\n"


def test_enable_and_disable_report_the_new_state(daemon, capsys):
    rc, out, _ = ctl(capsys, daemon.path, "disable")
    assert rc == 0
    assert out == "balancing is off (disabled with autonumactl disable); restored the CPU affinity of 5 threads\n"
    rc, out, _ = ctl(capsys, daemon.path, "enable")
    assert rc == 0 and out == "balancing is on\n"
    assert [c for c, _ in daemon.calls] == ["disable", "enable"]
    rc, out, _ = ctl(capsys, daemon.path, "disable", "--json")
    assert json.loads(out)["restored_affinities"] == 5


def test_reload_reports_what_changed(daemon, capsys):
    rc, out, _ = ctl(capsys, daemon.path, "reload")
    assert rc == 0
    assert out == "reloaded /etc/autonumad.conf: changed scan.pages_to_scan\n"


def test_reload_of_a_bad_file_names_the_line_and_keeps_the_running_config(daemon, capsys):
    daemon.refuse["reload"] = ProtocolError(
        "bad_request", "/etc/autonumad.conf:12: scan.pages_to_scan: must be from 1 to 2147483648, got 0")
    rc, out, err = ctl(capsys, daemon.path, "reload")
    assert rc == 1 and out == ""
    assert err == ("autonumactl reload: the new config was refused; the running one stays in force:\n"
                   "/etc/autonumad.conf:12: scan.pages_to_scan: must be from 1 to 2147483648, got 0\n")


def test_a_daemon_failure_is_reported_with_exit_1(daemon, capsys):
    daemon.refuse["stats"] = ProtocolError("failed", "stats failed: the statistics box exploded")
    rc, _, err = ctl(capsys, daemon.path, "stats")
    assert rc == 1
    assert err == "autonumactl stats: stats failed: the statistics box exploded\n"


# ---------------------------------------------------------------- no daemon

@pytest.mark.parametrize("argv, code", [
    (["status"], 3), (["status", "--json"], 3), (["stats"], 1), (["get"], 1), (["get", "pages_to_scan"], 1),
    (["set", "pages_to_scan", "4096"], 1), (["enable"], 1), (["disable"], 1), (["reload"], 1),
])
def test_without_a_daemon_verbs_say_so_plainly(no_daemon, capsys, argv, code):
    rc, out, err = ctl(capsys, no_daemon, *argv)
    assert rc == code and out == ""
    assert err == f"autonumactl {argv[0]}: autonumad is not running (no socket at {no_daemon})\n"


def test_the_socket_path_comes_from_the_config_file_without_socket_option(daemon, capsys, monkeypatch, tmp_path):
    config = tmp_path / "autonumad.conf"
    config.write_text(f'[daemon]\ncontrol_socket = "{daemon.path}"\n')
    monkeypatch.setattr(constants, "CONFIG_PATH", str(config))
    assert main(["get", "pages_to_scan"]) == 0
    assert capsys.readouterr().out == "pages_to_scan = 32768\n"


def test_a_stale_socket_file_means_not_running(no_daemon, capsys):
    import socket as socket_module

    stale = socket_module.socket(socket_module.AF_UNIX)
    stale.bind(no_daemon)
    stale.close()
    rc, _, err = ctl(capsys, no_daemon, "status")
    assert rc == 3
    assert err == f"autonumactl status: autonumad is not running (nothing listens on {no_daemon})\n"


# ---------------------------------------------------------------- advise

def test_advise_asks_the_daemon_when_it_runs(daemon, capsys):
    rc, out, err = ctl(capsys, daemon.path, "advise", "1.5:512")
    assert rc == 0
    assert out == "1\n"
    assert "node 1: 2.0 idle CPUs, 700 MB free" in err and "[asked autonumad]" in err
    assert daemon.calls == [("advise", {"cpus": 2, "memory_mb": 512})]
    rc, out, _ = ctl(capsys, daemon.path, "advise", "2", "--json")
    assert json.loads(out) == {"nodes": [1], "reason": "node 1: 2.0 idle CPUs, 700 MB free",
                               "source": "daemon", "note": "asked autonumad"}


def test_advise_computes_locally_when_the_daemon_refuses_us(daemon, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(advise_command, "local_reserve_mb", lambda: 0)
    daemon.refuse["advise"] = ProtocolError("permission_denied", "'advise' needs root")
    rc = main(["--socket", daemon.path, "--root", tree_with_stat(tmp_path, "2node"), "advise", "1"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "1\n"
    assert "computed here (permission denied: 'advise' needs root)" in err


def test_advise_with_a_bad_size_is_refused_by_argparse(no_daemon, capsys):
    for size in ("0", "x", "2:", "-1"):
        with pytest.raises(SystemExit) as exc:
            main(["--socket", no_daemon, "advise", size])
        assert exc.value.code == 2
        assert "expected CPUS[:MB]" in capsys.readouterr().err or size == "0"


def tree_with_stat(tmp_path, fixture):
    """A copy of a sysfs fixture tree with a proc/stat whose counters do not move (every CPU idle)."""
    root = str(tmp_path / fixture)
    shutil.copytree(os.path.join(SYSFS, fixture), root)
    os.makedirs(os.path.join(root, "proc"), exist_ok=True)
    cpus = parse_list(KernelFiles(root).read_text("sys/devices/system/cpu/online"))
    with open(os.path.join(root, "proc", "stat"), "w") as f:
        f.write("cpu  400 0 100 4000 0 0 0 0 0 0\n"
                + "".join(f"cpu{n} 100 0 25 1000 0 0 0 0 0 0\n" for n in cpus) + "intr 0\n")
    return root


@pytest.fixture
def local_advice(no_daemon, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(advise_command, "local_reserve_mb", lambda: 0)

    def run(fixture, *argv, idle=None):
        if idle is not None:
            monkeypatch.setattr(cpu_load, "measure_idle_shares", lambda files, seconds: idle)
        root = str(tmp_path / fixture) if os.path.isdir(tmp_path / fixture) else tree_with_stat(tmp_path, fixture)
        rc = main(["--socket", no_daemon, "--root", root, "advise", *argv])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def test_advise_without_a_daemon_computes_locally_and_says_so(local_advice, no_daemon):
    # 2node: node 0 has 931 MB free, node 1 956 MB; two CPUs each, all idle.
    rc, out, err = local_advice("2node", "2:500")
    assert rc == 0 and out == "1\n"
    assert err.startswith("autonumactl advise: node 1: 2.0 idle CPUs, 956 MB free (job: 2 CPUs, 500 MB) ")
    assert f"[computed here (autonumad is not running (no socket at {no_daemon})): " in err
    assert "idle CPUs measured over 0.3 s" in err


def test_advise_locally_spreads_a_job_too_big_for_one_node(local_advice):
    assert local_advice("2node", "3")[1] == "0-1\n"
    assert local_advice("2node", "1:1000")[1] == "0-1\n"


def test_advise_locally_avoids_busy_cpus(local_advice):
    # node 0's CPUs are busy, node 1's idle: a 1-CPU job goes to node 1 despite less free memory...
    assert local_advice("2node", "1:100", idle={0: 0.05, 1: 0.0, 2: 0.9, 3: 1.0})[1] == "1\n"
    # ...and a 2-CPU job needs both nodes when neither alone has two idle CPUs.
    assert local_advice("2node", "2", idle={0: 0.5, 1: 0.5, 2: 1.0, 3: 0.2})[1] == "0-1\n"


def test_advise_locally_never_picks_a_memory_only_node(local_advice):
    rc, out, _ = local_advice("memory-only", "1:1000", idle={0: 1.0, 1: 1.0})
    assert rc == 0 and out == "0-1\n"


def test_advise_locally_picks_neighbours_on_a_ring(local_advice):
    # 4node: a ring, 16 to neighbours and 22 across; a 2-CPU job takes two neighbours, never 0 and 2.
    # Of the four neighbour pairs, 0 and 3 have the most free memory (988 + 981 MB).
    rc, out, _ = local_advice("4node", "2", idle={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    assert rc == 0 and out == "0,3\n"


def test_advise_local_json_says_where_it_came_from(local_advice):
    rc, out, _ = local_advice("2node", "1", "--json")
    result = json.loads(out)
    assert rc == 0 and result["nodes"] == [1] and result["source"] == "local"
    assert result["note"].startswith("computed here (autonumad is not running")


def test_advise_local_forced_with_local_flag(daemon, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(advise_command, "local_reserve_mb", lambda: 0)
    rc = main(["--socket", daemon.path, "--root", tree_with_stat(tmp_path, "2node"), "advise", "1", "--local"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "1\n" and "computed here (--local)" in err
    assert daemon.calls == []


def test_advise_locally_without_proc_stat_counts_every_cpu_idle(no_daemon, capsys, monkeypatch):
    monkeypatch.setattr(advise_command, "local_reserve_mb", lambda: 0)
    rc = main(["--socket", no_daemon, "--root", os.path.join(SYSFS, "2node"), "advise", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and out == "1\n"
    assert "CPU load unknown (No such file or directory): every CPU counted idle" in err


# ---------------------------------------------------------------- the CPU load reader

def test_idle_shares_count_iowait_as_idle_and_ignore_guest_columns():
    before = cpu_load.parse_cpu_times(
        "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\nintr 5 1\n")
    after = cpu_load.parse_cpu_times(
        "cpu  10 0 10 100 0 0 0 0 0 0\ncpu0 30 0 10 50 10 0 0 0 500 500\ncpu1 0 0 0 100 0 0 0 0 0 0\n")
    shares = cpu_load.idle_shares(before, after)
    assert shares == {0: pytest.approx(0.6), 1: 1.0}


def test_a_cpu_whose_counters_did_not_move_counts_idle_and_a_new_one_is_skipped():
    before = {0: cpu_load.CpuTimes(idle=5, total=10)}
    after = {0: cpu_load.CpuTimes(idle=5, total=10), 1: cpu_load.CpuTimes(idle=1, total=2)}
    assert cpu_load.idle_shares(before, after) == {0: 1.0}


def test_measure_idle_shares_reads_proc_stat_twice_around_the_pause(tmp_path):
    (tmp_path / "proc").mkdir()
    stat = tmp_path / "proc" / "stat"
    stat.write_text("cpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0 0 0\n")
    pauses = []

    def sleep(seconds):
        pauses.append(seconds)
        stat.write_text("cpu0 130 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 130 0 0 0 0 0 0\n")

    shares = cpu_load.measure_idle_shares(KernelFiles(str(tmp_path)), 0.3, sleep=sleep)
    assert pauses == [0.3]
    assert shares == {0: 0.0, 1: 1.0}


def test_a_malformed_proc_stat_line_is_refused():
    with pytest.raises(ValueError, match="short line for cpu3"):
        cpu_load.parse_cpu_times("cpu3 1 2\n")


# ---------------------------------------------------------------- completion

def completion(capsys, shell):
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def test_completion_help_shows_how_to_load_it(capsys):
    with pytest.raises(SystemExit):
        main(["completion", "--help"])
    assert "source <(autonumactl completion bash)" in capsys.readouterr().out


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_mentions_every_verb_and_knob(capsys, shell):
    script = completion(capsys, shell)
    for word in [*VERBS, *RUNTIME_KNOBS, "--json", "--socket", "install", "uninstall", "--dry-run"]:
        assert word in script


def bash_complete(script_path, line):
    """What bash offers for the last word of `line` (a trailing space starts a new word)."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    program = (f"source {script_path}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n_autonumactl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


def test_bash_completion_completes_verbs_knobs_options_and_choices(capsys, tmp_path):
    script = tmp_path / "autonumactl.bash"
    script.write_text(completion(capsys, "bash"))
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert bash_complete(script, "autonumactl st") == ["stats", "status"]
    assert bash_complete(script, "autonumactl --socket /tmp/x s") == ["service", "set", "show", "stats", "status"]
    assert bash_complete(script, "autonumactl set ") == sorted(RUNTIME_KNOBS)
    assert bash_complete(script, "autonumactl get pages_to_") == ["pages_to_migrate", "pages_to_scan"]
    assert bash_complete(script, "autonumactl set pages_to_scan ") == []
    assert bash_complete(script, "autonumactl status --") == ["--help", "--json"]
    assert bash_complete(script, "autonumactl completion ") == ["bash", "zsh"]
    assert bash_complete(script, "autonumactl service --dry-run ") == ["install", "uninstall"]
    (tmp_path / "rootdir").mkdir()
    assert bash_complete(script, f"autonumactl service install --root {tmp_path}/roo") == [f"{tmp_path}/rootdir"]
    assert "--root" not in bash_complete(script, "autonumactl --")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_script_parses(capsys, tmp_path):
    script = tmp_path / "_autonumactl"
    script.write_text(completion(capsys, "zsh"))
    subprocess.run(["zsh", "-n", str(script)], check=True)
    done = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit && compinit -u && source {script} && "
                                             "print -r -- $_comps[autonumactl]"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "_autonumactl"
