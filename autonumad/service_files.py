"""The files a service install needs: the systemd unit template, the example config, the daemon's path.

The templates live once, in the source tree's systemd/ directory. A wheel built from
it (`pip install .`) carries the same files as package data of `autonumad.service_data`,
which pyproject.toml maps onto systemd/ (package-dir), so there is no second copy
to drift. `find_service_file()` looks in the installed package first, then in the
source checkout the package was imported from.

`render_unit()` writes the absolute path of the installed `autonumad` executable in
place of @AUTONUMAD@.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

UNIT_NAME = "autonumad.service"
EXAMPLE_CONFIG_NAME = "autonumad.conf"
PLACEHOLDER = "@AUTONUMAD@"
DAEMON_EXECUTABLE = "autonumad"

PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "service_data"
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "systemd"

# What a path may hold to sit bare in an Exec= line: no whitespace, quotes,
# backslashes, or the % and $ that systemd expands.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./@+-]*")


class ServiceFilesError(Exception):
    """A file the install needs is missing or unusable; the message says which and what to do."""


def find_service_file(name: str) -> Path:
    """The shipped copy of `name` (UNIT_NAME or EXAMPLE_CONFIG_NAME)."""
    for directory in (PACKAGE_DATA_DIR, CHECKOUT_DIR):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise ServiceFilesError(f"cannot find {name}: looked in {PACKAGE_DATA_DIR} (installed package) and "
                            f"{CHECKOUT_DIR} (source checkout); reinstall autonumad with pip")


def find_daemon_executable() -> str:
    """The `autonumad` script installed beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).absolute().parent / DAEMON_EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(DAEMON_EXECUTABLE)
    if found:
        return os.path.abspath(found)
    raise ServiceFilesError(f"cannot find the {DAEMON_EXECUTABLE} executable next to {sys.executable} "
                            f"or on PATH: install the package (pip install .) or pass --executable")


def render_unit(template: str, executable: str) -> str:
    """The unit with the daemon's absolute path in place of every @AUTONUMAD@."""
    if not _PLAIN_PATH.fullmatch(executable):
        raise ServiceFilesError(f"{executable!r} cannot go into the unit as it is: it must be an absolute "
                                f"path without spaces, quotes, backslashes, % or $")
    if PLACEHOLDER not in template:
        raise ServiceFilesError(f"the unit template has no {PLACEHOLDER} to replace")
    return template.replace(PLACEHOLDER, executable)
