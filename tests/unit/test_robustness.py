"""Hostile use on the host: no privileges, loose file modes, arguments out of range.

- autonumad without CAP_SYS_PTRACE and CAP_SYS_NICE (as user nobody, where nobody
  can run this Python; as root under `setpriv --bounding-set=-all`) refuses to
  start, names both capabilities and exits non-zero;
- what the daemon writes is not world-writable: the state file (--setup-kernel on
  a copied fixture tree, so nothing of this machine is touched) and the control
  socket and its directory (a short real run on a one-node fixture tree, where it
  idles); the VM crash test checks the same files of a daemon that balanced;
- every argument out of range, for autonumactl, autonumad, autonumad-workload,
  scripts/numa-vm and scripts/churn, is refused with exit status 2 and a message
  naming the argument.

A non-root user cannot change anything through the control socket: that is
tests/unit/test_control_socket.py (test_non_root_outside_the_group_cannot_even_connect,
test_non_root_member_of_the_group_may_read_but_not_change,
test_peer_credentials_are_checked_even_if_the_socket_file_is_loosened).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from autonumad import cli, daemon_main, workload

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSFS = os.path.join(REPO, "tests", "fixtures", "sysfs")
NOBODY = 65534


@pytest.fixture
def shared_dir():
    """A temporary directory everyone may read (pytest's tmp_path is root-only)."""
    path = tempfile.mkdtemp(prefix="autonumad-robust-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def fixture_root(parent: str, tree: str, numa_balancing: str = "1") -> str:
    """A copy of a sysfs fixture with the /proc files the daemon reads at start; /proc/self is ours."""
    root = os.path.join(parent, "root")
    shutil.copytree(os.path.join(SYSFS, tree), root)
    os.makedirs(os.path.join(root, "proc", "sys", "kernel"))
    with open(os.path.join(root, "proc", "sys", "kernel", "numa_balancing"), "w") as f:
        f.write(numa_balancing + "\n")
    with open(os.path.join(root, "proc", "cmdline"), "w") as f:
        f.write("BOOT_IMAGE=/vmlinuz root=/dev/vda quiet\n")
    os.symlink("/proc/self", os.path.join(root, "proc", "self"))
    return root


def write_config(parent: str) -> str:
    path = os.path.join(parent, "autonumad.conf")
    with open(path, "w") as f:
        f.write(f'[daemon]\nstate_file = "{parent}/state/state.json"\n'
                f'control_socket = "{parent}/run/control.sock"\n')
    os.chmod(path, 0o644)
    return path


# ---------------------------------------------------------------- privilege


def others_can_run(path: str) -> bool:
    """Whether a user other than the owner may execute `path` (every directory on the way searchable)."""
    path = os.path.realpath(path)
    if not os.stat(path).st_mode & 0o001:
        return False
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & 0o001:
            return False
    return True


def without_capabilities(how: str) -> tuple[list[str], dict]:
    """(command prefix, Popen keywords) that run a command without CAP_SYS_PTRACE and CAP_SYS_NICE."""
    if os.geteuid() != 0:
        return [], {}
    if how == "as nobody":
        if not others_can_run(sys.executable):
            pytest.skip(f"user nobody cannot run {sys.executable}")
        return [], {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is not installed")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"], {}


@pytest.mark.parametrize("how", ["as nobody", "as root with an empty capability bounding set"])
def test_autonumad_without_capabilities_refuses_to_start_and_names_them(shared_dir, how):
    root = fixture_root(shared_dir, "2node")
    conf = write_config(shared_dir)
    prefix, keywords = without_capabilities(how)
    out = subprocess.run([*prefix, sys.executable, "-m", "autonumad.daemon_main", "--config", conf, "--root", root],
                         capture_output=True, text=True, timeout=60, cwd=REPO, **keywords)
    assert out.returncode != 0
    assert "CAP_SYS_PTRACE" in out.stderr and "CAP_SYS_NICE" in out.stderr, out.stderr
    assert "missing capabilities" in out.stderr
    assert not os.path.exists(os.path.join(shared_dir, "run")), "it set up its socket before refusing"
    assert not os.path.exists(os.path.join(shared_dir, "state"))


def test_state_file_written_by_setup_kernel_is_private(shared_dir, capsys):
    root = fixture_root(shared_dir, "2node")
    conf = write_config(shared_dir)
    assert daemon_main.main(["--config", conf, "--root", root, "--setup-kernel"]) == 0
    state = os.path.join(shared_dir, "state", "state.json")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert not os.stat(os.path.dirname(state)).st_mode & 0o022
    with open(state) as f:
        assert json.load(f)["numa_balancing_original"] == "1"
    with open(os.path.join(root, "proc", "sys", "kernel", "numa_balancing")) as f:
        assert f.read().strip() == "0"
    assert daemon_main.main(["--config", conf, "--root", root, "--restore-kernel"]) == 0
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
    assert [n for n in os.listdir(os.path.dirname(state)) if n != "state.json"] == [], "temporary files left"


@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon needs CAP_SYS_PTRACE and CAP_SYS_NICE to start")
def test_control_socket_and_its_directory_are_not_world_writable(shared_dir):
    root = fixture_root(shared_dir, "1node")
    conf = write_config(shared_dir)
    sock = os.path.join(shared_dir, "run", "control.sock")
    proc = subprocess.Popen([sys.executable, "-m", "autonumad.daemon_main", "--config", conf, "--root", root],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no control socket after 60 s"
            time.sleep(0.2)
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o755
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stdout.read()
    assert not any(os.stat(os.path.join(d, n)).st_mode & 0o002
                   for d, _, names in os.walk(shared_dir) for n in names
                   if not os.path.islink(os.path.join(d, n)) and not d.startswith(root))


# ---------------------------------------------------------------- arguments out of range

PID = str(os.getpid())
IN_PROCESS = [  # (program, argv, words the message must contain)
    ("autonumactl", ["top", "--interval", "0", "--once"], "--interval"),
    ("autonumactl", ["top", "--interval", "-1", "--once"], "--interval"),
    ("autonumactl", ["top", "--interval", "nan", "--once"], "--interval"),
    ("autonumactl", ["top", "--interval", "inf", "--once"], "--interval"),
    ("autonumactl", ["top", "-n", "0"], "-n"),
    ("autonumactl", ["top", "--limit", "0", "--once"], "--limit"),
    ("autonumactl", ["top", "--limit", "-3", "--once"], "--limit"),
    ("autonumactl", ["top", "--interval", "soon"], "--interval"),
    ("autonumactl", ["show", PID, "--interval", "-1"], "--interval"),
    ("autonumactl", ["show", PID, "--interval", "nan"], "--interval"),
    ("autonumactl", ["show", PID, "--interval", "inf"], "--interval"),
    ("autonumactl", ["advise", "0"], "CPUS"),
    ("autonumactl", ["advise", "70000"], "CPUS"),
    ("autonumactl", ["advise", "1:-5"], "CPUS[:MB]"),
    ("autonumactl", ["set", "pages_to_migrate", "0"], "pages_to_migrate"),
    ("autonumactl", ["set", "pages_to_migrate", "99999999999"], "pages_to_migrate"),
    ("autonumactl", ["set", "scan_sleep_millisecs", "-1"], "scan_sleep_millisecs"),
    ("autonumactl", ["set", "scan_sleep_millisecs", "fast"], "scan_sleep_millisecs"),
    ("autonumactl", ["set", "no_such_knob", "1"], "KNOB"),
    ("autonumactl", ["get", "no_such_knob"], "KNOB"),
    ("autonumactl", ["completion", "fish"], "shell"),
    ("autonumactl", ["frobnicate"], "VERB"),
    ("autonumad", ["--log-level", "loud"], "--log-level"),
    ("autonumad", ["--no-such-option"], "--no-such-option"),
    ("autonumad-workload", ["--mb", "0"], "--mb"),
    ("autonumad-workload", ["--threads", "-2"], "--threads"),
    ("autonumad-workload", ["--duration", "inf"], "--duration"),
    ("autonumad-workload", ["--interval", "0"], "--interval"),
    ("autonumad-workload", ["--home-nodes", "-1"], "--home-nodes"),
    ("autonumad-workload", ["--processes", "3", "--home-nodes", "0"], "--home-nodes"),
]
MAINS = {"autonumactl": cli.main, "autonumad": daemon_main.main, "autonumad-workload": workload.main}


@pytest.mark.parametrize("program,argv,named", IN_PROCESS, ids=[f"{p} {' '.join(a)}" for p, a, _ in IN_PROCESS])
def test_out_of_range_argument_is_refused_with_exit_2_naming_it(program, argv, named, capsys):
    try:
        rc = MAINS[program](argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert named in err, err
    assert "Traceback" not in err


SCRIPTS = [  # (script, argv, words the message must contain)
    ("numa-vm", ["--nodes", "0"], "--nodes"),
    ("numa-vm", ["--nodes", "17"], "--nodes"),
    ("numa-vm", ["--cpus-per-node", "0"], "--cpus-per-node"),
    ("numa-vm", ["--mem-per-node", "64M"], "--mem-per-node"),
    ("numa-vm", ["--mem-per-node", "1T"], "--mem-per-node"),
    ("numa-vm", ["--memory-only-nodes", "5"], "--memory-only-nodes"),
    ("numa-vm", ["--distance", "0,1=10"], "--distance"),
    ("numa-vm", ["--distance", "0,5=20"], "--distance"),
    ("numa-vm", ["--distance", "0-1"], "--distance"),
    ("numa-vm", ["--timeout", "0"], "--timeout"),
    ("numa-vm", ["--timeout", "-1"], "--timeout"),
    ("numa-vm", ["--timeout", "nan"], "--timeout"),
    ("numa-vm", ["--unit", "/etc/hostname"], "--unit"),
    ("churn", ["--duration", "0"], "--duration"),
    ("churn", ["--fork-exec", "-1"], "--fork-exec"),
    ("churn", ["--threads", "many"], "--threads"),
    ("churn", ["--affinity-procs", "65"], "--affinity-procs"),
    ("churn", ["--pid-max", "10"], "--pid-max"),
]


@pytest.mark.parametrize("script,argv,named", SCRIPTS, ids=[f"{s} {' '.join(a)}" for s, a, _ in SCRIPTS])
def test_script_argument_out_of_range_is_refused_with_exit_2_naming_it(script, argv, named):
    # PATH without qemu: should a bad value ever get through, numa-vm refuses to boot (125) rather than boot
    env = dict(os.environ, PATH="/nonexistent")
    command = ["--", "true"] if script == "numa-vm" else []
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *argv, *command],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    assert named in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
