"""autonumactl get [KNOB]: the runtime knobs' values in the running daemon, like `sysctl NAME`.

The knobs are AutoNUMA's pacing knobs (scan_sleep_millisecs, pages_to_scan, ...),
under the names users of /sys/kernel/mm/autonuma/ know. Prints `name = value` lines.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from autonumad.commands.control_request import add_json_argument, answer
from autonumad.config import RUNTIME_KNOBS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("knob", nargs="?", metavar="KNOB", choices=list(RUNTIME_KNOBS),
                        help="one knob (default: all): " + ", ".join(RUNTIME_KNOBS))
    add_json_argument(parser, "the daemon's reply")


def run(args: argparse.Namespace) -> int:
    return answer(args, "get", {"knob": args.knob} if args.knob else None, format_knobs)


def format_knobs(result: Mapping[str, Any]) -> str:
    return "".join(f"{name} = {value}\n" for name, value in result.get("knobs", {}).items())
