"""autonumactl service install|uninstall: put autonumad's systemd unit and example config in place, or take them away.

See autonumad/service_install.py for what is written, recorded and removed.
"""

from __future__ import annotations

import argparse
import os
import sys

from autonumad.commands.control_request import EXIT_FAILED, EXIT_PERMISSION
from autonumad.service_files import (EXAMPLE_CONFIG_NAME, UNIT_NAME, ServiceFilesError, find_daemon_executable,
                                     find_service_file, render_unit)
from autonumad.service_install import (CONFIG_PATH, RECORD_PATH, UNIT_PATH, InstallError, apply, install_plan,
                                       is_live_system, under, uninstall_plan)

DESCRIPTION = f"""\
install:   write {UNIT_PATH}, naming the installed autonumad
           executable, and the documented example config {CONFIG_PATH}
           only if there is none; record both in {RECORD_PATH};
           run `systemctl daemon-reload` when installing into a running systemd's /.
uninstall: remove exactly what install wrote; files changed since are kept and named.

Then: systemctl enable --now autonumad
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("action", choices=["install", "uninstall"], help="what to do")
    parser.add_argument("--root", dest="install_root", metavar="DIR",
                        help="install into this tree instead of / (an image, a test tree)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done and do nothing")
    parser.add_argument("--executable", metavar="PATH",
                        help="the autonumad path to write into the unit (default: the one installed "
                             "beside this Python, else the one on PATH)")


def run(args: argparse.Namespace) -> int:
    root = args.install_root or args.root
    try:
        if args.action == "install":
            steps = install_plan(root, *_templates(args))
            if not os.path.isdir(root):
                _make_root(root, args.dry_run)
        else:
            steps = uninstall_plan(root)
            if not steps:
                print(f"nothing to uninstall: no install record at {under(root, RECORD_PATH)}")
                return 0
        for line in apply(root, steps, dry_run=args.dry_run):
            print(line)
    except (InstallError, ServiceFilesError) as exc:
        permission = getattr(exc, "permission", False)
        hint = f" ({args.action}ing into {root} needs root)" if permission else ""
        print(f"autonumactl service {args.action}: {exc}{hint}", file=sys.stderr)
        return EXIT_PERMISSION if permission else EXIT_FAILED
    if not is_live_system(root):
        print(f"systemctl not run: {_why_not_live(root)}")
    elif args.action == "install" and not args.dry_run:
        print(f"next: systemctl enable --now {UNIT_NAME}")
    return 0


def _templates(args: argparse.Namespace) -> tuple[str, str, str]:
    """The rendered unit, the example config and the executable written into the unit."""
    executable = args.executable or find_daemon_executable()
    with open(find_service_file(UNIT_NAME), encoding="utf-8") as f:
        unit = render_unit(f.read(), executable)
    with open(find_service_file(EXAMPLE_CONFIG_NAME), encoding="utf-8") as f:
        config = f.read()
    return unit, config, executable


def _make_root(root: str, dry_run: bool) -> None:
    """An image or test tree that does not exist yet is created, as `make DESTDIR=` would."""
    if not dry_run:
        try:
            os.makedirs(root, mode=0o755)
        except OSError as exc:
            raise InstallError(f"cannot create {root}: {exc.strerror}") from None
    print(f"{'would create' if dry_run else 'created'} {root} (the root of the tree; uninstall leaves it)")


def _why_not_live(root: str) -> str:
    if os.path.realpath(root) != "/":
        return f"{root} is not this system's root"
    return "systemd is not running here"
