"""Process discovery and filters, on a copy of the /proc tree captured in the 2-node VM."""

import json
import logging
import os
import shutil

import pytest

from autonumad.config import Config, PolicyConfig, ProcessesConfig
from autonumad.kernel import procfs
from autonumad.kernel.files import KernelFiles
from autonumad.processes import (NAMES_RECHECK_S, NewProcessWatch, ProcessDiscovery, ProcessFilter, ProcessInfo,
                                 ProcessKey, compile_pattern, find_processes)

from conftest import FIXTURES

VM_TREE = os.path.join(FIXTURES, "proc", "vm2node")
PIDS = json.load(open(os.path.join(VM_TREE, "scenarios.json")))["pids"]
MIXED, MEMBIND = PIDS["mixed"], PIDS["membind"]
USER_PIDS = sorted(p for name, p in PIDS.items() if name != "kthread")
NOT_US = -1


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(VM_TREE, tmp_path / "vm")
    return tmp_path / "vm"


def set_stat_fields(tree, pid, **fields):
    """Rewrite fields of proc/PID/stat, numbered as in proc(5): f14=utime, f22=starttime..."""
    path = tree / "proc" / str(pid) / "stat"
    text = path.read_text()
    head, _, tail = text.rpartition(") ")
    parts = tail.split()
    for name, value in fields.items():
        parts[int(name[1:]) - 3] = str(value)
    path.write_text(f"{head}) {' '.join(parts)}\n")


def set_uptime(tree, seconds):
    (tree / "proc" / "uptime").write_text(f"{seconds:.2f} 1.00\n")


def stat_reads(monkeypatch):
    """The PIDs whose stat file is read from now on, in order."""
    reads = []
    real = procfs.read_stat
    monkeypatch.setattr(procfs, "read_stat", lambda f, pid: reads.append(pid) or real(f, pid))
    return reads


def info(**overrides):
    values = dict(key=ProcessKey(10, 5), comm="worker", exe_name="worker", uid=1000, user="alice",
                  rss_kb=512 * 1024, num_threads=4, cpu_ticks=100, cpu_percent=50.0, cgroup="/system.slice/db.service")
    values.update(overrides)
    return ProcessInfo(**values)


# ---------------------------------------------------------------- discovery

def test_finds_every_user_process_and_skips_kernel_threads():
    d = ProcessDiscovery(KernelFiles(VM_TREE), ProcessFilter(), own_pid=NOT_US).discover()
    assert [p.pid for p in d.processes] == USER_PIDS
    mixed = next(p for p in d.processes if p.pid == MIXED)
    assert mixed.key == ProcessKey(MIXED, 1774)
    assert mixed.comm == "python3" and mixed.user == "root" and mixed.uid == 0
    assert mixed.rss_kb == 34976 + 4096   # VmRSS + HugetlbPages
    assert mixed.num_threads == 2 and mixed.cgroup == "/"
    assert d.new == sorted(p.key for p in d.processes) and d.left == []


def test_skips_itself_and_zombies(tree):
    set_stat_fields(tree, MEMBIND, f3="Z")
    d = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(), own_pid=MIXED).discover()
    assert MIXED not in [p.pid for p in d.processes]
    assert MEMBIND not in [p.pid for p in d.processes]


def test_first_sight_cpu_use_is_over_the_lifetime(tree):
    set_uptime(tree, 1774 / procfs.CLOCK_TICKS + 10)   # MIXED started 10 s ago
    set_stat_fields(tree, MIXED, f14=200, f15=300)     # 5 s of CPU
    d = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(), own_pid=NOT_US).discover()
    mixed = next(p for p in d.processes if p.pid == MIXED)
    assert mixed.cpu_percent == pytest.approx(500 / procfs.CLOCK_TICKS / 10 * 100)


def test_cpu_use_is_over_the_interval_since_the_last_discovery(tree):
    clock = Clock(100.0)
    discovery = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(), clock=clock, own_pid=NOT_US)
    discovery.discover()
    stat = procfs.read_stat(KernelFiles(str(tree)), MIXED)
    set_stat_fields(tree, MIXED, f14=stat.utime_ticks + procfs.CLOCK_TICKS * 3)  # 3 s of CPU...
    clock.now += 4.0                                                             # ...in 4 s
    d = discovery.discover()
    mixed = next(p for p in d.processes if p.pid == MIXED)
    assert mixed.cpu_percent == pytest.approx(75.0)
    assert d.new == [] and d.left == []


def test_pid_reuse_is_a_new_process(tree):
    clock = Clock()
    discovery = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(), clock=clock, own_pid=NOT_US)
    discovery.discover()
    set_stat_fields(tree, MIXED, f22=5000)   # the PID now belongs to a process started later
    set_uptime(tree, 5000 / procfs.CLOCK_TICKS + 1)
    clock.now += 1
    d = discovery.discover()
    assert d.left == [ProcessKey(MIXED, 1774)]
    assert d.new == [ProcessKey(MIXED, 5000)]
    reused = next(p for p in d.processes if p.pid == MIXED)
    # CPU use of the new process is its own (lifetime), not a difference with the old one's ticks
    stat = procfs.read_stat(KernelFiles(str(tree)), MIXED)
    assert reused.cpu_percent == pytest.approx(100 * stat.cpu_ticks / procfs.CLOCK_TICKS / 1, rel=0.01)


def test_vanished_processes_are_skipped_with_a_debug_line(tree, caplog):
    clock = Clock()
    discovery = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(min_cpu_percent=0.0), clock=clock,
                                 own_pid=NOT_US)
    discovery.discover()
    shutil.rmtree(tree / "proc" / str(MEMBIND))
    os.makedirs(tree / "proc" / str(MEMBIND))   # listed, but gone before its stat was read
    os.remove(tree / "proc" / str(MIXED) / "status")   # gone between two of its files
    clock.now += NAMES_RECHECK_S                 # (status is read again only this often)
    with caplog.at_level(logging.DEBUG, logger="autonumad.processes"):
        d = discovery.discover()
    assert MEMBIND not in [p.pid for p in d.processes] and MIXED not in [p.pid for p in d.processes]
    assert sorted(k.pid for k in d.left) == [MIXED, MEMBIND]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)
    assert any(f"pid {MEMBIND} went away" in r.getMessage() for r in caplog.records)


def test_truncated_comm_matches_by_argv0(tree):
    stat_path = tree / "proc" / str(MIXED) / "stat"
    stat_path.write_text(stat_path.read_text().replace("(python3)", "(a_very_long_pro)"))
    (tree / "proc" / str(MIXED) / "cmdline").write_bytes(b"/opt/bin/a_very_long_program_name\0--x\0")
    found = find_processes(KernelFiles(str(tree)), "a_very_long_program_*", own_pid=NOT_US)
    assert [p.pid for p in found] == [MIXED]
    assert found[0].exe_name == "a_very_long_program_name"


def test_find_processes_by_pid_or_name():
    files = KernelFiles(VM_TREE)
    assert [p.pid for p in find_processes(files, str(MEMBIND), own_pid=NOT_US)] == [MEMBIND]
    assert [p.pid for p in find_processes(files, "python*", own_pid=NOT_US)] == USER_PIDS
    assert find_processes(files, "kthreadd", own_pid=NOT_US) == []


def test_thresholds_apply_to_discovery():
    big = ProcessFilter(min_rss_mb=36)   # only MIXED has 38.9 MiB with its hugetlb pages
    d = ProcessDiscovery(KernelFiles(VM_TREE), big, own_pid=NOT_US).discover()
    assert [p.pid for p in d.processes] == [MIXED]


# ---------------------------------------------------------------- filters

def test_a_process_too_idle_to_balance_costs_only_its_stat_file(tree, monkeypatch, caplog):
    clock = Clock()
    files = KernelFiles(str(tree))
    discovery = ProcessDiscovery(files, ProcessFilter(min_cpu_percent=1.0), clock=clock, own_pid=NOT_US)
    discovery.discover()
    admitted_before = {p.pid for p in discovery.discover().processes}
    stat = procfs.read_stat(files, MIXED)
    set_stat_fields(tree, MIXED, f14=stat.utime_ticks + procfs.CLOCK_TICKS)    # 1 s of CPU in 2 s: 50%
    statuses = []
    real = procfs.read_status
    monkeypatch.setattr(procfs, "read_status", lambda f, pid: statuses.append(pid) or real(f, pid))
    clock.now += 2.0
    caplog.set_level(logging.DEBUG, logger="autonumad")
    d = discovery.discover()
    assert [p.pid for p in d.processes] == [MIXED] and statuses == [MIXED]  # hugetlb in use: read each pass;
    #                                                                        the idle ones: stat only
    assert sorted(k.pid for k in d.left) == sorted(admitted_before - {MIXED})
    assert "no longer balanced: CPU 0.0% below 0.5%" in caplog.text
    assert discovery.seen_pids >= set(USER_PIDS)


def test_an_idle_process_is_read_again_only_after_the_idle_recheck_interval(tree, monkeypatch):
    from autonumad.processes import IDLE_RECHECK_S
    clock = Clock()
    files = KernelFiles(str(tree))
    last_pid = [500]                                  # no PID reused: as /proc/loadavg tells
    monkeypatch.setattr(procfs, "last_pid", lambda f: last_pid[0])
    discovery = ProcessDiscovery(files, ProcessFilter(min_cpu_percent=1.0), clock=clock, own_pid=NOT_US)
    discovery.discover()
    clock.now += 1.0
    assert MIXED not in {p.pid for p in discovery.discover().processes}   # idle over that second
    stat = procfs.read_stat(files, MIXED)
    reads = stat_reads(monkeypatch)
    set_stat_fields(tree, MIXED, f14=stat.utime_ticks + procfs.CLOCK_TICKS)  # busy from now on: 1 s of CPU
    clock.now += IDLE_RECHECK_S / 2
    d = discovery.discover()
    assert MIXED not in reads and MIXED not in {p.pid for p in d.processes} and MIXED in discovery.seen_pids
    clock.now += IDLE_RECHECK_S / 2
    d = discovery.discover()
    mixed = [p for p in d.processes if p.pid == MIXED]
    assert MIXED in reads and mixed   # read again, its CPU use counted since its last read: 1 s in 5 s
    assert mixed[0].cpu_percent == pytest.approx(100.0 / IDLE_RECHECK_S)
    idle = [p for p in USER_PIDS if p not in {q.pid for q in d.processes}]
    clock.now += 1.0
    discovery.discover()
    reads.clear()
    last_pid[0] = 20                                  # the PID counter wrapped: an idle PID may be new
    clock.now += 1.0
    discovery.discover()
    assert idle and set(idle) <= set(reads)


def test_kernel_threads_are_read_once_then_again_only_after_the_recheck_interval(tree, monkeypatch):
    from autonumad.processes import KTHREAD_RECHECK_S
    clock = Clock()
    files = KernelFiles(str(tree))
    discovery = ProcessDiscovery(files, ProcessFilter(), clock=clock, own_pid=NOT_US)
    reads = stat_reads(monkeypatch)
    kthread = PIDS["kthread"]
    discovery.discover()
    clock.now += 1
    first = [p.pid for p in discovery.discover().processes]
    assert reads.count(kthread) == 1 and first == USER_PIDS
    clock.now += KTHREAD_RECHECK_S
    discovery.discover()
    assert reads.count(kthread) == 2


def test_kernel_threads_are_not_read_again_while_the_pid_counter_has_not_wrapped(tree, monkeypatch):
    from autonumad.processes import KTHREAD_RECHECK_MAX_S, KTHREAD_RECHECK_S
    clock = Clock()
    files = KernelFiles(str(tree))
    discovery = ProcessDiscovery(files, ProcessFilter(), clock=clock, own_pid=NOT_US)
    reads = stat_reads(monkeypatch)
    last_pid = [500]
    monkeypatch.setattr(procfs, "last_pid", lambda f: last_pid[0])
    kthread = PIDS["kthread"]
    discovery.discover()
    for handed_out in (100, 2000, 30):                 # new PIDs, none reused: not read again
        clock.now += KTHREAD_RECHECK_S
        last_pid[0] += handed_out
        discovery.discover()
    assert reads.count(kthread) == 1
    last_pid[0] = 300                                  # wrapped: a freed PID may be a new process's
    clock.now += 1
    discovery.discover()
    assert reads.count(kthread) == 2
    clock.now += KTHREAD_RECHECK_MAX_S                 # more than pid_max handed out, it may be
    discovery.discover()
    assert reads.count(kthread) == 3


def test_patterns_glob_and_regex_in_full():
    assert compile_pattern("post*")("postgres")
    assert not compile_pattern("post*")("xpostgres")
    assert compile_pattern("re:post(gres|master)")("postmaster")
    assert not compile_pattern("re:post")("postgres")   # matched in full
    with pytest.raises(ValueError, match="regular expression"):
        compile_pattern("re:(")


def test_no_rules_admits_everything_above_thresholds():
    assert ProcessFilter().rejection(info()) is None
    assert "RSS" in ProcessFilter(min_rss_mb=1024).rejection(info())
    assert "CPU" in ProcessFilter(min_cpu_percent=80).rejection(info())


def test_include_rules_any_one_suffices():
    f = ProcessFilter(include=("re:db[0-9]+",), include_pids=frozenset({10}))
    assert f.rejection(info()) is None                          # by PID
    assert f.rejection(info(key=ProcessKey(11, 5))) == "matches no include rule"
    assert f.rejection(info(key=ProcessKey(11, 5), comm="db42")) is None
    f = ProcessFilter(include_cgroups=("/system.slice/*.service",))
    assert f.rejection(info()) is None
    assert f.rejection(info(cgroup="/user.slice/x.scope")) is not None
    f = ProcessFilter(include_users=("alice", 0))
    assert f.rejection(info()) is None
    assert f.rejection(info(uid=0, user="root")) is None
    assert f.rejection(info(uid=7, user="bob")) is not None


def test_exclude_rules_win_over_include():
    f = ProcessFilter(include=("worker",), exclude=("work*",))
    assert f.rejection(info()) == "command name excluded"
    assert ProcessFilter(exclude_pids=frozenset({10})).rejection(info()) == "PID excluded"
    assert "cgroup" in ProcessFilter(exclude_cgroups=("re:/system\\.slice/.*",)).rejection(info())
    assert "user" in ProcessFilter(exclude_users=(1000,)).rejection(info())


def test_admitted_process_stays_until_half_the_thresholds():
    f = ProcessFilter(min_rss_mb=400, min_cpu_percent=20)
    dipped = info(rss_kb=300 * 1024, cpu_percent=12.0)
    assert f.rejection(dipped) is not None
    assert f.rejection(dipped, admitted_before=True) is None
    assert f.rejection(info(cpu_percent=9.0), admitted_before=True) is not None


def test_filter_from_config():
    config = Config(policy=PolicyConfig(min_rss_mb=300, min_cpu_percent=50.0),
                    processes=ProcessesConfig(include=("re:java|mysqld",), exclude_pids=(1,),
                                              include_users=("alice",)))
    f = ProcessFilter.from_config(config)
    assert f.min_rss_mb == 300 and f.min_cpu_percent == 50.0
    assert f.rejection(info(comm="mysqld", uid=5, user="x", rss_kb=400 * 1024, cpu_percent=60)) is None
    assert f.rejection(info(key=ProcessKey(1, 1), comm="mysqld", rss_kb=400 * 1024, cpu_percent=60)) == "PID excluded"


def test_a_process_with_a_symlink_in_its_proc_entry_is_skipped_with_a_warning(tree, caplog):
    status = tree / "proc" / str(MIXED) / "status"
    status.unlink()
    status.symlink_to(tree / "proc" / str(MEMBIND) / "status")
    discovery = ProcessDiscovery(KernelFiles(str(tree)), ProcessFilter(min_rss_mb=0, min_cpu_percent=0),
                                 clock=Clock(), own_pid=NOT_US)
    with caplog.at_level(logging.DEBUG, logger="autonumad.processes"):
        d = discovery.discover()
    pids = [p.pid for p in d.processes]
    assert MIXED not in pids and MEMBIND in pids
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"pid {MIXED}: " in warning.getMessage() and "refusing to follow a symlink" in warning.getMessage()
    assert str(status) in warning.getMessage()


# ---------------------------------------------------------------- new processes between passes

def test_new_process_watch_answers_a_new_pid_once_its_rss_reaches_the_threshold(tree):
    files = KernelFiles(str(tree))
    discovery = ProcessDiscovery(files, ProcessFilter(), clock=Clock(), own_pid=NOT_US)
    discovery.discover()
    watch = NewProcessWatch(files, min_rss_kb=64 * 1024, own_pid=NOT_US)
    watch.reset(discovery.seen_pids)
    assert watch.check() is None  # nothing new
    new = 4242
    shutil.copytree(tree / "proc" / str(MIXED), tree / "proc" / str(new))
    set_stat_fields(tree, new, f24=1000)  # 4 MB: not yet
    assert watch.check() is None
    set_stat_fields(tree, new, f24=64 * 256)  # 64 MB: a job is placing its memory
    assert watch.check() is None
    set_stat_fields(tree, new, f24=80 * 256)
    assert watch.check() is None
    assert watch.check() == new  # 80 MB again: its memory is placed, it starts working
    watch.reset(discovery.discover() and discovery.seen_pids)
    assert new in discovery.seen_pids and watch.check() is None


def test_a_young_busy_process_turned_away_for_its_rss_alone_is_watched_as_a_new_one(tree):
    files = KernelFiles(str(tree))
    start = procfs.read_stat(files, MIXED).start_time_ticks
    (tree / "proc" / "uptime").write_text(f"{start / procfs.CLOCK_TICKS + 10:.2f} 0.00\n")  # 10 s old
    discovery = ProcessDiscovery(files, ProcessFilter(min_rss_mb=1 << 20, min_cpu_percent=0.0),
                                 clock=Clock(), own_pid=NOT_US)
    assert discovery.discover().processes == []
    assert MIXED in discovery.young_small_pids
    assert all(procfs.read_stat(files, pid).start_time_ticks > start - 120 * procfs.CLOCK_TICKS
               for pid in discovery.young_small_pids)
    excluded = ProcessDiscovery(files, ProcessFilter(min_rss_mb=1 << 20, min_cpu_percent=0.0,
                                                     exclude_pids=(MIXED,)), clock=Clock(), own_pid=NOT_US)
    excluded.discover()
    assert MIXED not in excluded.young_small_pids                       # turned away for more than its RSS


def test_a_young_process_has_its_status_read_each_pass_until_admitted(tree, monkeypatch):
    files = KernelFiles(str(tree))
    start = procfs.read_stat(files, MEMBIND).start_time_ticks
    (tree / "proc" / "uptime").write_text(f"{start / procfs.CLOCK_TICKS + 10:.2f} 0.00\n")  # 10 s old
    statuses = []
    real = procfs.read_status
    monkeypatch.setattr(procfs, "read_status", lambda f, pid: statuses.append(pid) or real(f, pid))
    for min_rss_mb, reads in ((0, 1), (1 << 20, 3)):   # admitted: its status once; turned away: each pass
        clock = Clock()
        discovery = ProcessDiscovery(files, ProcessFilter(min_rss_mb=min_rss_mb, min_cpu_percent=0.0),
                                     clock=clock, own_pid=NOT_US)
        statuses.clear()
        for _ in range(3):
            admitted = [p.pid for p in discovery.discover().processes]
            clock.now += 1
        assert (MEMBIND in admitted) == (min_rss_mb == 0)
        assert statuses.count(MEMBIND) == reads


def test_new_process_watch_lists_nothing_while_no_pid_was_handed_out(tree, monkeypatch):
    files = KernelFiles(str(tree))
    (tree / "proc" / "loadavg").write_text("0.10 0.20 0.30 1/90 4000\n")
    (tree / "proc" / "self").symlink_to(str(os.getpid()))   # the tree is our namespace's /proc
    watch = NewProcessWatch(files, min_rss_kb=64 * 1024, own_pid=NOT_US)
    watch.reset(set(USER_PIDS))
    listed = []
    real = procfs.list_pids
    monkeypatch.setattr(procfs, "list_pids", lambda f: listed.append(1) or real(f))
    assert watch.check() is None and watch.check() is None
    assert len(listed) == 1                                  # the second call read loadavg only
    (tree / "proc" / "loadavg").write_text("0.10 0.20 0.30 1/91 4001\n")
    assert watch.check() is None and len(listed) == 2        # a PID came: listed again
    (tree / "proc" / "self").unlink()
    (tree / "proc" / "self").symlink_to("1")                 # another namespace's /proc: no short-cut
    procfs._OWN_PROC.clear()                                 # (looked at once a process, as a new daemon would)
    assert watch.check() is None and watch.check() is None and len(listed) == 4


def test_new_process_watch_reads_only_the_new_pids_still_growing_between_listings(tree, monkeypatch):
    files = KernelFiles(str(tree))
    (tree / "proc" / "loadavg").write_text("0.10 0.20 0.30 1/90 4000\n")
    (tree / "proc" / "self").symlink_to(str(os.getpid()))
    watch = NewProcessWatch(files, min_rss_kb=64 * 1024, own_pid=NOT_US)
    watch.reset(set(PIDS.values()) - {MIXED})              # MIXED is new: a job starting
    listed, reads = [], stat_reads(monkeypatch)
    real_list = procfs.list_pids
    monkeypatch.setattr(procfs, "list_pids", lambda f: listed.append(1) or real_list(f))
    set_stat_fields(tree, MIXED, f24=1000)
    assert watch.check() is None and len(listed) == 1 and reads == [MIXED]   # just seen
    set_stat_fields(tree, MIXED, f24=20000)
    assert watch.check() is None and len(listed) == 1 and reads == [MIXED] * 2   # growing: read alone
    assert watch.check() == MIXED and len(listed) == 1                         # steady, big enough


def test_new_process_watch_reads_a_small_new_pid_again_every_so_often_without_listing(tree, monkeypatch):
    from autonumad import processes
    files = KernelFiles(str(tree))
    (tree / "proc" / "loadavg").write_text("0.10 0.20 0.30 1/90 4000\n")
    (tree / "proc" / "self").symlink_to(str(os.getpid()))
    now = [1000.0]
    monkeypatch.setattr(processes.time, "monotonic", lambda: now[0])
    watch = NewProcessWatch(files, min_rss_kb=64 * 1024, own_pid=NOT_US)
    watch.reset(set(PIDS.values()) - {MIXED})
    listed, reads = [], stat_reads(monkeypatch)
    real_list = procfs.list_pids
    monkeypatch.setattr(procfs, "list_pids", lambda f: listed.append(1) or real_list(f))
    set_stat_fields(tree, MIXED, f24=1000)                 # 4 MiB: too small
    for _ in range(3):
        assert watch.check() is None
        now[0] += 0.5
    assert len(listed) == 1 and reads == [MIXED] * 2       # seen, then steady: left alone
    set_stat_fields(tree, MIXED, f24=20000)                # it grows, no PID handed out
    now[0] += processes.NEW_REREAD_S
    assert watch.check() is None and reads == [MIXED] * 3 and len(listed) == 1
    assert watch.check() == MIXED and len(listed) == 1     # growing: read at each call; now steady


def test_new_process_watch_answers_a_growing_pid_once_its_rss_holds_steady(tree):
    files = KernelFiles(str(tree))
    watch = NewProcessWatch(files, min_rss_kb=64 * 1024, own_pid=NOT_US)
    set_stat_fields(tree, MIXED, f24=64 * 256)
    watch.reset({MIXED}, {MIXED})                        # growing at the pass
    assert watch.settled() is None                       # a first look
    set_stat_fields(tree, MIXED, f24=80 * 256)
    assert watch.settled() is None                       # 64 -> 80 MB: still growing
    assert watch.settled() == MIXED                      # 80 MB again: set up
    assert watch.settled() is None                       # answered once
    watch.reset({MIXED}, {MIXED})                        # still growing at the early pass: left to the passes
    assert watch.settled() is None and watch.settled() is None
    watch.reset({MIXED}, {4242})                         # gone: dropped, no error
    assert watch.settled() is None and watch.settled() is None


def test_new_process_watch_does_not_read_kernel_threads_twice_and_bounds_its_reads(tree, monkeypatch):
    files = KernelFiles(str(tree))
    watch = NewProcessWatch(files, min_rss_kb=1 << 40, own_pid=NOT_US, max_reads=2)
    watch.reset(set())
    reads = stat_reads(monkeypatch)
    assert watch.check() is None
    assert len(reads) == 2  # at most max_reads a call
    reads.clear()
    for _ in range(len(os.listdir(tree / "proc"))):
        watch.check()
    kthread = PIDS["kthread"]
    assert reads.count(kthread) <= 1  # a kernel thread is read once, then ignored


def test_cgroup_and_command_line_are_read_again_only_after_an_exec_or_the_recheck_interval(tree, monkeypatch):
    from autonumad.processes import NAMES_RECHECK_S
    clock = Clock()
    files = KernelFiles(str(tree))
    discovery = ProcessDiscovery(files, ProcessFilter(), clock=clock, own_pid=NOT_US)
    reads = []
    real = procfs.read_cgroup
    monkeypatch.setattr(procfs, "read_cgroup", lambda f, pid: reads.append(pid) or real(f, pid))
    first = {p.pid: p for p in discovery.discover().processes}
    assert reads.count(MIXED) == 1
    clock.now += 2.0
    again = {p.pid: p for p in discovery.discover().processes}
    assert reads.count(MIXED) == 1 and again[MIXED].cgroup == first[MIXED].cgroup
    path = tree / "proc" / str(MIXED) / "stat"                   # an exec: a new comm
    head, _, tail = path.read_text().partition("(")
    path.write_text(head + "(renamed" + tail[tail.index(")"):])
    clock.now += 2.0
    renamed = {p.pid: p for p in discovery.discover().processes}
    assert reads.count(MIXED) == 2 and renamed[MIXED].comm == "renamed"
    clock.now += NAMES_RECHECK_S
    discovery.discover()
    assert reads.count(MIXED) == 3
