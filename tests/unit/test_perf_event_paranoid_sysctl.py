import json
import os

from autonumad import daemon_main
from autonumad.kernel.files import KernelFiles
from autonumad.perf_event_paranoid_sysctl import (lower_perf_event_paranoid, read_perf_event_paranoid,
                                                  restore_perf_event_paranoid)
from autonumad.state_file import DaemonState, StateFile

from test_robustness import fixture_root, write_config


def tree(tmp_path, value="3"):
    p = tmp_path / "proc/sys/kernel"
    p.mkdir(parents=True)
    (p / "perf_event_paranoid").write_text(value + "\n")
    return KernelFiles(str(tmp_path))


def test_lower_records_the_original_then_restore_puts_it_back(tmp_path):
    files, state, saved = tree(tmp_path, "3"), DaemonState(), []
    assert "3 -> 2" in lower_perf_event_paranoid(files, state, saved.append)
    assert read_perf_event_paranoid(files) == 2 and state.perf_event_paranoid_original == "3" and saved
    assert "restored to 3" in restore_perf_event_paranoid(files, state, saved.append)
    assert read_perf_event_paranoid(files) == 3 and state.perf_event_paranoid_original is None


def test_a_level_that_already_allows_sampling_is_left_and_not_recorded(tmp_path):
    files, state = tree(tmp_path, "1"), DaemonState()
    assert "left as it is" in lower_perf_event_paranoid(files, state, lambda s: None)
    assert read_perf_event_paranoid(files) == 1 and state.perf_event_paranoid_original is None
    assert restore_perf_event_paranoid(files, state, lambda s: None) == "kernel.perf_event_paranoid untouched"
    assert read_perf_event_paranoid(files) == 1


def test_restart_after_a_crash_keeps_the_first_original(tmp_path):
    files, state = tree(tmp_path, "4"), DaemonState()
    lower_perf_event_paranoid(files, state, lambda s: None)
    lower_perf_event_paranoid(files, state, lambda s: None)  # restarted: sees 2, knows the original
    restore_perf_event_paranoid(files, state, lambda s: None)
    assert read_perf_event_paranoid(files) == 4


def test_kernel_without_perf_events_is_left_alone(tmp_path):
    assert lower_perf_event_paranoid(KernelFiles(str(tmp_path)), DaemonState(), lambda s: None) == \
        "kernel has no perf events"


def test_the_state_file_carries_it_and_reads_an_older_file_without_it(tmp_path):
    path = str(tmp_path / "state.json")
    StateFile(path).save(DaemonState(numa_balancing_original="1", perf_event_paranoid_original="3"))
    assert StateFile(path).load().perf_event_paranoid_original == "3"
    with open(path, "w") as f:
        json.dump({"version": 1, "numa_balancing_original": "1", "affinities": {}}, f)
    assert StateFile(path).load() == DaemonState(numa_balancing_original="1")


def _config(shared, how):
    conf = write_config(shared)
    with open(conf, "a") as f:
        f.write(f'[kernel]\nperf_event_paranoid = "{how}"\n')
    return conf


def _paranoid(root):
    with open(os.path.join(root, "proc", "sys", "kernel", "perf_event_paranoid")) as f:
        return f.read().strip()


def test_the_units_helpers_lower_it_only_when_the_config_says_so_and_put_it_back(tmp_path, capsys):
    shared = str(tmp_path)
    root = fixture_root(shared, "2node")
    with open(os.path.join(root, "proc", "sys", "kernel", "perf_event_paranoid"), "w") as f:
        f.write("3\n")
    leave = _config(shared, "leave")
    assert daemon_main.main(["--config", leave, "--root", root, "--setup-kernel"]) == 0
    assert _paranoid(root) == "3"
    daemon_main.main(["--config", leave, "--root", root, "--restore-kernel"])
    lower = _config(shared, "lower")
    assert daemon_main.main(["--config", lower, "--root", root, "--setup-kernel"]) == 0
    assert _paranoid(root) == "2"
    assert "kernel.perf_event_paranoid 3 -> 2" in capsys.readouterr().out
    assert daemon_main.main(["--config", lower, "--root", root, "--restore-kernel"]) == 0
    assert _paranoid(root) == "3"
    assert "kernel.perf_event_paranoid restored to 3" in capsys.readouterr().out
