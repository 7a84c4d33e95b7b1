"""Install and uninstall autonumad as a systemd service, leaving the system as it was afterwards.

`install_plan()` and `uninstall_plan()` look at a root directory ("/" or an image
or test tree) and return the steps to take, or refuse with `InstallError` before
anything is touched; `apply()` takes them (or, for --dry-run, only describes them).

What install writes, and records in /var/lib/autonumad/installed.json with a
SHA-256 of each file and the directories it had to create:
  /etc/systemd/system/autonumad.service   the unit, @AUTONUMAD@ replaced by the daemon's path;
                                          an existing unit is replaced only if install wrote
                                          it and nobody changed it since
  /etc/autonumad.conf                     the documented example config, only if there is none:
                                          an admin's config is never overwritten
Uninstall removes exactly the recorded files that are unchanged, keeps (and names)
the ones changed since, removes the record and the directories install created when
they are empty. On a live system (root "/" with systemd running) install runs
`systemctl daemon-reload`, and uninstall first `systemctl disable --now` so that
no enable link or running daemon is left behind; in a tree, uninstall removes the
enable links pointing at the unit itself.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from autonumad import __version__, constants
from autonumad.service_files import UNIT_NAME

UNIT_PATH = f"/etc/systemd/system/{UNIT_NAME}"
CONFIG_PATH = constants.CONFIG_PATH
RECORD_PATH = f"{constants.STATE_DIR}/installed.json"
RECORD_FORMAT = 1
# Directories install may create, parents first, with their modes (the state
# directory as the unit's StateDirectoryMode).
DIRECTORIES = {"/etc": 0o755, "/etc/systemd": 0o755, "/etc/systemd/system": 0o755,
               "/var": 0o755, "/var/lib": 0o755, constants.STATE_DIR: 0o700}
SYSTEMD_RUNNING_MARK = "/run/systemd/system"
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp")
"""The unit's PrivateTmp=yes gives the service empty ones of its own: a daemon under them is not there."""


class InstallError(Exception):
    """Install or uninstall refused or failed; `permission` when it needs root."""

    def __init__(self, message: str, permission: bool = False):
        super().__init__(message)
        self.permission = permission


@dataclass(frozen=True)
class Step:
    """One thing to do. `path` is a system path ("/etc/..."), resolved under the root when applied."""

    action: str  # mkdir, write, remove, rmdir, unlink_link, keep, run
    path: str = ""
    why: str = ""
    content: bytes = b""
    mode: int = 0o644
    argv: tuple[str, ...] = ()

    _VERBS = {"mkdir": ("create directory", "created directory"), "write": ("write", "wrote"),
              "remove": ("remove", "removed"), "rmdir": ("remove directory", "removed directory"),
              "unlink_link": ("remove enable link", "removed enable link"), "keep": ("keep", "kept"),
              "run": ("run", "ran")}

    def what(self, done: bool = False) -> str:
        """"write /etc/autonumad.conf", or with `done` "wrote /etc/autonumad.conf"."""
        target = " ".join(self.argv) if self.action == "run" else self.path
        return f"{self._VERBS[self.action][done]} {target}"

    def describe(self, dry_run: bool) -> str:
        if dry_run:
            text = self.what() if self.action == "keep" else "would " + self.what()
            text += " if it is empty" if self.action == "rmdir" else ""
        else:
            text = self.what(done=True)
        return text + (f": {self.why}" if self.why else "")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def is_live_system(root: str) -> bool:
    """Root is this machine's / and systemd runs it: systemctl calls make sense."""
    return os.path.realpath(root) == "/" and os.path.isdir(SYSTEMD_RUNNING_MARK)


def _file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return sha256(f.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InstallError(f"cannot read {path}: {exc.strerror}",
                           permission=exc.errno in (errno.EACCES, errno.EPERM)) from None


def read_record(root: str) -> dict[str, Any] | None:
    """The install record under `root`, None if there is none; InstallError if it is unusable."""
    path = under(root, RECORD_PATH)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InstallError(f"cannot read the install record {path}: {getattr(exc, 'strerror', None) or exc}; "
                           f"nothing changed") from None
    files, directories = record.get("files"), record.get("directories")
    if (record.get("format") != RECORD_FORMAT or not isinstance(files, dict) or not isinstance(directories, list)
            or not set(files) <= {UNIT_PATH, CONFIG_PATH} or not set(directories) <= set(DIRECTORIES)
            or not all(isinstance(v, str) for v in files.values())):
        raise InstallError(f"{path} is not an install record this version understands; nothing changed")
    return record


def install_plan(root: str, unit_text: str, config_text: str, executable: str) -> list[Step]:
    """Steps that install the unit and, if absent, the example config under `root`."""
    for path in dict.fromkeys((executable, os.path.realpath(executable))):
        hidden = next((d for d in PRIVATE_TMP_DIRS if path == d or path.startswith(d + "/")), None)
        if hidden:
            raise InstallError(f"the daemon {executable} is under {hidden}: the unit runs it with PrivateTmp=yes, "
                               f"which gives the service an empty {hidden} of its own, so it could not start. "
                               f"Install autonumad outside /tmp and /var/tmp (for example a venv under /opt); "
                               f"nothing changed")
    record = read_record(root) or {"files": {}, "directories": []}
    files: dict[str, str] = dict(record["files"])
    created: list[str] = list(record["directories"])
    steps = [Step("mkdir", d, mode=mode) for d, mode in DIRECTORIES.items() if not os.path.isdir(under(root, d))]
    created += [s.path for s in steps if s.path not in created]

    unit = unit_text.encode()
    found = _file_digest(under(root, UNIT_PATH))
    if found is None or (found == files.get(UNIT_PATH) and found != sha256(unit)):
        files[UNIT_PATH] = sha256(unit)
        file_steps = [Step("write", UNIT_PATH, content=unit, mode=0o644)]
    elif found == sha256(unit):
        why = "already up to date" if UNIT_PATH in files else \
            "already in place, not written by this command (uninstall will leave it)"
        file_steps = [Step("keep", UNIT_PATH, why)]
    else:
        raise InstallError(f"{under(root, UNIT_PATH)} exists and is not the unit this command installed "
                           f"(or was edited since): not replacing it. Move it away and run install again; "
                           f"put local changes in a drop-in (systemctl edit autonumad)")

    config = config_text.encode()
    if _file_digest(under(root, CONFIG_PATH)) is None:
        files[CONFIG_PATH] = sha256(config)
        file_steps.append(Step("write", CONFIG_PATH, content=config, mode=0o644))
    else:
        file_steps.append(Step("keep", CONFIG_PATH, "a config is already there; it is never overwritten"))

    new_record = {"format": RECORD_FORMAT, "written_by": "autonumactl service install",
                  "autonumad_version": __version__, "executable": executable,
                  "files": files, "directories": created}
    if new_record != record:
        # The record goes first: a crash half-way leaves nothing unrecorded for uninstall.
        steps.append(Step("write", RECORD_PATH, "what to remove on uninstall",
                          content=(json.dumps(new_record, indent=2) + "\n").encode(), mode=0o644))
    steps += file_steps
    if is_live_system(root):
        steps.append(Step("run", argv=("systemctl", "daemon-reload")))
    return steps


def uninstall_plan(root: str) -> list[Step]:
    """Steps that remove what install recorded under `root`; [] when nothing is recorded."""
    record = read_record(root)
    if record is None:
        return []
    live = is_live_system(root)
    steps: list[Step] = []
    removes_unit = False
    for path, digest in record["files"].items():
        found = _file_digest(under(root, path))
        if found is None:
            continue
        if found != digest:
            steps.append(Step("keep", path, "changed since it was installed; it is yours now"))
            continue
        steps.append(Step("remove", path))
        removes_unit = removes_unit or path == UNIT_PATH
    if removes_unit and live:
        steps.insert(0, Step("run", argv=("systemctl", "disable", "--now", UNIT_NAME)))
    elif removes_unit:
        steps += [Step("unlink_link", link[len(root.rstrip("/")):] or link)
                  for link in _enable_links(root)]
    steps.append(Step("remove", RECORD_PATH))
    steps += [Step("rmdir", d) for d in sorted(record["directories"], key=len, reverse=True)]
    if removes_unit and live:
        steps.append(Step("run", argv=("systemctl", "daemon-reload")))
    return steps


def _enable_links(root: str) -> list[str]:
    """Links `systemctl enable` made to the unit: */*.wants/ and *.requires/ entries naming it."""
    unit = under(root, UNIT_PATH)
    links = []
    for pattern in ("*.wants", "*.requires"):
        for link in sorted(glob.glob(os.path.join(os.path.dirname(unit), pattern, UNIT_NAME))):
            target = os.readlink(link) if os.path.islink(link) else None
            if target in (UNIT_PATH, unit) or (target and os.path.basename(target) == UNIT_NAME
                                               and not os.path.isabs(target)):
                links.append(link)
    return links


def apply(root: str, steps: list[Step], dry_run: bool = False) -> list[str]:
    """Take the steps (or, dry run, only describe them); lines saying what happened."""
    lines = []
    for step in steps:
        if dry_run:
            lines.append(step.describe(True))
            continue
        try:
            note = _take(root, step)
        except OSError as exc:
            raise InstallError(f"cannot {step.what()}: {exc.strerror or exc}",
                               permission=exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)) from None
        if note is not None:
            lines.append(note)
    return lines


def _take(root: str, step: Step) -> str | None:
    """Do one step; the line to print (None for a directory left because it is not empty)."""
    target = under(root, step.path)
    if step.action == "mkdir":
        os.mkdir(target, step.mode)
        os.chmod(target, step.mode)
    elif step.action == "write":
        _write_atomically(target, step.content, step.mode)
    elif step.action in ("remove", "unlink_link"):
        try:
            os.unlink(target)
        except FileNotFoundError:
            return None
    elif step.action == "rmdir":
        try:
            os.rmdir(target)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return None
            raise
    elif step.action == "run":
        done = subprocess.run(step.argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"warning: {' '.join(step.argv)} exited with {done.returncode}: " \
                   f"{(done.stderr or done.stdout).strip()}"
    return step.describe(False)


def _write_atomically(path: str, content: bytes, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
