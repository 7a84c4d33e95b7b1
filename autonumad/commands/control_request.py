"""What every autonumactl verb that talks to the daemon shares (this module is not a verb).

`ask()` sends one request over the control socket and turns the ways it can fail
into `VerbFailed` with a message a person reads and the exit code scripts test:

  EXIT_FAILED (1)          the daemon refused or failed the request; also "not running"
                           for every verb but `status`
  EXIT_NOT_RUNNING (3)     `status` of a daemon that is not running (like `systemctl status`
                           of a stopped unit)
  EXIT_PERMISSION (4)      the socket or the daemon refused us: changes need root

`answer()` is the whole of a simple verb: ask, then print the result as JSON
(`--json`, exactly as the daemon sent it) or through the verb's formatter.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from autonumad import constants
from autonumad.config import ConfigError, load_config
from autonumad.control_client import ControlError, DaemonNotRunning, request
from autonumad.control_protocol import COMMANDS

EXIT_FAILED = 1
EXIT_NOT_RUNNING = 3
EXIT_PERMISSION = 4


class VerbFailed(Exception):
    """A verb could not do its work: `message` for stderr, `exit_code` for the shell."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code  # the control protocol's error code, when the daemon refused


def add_json_argument(parser: argparse.ArgumentParser, what: str = "the daemon's reply") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def socket_path(args: argparse.Namespace) -> str:
    """--socket if given, else the config file's daemon.control_socket, else the default path."""
    if getattr(args, "socket", None):
        return args.socket
    try:
        return load_config(constants.CONFIG_PATH).daemon.control_socket
    except ConfigError:
        return constants.CONTROL_SOCKET_PATH


def ask(args: argparse.Namespace, cmd: str, cmd_args: Mapping[str, Any] | None = None,
        not_running_exit: int = EXIT_FAILED) -> Any:
    """The daemon's result for one request; VerbFailed says why there is none."""
    try:
        return request(cmd, cmd_args, path=socket_path(args))
    except DaemonNotRunning as exc:
        raise VerbFailed(str(exc), not_running_exit) from None
    except ControlError as exc:
        if exc.code == "permission_denied":
            if COMMANDS[cmd].read_only:
                message = f"permission denied: {exc.message}"
            else:
                message = f"changes to autonumad need root: {exc.message}"
            raise VerbFailed(message, EXIT_PERMISSION, exc.code) from None
        raise VerbFailed(exc.message, EXIT_FAILED, exc.code) from None


def fail(verb: str, exc: VerbFailed) -> int:
    """Print a VerbFailed the one way every verb does, and return its exit code."""
    print(f"autonumactl {verb}: {exc.message}", file=sys.stderr)
    return exc.exit_code


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def answer(args: argparse.Namespace, cmd: str, cmd_args: Mapping[str, Any] | None,
           format_text: Callable[[Any], str], not_running_exit: int = EXIT_FAILED) -> int:
    """Ask the daemon and print its result; the exit code for the verb."""
    try:
        result = ask(args, cmd, cmd_args, not_running_exit)
    except VerbFailed as exc:
        return fail(args.verb, exc)
    show(args, result, format_text)
    return 0


def show(args: argparse.Namespace, result: Any, format_text: Callable[[Any], str]) -> None:
    """The result as JSON with --json, else as the verb's text."""
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(format_text(result))
