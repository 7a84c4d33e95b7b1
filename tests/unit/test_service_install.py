"""`autonumactl service install|uninstall` in throwaway root trees: what it writes, what it keeps,
and that uninstall leaves a tree exactly as it found it. Never the host's real /etc."""

import errno
import json
import os
import stat

import pytest

from autonumad import service_install
from autonumad.cli import main
from autonumad.service_files import (CHECKOUT_DIR, EXAMPLE_CONFIG_NAME, PACKAGE_DATA_DIR, UNIT_NAME,
                                     ServiceFilesError, find_daemon_executable, find_service_file, render_unit)

EXECUTABLE = "/opt/autonumad/bin/autonumad"
UNIT = "etc/systemd/system/autonumad.service"
CONFIG = "etc/autonumad.conf"
RECORD = "var/lib/autonumad/installed.json"


@pytest.fixture(autouse=True)
def no_systemctl(monkeypatch):
    """No test may reach the real systemctl; a test that expects a call records it instead."""
    calls = []

    def fake_run(argv, **kwargs):
        calls.append(tuple(argv))
        raise AssertionError(f"systemctl called in a test tree: {argv}")

    monkeypatch.setattr(service_install.subprocess, "run", fake_run)
    return calls


def snapshot(root):
    """Every path under root with its type, mode and content (or link target)."""
    tree = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(path, "rb") as f:
                    tree[rel] = ("file", stat.S_IMODE(st.st_mode), f.read())
    return tree


def service(capsys, root, *argv):
    rc = main(["service", *argv, "--root", str(root)]
              + (["--executable", EXECUTABLE] if argv[0] == "install" else []))
    out, err = capsys.readouterr()
    return rc, out, err


def read(root, rel):
    with open(os.path.join(root, rel)) as f:
        return f.read()


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_install_writes_the_unit_with_the_daemon_path_and_the_example_config(tmp_path, capsys):
    rc, out, err = service(capsys, tmp_path, "install")
    assert rc == 0 and err == ""
    unit = read(tmp_path, UNIT)
    assert "@AUTONUMAD@" not in unit
    assert f"ExecStart={EXECUTABLE} " in unit and f"ExecStartPre=+{EXECUTABLE} " in unit
    assert read(tmp_path, CONFIG) == find_service_file(EXAMPLE_CONFIG_NAME).read_text()
    assert stat.S_IMODE(os.stat(tmp_path / UNIT).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "var/lib/autonumad").st_mode) == 0o700
    record = json.loads(read(tmp_path, RECORD))
    assert set(record["files"]) == {"/etc/systemd/system/autonumad.service", "/etc/autonumad.conf"}
    assert record["executable"] == EXECUTABLE
    assert f"wrote /{UNIT}" in out.splitlines() and f"wrote /{CONFIG}" in out.splitlines()
    assert f"systemctl not run: {tmp_path} is not this system's root" in out


def test_install_then_uninstall_leaves_an_empty_tree_empty(tmp_path, capsys):
    assert service(capsys, tmp_path, "install")[0] == 0
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0
    assert f"removed /{UNIT}" in out and f"removed /{CONFIG}" in out
    assert snapshot(tmp_path) == {}


def populated_tree(root):
    """A system with its own /etc, another unit, an enable link of another unit and /var/lib."""
    write(root, "etc/hostname", "numa-box\n")
    write(root, "etc/systemd/system/other.service", "[Service]\nExecStart=/bin/true\n")
    os.makedirs(root / "etc/systemd/system/multi-user.target.wants")
    os.symlink("/etc/systemd/system/other.service", root / "etc/systemd/system/multi-user.target.wants/other.service")
    write(root, "var/lib/dpkg/status", "\n")


def test_round_trip_in_a_populated_tree_restores_it_exactly(tmp_path, capsys):
    populated_tree(tmp_path)
    before = snapshot(tmp_path)
    assert service(capsys, tmp_path, "install")[0] == 0
    assert snapshot(tmp_path) != before
    assert service(capsys, tmp_path, "uninstall")[0] == 0
    assert snapshot(tmp_path) == before


def test_an_admins_config_is_never_overwritten_nor_removed(tmp_path, capsys):
    write(tmp_path, CONFIG, "[scan]\npages_to_scan = 4096\n")
    before = snapshot(tmp_path)
    rc, out, _ = service(capsys, tmp_path, "install")
    assert rc == 0
    assert f"kept /{CONFIG}: a config is already there; it is never overwritten" in out
    assert read(tmp_path, CONFIG) == "[scan]\npages_to_scan = 4096\n"
    assert "/etc/autonumad.conf" not in json.loads(read(tmp_path, RECORD))["files"]
    assert service(capsys, tmp_path, "uninstall")[0] == 0
    assert snapshot(tmp_path) == before


def test_uninstall_keeps_a_config_changed_since_install_and_says_so(tmp_path, capsys):
    service(capsys, tmp_path, "install")
    with open(tmp_path / CONFIG, "a") as f:
        f.write("\n[policy]\nmin_rss_mb = 128\n")
    changed = read(tmp_path, CONFIG)
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0
    assert f"kept /{CONFIG}: changed since it was installed; it is yours now" in out
    assert read(tmp_path, CONFIG) == changed
    assert not os.path.exists(tmp_path / UNIT) and not os.path.exists(tmp_path / RECORD)
    # Only what holds the kept file is left.
    assert set(snapshot(tmp_path)) == {"etc", CONFIG}


def test_install_refuses_to_replace_a_unit_it_did_not_write(tmp_path, capsys):
    write(tmp_path, UNIT, "[Service]\nExecStart=/usr/local/bin/my-autonumad\n")
    before = snapshot(tmp_path)
    rc, out, err = service(capsys, tmp_path, "install")
    assert rc == 1 and out == ""
    assert f"{tmp_path}/{UNIT} exists and is not the unit this command installed" in err
    assert snapshot(tmp_path) == before


def test_a_unit_edited_after_install_is_neither_replaced_nor_removed(tmp_path, capsys):
    service(capsys, tmp_path, "install")
    with open(tmp_path / UNIT, "a") as f:
        f.write("# local tweak\n")
    rc, _, err = service(capsys, tmp_path, "install")
    assert rc == 1 and "(or was edited since): not replacing it" in err
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0 and f"kept /{UNIT}: changed since it was installed" in out
    assert read(tmp_path, UNIT).endswith("# local tweak\n")


def test_installing_again_is_a_no_op_and_a_new_executable_updates_our_unit(tmp_path, capsys):
    service(capsys, tmp_path, "install")
    before = snapshot(tmp_path)
    rc, out, _ = service(capsys, tmp_path, "install")
    assert rc == 0 and snapshot(tmp_path) == before
    assert f"kept /{UNIT}: already up to date" in out
    assert main(["service", "install", "--root", str(tmp_path), "--executable", "/usr/bin/autonumad"]) == 0
    assert "ExecStart=/usr/bin/autonumad " in read(tmp_path, UNIT)
    capsys.readouterr()
    assert service(capsys, tmp_path, "uninstall")[0] == 0
    assert snapshot(tmp_path) == {}


def test_dry_run_changes_nothing(tmp_path, capsys):
    populated_tree(tmp_path)
    before = snapshot(tmp_path)
    rc, out, _ = service(capsys, tmp_path, "install", "--dry-run")
    assert rc == 0 and snapshot(tmp_path) == before
    assert f"would write /{UNIT}" in out and "would create directory /var/lib/autonumad" in out
    service(capsys, tmp_path, "install")
    installed = snapshot(tmp_path)
    rc, out, _ = service(capsys, tmp_path, "uninstall", "--dry-run")
    assert rc == 0 and snapshot(tmp_path) == installed
    assert f"would remove /{UNIT}" in out


def test_uninstall_removes_the_enable_link_to_its_unit_in_a_tree(tmp_path, capsys):
    populated_tree(tmp_path)
    before = snapshot(tmp_path)
    service(capsys, tmp_path, "install")
    os.symlink("/etc/systemd/system/autonumad.service",
               tmp_path / "etc/systemd/system/multi-user.target.wants/autonumad.service")
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0
    assert "removed enable link /etc/systemd/system/multi-user.target.wants/autonumad.service" in out
    assert snapshot(tmp_path) == before


def test_uninstall_keeps_the_state_directory_the_daemon_wrote_into(tmp_path, capsys):
    service(capsys, tmp_path, "install")
    write(tmp_path, "var/lib/autonumad/state.json", "{}\n")
    assert service(capsys, tmp_path, "uninstall")[0] == 0
    assert set(snapshot(tmp_path)) == {"var", "var/lib", "var/lib/autonumad", "var/lib/autonumad/state.json"}


def test_uninstall_without_a_record_does_nothing(tmp_path, capsys):
    populated_tree(tmp_path)
    before = snapshot(tmp_path)
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0 and out.startswith("nothing to uninstall: no install record at ")
    assert snapshot(tmp_path) == before


def test_a_record_naming_other_paths_is_refused(tmp_path, capsys):
    write(tmp_path, "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    write(tmp_path, RECORD, json.dumps({"format": 1, "files": {"/etc/passwd": "0" * 64}, "directories": []}))
    rc, _, err = service(capsys, tmp_path, "uninstall")
    assert rc == 1 and "is not an install record this version understands; nothing changed" in err
    assert os.path.exists(tmp_path / "etc/passwd")


def test_a_path_systemd_would_misread_is_refused():
    with pytest.raises(ServiceFilesError, match="without spaces"):
        render_unit("ExecStart=@AUTONUMAD@\n", "/opt/my tools/autonumad")
    with pytest.raises(ServiceFilesError):
        render_unit("ExecStart=@AUTONUMAD@\n", "bin/autonumad")
    with pytest.raises(ServiceFilesError):
        render_unit("ExecStart=@AUTONUMAD@\n", "/opt/100%/autonumad")


def test_a_permission_error_is_reported_as_needing_root(tmp_path, capsys, monkeypatch):
    def refuse(path, mode=0o777):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(service_install.os, "mkdir", refuse)
    rc, _, err = service(capsys, tmp_path, "install")
    assert rc == 4
    assert err == (f"autonumactl service install: cannot create directory /etc: Permission denied "
                   f"(installing into {tmp_path} needs root)\n")


def test_on_a_live_systemd_root_it_reloads_systemd_and_disables_before_removing(tmp_path, capsys, monkeypatch,
                                                                                no_systemctl):
    monkeypatch.setattr(service_install, "is_live_system", lambda root: True)
    monkeypatch.setattr(service_install.subprocess, "run",
                        lambda argv, **kw: no_systemctl.append(tuple(argv)) or
                        service_install.subprocess.CompletedProcess(argv, 0, "", ""))
    rc, out, _ = service(capsys, tmp_path, "install")
    assert rc == 0 and no_systemctl == [("systemctl", "daemon-reload")]
    assert "ran systemctl daemon-reload" in out
    rc, out, _ = service(capsys, tmp_path, "uninstall")
    assert rc == 0
    assert no_systemctl[1:] == [("systemctl", "disable", "--now", UNIT_NAME), ("systemctl", "daemon-reload")]
    assert out.splitlines()[0] == "ran systemctl disable --now autonumad.service"


def test_the_shipped_files_are_found_in_the_checkout_and_the_daemon_beside_python():
    assert "@AUTONUMAD@" in find_service_file(UNIT_NAME).read_text()
    assert find_service_file(EXAMPLE_CONFIG_NAME).parent in (CHECKOUT_DIR, PACKAGE_DATA_DIR)
    assert os.path.isabs(find_daemon_executable())


@pytest.mark.parametrize("executable", ["/tmp/venv/bin/autonumad", "/var/tmp/x/autonumad"])
def test_install_refuses_a_daemon_under_a_directory_the_units_private_tmp_hides(tmp_path, capsys, executable):
    rc = main(["service", "install", "--root", str(tmp_path / "img"), "--executable", executable])
    out, err = capsys.readouterr()
    assert rc != 0 and f"the daemon {executable} is under " in err and "PrivateTmp=yes" in err, (out, err)
    assert not os.path.exists(tmp_path / "img" / "etc")
