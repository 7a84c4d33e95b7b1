"""autonumactl reload: make the running daemon re-read its config file (root only).

Like SIGHUP or `systemctl reload autonumad`, but the answer comes back here: what
changed, or why the new file was refused (file:line and key), in which case the
running configuration stays in force.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from autonumad.commands.control_request import VerbFailed, add_json_argument, ask, fail, show


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_argument(parser, "the daemon's reply")


def run(args: argparse.Namespace) -> int:
    try:
        result = ask(args, "reload")
    except VerbFailed as exc:
        if exc.code == "bad_request":
            exc.message = f"the new config was refused; the running one stays in force:\n{exc.message}"
        return fail(args.verb, exc)
    show(args, result, format_reload)
    return 0


def format_reload(result: Mapping[str, Any]) -> str:
    changed = result.get("changed") or []
    what = "changed " + ", ".join(changed) if changed else "nothing changed"
    return f"reloaded {result.get('config_path')}: {what}\n"
