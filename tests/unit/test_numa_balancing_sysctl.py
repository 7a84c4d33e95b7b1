from autonumad.kernel.files import KernelFiles
from autonumad.numa_balancing_sysctl import disable_numa_balancing, read_numa_balancing, restore_numa_balancing
from autonumad.state_file import DaemonState


def tree(tmp_path, value="1"):
    p = tmp_path / "proc/sys/kernel"
    p.mkdir(parents=True)
    (p / "numa_balancing").write_text(value + "\n")
    return KernelFiles(str(tmp_path))


def test_disable_records_original_then_restore_puts_it_back(tmp_path):
    files, state, saved = tree(tmp_path, "2"), DaemonState(), []
    assert "2 -> 0" in disable_numa_balancing(files, state, saved.append)
    assert read_numa_balancing(files) == "0" and state.numa_balancing_original == "2" and saved
    assert "restored to 2" in restore_numa_balancing(files, state, saved.append)
    assert read_numa_balancing(files) == "2" and state.numa_balancing_original is None


def test_restart_after_crash_keeps_the_first_original(tmp_path):
    files, state = tree(tmp_path, "1"), DaemonState()
    disable_numa_balancing(files, state, lambda s: None)
    disable_numa_balancing(files, state, lambda s: None)  # restarted daemon sees 0 but knows the original
    restore_numa_balancing(files, state, lambda s: None)
    assert read_numa_balancing(files) == "1"


def test_dry_run_records_the_write_without_making_it(tmp_path):
    tree(tmp_path, "1")
    files = KernelFiles(str(tmp_path), dry_run=True)
    disable_numa_balancing(files, DaemonState(), lambda s: None)
    assert files.writes == [("proc/sys/kernel/numa_balancing", "0")]
    assert read_numa_balancing(files) == "1"


def test_kernel_without_numa_balancing_is_left_alone(tmp_path):
    files = KernelFiles(str(tmp_path))
    assert disable_numa_balancing(files, DaemonState(), lambda s: None) == "kernel has no NUMA balancing"
