"""Parsers and readers of /proc files, on files captured from a 2-node VM (6.1) and the host (6.18)."""

import json
import os
import shutil

import pytest

from autonumad.kernel import procfs
from autonumad.kernel.files import AccessDenied, KernelFiles, ProcessGone, UnexpectedSymlink
from autonumad.kernel.procfs import MemPolicy

from conftest import FIXTURES

VM_TREE = os.path.join(FIXTURES, "proc", "vm2node")
HOST_TREE = os.path.join(FIXTURES, "proc", "host1node")
PIDS = json.load(open(os.path.join(VM_TREE, "scenarios.json")))["pids"]
MIXED, MEMBIND, INTERLEAVE, PREFERRED = (PIDS[k] for k in ("mixed", "membind", "interleave", "preferred"))
HOST_PID = next(int(p) for p in os.listdir(os.path.join(HOST_TREE, "proc")) if p.isdigit() and p != "2")


@pytest.fixture
def vm():
    return KernelFiles(VM_TREE)


@pytest.fixture
def host():
    return KernelFiles(HOST_TREE)


def by_start(entries):
    return {e.start: e for e in entries}


# ---------------------------------------------------------------- numa_maps

def test_numa_maps_reports_each_mapping_policy_set_with_mbind(vm):
    entries = procfs.read_numa_maps(vm, MIXED)
    policies = {str(e.policy): e for e in entries if e.policy.mode != "default"}
    assert set(policies) == {"bind:0", "bind:1", "interleave:0-1"}
    assert policies["bind:0"].node_pages == {0: 1024}
    assert policies["bind:1"].node_pages == {1: 1024}
    assert policies["interleave:0-1"].policy == MemPolicy("interleave", (0, 1))
    assert sum(policies["interleave:0-1"].node_pages.values()) == 1024
    assert policies["bind:0"].counters["anon"] == 1024


def test_task_policy_shows_on_every_mapping_of_a_numactl_process(vm):
    for pid, policy in ((MEMBIND, "bind:1"), (INTERLEAVE, "interleave:0-1"), (PREFERRED, "prefer:0")):
        entries = procfs.read_numa_maps(vm, pid)
        assert entries and {str(e.policy) for e in entries} == {policy}
        assert all(e.policy.chosen_by_process for e in entries)


def test_membind_process_private_memory_is_on_its_node_shared_file_pages_where_they_were(vm):
    entries = procfs.read_numa_maps(vm, MEMBIND)
    assert {n for e in entries if "anon" in e.counters for n in e.node_pages} == {1}
    # libpython's page cache was read in earlier by the other children, from node 0
    assert any(0 in e.node_pages for e in entries if "mapped" in e.counters)


def test_hugetlb_counts_are_huge_pages_converted_to_base_pages(vm):
    huge = [e for e in procfs.read_numa_maps(vm, MIXED) if e.huge]
    assert len(huge) == 1
    entry = huge[0]
    assert entry.page_size_kb == 2048
    assert entry.node_pages == {1: 2}           # two 2 MiB pages
    assert entry.node_base_pages == {1: 1024}   # = 4 MiB in 4 KiB pages
    assert entry.kind == "huge"
    assert entry.path == "/anon_hugepage (deleted)"


def test_transparent_huge_pages_are_counted_in_base_pages(vm):
    # The 8 MiB MADV_HUGEPAGE mapping held 6 MiB of THP (smaps AnonHugePages: 6144 kB)
    # and still reads in 4 KiB units: 2048 pages, kernelpagesize_kB=4.
    scenarios = json.load(open(os.path.join(VM_TREE, "scenarios.json")))
    thp_vma = next(line for line in scenarios["mixed_smaps_anon_huge_by_vma"] if "6144 kB" in line)
    start = int(thp_vma.split("-")[0], 16)
    entry = by_start(procfs.read_numa_maps(vm, MIXED))[start]
    assert entry.page_size_kb == 4 and not entry.huge
    assert entry.node_base_pages == {1: 2048}


def test_heap_stack_and_empty_mappings(vm):
    entries = procfs.read_numa_maps(vm, MIXED)
    heap = [e for e in entries if e.heap]
    stack = [e for e in entries if e.stack]
    assert len(heap) == 1 and heap[0].kind == "heap" and heap[0].node_pages == {0: 59, 1: 1181}
    assert len(stack) == 1 and stack[0].kind == "stack"
    empty = [e for e in entries if not e.node_pages]
    assert empty and all(e.counters == {} for e in empty)


def test_numa_maps_line_with_escaped_path_and_flags():
    line = ("7f00 bind=static:0,2-3 file=/tmp/a\\040b\\075c mapped=3 mapmax=2 active=0 "
            "N0=1 N2=2 kernelpagesize_kB=4")
    entry = procfs.parse_numa_maps_line(line)
    assert entry.start == 0x7F00
    assert entry.policy == MemPolicy("bind", (0, 2, 3), "static")
    assert str(entry.policy) == "bind=static:0,2-3"
    assert entry.path == "/tmp/a b=c"
    assert entry.node_pages == {0: 1, 2: 2}
    assert entry.counters == {"mapped": 3, "mapmax": 2, "active": 0}


@pytest.mark.parametrize("text, mode, nodes, flags", [
    ("default", "default", (), ""),
    ("local", "local", (), ""),
    ("prefer:1", "prefer", (1,), ""),
    ("prefer (many):0-1", "prefer (many)", (0, 1), ""),
    ("weighted interleave:0-3", "weighted interleave", (0, 1, 2, 3), ""),
    ("interleave=relative:0,2", "interleave", (0, 2), "relative"),
    ("bind=static|balancing:1", "bind", (1,), "static|balancing"),
])
def test_policies_as_the_kernel_spells_them(text, mode, nodes, flags):
    policy = procfs.parse_policy(text)
    assert (policy.mode, policy.nodes, policy.flags) == (mode, nodes, flags)
    assert str(policy) == text
    line = procfs.parse_numa_maps_line(f"7f0000 {text} anon=2 dirty=2 N0=2 kernelpagesize_kB=4")
    assert line.policy == policy and line.node_pages == {0: 2}


def test_default_and_local_are_not_the_process_choosing():
    assert not MemPolicy("default").chosen_by_process
    assert not MemPolicy("local").chosen_by_process
    assert MemPolicy("prefer", (0,)).chosen_by_process


def test_unknown_policy_keeps_its_spelling():
    entry = procfs.parse_numa_maps_line("1000 futurepolicy:0 anon=1 N0=1 kernelpagesize_kB=4")
    assert entry.policy.mode == "futurepolicy:0"
    assert entry.node_pages == {0: 1}
    with pytest.raises(ValueError):
        procfs.parse_policy("futurepolicy:0")


def test_bad_numa_maps_line_names_itself():
    with pytest.raises(ValueError, match="address"):
        procfs.parse_numa_maps_line("zzz default")


# ---------------------------------------------------------------- maps

def test_maps_keeps_special_and_deleted_paths(vm):
    maps = procfs.read_maps(vm, MIXED)
    paths = {m.path for m in maps}
    assert {"[heap]", "[stack]", "[vvar]", "[vdso]", "/anon_hugepage (deleted)"} <= paths
    heap = next(m for m in maps if m.path == "[heap]")
    assert heap.perms == "rw-p" and heap.pages == (heap.end - heap.start) // 4096
    assert len(maps) == len(procfs.read_numa_maps(vm, MIXED))


def test_maps_of_host_process_has_vsyscall(host):
    maps = procfs.read_maps(host, HOST_PID)
    assert maps[-1].path == "[vsyscall]" and maps[-1].perms == "--xp"


def test_maps_path_with_spaces():
    (entry,) = procfs.parse_maps("7f00-7f10 rw-s 00001000 00:05 42   /dev/shm/my file (deleted)\n")
    assert entry.path == "/dev/shm/my file (deleted)"
    assert (entry.start, entry.end, entry.offset, entry.inode) == (0x7F00, 0x7F10, 0x1000, 42)


def test_kernel_thread_has_no_mappings(vm, host):
    assert procfs.read_maps(vm, 2) == []
    assert procfs.read_maps(host, 2) == []


# ---------------------------------------------------------------- stat, schedstat, status, cgroup

def test_stat_of_a_process(vm):
    stat = procfs.read_stat(vm, MIXED)
    assert stat.pid == MIXED and stat.comm == "python3" and stat.state == "S"
    assert stat.num_threads == 2
    assert stat.start_time_ticks == 1774
    assert stat.rss_pages == 8744
    assert not stat.is_kernel_thread


def test_stat_marks_kernel_threads(vm, host):
    assert procfs.read_stat(vm, 2).is_kernel_thread
    assert procfs.read_stat(host, 2).is_kernel_thread


def test_stat_with_spaces_and_parentheses_in_comm(vm):
    real = open(os.path.join(VM_TREE, "proc", str(MIXED), "stat")).read()
    tricky = real.replace("(python3)", "(a) b (c))")
    stat = procfs.parse_stat(tricky)
    assert stat.comm == "a) b (c)"
    assert stat.start_time_ticks == 1774 and stat.processor == 0


def test_short_stat_line_is_refused():
    with pytest.raises(ValueError):
        procfs.parse_stat("1 (x) S 0 0")


def test_threads_last_cpu_and_run_time(vm):
    threads = {t.tid: t for t in procfs.read_threads(vm, MIXED)}
    assert len(threads) == 2
    main, spinner = threads[MIXED], next(t for tid, t in threads.items() if tid != MIXED)
    assert (main.processor, spinner.processor) == (0, 1)
    assert main.run_ns == 2215079881 and spinner.run_ns == 807552680
    assert spinner.start_time_ticks > main.start_time_ticks


def test_threads_without_schedstat_fall_back_to_cpu_ticks(tmp_path, vm):
    shutil.copytree(os.path.join(VM_TREE, "proc", str(MIXED)), tmp_path / "proc" / str(MIXED))
    for tid in os.listdir(tmp_path / "proc" / str(MIXED) / "task"):
        os.remove(tmp_path / "proc" / str(MIXED) / "task" / tid / "schedstat")
    threads = {t.tid: t for t in procfs.read_threads(KernelFiles(str(tmp_path)), MIXED)}
    stat = procfs.read_task_stat(vm, MIXED, MIXED)
    assert threads[MIXED].run_ns == stat.cpu_ticks * 1_000_000_000 // procfs.CLOCK_TICKS


def test_thread_that_exits_while_listed_is_left_out(tmp_path):
    shutil.copytree(os.path.join(VM_TREE, "proc", str(MIXED)), tmp_path / "proc" / str(MIXED))
    os.makedirs(tmp_path / "proc" / str(MIXED) / "task" / "99999")
    assert [t.tid for t in procfs.read_threads(KernelFiles(str(tmp_path)), MIXED)] == sorted(
        int(t) for t in os.listdir(os.path.join(VM_TREE, "proc", str(MIXED), "task")))


def test_schedstat():
    assert procfs.parse_schedstat("2884489872 1374002764 1029\n") == procfs.SchedStat(2884489872, 1374002764, 1029)


def test_status_of_6_1_has_no_kthread_line(vm):
    status = procfs.read_status(vm, MIXED)
    assert status.kthread is None
    assert status.uids == (0, 0, 0, 0)
    assert status.vm_rss_kb == 34976 and status.hugetlb_kb == 4096
    assert status.threads == 2
    assert status.mems_allowed_list == "0-1"


def test_status_of_6_18_says_kthread(host):
    assert procfs.read_status(host, 2).kthread is True
    assert procfs.read_status(host, HOST_PID).kthread is False


def test_cgroup_v2_only(vm):
    entries = procfs.read_cgroup(vm, MIXED)
    assert entries == [procfs.CgroupEntry(0, (), "/")]
    assert procfs.cgroup_path(entries) == "/"


def test_cgroup_hybrid_v1_and_v2(host):
    entries = procfs.read_cgroup(host, HOST_PID)
    assert any(e.controllers == ("memory",) for e in entries)
    assert procfs.cgroup_path(entries) == "/"


def test_cgroup_path_prefers_v2_then_systemd_v1():
    hybrid = procfs.parse_cgroup("4:memory:/m\n1:name=systemd:/system.slice/a.service\n0::/system.slice/a.service\n")
    assert procfs.cgroup_path(hybrid) == "/system.slice/a.service"
    v1 = procfs.parse_cgroup("4:cpu,cpuacct:/x\n1:name=systemd:/user.slice/u.scope\n")
    assert v1[0].controllers == ("cpu", "cpuacct")
    assert procfs.cgroup_path(v1) == "/user.slice/u.scope"


def test_cmdline(vm):
    argv = procfs.read_cmdline(vm, MIXED)
    assert argv[0].endswith("python3") and argv[1] == "-c" and argv[-1] == "mixed"
    assert procfs.parse_cmdline(b"") == []


# ---------------------------------------------------------------- listing, errors, writes

def test_list_pids_of_a_fixture_tree(vm):
    assert procfs.list_pids(vm) == sorted(PIDS.values())


def test_list_pids_of_the_live_system_includes_us():
    assert os.getpid() in procfs.list_pids(KernelFiles("/"))


def test_uptime(vm):
    assert procfs.read_uptime(vm) == pytest.approx(25.54)


def test_missing_process_is_gone(vm):
    with pytest.raises(ProcessGone):
        procfs.read_stat(vm, 4242)
    with pytest.raises(ProcessGone):
        procfs.read_numa_maps(vm, 4242)
    with pytest.raises(ProcessGone):
        procfs.read_threads(vm, 4242)


def test_empty_stat_means_gone(tmp_path):
    os.makedirs(tmp_path / "proc" / "5")
    (tmp_path / "proc" / "5" / "stat").write_text("")
    with pytest.raises(ProcessGone):
        procfs.read_stat(KernelFiles(str(tmp_path)), 5)


def test_clear_soft_dirty_writes_4_to_clear_refs():
    files = KernelFiles(VM_TREE, dry_run=True)
    procfs.clear_soft_dirty(files, MIXED)
    assert files.writes == [(f"proc/{MIXED}/clear_refs", "4")]


# ---------------------------------------------------------------- symlinks under /proc

def test_a_symlink_under_proc_is_refused_and_names_the_path(tmp_path):
    shutil.copytree(VM_TREE, tmp_path / "vm")
    tree = tmp_path / "vm"
    secret = tmp_path / "secret"
    secret.write_text("not for the daemon\n")
    (tree / "proc" / str(MIXED) / "numa_maps").unlink()
    (tree / "proc" / str(MIXED) / "numa_maps").symlink_to(secret)
    shutil.rmtree(tree / "proc" / str(MEMBIND) / "task")
    (tree / "proc" / str(MEMBIND) / "task").symlink_to(tree / "proc" / str(MIXED) / "task")
    files = KernelFiles(str(tree))
    with pytest.raises(UnexpectedSymlink) as raised:
        procfs.read_numa_maps(files, MIXED)
    assert isinstance(raised.value, AccessDenied)
    assert raised.value.filename == str(tree / "proc" / str(MIXED) / "numa_maps")
    assert "refusing to follow a symlink under /proc" in str(raised.value)
    with pytest.raises(UnexpectedSymlink):
        procfs.read_threads(files, MEMBIND)
    with pytest.raises(UnexpectedSymlink):
        files.write_text(f"proc/{MIXED}/numa_maps", "4")
    assert secret.read_text() == "not for the daemon\n"
    assert procfs.read_stat(files, MIXED).pid == MIXED  # the process's other files still read


def test_the_expected_symlink_proc_self_and_symlinks_outside_proc_are_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "status").write_text("Name:\tautonumad\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "self").symlink_to(tmp_path / "real")
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "cpulist").symlink_to(tmp_path / "real" / "status")
    files = KernelFiles(str(tmp_path))
    assert files.read_text("proc/self/status") == "Name:\tautonumad\n"
    assert files.read_text("sys/cpulist") == "Name:\tautonumad\n"
    assert procfs.list_pids(KernelFiles("/"))  # the real /proc reads as before


# ---------------------------------------------------------------- pagemap

def test_pages_exclusive_reads_the_exclusively_mapped_bit_of_present_pages_in_few_reads(tmp_path, monkeypatch):
    entries = {0x100: procfs.PAGEMAP_PRESENT | procfs.PAGEMAP_EXCLUSIVE | 1234,   # only ours
               0x101: procfs.PAGEMAP_PRESENT | 1235,                             # shared since a fork
               0x102: 0,                                                         # not present
               0x9000: procfs.PAGEMAP_PRESENT | procfs.PAGEMAP_EXCLUSIVE}        # far away: a read of its own
    (tmp_path / "proc" / "42").mkdir(parents=True)
    with open(tmp_path / "proc" / "42" / "pagemap", "wb") as f:
        for page, entry in entries.items():
            f.seek(page * procfs.PAGEMAP_ENTRY)
            f.write(entry.to_bytes(procfs.PAGEMAP_ENTRY, "little"))
    files = KernelFiles(str(tmp_path))
    spans = []
    real = files.read_spans
    monkeypatch.setattr(files, "read_spans", lambda rel, s: spans.append(list(s)) or real(rel, s))
    addrs = [page * 4096 + 8 for page in entries] + [0x100 * 4096]
    assert procfs.pages_exclusive(files, 42, addrs) == {
        0x100 * 4096 + 8: True, 0x101 * 4096 + 8: False, 0x9000 * 4096 + 8: True, 0x100 * 4096: True}
    assert spans == [[(0x100 * 8, 3 * 8), (0x9000 * 8, 8)]]
    with pytest.raises(ProcessGone):
        procfs.pages_exclusive(files, 43, addrs)
